"""Sidecar settings: one frozen class, layered defaults < TOML file < environment < flags,
validated once with every problem listed (`signet-cluster check-config`)."""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from signet_cluster.errors import ConfigError

ENV_PREFIX = "SIGNET_CLUSTER_"
DEFAULT_PORT = 3860
# Where the system unit keeps its state (systemd StateDirectory=signet-cluster).
SYSTEM_STATE_DIR = "/var/lib/signet-cluster"


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@attrs.frozen(kw_only=True)
class Settings:
    node_id: str | None = attrs.field(
        default=None,
        metadata=_doc("Stable node id; when unset, the host's short name (kept in the state DB)."),
    )
    host: str = attrs.field(default="127.0.0.1", metadata=_doc("Address the sidecar listens on."))
    port: int = attrs.field(default=DEFAULT_PORT, metadata=_doc("Port the sidecar listens on."))
    advertise_url: str | None = attrs.field(
        default=None,
        metadata=_doc("URL other sidecars use to reach this one (default http://HOST:PORT)."),
    )
    coordinator: bool = attrs.field(
        default=False, metadata=_doc("Accept heartbeats and keep the cluster registry.")
    )
    coordinators: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_doc("Coordinator sidecar URLs to heartbeat to (comma-separated in the env)."),
    )
    registry_backend: str = attrs.field(
        default="coordinator",
        metadata=_doc(
            "Where the registry lives: coordinator (heartbeats to coordinator sidecars) or "
            "etcd (leases, claims and watches in etcd; no coordinator)."
        ),
    )
    etcd_endpoints: tuple[str, ...] = attrs.field(
        default=("http://127.0.0.1:2379",),
        metadata=_doc("etcd (>= 3.4) client URLs, tried in order (comma-separated in the env)."),
    )
    etcd_prefix: str = attrs.field(
        default="/signet-cluster/",
        metadata=_doc("Key prefix of this cluster's records in etcd (one prefix per cluster)."),
    )
    daemon_url: str = attrs.field(
        default="http://127.0.0.1:3850", metadata=_doc("The local Signet daemon (loopback).")
    )
    workspace: str | None = attrs.field(
        default=None,
        metadata=_doc("The daemon's workspace (default: $SIGNET_PATH, else ~/.agents)."),
    )
    state_dir: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "Where the sidecar keeps its state DB (default /var/lib/signet-cluster when it "
            "exists and is writable, as the system unit uses, else "
            "$XDG_STATE_HOME/signet-cluster)."
        ),
    )
    heartbeat_interval: float = attrs.field(
        default=1.0, metadata=_doc("Seconds between heartbeats to each coordinator.")
    )
    peer_ttl: float | None = attrs.field(
        default=None,
        metadata=_doc("Seconds without a heartbeat before a node is down (default 5 x interval)."),
    )
    # Long on purpose: once a node is reaped its agents are unclaimed, and writes for them
    # would be served by whichever daemon receives them (a second owner).
    reap_after: float = attrs.field(
        default=86400.0,
        metadata=_doc(
            "Seconds a discovered (not joined) node stays listed as down before removal."
        ),
    )
    roster_refresh: float = attrs.field(
        default=10.0, metadata=_doc("Seconds between re-reads of the daemon's health and roster.")
    )
    daemon_health_interval: float = attrs.field(
        default=0.5,
        metadata=_doc(
            "Seconds between quick /health checks of the local daemon (a dead daemon shows "
            "within about this long, and at once when a request to it fails)."
        ),
    )
    peer_timeout: float = attrs.field(
        default=2.0, metadata=_doc("Timeout in seconds for heartbeats and admin calls to peers.")
    )
    daemon_timeout: float = attrs.field(
        default=10.0, metadata=_doc("Timeout in seconds for calls to the local daemon.")
    )
    # -- routing and federation (sidecar/pipeline/routes.py, sidecar/federation/fanout.py) -----------
    forward_timeout: float = attrs.field(
        default=10.0,
        metadata=_doc("Seconds a request routed to the agent's owner (another sidecar) may take."),
    )
    stream_idle_timeout: float = attrs.field(
        default=300.0,
        metadata=_doc(
            "Seconds a passed-through request may wait for the next byte from the daemon "
            "(event streams stay open longer than daemon_timeout)."
        ),
    )
    # Deadlines follow the daemons they wait for (sidecar/federation/deadlines.py): each
    # contributor gets its learned budget, and at least the owner's own time plus the grace.
    fanout_ceiling: float = attrs.field(
        default=2.0,
        metadata=_doc(
            "Longest a contributing node is waited for in a federated read, in seconds (the "
            "cap on its learned budget; raise it across a WAN)."
        ),
    )
    fanout_grace: float = attrs.field(
        default=0.050,
        metadata=_doc(
            "Seconds contributors get past the owner's own leg, and added to each node's "
            "learned budget."
        ),
    )
    fanout_headroom: float = attrs.field(
        default=3.0,
        metadata=_doc(
            "A node's budget is this many times its recent p99 contribution latency (plus the "
            "grace, at most the ceiling)."
        ),
    )
    breaker_failures: int = attrs.field(
        default=3,
        metadata=_doc("Failed contributions in a row after which a node is skipped for a while."),
    )
    breaker_cooldown: float = attrs.field(
        default=5.0,
        metadata=_doc("Seconds a failing node is skipped before one request probes it again."),
    )
    spool_max_bytes: int = attrs.field(
        default=64 * 1024 * 1024,
        metadata=_doc(
            "Bytes of writes the spool keeps for unreachable owners; past it new ones get 503."
        ),
    )
    spool_max_age: float = attrs.field(
        default=86400.0,
        metadata=_doc(
            "Seconds the oldest spooled write may wait; past it new writes get 503 (none dropped)."
        ),
    )
    shutdown_timeout: float = attrs.field(
        default=8.0,
        metadata=_doc(
            "Seconds in-flight requests get to finish on SIGTERM (unit stop timeouts exceed it)."
        ),
    )
    log_level: str = attrs.field(default="info", metadata=_doc("debug, info, warning or error."))
    log_format: str = attrs.field(
        default="auto", metadata=_doc("auto (console on a terminal, else JSON), console or json.")
    )
    # -- security (see sidecar/security/auth.py); secrets live in files and are never printed --------
    secret_file: str | None = attrs.field(
        default=None,
        metadata=_doc("File holding the cluster secret (`signet-cluster keygen --out FILE`)."),
    )
    keyring_file: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "Keyring file (several keys, one primary) for rotation; replaces secret_file."
        ),
    )
    admin_public_keys: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_doc(
            "Public keys (`ed25519:...`) of the operator's admin key: only requests signed "
            "with one may join, remove, adopt, promote or change coordinators."
        ),
    )
    coordinator_public_keys: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_doc(
            "Public keys (`ed25519:...`) of the coordinator key: only a sidecar signing with "
            "one is listed as a coordinator, and heartbeat replies must be signed with one."
        ),
    )
    coordinator_key_file: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "Private coordinator key (`signet-cluster keygen --role coordinator`), on the "
            "sidecars that are or may become coordinators."
        ),
    )
    viewer_token_file: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "File with a bearer token (>= 16 chars) that lets a remote caller read status, "
            "routes, resolve, explain, /cluster and /metrics, and change nothing."
        ),
    )
    auth_skew: float = attrs.field(
        default=30.0,
        metadata=_doc("Seconds a signed request's timestamp may differ from this node's clock."),
    )
    replay_cache_size: int = attrs.field(
        default=100_000, metadata=_doc("Nonces remembered to refuse replayed requests (bounded).")
    )
    allow_unsigned_loopback_admin: bool = attrs.field(
        default=False,
        metadata=_doc(
            "Let unsigned callers on loopback join, remove, adopt (off: they must sign)."
        ),
    )
    daemon_auth_mode: str = attrs.field(
        default="auto",
        metadata=_doc(
            "The daemon's auth.mode (auto reads agent.yaml): in team mode a bearer token from "
            "another host is passed to the daemon to judge."
        ),
    )
    auth_host_names: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_doc(
            "Extra HOST:PORT names this sidecar is reached by (a DNS alias, a port forward): a "
            "signed request is accepted only when its Host names this sidecar (the advertised "
            "URL, the address it arrived at, loopback names for local callers, or these)."
        ),
    )
    metrics_token_file: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "File with a bearer token (>= 16 chars) that lets a remote Prometheus scrape /metrics."
        ),
    )
    tls_cert_file: str | None = attrs.field(
        default=None, metadata=_doc("PEM certificate (chain) of this node: serve HTTPS.")
    )
    tls_key_file: str | None = attrs.field(
        default=None, metadata=_doc("PEM private key of tls_cert_file.")
    )
    tls_ca_file: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "CA that issues node certificates: verify peers and client certificates (mTLS)."
        ),
    )
    max_body_bytes: int = attrs.field(
        default=1024 * 1024,
        metadata=_doc("Largest request body the sidecar reads (cluster messages, memory calls)."),
    )
    max_upload_bytes: int = attrs.field(
        default=64 * 1024 * 1024,
        metadata=_doc("Largest body passed through to the daemon (document uploads)."),
    )
    max_header_bytes: int = attrs.field(
        default=8190, metadata=_doc("Longest request line or header field accepted.")
    )
    idle_timeout: float = attrs.field(
        default=75.0,
        metadata=_doc("Seconds a connection may idle or take to send its request headers."),
    )
    body_timeout: float = attrs.field(
        default=30.0, metadata=_doc("Seconds a client has to send a body the sidecar reads.")
    )
    min_upload_rate: int = attrs.field(
        default=1024,
        metadata=_doc(
            "Bytes per second a body passed through to the daemon must average after its "
            "first body_timeout seconds (408 and the upload cut below it)."
        ),
    )
    max_connections: int = attrs.field(
        default=4096,
        metadata=_doc(
            "Open client connections served normally (lowered at start to fit the file "
            "descriptor limit); past it only probes and cluster calls are served, others 503."
        ),
    )
    max_connections_per_source: int = attrs.field(
        default=512,
        metadata=_doc("Open connections one client address may hold before it gets 503s."),
    )

    @property
    def ttl(self) -> float:
        return self.peer_ttl if self.peer_ttl is not None else 5 * self.heartbeat_interval

    @property
    def url(self) -> str:
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def workspace_path(self) -> Path:
        if self.workspace:
            return Path(self.workspace).expanduser()
        env = os.environ.get("SIGNET_PATH")
        return Path(env).expanduser() if env else Path.home() / ".agents"

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        # The system unit's directory wins when this user may write it: foreground `serve`
        # on that host then uses the same state DB (node id, spool) as the unit does.
        system = Path(SYSTEM_STATE_DIR)
        if system.is_dir() and os.access(system, os.W_OK | os.X_OK):
            return system
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "signet-cluster"

    @property
    def binds_loopback_only(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


FIELDS: dict[str, attrs.Attribute[Any]] = {f.name: f for f in attrs.fields(Settings)}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _base_type(field: attrs.Attribute[Any]) -> str:
    text = str(field.type)
    for name in ("tuple", "bool", "int", "float", "str"):
        if text.startswith(name):
            return name
    raise AssertionError(f"unsupported settings type {text}")


def _optional(field: attrs.Attribute[Any]) -> bool:
    return "None" in str(field.type)


def _coerce(name: str, value: Any, *, from_text: bool) -> tuple[Any, str | None]:
    """Convert one raw value to the field's type; returns (value, problem)."""
    field = FIELDS[name]
    kind = _base_type(field)
    if value is None or (from_text and value == "" and _optional(field)):
        return (None, None) if _optional(field) else (None, f"{name}: a value is required")
    if kind == "tuple":
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            items = list(value)
        else:
            return None, f"{name}: expected a list of strings"
        return tuple(items), None
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True, None
            if lowered in ("0", "false", "no", "off"):
                return False, None
        return None, f"{name}: expected true or false, got {value!r}"
    if kind in ("int", "float"):
        if isinstance(value, bool):
            return None, f"{name}: expected a number, got {value!r}"
        try:
            number = int(value) if kind == "int" else float(value)
        except (TypeError, ValueError, OverflowError):  # int(float("inf")) overflows
            return (
                None,
                f"{name}: expected {'an integer' if kind == 'int' else 'a number'}, got {value!r}",
            )
        if kind == "int" and isinstance(value, float) and not value.is_integer():
            return None, f"{name}: expected an integer, got {value!r}"
        if not math.isfinite(number):
            # float("nan") parses, and a NaN passes every `<= 0` check in validate().
            return None, f"{name}: expected a finite number, got {value!r}"
        return number, None
    if not isinstance(value, str):
        return None, f"{name}: expected a string, got {value!r}"
    return value, None


def _flatten_toml(data: Mapping[str, Any], problems: list[str], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            # `[registry] backend = ...` is the same setting as `registry_backend = ...`.
            for sub, subvalue in value.items():
                flat[f"{key}_{sub}".replace("-", "_")] = subvalue
        else:
            flat[key.replace("-", "_")] = value
    for key in list(flat):
        if key not in FIELDS:
            close = difflib.get_close_matches(key, list(FIELDS), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{source}: unknown setting {key!r}{hint}")
            del flat[key]
    return flat


def read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        problems.append(f"config file {path} does not exist")
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"config file {path}: {exc}")
        return {}
    return _flatten_toml(data, problems, str(path))


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers and validate. Raises ConfigError listing every problem."""
    checked = collect_settings(config_file, env, overrides)
    if checked.problems:
        raise ConfigError(checked.problems)
    return checked.settings


@attrs.frozen(kw_only=True)
class CheckedSettings:
    """Every layer merged: the settings from the values that parsed, every problem (one
    round), and where each setting came from (default, file, env, flag)."""

    settings: Settings
    problems: list[str]
    sources: dict[str, str]


def collect_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CheckedSettings:
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    sources = dict.fromkeys(FIELDS, "default")

    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        for name, raw in read_toml(config_file.expanduser(), problems).items():
            value, problem = _coerce(name, raw, from_text=False)
            if problem:
                problems.append(f"{config_file}: {problem}")
            else:
                values[name] = value
                sources[name] = f"file {config_file}"
    for name in FIELDS:
        if env_name(name) in env:
            value, problem = _coerce(name, env[env_name(name)], from_text=True)
            if problem:
                problems.append(f"{env_name(name)}: {problem}")
            else:
                values[name] = value
                sources[name] = f"env {env_name(name)}"
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in FIELDS:
            problems.append(f"unknown setting {name!r}")
            continue
        value, problem = _coerce(name, raw, from_text=isinstance(raw, str))
        if problem:
            problems.append(problem)
        else:
            values[name] = value
            sources[name] = "flag --" + name.replace("_", "-")
    # One round: the values that parsed are validated too, so every problem is listed at
    # once (not some only after the others are fixed).
    settings = Settings(**values)
    problems += validate(settings)
    return CheckedSettings(settings=settings, problems=problems, sources=sources)


_URL = re.compile(r"^https?://[^\s/]+(:\d+)?/?$")


def validate(settings: Settings) -> list[str]:
    """Every semantic problem with a complete settings object."""
    problems: list[str] = []
    if not 0 <= settings.port <= 65535:
        problems.append(f"port: must be 0-65535, got {settings.port}")
    if settings.node_id is not None and not re.match(
        r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", settings.node_id
    ):
        problems.append(
            "node_id: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    for name in ("advertise_url", "daemon_url"):
        value = getattr(settings, name)
        if value is not None and not _URL.match(value):
            problems.append(f"{name}: must be an http(s)://host:port URL, got {value!r}")
    for url in settings.coordinators:
        if not _URL.match(url):
            problems.append(f"coordinators: {url!r} is not an http(s)://host:port URL")
    problems.extend(_registry_problems(settings))
    positive = (
        "heartbeat_interval",
        "reap_after",
        "roster_refresh",
        "daemon_health_interval",
        "peer_timeout",
        "daemon_timeout",
        "forward_timeout",
        "stream_idle_timeout",
        "fanout_ceiling",
        "fanout_grace",
        "breaker_cooldown",
        "spool_max_bytes",
        "spool_max_age",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            problems.append(f"{name}: must be greater than 0")
    if settings.shutdown_timeout < 0:
        problems.append("shutdown_timeout: must not be negative")
    if settings.fanout_headroom < 1:
        problems.append("fanout_headroom: must be at least 1")
    if settings.fanout_ceiling > 60:
        problems.append("fanout_ceiling: at most 60 seconds")
    if settings.fanout_grace >= settings.fanout_ceiling:
        problems.append("fanout_grace: must be shorter than fanout_ceiling")
    if settings.breaker_failures < 1:
        problems.append("breaker_failures: must be at least 1")
    if settings.peer_ttl is not None and settings.peer_ttl <= settings.heartbeat_interval:
        problems.append("peer_ttl: must be longer than heartbeat_interval")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        problems.append(
            f"log_level: one of debug, info, warning, error; got {settings.log_level!r}"
        )
    if settings.log_format not in ("auto", "console", "json"):
        problems.append(f"log_format: one of auto, console, json; got {settings.log_format!r}")
    problems.extend(_security_problems(settings))
    return problems


def _security_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    if settings.secret_file and settings.keyring_file:
        problems.append("secret_file and keyring_file: set one of them, not both")
    if settings.auth_skew <= 0:
        problems.append("auth_skew: must be greater than 0")
    if settings.replay_cache_size < 100:
        problems.append("replay_cache_size: must be at least 100")
    if settings.daemon_auth_mode not in ("auto", "local", "hybrid", "team"):
        problems.append(
            f"daemon_auth_mode: one of auto, local, hybrid, team; got {settings.daemon_auth_mode!r}"
        )
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        problems.append("tls_cert_file and tls_key_file: set both or neither")
    if settings.max_body_bytes < 1024:
        problems.append("max_body_bytes: must be at least 1024")
    if settings.max_upload_bytes < settings.max_body_bytes:
        problems.append("max_upload_bytes: must be at least max_body_bytes")
    if settings.max_header_bytes < 1024:
        problems.append("max_header_bytes: must be at least 1024")
    for name in ("idle_timeout", "body_timeout"):
        if getattr(settings, name) <= 0:
            problems.append(f"{name}: must be greater than 0")
    for name in ("min_upload_rate", "max_connections", "max_connections_per_source"):
        if getattr(settings, name) < 1:
            problems.append(f"{name}: must be at least 1")
    problem = unsafe_bind_problem(settings)
    if problem:
        problems.append(problem)
    return problems


def unsafe_bind_problem(settings: Settings) -> str | None:
    """Why this listener would let anyone in: reachable from other machines while nobody
    could be authenticated (no cluster key, no full mTLS). None when it is safe."""
    secured = bool(settings.secret_file or settings.keyring_file) or bool(
        settings.tls_cert_file and settings.tls_key_file and settings.tls_ca_file
    )
    if settings.binds_loopback_only or secured:
        return None
    return (
        f"host: {settings.host!r} is reachable from other machines but no cluster key or "
        "mTLS is configured, so anyone could read and write memories through this sidecar; "
        "set secret_file or keyring_file (`signet-cluster keygen --out FILE`, on every node), "
        "or tls_cert_file + tls_key_file + tls_ca_file, or listen on 127.0.0.1"
    )


def _registry_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    if settings.registry_backend not in ("coordinator", "etcd"):
        problems.append(
            f"registry_backend: one of coordinator, etcd; got {settings.registry_backend!r}"
        )
    for url in settings.etcd_endpoints:
        if not _URL.match(url):
            problems.append(f"etcd_endpoints: {url!r} is not an http(s)://host:port URL")
    prefix = settings.etcd_prefix
    if not prefix.endswith("/") or len(prefix) > 200 or any(c.isspace() for c in prefix):
        problems.append(
            f"etcd_prefix: up to 200 characters without spaces, ending in '/'; got {prefix!r}"
        )
    if settings.registry_backend == "etcd":
        if not settings.etcd_endpoints:
            problems.append("etcd_endpoints: registry_backend = etcd needs at least one URL")
        # With etcd nobody heartbeats to a coordinator; a setting that would be ignored
        # silently is refused instead.
        if settings.coordinator or settings.coordinators:
            problems.append(
                "registry_backend = etcd replaces coordinators: unset coordinator/coordinators"
            )
    return problems


def describe(settings: Settings) -> dict[str, Any]:
    """Settings as plain data for `check-config` (no secrets are ever included)."""
    return {name: getattr(settings, name) for name in FIELDS}


def effective(settings: Settings) -> dict[str, Any]:
    """Each setting as the sidecar will use it: an unset one shows what it falls back to
    (node_id is left to the caller: it depends on the state DB and the host name)."""
    values = describe(settings)
    values.update(
        advertise_url=settings.url,
        workspace=str(settings.workspace_path),
        state_dir=str(settings.state_path),
        peer_ttl=settings.ttl,
    )
    return values


def toml_value(value: Any) -> str:
    """A value written as TOML (strings as basic strings: JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
