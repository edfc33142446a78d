"""Client channels between services: keepalive, message limits, and the retry policy of idempotent calls."""

from __future__ import annotations

import json
from typing import Any

import grpc

from genmesh.server import MAX_MESSAGE_BYTES

# Idempotent unary methods are retried by gRPC itself on UNAVAILABLE, with exponential backoff.
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
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}


def channel_options() -> list[tuple[str, Any]]:
    """Options shared by every client channel."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
        # Reconnect quickly after an upstream restarts instead of backing off for minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to a mesh service at ``host:port``."""
    return grpc.aio.insecure_channel(target, options=channel_options())
