"""The error tree. Library code raises these; the sidecar middleware turns them into JSON
responses with the right status, and only the CLI turns them into exit codes."""

from __future__ import annotations


class ClusterError(Exception):
    """Base of every error signet-cluster raises on purpose."""

    status = 500
    code = "cluster_error"

    def __init__(self, message: str, *, details: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


class ConfigError(ClusterError):
    """Settings that cannot be used; `problems` lists every one of them."""

    status = 500
    code = "config_error"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems), details=problems)


class ValidationFailed(ClusterError):
    """A request whose body or parameters do not fit the protocol (one line per problem)."""

    status = 400
    code = "invalid_request"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid request: " + "; ".join(problems), details=problems)


class ProtocolMismatch(ClusterError):
    """No protocol version both sides speak."""

    status = 409
    code = "protocol_mismatch"


class NodeIdInUse(ClusterError):
    """Another live sidecar heartbeats with this node id (a copied state dir or config)."""

    status = 409
    code = "node_id_in_use"


class WrongNode(ClusterError):
    """A message addressed to one node id reached a sidecar with another (same URL)."""

    status = 409
    code = "wrong_node"


class NotFound(ClusterError):
    status = 404
    code = "not_found"


class Gone(ClusterError):
    """The node was removed from the cluster; it should stop heartbeating here."""

    status = 410
    code = "removed"


class NotCoordinator(ClusterError):
    """A coordinator-only operation was sent to a sidecar that is not one."""

    status = 421
    code = "not_coordinator"


class PeerUnreachable(ClusterError):
    """A cross-node call failed: connection refused, timeout or an unusable answer."""

    status = 502
    code = "peer_unreachable"


class DaemonUnavailable(ClusterError):
    """The local Signet daemon does not answer."""

    status = 503
    code = "daemon_unavailable"


class Forbidden(ClusterError):
    status = 403
    code = "forbidden"
