"""List pages: a page of real messages stays under the 4 MiB receive limit; page tokens round-trip and reject others."""

from __future__ import annotations

import pytest

from genmesh.errors import InvalidArgument
from genmesh.paging import MAX_PAGE_BYTES, check_page_size, decode_page_token, encode_page_token, fitting
from genmesh.v1 import tools_pb2


def _spec(name: str, description_bytes: int) -> tools_pb2.ToolSpec:
    return tools_pb2.ToolSpec(name=name, description="é" * (description_bytes // 2))


def test_a_page_takes_what_fits_under_the_limit_and_at_least_one() -> None:
    specs = [_spec(f"t{i}", 1024 * 1024) for i in range(10)]
    count = fitting(specs)
    assert count == 3, "four 1 MiB items leave no room for the page token"
    assert tools_pb2.ListToolsResponse(tools=specs[:count], next_page_token="x" * 100).ByteSize() < MAX_PAGE_BYTES
    assert tools_pb2.ListToolsResponse(tools=specs[: count + 1]).ByteSize() > MAX_PAGE_BYTES - 1024
    assert fitting(specs, other_bytes=2 * 1024 * 1024) == 1
    assert fitting([_spec("huge", 5 * 1024 * 1024)]) == 1, "an item larger than a page still gets a page"
    assert fitting([_spec("small", 10)] * 1000) == 1000
    assert fitting([]) == 0


def test_page_tokens_round_trip_and_reject_any_other_string() -> None:
    token = encode_page_token("tools", "unit_convert")
    assert decode_page_token(token, "tools", 1) == ["unit_convert"]
    assert decode_page_token(encode_page_token("jobs", 0, 17), "jobs", 2) == ["0", "17"]
    for bad in ("", "not-a-token", "%%%", encode_page_token("jobs", 0, 17), encode_page_token("tools")):
        with pytest.raises(InvalidArgument) as caught:
            decode_page_token(bad, "tools", 1)
        assert [v.field for v in caught.value.violations] == ["page_token"]


@pytest.mark.parametrize("size", [-1, 1001])
def test_page_sizes_outside_0_to_1000_are_invalid(size: int) -> None:
    check_page_size(0)
    check_page_size(1000)
    with pytest.raises(InvalidArgument) as caught:
        check_page_size(size)
    assert [v.field for v in caught.value.violations] == ["page_size"]
