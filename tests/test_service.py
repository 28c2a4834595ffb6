"""Service units: the templates render to units systemd and launchd accept, `deploy/` is the
templates rendered with example paths, and `install-service` writes, prints and refuses as
an operator expects."""

from __future__ import annotations

import plistlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.service import EXAMPLE_FILES, EXAMPLES, machine_values, render, stop_timeout

ROOT = Path(__file__).resolve().parent.parent
PLIST_KEYS = {
    "Label",
    "ProgramArguments",
    "KeepAlive",
    "RunAtLoad",
    "StandardOutPath",
    "StandardErrorPath",
}


def systemd_verify(unit: Path) -> list[str]:
    """Problems `systemd-analyze verify` reports for the unit (it exits 0 on parse warnings,
    so its stderr is read too)."""
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (apt package systemd)"
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0:
        problems.append(f"exit code {result.returncode}")
    return problems


def install(args: list[str], tmp_path: Path) -> tuple[int, str, str]:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "SUDO_USER": ""}
    result = CliRunner().invoke(cli, ["install-service", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def machine_unit(tmp_path: Path, *extra: str, name: str = "signet-cluster.service") -> Path:
    out = tmp_path / "out" / name
    code, stdout, stderr = install(
        ["--output", str(out), "--config", str(tmp_path / "etc" / "config.toml"), *extra],
        tmp_path,
    )
    assert code == 0, stdout + stderr
    return out


@pytest.mark.parametrize("kind", ["system", "user"])
def test_rendered_systemd_units_verify_clean(tmp_path: Path, kind: str) -> None:
    """The system and user units, rendered with this machine's paths, pass
    `systemd-analyze verify` without a single warning; a broken directive is caught."""
    args = ["--user"] if kind == "user" else ["--run-as", "root"]
    unit = machine_unit(tmp_path, *args)
    assert systemd_verify(unit) == []
    text = unit.read_text()
    assert re.search(r"^ExecStart=/\S+/signet-cluster serve$", text, re.M)
    assert "@" not in text.replace("$MAINPID", "")
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("Type=exec", "Type=forking-ish"))
    assert any("Type" in p or "service type" in p for p in systemd_verify(broken))


def test_every_directive_is_commented_and_stop_timeout_exceeds_grace() -> None:
    """Each directive in the deploy/ units has a comment right above it; the units run a
    foreground process, restart on failure, and stop only after the graceful shutdown."""
    for kind in ("system", "user"):
        lines = (ROOT / EXAMPLE_FILES[kind]).read_text().splitlines()
        for index, line in enumerate(lines):
            if re.match(r"^[A-Za-z]+=", line):
                assert lines[index - 1].startswith("#"), f"{kind}: {line} has no comment"
        text = "\n".join(lines)
        assert "Type=exec" in text and "Restart=on-failure" in text
        grace = float(EXAMPLES[kind]["GRACE"])
        timeout = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
        assert timeout > grace
    plist_text = (ROOT / EXAMPLE_FILES["launchd"]).read_text()
    keys = re.findall(r"^  <key>(\w+)</key>", plist_text, re.M)
    for key in keys:
        before = plist_text.split(f"  <key>{key}</key>")[0].rstrip().splitlines()[-1]
        assert before.strip().endswith("-->"), f"plist key {key} has no comment"


def test_deploy_files_are_the_rendered_templates() -> None:
    """deploy/ holds exactly what the packaged templates render to with the example paths
    (regenerate with `python -c "from pathlib import Path; from cli.service import
    write_examples; write_examples(Path('.'))"`)."""
    for kind, relative in EXAMPLE_FILES.items():
        assert (ROOT / relative).read_text() == render(kind, EXAMPLES[kind], literal=True), kind


def test_launchd_plist_parses_with_the_required_keys(tmp_path: Path) -> None:
    """The plist (rendered for this machine, and the deploy/ example) parses with plistlib,
    runs `signet-cluster serve` in the foreground, restarts on failure only, names its log
    files, and gives SIGTERM more time than the graceful shutdown."""
    out = machine_unit(tmp_path, "--launchd", name="ai.signet.cluster.plist")
    for text in (out.read_bytes(), (ROOT / EXAMPLE_FILES["launchd"]).read_bytes()):
        plist = plistlib.loads(text)
        assert set(plist) >= PLIST_KEYS
        assert plist["Label"] == "ai.signet.cluster"
        assert plist["ProgramArguments"][1:] == ["serve"]
        assert plist["ProgramArguments"][0].endswith("signet-cluster")
        assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
        assert plist["StandardOutPath"].endswith(".log") and plist["StandardErrorPath"]
        assert plist["ExitTimeOut"] > 8
        assert set(plist["EnvironmentVariables"]) == {
            "SIGNET_CLUSTER_CONFIG",
            "SIGNET_CLUSTER_SECRET_FILE",
        }


def test_xml_and_systemd_special_characters_are_escaped(tmp_path: Path) -> None:
    """A path with '&' is XML-escaped in the plist, a '%' is doubled in a unit, and a path
    with a space is refused (a unit cannot hold it unquoted) with a clear error."""
    odd = tmp_path / "a&b%c"
    out = machine_unit(
        tmp_path, "--launchd", "--secret-file", str(odd), name="ai.signet.cluster.plist"
    )
    assert plistlib.loads(out.read_bytes())["EnvironmentVariables"][
        "SIGNET_CLUSTER_SECRET_FILE"
    ] == str(odd)
    unit = machine_unit(tmp_path, "--user", "--secret-file", str(odd), name="u.service")
    assert f"SIGNET_CLUSTER_SECRET_FILE={tmp_path}/a&b%%c" in unit.read_text()
    code, _out, err = install(
        ["--print", "--config", str(tmp_path / "my dir" / "c.toml")], tmp_path
    )
    assert code == 1 and "contains whitespace" in err


def test_install_service_writes_prints_and_refuses(tmp_path: Path) -> None:
    """--print writes nothing; a first install writes and lists next steps (key, config,
    systemctl); the same install again is 'unchanged'; a different existing file is kept
    unless --force; the stop timeout follows the configured shutdown_timeout; an invalid
    config is refused with every problem and nothing written."""
    config = tmp_path / "etc" / "config.toml"
    out = tmp_path / "out" / "signet-cluster.service"
    code, printed, _ = install(["--print", "--user", "--config", str(config)], tmp_path)
    assert code == 0 and printed.startswith("# signet-cluster sidecar: user service")
    assert not out.exists() and not (tmp_path / "xdg").exists()

    code, text, _ = install(["--user", "--output", str(out), "--config", str(config)], tmp_path)
    assert code == 0 and f"{out}: written" in text
    assert f"signet-cluster keygen --out {tmp_path}/xdg/signet-cluster/secret" in text
    assert f"write the settings to {config}" in text
    assert "systemctl --user daemon-reload && systemctl --user enable --now signet-cluster" in text
    assert out.read_text() == printed

    code, text, _ = install(["--user", "--output", str(out), "--config", str(config)], tmp_path)
    assert code == 0 and f"{out}: unchanged" in text

    config.parent.mkdir(parents=True)
    config.write_text("shutdown_timeout = 20\n")
    code, _text, err = install(["--user", "--output", str(out), "--config", str(config)], tmp_path)
    assert code == 1 and "exists with other content" in err
    assert "TimeoutStopSec=15" in out.read_text()
    code, text, _ = install(
        ["--user", "--output", str(out), "--config", str(config), "--force"], tmp_path
    )
    assert code == 0 and f"{out}: replaced" in text
    assert f"TimeoutStopSec={stop_timeout(20)}" in out.read_text() and stop_timeout(20) > 20
    assert "write the settings" not in text  # the config exists now

    config.write_text('shutdown_timeout = "soon"\nbogus = 1\n')
    code, _text, err = install(
        ["--user", "--output", str(tmp_path / "new.service"), "--config", str(config)], tmp_path
    )
    assert code == 1 and "shutdown_timeout: expected a number" in err and "bogus" in err
    assert not (tmp_path / "new.service").exists()


def test_usage_errors(tmp_path: Path) -> None:
    """Contradictory flags are usage errors (exit 2) that write nothing."""
    for args in (
        ["--user", "--run-as", "root"],
        ["--secret-file", "a", "--keyring-file", "b"],
    ):
        code, _out, _err = install([*args, "--output", str(tmp_path / "x")], tmp_path)
        assert code == 2, args
    assert not (tmp_path / "x").exists()


def test_machine_values_name_this_machine(tmp_path: Path) -> None:
    """The values come from this machine: the running executable, the current user and
    group, and the keyring file when one is named instead of a secret."""
    values, settings, _warnings = machine_values(
        "system",
        config=tmp_path / "c.toml",
        secret_file=None,
        keyring_file=tmp_path / "keyring.json",
        run_as="root",
        executable=None,
    )
    assert Path(values["EXEC"]).name == "signet-cluster" and Path(values["EXEC"]).exists()
    assert values["USER"] == "root" and values["GROUP"] == "root"
    assert values["SECRET_VAR"] == "SIGNET_CLUSTER_KEYRING_FILE"
    assert values["SECRET"] == str(tmp_path / "keyring.json")
    assert values["GRACE"] == f"{settings.shutdown_timeout:g}"


def test_the_key_file_the_unit_names_counts(tmp_path: Path) -> None:
    """A settings file that listens on the network and leaves the key to the unit is valid
    with the key file the unit names (not refused as keyless); a settings file that names
    its own keyring gets a unit naming that keyring, not a second key file the sidecar would
    refuse; a real conflict (both a keyring and a secret file) is still refused."""
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('host = "0.0.0.0"\nadvertise_url = "http://hostb:3860"\n')
    secret = tmp_path / "etc" / "secret"
    code, printed, err = install(
        ["--print", "--config", str(config), "--secret-file", str(secret)], tmp_path
    )
    assert code == 0, err
    assert f"Environment=SIGNET_CLUSTER_SECRET_FILE={secret}" in printed

    keyring = tmp_path / "etc" / "keyring.json"
    config.write_text(f'host = "0.0.0.0"\nkeyring_file = "{keyring}"\n')
    code, printed, err = install(["--print", "--config", str(config)], tmp_path)
    assert code == 0, err
    assert f"Environment=SIGNET_CLUSTER_KEYRING_FILE={keyring}" in printed
    assert "SIGNET_CLUSTER_SECRET_FILE" not in printed

    code, _printed, err = install(
        ["--print", "--config", str(config), "--secret-file", str(secret)], tmp_path
    )
    assert code == 1 and "set one of them, not both" in err
