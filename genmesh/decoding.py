"""Request bytes that do not parse as the RPC's message: INVALID_ARGUMENT [MALFORMED_REQUEST], never grpc's
UNKNOWN "Unexpected DecodeError".

grpc.aio calls a handler's request deserializer outside the handler, so an exception there can only become
UNKNOWN. The interceptor therefore installs a guarded deserializer that returns a ``Malformed`` marker instead of
raising, and raises the marker's error from inside the handler: at the start of a unary-request RPC, at the bad
message of a request stream (what the handler did with the messages before it stands).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from genmesh.errors import FieldViolation, InvalidArgument, Reason

Deserializer = Callable[[bytes], Any]


class MalformedRequest(InvalidArgument):
    """The bytes of a request message could not be parsed (truncated, not protobuf, invalid UTF-8 in a string)."""

    reason = Reason.MALFORMED_REQUEST

    def __init__(self, type_name: str, size: int) -> None:
        super().__init__(
            FieldViolation(
                "request", f"could not be parsed as {type_name} ({size} bytes that are not a valid encoding of it)"
            )
        )


class Malformed:
    """What a guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("size", "type_name")

    def __init__(self, type_name: str, size: int) -> None:
        self.type_name = type_name
        self.size = size

    def error(self) -> MalformedRequest:
        return MalformedRequest(self.type_name, self.size)


def message_type_name(deserializer: Deserializer) -> str:
    """The full protobuf name of the message ``deserializer`` parses: its ``message_name``, else that of the class
    of ``Message.FromString``, else its own name."""
    named = getattr(deserializer, "message_name", None)
    if isinstance(named, str):
        return named
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return str(name) if name else str(getattr(deserializer, "__qualname__", "the request message"))


def guarded(deserializer: Deserializer | None) -> Deserializer | None:
    """``deserializer`` returning a ``Malformed`` marker instead of raising (None, grpc's raw bytes, stays None)."""
    if deserializer is None:
        return None
    type_name = message_type_name(deserializer)

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or whatever a custom deserializer raises: the bytes are the client's
            return Malformed(type_name, len(data))

    return parse


def check(request: Any) -> None:
    """Raise MalformedRequest if ``request`` is a ``Malformed`` marker."""
    if isinstance(request, Malformed):
        raise request.error()


async def checked(requests: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """A request stream that raises MalformedRequest at its first malformed message."""
    async for request in requests:
        check(request)
        yield request
