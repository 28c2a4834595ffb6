"""The key commands as an operator types them: keygen, keyring install/use/remove/list and
check-config's key line; output names key ids and paths, never a secret."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from signet_cluster.security.keyring import derive_key_id, load_keyring_file


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin, env=env)
    return result.exit_code, result.output


def test_keygen_and_a_full_rotation_on_one_keyring(tmp_path: Path) -> None:
    """keygen prints a 43-character secret (or writes it 0600 and refuses to overwrite);
    install creates the keyring from stdin with that key primary; a second install adds a
    key that is not primary; use switches; the primary cannot be removed; remove drops the
    old key; list shows ids only."""
    code, secret = run("keygen")
    secret = secret.strip()
    assert code == 0 and len(secret) == 43
    ring = tmp_path / "ring.json"
    code, out = run("keyring", "install", "--keyring-file", str(ring), stdin=secret + "\n")
    assert code == 0 and derive_key_id(secret.encode()) in out and secret not in out
    assert oct(ring.stat().st_mode)[-3:] == "600"
    first = load_keyring_file(ring).primary

    new = tmp_path / "new.key"
    assert run("keygen", "--out", str(new))[0] == 0
    code, out = run("keygen", "--out", str(new))
    assert code == 1 and "already exists" in out
    code, out = run(
        "keyring",
        "install",
        "--keyring-file",
        str(ring),
        "--secret-file",
        str(new),
        "--key-id",
        "k2",
        "--json",
    )
    listed = json.loads(out)
    assert code == 0 and listed["primary"] == first
    assert [k["id"] for k in listed["keys"]] == [first, "k2"]
    assert new.read_text().strip() not in out

    code, out = run("keyring", "remove", first, "--keyring-file", str(ring))
    assert code == 1 and "primary" in out
    assert run("keyring", "use", "k2", "--keyring-file", str(ring))[0] == 0
    assert run("keyring", "remove", first, "--keyring-file", str(ring))[0] == 0
    code, out = run("keyring", "list", "--keyring-file", str(ring))
    assert code == 0 and "* k2" in out and first not in out
    assert secret not in ring.read_text() and new.read_text().strip() in ring.read_text()


def test_keyring_commands_explain_what_is_missing(tmp_path: Path) -> None:
    """Without a keyring path the command says where to give one; a duplicate key, an
    unknown key and a short secret are refused with a reason; the keyring path may come from
    SIGNET_CLUSTER_KEYRING_FILE."""
    code, out = run(
        "keyring", "list", env={"SIGNET_CLUSTER_KEYRING_FILE": "", "SIGNET_CLUSTER_CONFIG": ""}
    )
    assert code == 1 and "--keyring-file" in out
    ring = tmp_path / "r.json"
    env = {"SIGNET_CLUSTER_KEYRING_FILE": str(ring)}
    assert run("keyring", "install", "--generate", "--key-id", "k1", env=env)[0] == 0
    code, out = run("keyring", "install", "--generate", "--key-id", "k1", env=env)
    assert code == 1 and "already installed" in out
    code, out = run("keyring", "use", "nope", env=env)
    assert code == 1 and "not installed" in out
    code, out = run("keyring", "install", "--key-id", "k3", stdin="short\n", env=env)
    assert code == 1 and "too short" in out


def test_check_config_shows_key_ids_and_refuses_a_missing_key_file(tmp_path: Path) -> None:
    """check-config prints the key id of the configured secret file (not the secret), and
    a secret file that does not exist is an invalid configuration (exit 1)."""
    secret_file = tmp_path / "cluster.key"
    secret = "s" * 40
    secret_file.write_text(secret + "\n")
    env = {"SIGNET_CLUSTER_SECRET_FILE": str(secret_file)}
    code, out = run("check-config", env=env)
    assert code == 0 and f"primary {derive_key_id(secret.encode())}" in out and secret not in out
    code, out = run("check-config", env={"SIGNET_CLUSTER_SECRET_FILE": str(tmp_path / "gone.key")})
    assert code == 1 and "does not exist" in out
