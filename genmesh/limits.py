"""Bounds that the contracts document and that every service reading the field checks the same way."""

from __future__ import annotations

MAX_CALL_ID_CHARS = 64
"""ToolCall.call_id: at most this many characters (common.proto)."""
