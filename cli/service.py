"""`signet-cluster install-service`: render the systemd (system or user) unit or the launchd
plist with this machine's paths, write it (or print it), and say what to run next.

Templates are package data (`cli/units/*.in`, `@NAME@` placeholders); `deploy/` holds the
same templates rendered with example paths, kept identical by tests/test_service.py.
"""

from __future__ import annotations

import getpass
import grp
import math
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from importlib import resources
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import click

from signet_cluster.errors import ConfigError
from signet_cluster.settings import Settings, load_settings, read_toml

from .client import CliError

KINDS = ("system", "user", "launchd")
TEMPLATES = {
    "system": "signet-cluster.service.in",
    "user": "signet-cluster-user.service.in",
    "launchd": "ai.signet.cluster.plist.in",
}
LABEL = "ai.signet.cluster"
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
# SIGKILL comes this long after the graceful shutdown would have ended: the clean-up after
# the grace (loops cancelled, state DB closed) needs a moment, a slow disk a few more.
STOP_MARGIN_S = 7
MIN_STOP_TIMEOUT_S = 15
# The system unit's StateDirectory=signet-cluster (its template sets the same path).
SYSTEM_STATE_DIR = "/var/lib/signet-cluster"
# The system unit's PrivateTmp=true gives the service its own, empty /tmp and /var/tmp.
PRIVATE_TMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))
# Settings naming files the service must read (besides the settings and key files).
FILE_SETTINGS = ("tls_cert_file", "tls_key_file", "tls_ca_file", "metrics_token_file")
RUN_CHECK_TIMEOUT_S = 30


# deploy/ holds each template rendered with these (systemd specifiers kept as such), so the
# files there can be read, or copied and edited, without running anything.
_EXAMPLE_COMMON = {"GRACE": "8", "STOP_TIMEOUT": "15", "LABEL": LABEL}
EXAMPLES: dict[str, dict[str, str]] = {
    "system": {
        **_EXAMPLE_COMMON,
        "EXEC": "/usr/local/bin/signet-cluster",
        "CONFIG": "/etc/signet-cluster/config.toml",
        "SECRET_VAR": "SIGNET_CLUSTER_SECRET_FILE",
        "SECRET": "/etc/signet-cluster/secret",
        "ENV_FILE": "/etc/signet-cluster/env",
        "USER": "signet",
        "GROUP": "signet",
        "WORKSPACE": "/home/signet/.agents",
    },
    "user": {
        **_EXAMPLE_COMMON,
        "EXEC": "%h/.local/bin/signet-cluster",
        "CONFIG": "%h/.config/signet-cluster/config.toml",
        "SECRET_VAR": "SIGNET_CLUSTER_SECRET_FILE",
        "SECRET": "%h/.config/signet-cluster/secret",
        "ENV_FILE": "%h/.config/signet-cluster/env",
    },
    "launchd": {
        **_EXAMPLE_COMMON,
        "EXEC": "/usr/local/bin/signet-cluster",
        "CONFIG": "/Users/USER/.config/signet-cluster/config.toml",
        "SECRET_VAR": "SIGNET_CLUSTER_SECRET_FILE",
        "SECRET": "/Users/USER/.config/signet-cluster/secret",
        "LOG": "/Users/USER/Library/Logs/signet-cluster.log",
    },
}
EXAMPLE_FILES = {
    "system": Path("deploy/systemd/signet-cluster.service"),
    "user": Path("deploy/systemd/signet-cluster-user.service"),
    "launchd": Path(f"deploy/launchd/{LABEL}.plist"),
}


def write_examples(root: Path) -> None:
    """Regenerate deploy/ from the templates (run from a checkout after editing one)."""
    for kind, relative in EXAMPLE_FILES.items():
        (root / relative).write_text(render(kind, EXAMPLES[kind], literal=True), encoding="utf-8")


def stop_timeout(grace: float) -> int:
    """Seconds before SIGKILL: always longer than the sidecar's own shutdown_timeout."""
    return max(MIN_STOP_TIMEOUT_S, math.ceil(grace) + STOP_MARGIN_S)


def template(kind: str) -> str:
    return resources.files("cli.units").joinpath(TEMPLATES[kind]).read_text(encoding="utf-8")


def _systemd_value(value: str) -> str:
    # '%' starts a specifier in unit files; a literal one is written '%%'.
    return value.replace("%", "%%")


def render(kind: str, values: dict[str, str], *, literal: bool = False) -> str:
    """Fill the template. Values are escaped for the format (unit file or XML) unless
    `literal` (the deploy/ examples use systemd specifiers such as %h on purpose)."""
    for name, value in values.items():
        if any(ch in value for ch in "\n\r\0") or (kind != "launchd" and re.search(r"\s", value)):
            raise ValueError(
                f"{name.lower()}: {value!r} contains whitespace or control characters, which "
                "the unit cannot hold; choose a path without them"
            )
    text = template(kind)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template {TEMPLATES[kind]} needs a value for @{name}@")
        value = values[name]
        if literal:
            return value
        return xml_escape(value) if kind == "launchd" else _systemd_value(value)

    return PLACEHOLDER.sub(fill, text)


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def target_path(kind: str) -> Path:
    if kind == "system":
        return Path("/etc/systemd/system/signet-cluster.service")
    if kind == "user":
        return config_home() / "systemd" / "user" / "signet-cluster.service"
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def find_executable() -> str:
    """The `signet-cluster` this CLI was installed with (a venv's bin/ first)."""
    beside = Path(sys.executable).parent / "signet-cluster"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("signet-cluster")
    if found:
        return str(Path(found).absolute())
    raise CliError("cannot find the signet-cluster executable on PATH; pass --exec PATH")


def service_user(kind: str, run_as: str | None) -> tuple[str, str, Path]:
    """(user, group, home) the service runs as."""
    name = run_as or (os.environ.get("SUDO_USER") if kind == "system" else None)
    name = name or getpass.getuser()
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise CliError(f"no user {name!r} on this machine (--run-as)") from None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return name, group, Path(entry.pw_dir)


def machine_values(
    kind: str,
    *,
    config: Path | None,
    secret_file: Path | None,
    keyring_file: Path | None,
    run_as: str | None,
    executable: str | None,
) -> tuple[dict[str, str], Settings, list[str]]:
    """The placeholder values for this machine, the settings the unit will load, and
    warnings for the operator."""
    warnings: list[str] = []
    user, group, home = service_user(kind, run_as)
    base = Path("/etc/signet-cluster") if kind == "system" else config_home() / "signet-cluster"
    config = (config or base / "config.toml").absolute()
    if secret_file is None and keyring_file is None and config.exists():
        # The settings file's own key file, so the unit names the same one (naming another
        # would set both secret_file and keyring_file, which the sidecar refuses).
        named = read_toml(config, [])
        if isinstance(named.get("keyring_file"), str):
            keyring_file = Path(named["keyring_file"]).expanduser()
        elif isinstance(named.get("secret_file"), str):
            secret_file = Path(named["secret_file"]).expanduser()
    if keyring_file is not None:
        secret_var, secret = "SIGNET_CLUSTER_KEYRING_FILE", keyring_file.absolute()
    else:
        # As --secret-file's help says: the key file beside the settings file.
        secret_var, secret = (
            "SIGNET_CLUSTER_SECRET_FILE",
            (secret_file or config.parent / "secret").absolute(),
        )
    # What the service will load: its settings file (if present) plus the environment the
    # unit sets (the key file, the system unit's state directory), not this shell's. So the
    # key the unit names counts, and the stop timeout matches its shutdown_timeout.
    unit_env = {secret_var: str(secret)}
    if kind == "system":
        unit_env["SIGNET_CLUSTER_STATE_DIR"] = SYSTEM_STATE_DIR
    try:
        settings = load_settings(config_file=config if config.exists() else None, env=unit_env)
    except ConfigError as exc:
        raise CliError(
            f"{config} is not a valid configuration (with the key file the unit names, "
            f"{secret}):\n  - " + "\n  - ".join(exc.problems)
        ) from None
    if kind == "system" and user == "root" and run_as is None:
        raise CliError(
            "the service would run as root: pass --run-as USER (the owner of the Signet "
            "workspace), or --run-as root to insist"
        )
    if kind == "system" and user == "root":
        warnings.append(
            "the service would run as root; pass --run-as USER (the owner of the Signet workspace)"
        )
    workspace = Path(settings.workspace).expanduser() if settings.workspace else home / ".agents"
    values = {
        "EXEC": executable or find_executable(),
        "CONFIG": str(config),
        "SECRET_VAR": secret_var,
        "SECRET": str(secret),
        "ENV_FILE": str(base / "env"),
        "USER": user,
        "GROUP": group,
        "WORKSPACE": str(workspace),
        "GRACE": f"{settings.shutdown_timeout:g}",
        "STOP_TIMEOUT": str(stop_timeout(settings.shutdown_timeout)),
        "LABEL": LABEL,
        "LOG": str(Path.home() / "Library" / "Logs" / "signet-cluster.log"),
    }
    return values, settings, warnings


def _permits(st: os.stat_result, uid: int, gids: frozenset[int], bit: int) -> bool:
    """Whether the mode bits let this user read (4) or execute/search (1) the file."""
    if uid == 0:
        # root reads and searches anything, and executes a file with any x bit set.
        return bit != 1 or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
    return bool((st.st_mode >> shift) & bit)


def access_problem(path: Path, uid: int, gids: frozenset[int], bits: int) -> str | None:
    """Why the user cannot use an existing path (read: 4, execute or list: 1, both: 5), or
    None. Walks the path as the kernel does: every directory on the way must be searchable.
    Mode bits only (no ACLs): the executable is also run as the user, which is the real test."""
    resolved = Path(os.path.realpath(path))
    for directory in reversed(resolved.parents):
        if not _permits(directory.stat(), uid, gids, 1):
            return f"cannot enter {directory}"
    st = resolved.stat()
    for bit, verb in ((4, "read"), (1, "list" if stat.S_ISDIR(st.st_mode) else "execute")):
        if bits & bit and not _permits(st, uid, gids, bit):
            return f"cannot {verb} {resolved}"
    return None


def _under_private_tmp(path: Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return any(resolved == root or root in resolved.parents for root in PRIVATE_TMP_ROOTS)


def _run_as(executable: str, uid: int, gid: int, gids: frozenset[int]) -> str | None:
    """Run `EXEC --version` as the service user; why it failed, or None. Skipped (None) when
    this process can neither be that user nor become it (not root)."""
    if os.geteuid() not in (uid, 0):
        return None
    switch = os.geteuid() != uid  # root: become the service user for the run
    try:
        result = subprocess.run(
            [executable, "--version"],
            capture_output=True,
            text=True,
            timeout=RUN_CHECK_TIMEOUT_S,
            check=False,
            cwd="/",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
            user=uid if switch else None,
            group=gid if switch else None,
            extra_groups=sorted(gids) if switch else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {executable}: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        return f"{executable} --version failed: {last}"
    return None


def preflight(kind: str, values: dict[str, str], settings: Settings) -> list[str]:
    """What would stop the service, checked as the user it runs as: the files it must read,
    the workspace it reads, the executable it runs, and (system unit, PrivateTmp=true) any of
    them under /tmp or /var/tmp, which the service would not see."""
    entry = pwd.getpwnam(values["USER"])
    uid, gid = entry.pw_uid, entry.pw_gid
    gids = frozenset(os.getgrouplist(entry.pw_name, gid))
    who = f"user {entry.pw_name}"
    named = [("settings file", values["CONFIG"], 4), ("key file", values["SECRET"], 4)]
    named += [
        (name, value, 4) for name in FILE_SETTINGS if (value := getattr(settings, name, None))
    ]
    named += [("workspace", values["WORKSPACE"], 5), ("executable", values["EXEC"], 5)]
    problems = []
    for what, value, bits in named:
        path = Path(value).expanduser()
        if kind == "system" and _under_private_tmp(path):
            problems.append(
                f"the {what} {path} is under /tmp or /var/tmp, which the service does not see "
                "(PrivateTmp=true gives it its own); move it, e.g. under /etc/signet-cluster"
            )
        elif path.exists():
            reason = access_problem(path, uid, gids, bits)
            if reason:
                problems.append(f"the {what} is not usable by {who}, as the service runs: {reason}")
        elif what == "executable":
            problems.append(f"the executable {path} does not exist (--exec PATH)")
    if not problems:
        failure = _run_as(values["EXEC"], uid, gid, gids)
        if failure:
            problems.append(f"as {who}, as the service runs: {failure}")
    return problems


def next_steps(kind: str, path: Path, values: dict[str, str]) -> list[str]:
    steps = []
    config, secret = Path(values["CONFIG"]), Path(values["SECRET"])
    if not config.exists():
        steps.append(
            f"write the settings to {config} (docs: Configuration), then check them: "
            f"SIGNET_CLUSTER_CONFIG={config} signet-cluster check-config"
        )
    if not secret.exists():
        steps.append(
            f"create the cluster key: signet-cluster keygen --out {secret} "
            "(the same key on every host; mode 0600, owned by the service user)"
        )
    if kind == "system":
        steps.append("sudo systemctl daemon-reload && sudo systemctl enable --now signet-cluster")
        steps.append("follow it: journalctl -u signet-cluster -f")
    elif kind == "user":
        steps.append(
            "systemctl --user daemon-reload && systemctl --user enable --now signet-cluster"
        )
        steps.append(f"keep it running when you log out: loginctl enable-linger {values['USER']}")
    else:
        steps.append(f"launchctl bootstrap gui/$(id -u) {path}")
        steps.append(f"follow it: tail -f {values['LOG']}")
    steps.append("then: signet-cluster status")
    return steps


def write_unit(path: Path, text: str, force: bool) -> str:
    """Write atomically; returns 'written', 'replaced' or 'unchanged'."""
    existing = path.read_text(encoding="utf-8") if path.exists() else None
    if existing == text:
        return "unchanged"
    if existing is not None and not force:
        raise CliError(
            f"{path} exists with other content; --force replaces it (--print shows the new one)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text, encoding="utf-8")
        partial.chmod(0o644)
        os.replace(partial, path)
    except PermissionError:
        raise CliError(
            f"cannot write {path}: permission denied (run with sudo, use --user, or --print)"
        ) from None
    return "written" if existing is None else "replaced"


@click.command("install-service")
@click.option("--user", "user_unit", is_flag=True, help="A systemd user unit (runs as you).")
@click.option(
    "--launchd",
    is_flag=True,
    default=sys.platform == "darwin",
    help="A launchd plist (macOS; the default there).",
)
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write here instead of the standard location.",
)
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Settings file the unit names (default /etc/signet-cluster/config.toml, "
    "or ~/.config/signet-cluster/config.toml for --user/--launchd).",
)
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Cluster key file the unit names (default: secret beside the config).",
)
@click.option(
    "--keyring-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Name a keyring file (for key rotation) instead of a secret file.",
)
@click.option(
    "--run-as",
    help="User the system service runs as (default: $SUDO_USER, else you; root only when "
    "named: --run-as root).",
)
@click.option(
    "--exec",
    "executable",
    help="Path of the signet-cluster executable (default: the one running now).",
)
@click.option("--force", is_flag=True, help="Replace an existing, different unit file.")
def install_service(
    user_unit: bool,
    launchd: bool,
    print_only: bool,
    output: Path | None,
    config: Path | None,
    secret_file: Path | None,
    keyring_file: Path | None,
    run_as: str | None,
    executable: str | None,
    force: bool,
) -> None:
    """Install the sidecar as a service: a systemd system unit (default), a systemd user unit
    (--user) or a launchd agent (--launchd), rendered with this machine's paths (executable,
    user, settings and key files, a stop timeout above shutdown_timeout). Prints the commands
    to run next. Nothing is started for you.
    """
    if user_unit and launchd and sys.platform != "darwin":
        raise click.UsageError("choose one of --user and --launchd")
    if secret_file is not None and keyring_file is not None:
        raise click.UsageError("choose one of --secret-file and --keyring-file")
    kind = "launchd" if launchd and not user_unit else ("user" if user_unit else "system")
    if run_as is not None and kind != "system":
        raise click.UsageError("--run-as is for the system unit; a user unit runs as you")
    values, settings, warnings = machine_values(
        kind,
        config=config,
        secret_file=secret_file,
        keyring_file=keyring_file,
        run_as=run_as,
        executable=executable,
    )
    try:
        text = render(kind, values)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    problems = preflight(kind, values, settings)
    if problems:
        raise CliError("the service could not start as rendered:\n  - " + "\n  - ".join(problems))
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if print_only:
        click.echo(text, nl=False)
        return
    path = output or target_path(kind)
    outcome = write_unit(path, text, force)
    click.echo(f"{path}: {outcome}")
    click.echo("next:")
    for number, step in enumerate(next_steps(kind, path, values), 1):
        click.echo(f"  {number}. {step}")
