"""TLS for the sidecar listener and its client, with mutual authentication against a CA.

- Listener: the node's certificate and key; when a CA is configured, client certificates are
  requested and verified (`CERT_OPTIONAL`: a client with no certificate may still connect and
  is then treated as unsigned; a certificate the CA did not issue fails the handshake).
- Client: verifies peers against the CA (hostname checked) and presents the node's certificate.
- Identity: a verified certificate names its node by the subject common name, else the first
  DNS subject-alternative name. A signed request must then come from that same node. Its
  subject OU may grant a role (`certificate_role`): `signet-cluster-admin`,
  `signet-cluster-coordinator` or `signet-cluster-viewer`; any other certificate is a node.
- Reload without restart: `reload_if_changed()` re-reads the three files when one changes (the
  sidecar checks once a second and on SIGHUP). New handshakes use the new files; open
  connections keep theirs. The listener switches contexts per handshake (SNI callback), so a
  replaced CA stops trusting the old one at once.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

import attrs

from signet_cluster.errors import ConfigError


def _stamp(path: str | None) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        info = Path(path).expanduser().stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _build_server(cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(Path(cert).expanduser()), str(Path(key).expanduser()))
    if ca:
        ctx.load_verify_locations(cafile=str(Path(ca).expanduser()))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _build_client(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(Path(ca).expanduser()) if ca else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        ctx.load_cert_chain(str(Path(cert).expanduser()), str(Path(key).expanduser()))
    return ctx


def certificate_identity(peercert: dict[str, Any] | None) -> str | None:
    """The node id a verified peer certificate names: subject CN, else first DNS SAN."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and value:
                return str(value)
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS" and value:
            return str(value)
    return None


# Subject organizational units that give a certificate a role beyond `node`.
CERTIFICATE_ROLES = {
    "signet-cluster-admin": "admin",
    "signet-cluster-coordinator": "coordinator",
    "signet-cluster-viewer": "viewer",
}


def certificate_role(
    peercert: dict[str, Any] | None,
) -> Literal["admin", "coordinator", "viewer", "node"]:
    """The role a verified certificate grants: its subject OU `signet-cluster-admin`,
    `-coordinator` or `-viewer`, else `node` (the CA decides, by what it signs)."""
    found: set[str] = set()
    for rdn in (peercert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "organizationalUnitName" and value in CERTIFICATE_ROLES:
                found.add(CERTIFICATE_ROLES[value])
    for role in ("admin", "coordinator", "viewer"):
        if role in found:
            return role
    return "node"


@attrs.define
class TlsManager:
    cert_file: str | None
    key_file: str | None
    ca_file: str | None
    _server: ssl.SSLContext | None = None
    _client: ssl.SSLContext | None = None
    _outer: ssl.SSLContext | None = None
    _stamps: tuple[Any, ...] = ()

    @property
    def listener_enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def verifies_clients(self) -> bool:
        return self.listener_enabled and bool(self.ca_file)

    @property
    def enabled(self) -> bool:
        return self.listener_enabled or bool(self.ca_file)

    def _current_stamps(self) -> tuple[Any, ...]:
        return (_stamp(self.cert_file), _stamp(self.key_file), _stamp(self.ca_file))

    def load(self) -> None:
        """Build both contexts from the files; ConfigError with the reason when they fail."""
        stamps = self._current_stamps()
        try:
            server = (
                _build_server(self.cert_file, self.key_file, self.ca_file)
                if self.cert_file and self.key_file
                else None
            )
            client = _build_client(self.cert_file, self.key_file, self.ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError([f"tls: cannot load certificate files: {exc}"]) from None
        self._server, self._client, self._stamps = server, client, stamps

    def reload_if_changed(self, force: bool = False) -> bool:
        """Re-read the files if one changed; True when new contexts are in use. A broken
        file raises ConfigError once per change and keeps the previous contexts."""
        if not self.enabled:
            return False
        stamps = self._current_stamps()
        if not force and stamps == self._stamps:
            return False
        # Remembered before loading: a broken file is reported once, not every second.
        self._stamps = stamps
        self.load()
        return True

    @property
    def client_context(self) -> ssl.SSLContext | None:
        return self._client if self.enabled else None

    def server_context(self) -> ssl.SSLContext | None:
        """The context handed to the listener once; every handshake switches to the latest
        loaded one, so reloads take effect without rebinding the socket."""
        if self._server is None:
            return None
        if self._outer is None:
            outer = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            outer.minimum_version = ssl.TLSVersion.TLSv1_2
            assert self.cert_file and self.key_file
            outer.load_cert_chain(
                str(Path(self.cert_file).expanduser()), str(Path(self.key_file).expanduser())
            )
            if self.ca_file:
                # The verify mode stays the outer context's; the CA store is the inner one's.
                outer.verify_mode = ssl.CERT_OPTIONAL
                outer.load_verify_locations(cafile=str(Path(self.ca_file).expanduser()))
            outer.sni_callback = self._switch
            self._outer = outer
        return self._outer

    def _switch(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._server is not None:
            sslobj.context = self._server
