"""List pages (AIP-158): the page-size bound, pages that fit a client's receive limit, and page tokens."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from google.protobuf.message import Message

from genmesh.errors import InvalidArgument

MAX_PAGE_SIZE = 1000
"""Most items a list request may ask for."""
MAX_PAGE_BYTES = 4 * 1024 * 1024
"""A page stays under this many bytes: the default receive limit of grpc-go and grpc-java."""
_ITEM_OVERHEAD_BYTES = 6  # a repeated field's tag (1 byte) and length prefix (at most 5)
_TOKEN_ROOM_BYTES = 1024  # the page's next_page_token


def check_page_size(page_size: int) -> None:
    """InvalidArgument naming page_size unless it is 0 (the default) .. MAX_PAGE_SIZE."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")


def fitting(items: Sequence[Message], other_bytes: int = 0) -> int:
    """How many of ``items``, from the first, fit in one page beside ``other_bytes`` of its other fields and a
    page token; at least one if there is one."""
    budget = MAX_PAGE_BYTES - _TOKEN_ROOM_BYTES - other_bytes
    used = 0
    for count, item in enumerate(items):
        used += item.ByteSize() + _ITEM_OVERHEAD_BYTES
        if used > budget:
            return max(count, 1)
    return len(items)


def encode_page_token(kind: str, *parts: str | int) -> str:
    """An opaque cursor of a ``kind`` of list ("jobs", "tools") made of ``parts``."""
    text = ":".join([kind, *(str(part) for part in parts)])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str, kind: str, parts: int) -> list[str]:
    """The parts of a cursor ``encode_page_token`` made; InvalidArgument naming page_token for any other string."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:  # not base64 (binascii.Error) or not UTF-8
        text = ""
    tag, *values = text.split(":", parts)
    if tag != kind or len(values) != parts:
        raise InvalidArgument.field("page_token", "is not a token this list returned")
    return values
