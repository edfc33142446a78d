"""read_json: a POST's JSON body, refused as OpenAI errors: 415 unless its Content-Type is JSON (so a browser's
cross-site "simple" POST, text/plain or a form, cannot reach a mesh without keys), 413 past ``limit`` bytes, 400
when it is not JSON (or nests too deep to decode)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from gateway.http.errors import HttpError

MAX_BODY_BYTES = 16 * 2**20
"""The largest request body read (16 MiB)."""


def is_json_type(content_type: str) -> bool:
    """Whether a Content-Type is JSON: ``application/json`` or ``application/*+json``, any parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The decoded JSON body of ``request``; HttpError 415, 413 or 400."""
    if not is_json_type(request.headers.get("content-type", "")):
        raise HttpError(
            415, "the request body must be JSON (Content-Type: application/json)", code="unsupported_media_type"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise HttpError(400, "the request body is not valid JSON", code="invalid_json") from None


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
