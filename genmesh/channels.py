"""Client channels between services: keepalive, message limits, and the retry policy of idempotent calls."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc

from genmesh import tracing
from genmesh.bearer import bearer_interceptors
from genmesh.server import MAX_MESSAGE_BYTES
from genmesh.tls import ClientTLS
from genmesh.tracing.client import TracedChannel

# Idempotent unary methods are retried by gRPC itself on UNAVAILABLE: up to 5 attempts (gRPC's ceiling), with
# exponential backoff and full jitter (each wait is uniform in [0, min(0.02 s * 2^n, 0.25 s)]), inside the
# call's deadline. Retry throttling (a token bucket per channel: a failed attempt costs 1 token, a success
# earns ``tokenRatio``; no retries while half of ``maxTokens`` or less is left) turns retries off when a
# service fails more calls than it serves, so that retries never multiply the load on a service that is down
# (about 50 wasted attempts, then one attempt per call). The bucket is deep so that a run of bad luck at a
# 30 % failure rate does not drain it (10 tokens did, for about 2 % of the calls).
# Streaming and non-idempotent calls (Generate, Invoke, InvokeMany, Upsert, Delete, Abort) are not listed:
# the gateway retries Generate itself, only before its first token, and idempotent tool calls only.
RETRY_SERVICE_CONFIG: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [
                {"service": "genmesh.v1.RetrievalService", "method": "Query"},
                {"service": "genmesh.v1.RetrievalService", "method": "GetStats"},
                {"service": "genmesh.v1.ToolsService", "method": "ListTools"},
                {"service": "genmesh.v1.InferenceService", "method": "GetModelInfo"},
                {"service": "genmesh.v1.InferenceService", "method": "GetLoad"},
            ],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.02s",
                "maxBackoff": "0.25s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 100, "tokenRatio": 1.0},
}


def balanced_service_config(service: str) -> dict[str, Any]:
    """The retry policy, plus round_robin over every address the target resolves to, skipping addresses
    whose grpc.health.v1 status for ``service`` is not SERVING (gRPC's client-side health checking)."""
    return {
        **RETRY_SERVICE_CONFIG,
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": service},
    }


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 keepalive pings of a channel: a ping unanswered for ``timeout_ms`` fails its calls UNAVAILABLE."""

    time_ms: int = 30_000
    timeout_ms: int = 10_000


FAST_KEEPALIVE = Keepalive(2_000, 1_000)
"""For channels whose calls must fail within about 3 s of a link going dead. Only for servers that send data
at least every 2 s on the connection (an inference replica's WatchLoad stream does), or the server counts the
pings as abuse (it wants 5 s between pings without data)."""


def channel_options(
    service_config: dict[str, Any] | None = None, keepalive: Keepalive = Keepalive()
) -> list[tuple[str, Any]]:
    """Options shared by every client channel."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive.time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config or RETRY_SERVICE_CONFIG)),
        # Reconnect quickly after an upstream restarts instead of backing off for minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]


def open_channel(
    target: str,
    balanced_service: str = "",
    keepalive: Keepalive = Keepalive(),
    tls: ClientTLS | None = None,
    api_key: str = "",
) -> grpc.aio.Channel:
    """A channel to a mesh service at ``target`` (``host:port`` or any gRPC target): plaintext, or TLS with
    ``tls`` (its ``server_name``, when set, is the name the server's certificate is checked for). With
    ``balanced_service``, calls go round-robin to the target's healthy addresses. With ``api_key``, every call
    sends it as ``authorization: Bearer <key>`` (a gateway that requires keys). While this process traces
    (genmesh.tracing), calls made inside a trace get a CLIENT span and send its ``traceparent``."""
    config = balanced_service_config(balanced_service) if balanced_service else None
    options = channel_options(config, keepalive)
    interceptors = bearer_interceptors(api_key) if api_key else None
    if tls is None:
        channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    else:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.aio.secure_channel(target, tls.credentials(), options=options, interceptors=interceptors)
    return TracedChannel(channel) if tracing.enabled() else channel
