"""How the `genmesh` commands tell a failed call: the code, the message once, each bad field, and a hint for the
failures a user can act on (no API key, nothing listening at the target, a service behind the gateway down)."""

from __future__ import annotations

from typing import Any

import grpc

from genmesh.cli.client_flags import API_KEY_ENV
from genmesh.status import field_violations

#: What grpc's message says when no connection could be made (refused, no such host, TLS handshake failed).
_UNREACHED = ("failed to connect", "connection refused", "dns resolution failed", "connect failed", "handshake")


def unreached(error: grpc.aio.AioRpcError) -> bool:
    """Whether the call failed because nothing answered at its target (as opposed to the server refusing it)."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    text = f"{error.details()} {error.debug_error_string()}".lower()
    return any(marker in text for marker in _UNREACHED)


def describe_rpc_error(error: grpc.aio.AioRpcError, target: str = "", what: str = "gateway") -> str:
    """One readable paragraph for a failed call to the ``what`` at ``target``: code, message and each bad field
    (the message is left out when it only repeats the fields), and a hint where one helps."""
    violations = field_violations(error)
    details = error.details() or ""
    joined = "; ".join(f"{v.field}: {v.description}" for v in violations)
    code = error.code().name
    if violations and (details == joined or all(f"{v.field}: {v.description}" in details for v in violations)):
        lines = [f"error: {code}: {'a bad field' if len(violations) == 1 else f'{len(violations)} bad fields'}:"]
    else:
        lines = [f"error: {code}: {details}"]
    lines += [f"  {v.field}: {v.description}" for v in violations]
    where = f" at {target}" if target else ""
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(f"  give the gateway's API key with --api-key KEY or the environment variable {API_KEY_ENV}")
    elif unreached(error):
        lines.append(
            f"  nothing answered{where}: is the mesh up (`genmesh up`)? Otherwise give the {what}'s address "
            "with --target HOST:PORT (and --tls if it serves TLS)"
        )
    elif error.code() == grpc.StatusCode.UNAVAILABLE and what == "gateway":
        status = f"genmesh status --target {target}" if target else "genmesh status"
        lines.append(
            f"  the gateway{where} answered, but a service it needs is down or draining: `{status}` shows which"
        )
    elif error.code() == grpc.StatusCode.UNAVAILABLE:
        lines.append(f"  the {what}{where} answered but is not ready (starting or stopping): try again shortly")
    return "\n".join(lines)


def error_json(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """A failed call as JSON: ``{"error": {"code", "message", "fieldViolations": [{"field", "description"}]}}``."""
    body: dict[str, Any] = {"code": error.code().name, "message": error.details() or ""}
    violations = field_violations(error)
    if violations:
        body["fieldViolations"] = [{"field": v.field, "description": v.description} for v in violations]
    return {"error": body}
