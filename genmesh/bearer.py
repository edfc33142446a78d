"""A client-side interceptor that sends an API key as ``authorization: Bearer <key>`` on every call of a channel.

gRPC's own ``access_token_call_credentials`` would do the same, but only on TLS channels; a plaintext channel to a
gateway on loopback needs the key too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

AUTHORIZATION_HEADER = "authorization"


def bearer_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``api_key``."""
    return ((AUTHORIZATION_HEADER, f"Bearer {api_key}"),)


class BearerKey(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds the key to the metadata of every call (after any metadata the call already has)."""

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("an API key must not be empty")
        self._metadata = bearer_metadata(api_key)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)
