"""The gateway's API-key check: every RPC but health and reflection needs ``authorization: Bearer <key>``
whose key holds the scope of the RPC's service.

It runs inside genmesh.interceptor.ServiceInterceptor (listed after it), so its errors become statuses with
their reasons and the call's log line like any other error. Each refusal writes an audit line (rate-limited)
naming the key by its display name or ``apiKeys/{id}``, never by its secret.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.auth.audit import AUDIT, AuditLog
from gateway.auth.caller import CALLER, Caller, Scope
from gateway.auth.keys import KeyRefused
from gateway.auth.keystore import KeyStore
from genmesh.errors import PermissionDenied, Reason, Unauthenticated
from genmesh.interceptor import Streaming, Unary, rewrap

#: The scope each service's RPCs need; any other method needs ``admin``.
SCOPE_OF_SERVICE: dict[str, Scope] = {
    "/genmesh.v1.GatewayService/": Scope.GENERATE,
    "/genmesh.v1.ModelService/": Scope.GENERATE,
    "/genmesh.v1.EmbeddingService/": Scope.GENERATE,
    "/genmesh.v1.JobService/": Scope.JOBS,
    "/genmesh.v1.ApiKeyService/": Scope.ADMIN,
    "/genmesh.v1.MeshService/": Scope.ADMIN,
}
#: Methods anyone may call: probes and service discovery.
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
MISSING_MESSAGE = (
    "missing API key: send the metadata 'authorization: Bearer <key>' (an admin creates keys with "
    "`genmesh keys create`)"
)
_BEARER = "bearer "


def scope_needed(method: str) -> Scope | None:
    """The scope an RPC needs; None for the open ones."""
    if method.startswith(OPEN_PREFIXES):
        return None
    for prefix, scope in SCOPE_OF_SERVICE.items():
        if method.startswith(prefix):
            return scope
    return Scope.ADMIN


def bearer_secret(context: grpc.aio.ServicerContext) -> str:
    """The key of the call's ``authorization: Bearer <key>`` metadata (scheme in any case)."""
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    if not values:
        raise Unauthenticated(MISSING_MESSAGE, reason=Reason.API_KEY_MISSING)
    value = values[0] if isinstance(values[0], str) else ""
    if len(values) > 1 or not value[: len(_BEARER)].lower() == _BEARER or not value[len(_BEARER) :].strip():
        raise Unauthenticated(
            "the authorization metadata must be one 'Bearer <key>' value", reason=Reason.API_KEY_MISSING
        )
    return value[len(_BEARER) :].strip()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Sets gateway.auth.caller.CALLER for each RPC it lets through; refuses the others."""

    def __init__(self, store: KeyStore, audit: AuditLog = AUDIT) -> None:
        self._store = store
        self._audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        scope = scope_needed(method)
        if handler is None or scope is None:
            return handler
        return rewrap(
            handler,
            lambda inner, _unary_request: self._unary(method, scope, inner),
            lambda inner, _unary_request: self._stream(method, scope, inner),
        )

    async def authorize(self, method: str, scope: Scope, context: grpc.aio.ServicerContext) -> Caller:
        """The caller of this RPC; Unauthenticated or PermissionDenied (each audited) when there is none."""
        label = "-"
        try:
            caller = await self._store.authenticate(bearer_secret(context))
            label = caller.display_name
            if scope not in caller.scopes:
                raise PermissionDenied(
                    f"API key {caller.display_name!r} lacks the scope {scope.value!r} that {method} needs; ask an "
                    "admin to add it (UpdateApiKey) or use a key that has it",
                    reason=Reason.SCOPE_MISSING,
                    metadata={"scope": scope.value, "key": caller.key_name},
                )
            return caller
        except (Unauthenticated, PermissionDenied) as error:
            if isinstance(error, KeyRefused):
                label = error.key_label
            self._audit.event("auth_failed", key=label, reason=error.reason, method=method)
            raise

    def _unary(self, method: str, scope: Scope, inner: Unary) -> Unary:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = CALLER.set(await self.authorize(method, scope, context))
            try:
                return await inner(request, context)
            finally:
                CALLER.reset(token)

        return handle

    def _stream(self, method: str, scope: Scope, inner: Streaming) -> Streaming | Unary:
        if not inspect.isasyncgenfunction(inner):
            return self._unary(method, scope, inner)  # type: ignore[arg-type]  # streams with context.write

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = CALLER.set(await self.authorize(method, scope, context))
            try:
                async for response in inner(request, context):
                    yield response
            finally:
                try:
                    CALLER.reset(token)
                except ValueError:  # a stream closed from another context (its task is gone)
                    CALLER.set(None)

        return handle
