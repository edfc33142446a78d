"""read_json: a POST's JSON body, refused as OpenAI errors: 415 unless its Content-Type is JSON (so a browser's
cross-site "simple" POST, text/plain or a form, cannot reach a mesh without keys), 413 past ``limit`` bytes, 400
when it is not JSON (or nests too deep to decode) or a string in it holds a lone surrogate (``"\\ud800"``: valid
JSON, but not Unicode text, so no protobuf string field or UTF-8 answer can carry it)."""

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
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise HttpError(400, "the request body is not valid JSON", code="invalid_json") from None
    refuse_lone_surrogates(value)
    return value


def refuse_lone_surrogates(value: Any) -> None:
    """HttpError 400 naming the first string (or object key) of decoded JSON ``value`` that holds a lone surrogate
    (e.g. ``messages[0].content``); iterative, so any depth ``json.loads`` decodes is walked.

    A body without one (nearly all) costs one encoding in C, about as long as decoding it; only a body with one is
    walked in Python to name the field.
    """
    try:
        json.dumps(value, ensure_ascii=False, check_circular=False).encode()
        return
    except (UnicodeEncodeError, RecursionError):  # RecursionError: as deep as json.loads reaches; walk it
        pass
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if not _is_text(item):
                raise _surrogate(path)
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                child_path = f"{path}.{_printable(key)}" if path else _printable(key)
                if not _is_text(key):
                    raise _surrogate(child_path, "an object key")
                children.append((child, child_path))
            pending += reversed(children)
        elif isinstance(item, list):
            pending += reversed([(child, f"{path}[{i}]") for i, child in enumerate(item)])


def _is_text(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: it holds no lone surrogate (U+D800..U+DFFF)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _printable(key: str) -> str:
    """``key`` with any lone surrogate written as its escape, so the error naming it can be sent."""
    return key.encode("utf-8", "backslashreplace").decode()


def _surrogate(path: str, what: str = "a string") -> HttpError:
    message = "holds a lone surrogate (U+D800..U+DFFF), which is not Unicode text"
    if not path:
        return HttpError(400, f"the request body {message}", code="invalid_unicode")
    return HttpError(400, f"{path}: {what} {message}", param=path, code="invalid_unicode")


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
