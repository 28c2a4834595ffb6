"""Service units: the templates render to units systemd and launchd accept, `deploy/` is the
templates rendered with example paths, and `install-service` writes, prints and refuses as
an operator expects."""

from __future__ import annotations

import os
import plistlib
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
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


def systemd_exposure(unit: Path) -> float:
    """The overall exposure `systemd-analyze security --offline` gives the unit file."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A folder the system unit's private /tmp does not hide (under the home directory),
    holding a stand-in `signet-cluster` executable that answers --version."""
    folder = Path(tempfile.mkdtemp(prefix=".signet-cluster-test-", dir=Path.home()))
    try:
        executable = folder / "bin" / "signet-cluster"
        executable.parent.mkdir()
        executable.write_text("#!/bin/sh\necho 'signet-cluster, version 0'\n")
        executable.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    if kind == "user":
        unit = machine_unit(tmp_path, "--user")
    else:
        folder = Path(tempfile.mkdtemp(prefix=".signet-cluster-test-", dir=Path.home()))
        try:
            (folder / "signet-cluster").write_text("#!/bin/sh\nexit 0\n")
            (folder / "signet-cluster").chmod(0o755)
            unit = tmp_path / "out" / "signet-cluster.service"
            code, stdout, stderr = install(
                [
                    "--output",
                    str(unit),
                    "--config",
                    str(folder / "config.toml"),
                    "--exec",
                    str(folder / "signet-cluster"),
                    "--run-as",
                    "root",
                ],
                tmp_path,
            )
            assert code == 0, stdout + stderr
            assert systemd_verify(unit) == []
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if kind == "user":
        assert systemd_verify(unit) == []
    text = unit.read_text()
    assert re.search(r"^ExecStart=/\S+/signet-cluster serve$", text, re.M)
    assert not re.search(r"@[A-Z_]+@", text), "a placeholder was left unfilled"
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
        ["--print", "--user", "--config", str(tmp_path / "my dir" / "c.toml")], tmp_path
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
    # --secret-file's default, as its help says: "secret" beside the settings file.
    assert f"signet-cluster keygen --out {config.parent}/secret" in text
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
        ["--print", "--user", "--config", str(config), "--secret-file", str(secret)], tmp_path
    )
    assert code == 0, err
    assert f"Environment=SIGNET_CLUSTER_SECRET_FILE={secret}" in printed

    keyring = tmp_path / "etc" / "keyring.json"
    config.write_text(f'host = "0.0.0.0"\nkeyring_file = "{keyring}"\n')
    code, printed, err = install(["--print", "--user", "--config", str(config)], tmp_path)
    assert code == 0, err
    assert f"Environment=SIGNET_CLUSTER_KEYRING_FILE={keyring}" in printed
    assert "SIGNET_CLUSTER_SECRET_FILE" not in printed

    code, _printed, err = install(
        ["--print", "--user", "--config", str(config), "--secret-file", str(secret)], tmp_path
    )
    assert code == 1 and "set one of them, not both" in err


def test_system_unit_exposure_is_low_and_it_never_runs_as_root_by_default(
    tmp_path: Path, outside_tmp: Path
) -> None:
    """`systemd-analyze security` rates the system unit (as install-service renders it, and
    the deploy/ example) at most 2.5; it sets LimitNOFILE and names the Signet daemon's unit
    in a comment; without --run-as (and no sudo) as root, install-service refuses to make a
    root service."""
    unit = tmp_path / "signet-cluster.service"
    code, out, err = install(
        [
            "--output",
            str(unit),
            "--run-as",
            "root",
            "--config",
            str(outside_tmp / "config.toml"),
            "--exec",
            str(outside_tmp / "bin" / "signet-cluster"),
        ],
        tmp_path,
    )
    assert code == 0, out + err
    assert "warning: the service would run as root" in err
    for path in (unit, ROOT / EXAMPLE_FILES["system"]):
        assert systemd_exposure(path) <= 2.5, path
        text = path.read_text()
        assert re.search(r"^LimitNOFILE=\d+$", text, re.M)
        assert "#After=signet.service" in text and "#Wants=signet.service" in text
    assert "LimitNOFILE=" in (ROOT / EXAMPLE_FILES["user"]).read_text()

    if os.geteuid() == 0:
        code, _out, err = install(["--print", "--config", str(outside_tmp / "c.toml")], tmp_path)
        assert code == 1 and "would run as root" in err


def test_launchd_job_is_not_background() -> None:
    """The sidecar is in the request path: launchd must not throttle it as a Background job."""
    plist = plistlib.loads((ROOT / EXAMPLE_FILES["launchd"]).read_bytes())
    assert plist.get("ProcessType", "Standard") != "Background"


def test_files_under_private_tmp_are_refused_for_the_system_unit(tmp_path: Path) -> None:
    """The system unit has PrivateTmp=true: settings, key or executable under /tmp would be
    invisible to the service, so install-service refuses (and writes nothing); a user unit,
    which has its own /tmp view of the real one, accepts the same paths."""
    config = tmp_path / "etc" / "config.toml"
    out = tmp_path / "unit.service"
    code, _out, err = install(
        ["--run-as", "root", "--config", str(config), "--output", str(out)], tmp_path
    )
    assert tmp_path.is_relative_to("/tmp") or tmp_path.is_relative_to("/var/tmp"), tmp_path
    assert code == 1 and f"the settings file {config} is under /tmp" in err
    assert "PrivateTmp=true" in err and not out.exists()
    code, _out, err = install(["--user", "--config", str(config), "--output", str(out)], tmp_path)
    assert code == 0, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files another user cannot read")
def test_install_service_checks_as_the_run_as_user(tmp_path: Path, outside_tmp: Path) -> None:
    """Readability is checked as the service user, not as the installer: a key file only
    root can read, or a folder nobody may enter, is refused for --run-as nobody with the
    path that blocks it; an executable that cannot run as that user is refused; once the
    files are the user's, the same install succeeds."""
    nobody = pwd.getpwnam("nobody")
    etc = outside_tmp / "etc"
    etc.mkdir()
    config, secret = etc / "config.toml", etc / "secret"
    config.write_text("")
    secret.write_text("k" * 43)
    secret.chmod(0o600)
    outside_tmp.chmod(0o755)
    executable = outside_tmp / "bin" / "signet-cluster"
    args = ["--print", "--run-as", "nobody", "--config", str(config), "--exec", str(executable)]

    code, _out, err = install(args, tmp_path)
    assert code == 1 and "not usable by user nobody" in err
    # The home folder holding the test files may itself be closed to nobody (e.g. /root).
    assert f"cannot read {secret}" in err or "cannot enter" in err, err

    if Path.home().stat().st_mode & 0o001:
        os.chown(secret, nobody.pw_uid, nobody.pw_gid)
        code, out, err = install(args, tmp_path)
        assert code == 0, err
        assert "User=nobody" in out
        executable.write_text("#!/bin/sh\necho 'no module named sidecar' >&2\nexit 1\n")
        code, _out, err = install(args, tmp_path)
        assert code == 1 and "--version failed: no module named sidecar" in err
