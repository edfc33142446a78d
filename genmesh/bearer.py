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


class _BearerKey:
    """Adds the key to the metadata of a call (after any metadata the call already has)."""

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("an API key must not be empty")
        self._metadata = bearer_metadata(api_key)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_BearerKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_BearerKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_BearerKey, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_BearerKey, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def bearer_interceptors(api_key: str) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that send ``api_key`` on every call of a channel: one per kind of call, because grpc.aio
    files an interceptor under the first kind it implements only (one object for all four misses the streams)."""
    return [kind(api_key) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
