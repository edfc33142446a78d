"""Structured logging: one logfmt or JSON line per event, with the current request id (and trace) attached."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("genmesh_request_id", default="")

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
MAX_FIELD_CHARS = 2048
"""The most of a log line's message or of one field's value that is written; clients' strings can be megabytes."""
MAX_EXC_CHARS = 16_384


def _bounded(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    """``value``, or the start of its text noting the whole length when longer than ``limit`` characters."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return value
    return f"{text[:limit]}… ({len(text)} characters)"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": _bounded(record.getMessage()),
    }
    request_id = REQUEST_ID.get()
    if request_id:
        fields["request_id"] = _bounded(request_id)
    span = trace.get_current_span().get_span_context()  # genmesh.tracing: the RPC's span while one is traced
    if span.is_valid:
        fields["trace_id"] = trace.format_trace_id(span.trace_id)
        fields["span_id"] = trace.format_span_id(span.span_id)
    fields.update({k: _bounded(v) for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
    if record.exc_info:
        fields["exc"] = _bounded(logging.Formatter().formatException(record.exc_info), MAX_EXC_CHARS)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, quoted where needed: readable by people and by log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            if not text or any(c in text for c in ' "=\n'):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def configure_logging(service: str, level: str = "info", fmt: str = "text") -> None:
    """Route the root logger to stderr in the chosen format; called once at start-up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("genmesh").info("logging configured", extra={"service": service})
