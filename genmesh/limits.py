"""Bounds that the contracts document and that every service reading the field checks the same way."""

from __future__ import annotations

import re

from genmesh.errors import FieldViolation

MAX_CALL_ID_CHARS = 64
"""ToolCall.call_id: at most this many printable ASCII characters (common.proto)."""
_CALL_ID = re.compile(rf"[\x20-\x7e]{{0,{MAX_CALL_ID_CHARS}}}")


def call_id_violation(call_id: str, field: str) -> FieldViolation | None:
    """What is wrong with a ToolCall.call_id at ``field`` (it is echoed in results and stage names), if anything."""
    if _CALL_ID.fullmatch(call_id):
        return None
    return FieldViolation(
        field, f"must be at most {MAX_CALL_ID_CHARS} printable ASCII characters, got {len(call_id)} characters"
    )
