"""The clock tool: the current time in an IANA time zone."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from genmesh.errors import InvalidArgument
from services.tools.tool import Tool

DEFAULT_TIMEZONE = "UTC"
MAX_TIMEZONE_CHARS = 64
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")


def resolve_zone(name: str, field: str = "timezone") -> tzinfo:
    """The IANA zone called ``name`` (``Europe/Paris``); raises InvalidArgument on ``field`` if unknown."""
    if not isinstance(name, str) or len(name) > MAX_TIMEZONE_CHARS or not _ZONE_KEY.fullmatch(name):
        raise InvalidArgument.field(field, f"{str(name)[:MAX_TIMEZONE_CHARS]!r} is not an IANA time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        if name == "UTC":
            return UTC  # no tz database on this machine; UTC needs none
        raise InvalidArgument.field(field, f"unknown IANA time zone {name!r}") from None


def current_time(timezone: str = DEFAULT_TIMEZONE, now: datetime | None = None) -> dict[str, Any]:
    """``{"timezone", "iso8601", "unix"}`` for ``now`` (default: the current instant) in ``timezone``."""
    zone = resolve_zone(timezone)
    instant = now if now is not None else datetime.now(UTC)
    if instant.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local = instant.astimezone(zone)
    return {"timezone": timezone, "iso8601": local.isoformat(), "unix": local.timestamp()}


def clock_schema() -> dict[str, Any]:
    """The JSON Schema of the clock's arguments (a fresh copy)."""
    return {
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA time zone name such as Europe/Paris or America/New_York.",
                "default": DEFAULT_TIMEZONE,
                "minLength": 1,
                "maxLength": MAX_TIMEZONE_CHARS,
            }
        },
        "additionalProperties": False,
    }


def clock_tool(now: Callable[[], datetime] | None = None) -> Tool:
    """The built-in ``clock`` tool; ``now`` replaces the system clock (for tests)."""

    def handle(arguments: dict[str, Any]) -> dict[str, Any]:
        return current_time(arguments.get("timezone", DEFAULT_TIMEZONE), now() if now is not None else None)

    return Tool(
        name="clock",
        description="The current date and time in an IANA time zone (default UTC).",
        parameters=clock_schema(),
        handler=handle,
        timeout_s=1.0,
        idempotent=False,
    )
