"""Tests for the unit_convert and text_stats built-ins (search_docs runs against real retrieval in tests/e2e)."""

from __future__ import annotations

import json

import pytest

from genmesh.errors import InvalidArgument
from genmesh.schema import check_schema
from services.tools.builtin.text_stats import text_stats, text_stats_schema
from services.tools.builtin.unit_convert import UNITS, convert, unit_convert_schema
from services.tools.registry import ToolRegistry, default_registry


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (1, "km", "m", 1000.0),
        (1, "mi", "km", 1.609344),
        (100, "C", "F", 212.0),
        (32, "F", "C", 0.0),
        (0, "K", "C", -273.15),
        (1, "GiB", "MB", 1073.741824),
        (90, "km/h", "m/s", 25.0),
        (2, "h", "min", 120.0),
        (1, "gal", "l", 3.785411784),
        (1, "acre", "m2", 4046.8564224),
        (16, "oz", "lb", 1.0),
    ],
)
def test_conversions(value: float, source: str, target: str, expected: float) -> None:
    assert convert(value, source, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "source", "target", "field"),
    [
        (1, "km", "kg", "to_unit"),
        (1, "parsec", "m", "from_unit"),
        (-300, "C", "K", "value"),
        (float("inf"), "m", "km", "value"),
        (1e300, "TiB", "bit", "value"),
    ],
)
def test_bad_conversions_name_the_field(value: float, source: str, target: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert(value, source, target)
    assert [v.field for v in caught.value.violations] == [field]


def test_text_stats_counts() -> None:
    stats = text_stats("The cat sat. The cat ran!\n\nDon't stop? Yes")
    assert stats["words"] == 9 and stats["unique_words"] == 7
    assert stats["sentences"] == 4 and stats["paragraphs"] == 2 and stats["lines"] == 3
    assert stats["top_words"][:2] == [{"word": "the", "count": 2}, {"word": "cat", "count": 2}]
    assert text_stats("")["words"] == 0 and text_stats("")["average_word_length"] == 0.0


async def test_builtins_run_through_the_registry() -> None:
    for schema in (unit_convert_schema(), text_stats_schema()):
        check_schema(schema)
    assert set(unit_convert_schema()["properties"]["to_unit"]["enum"]) == set(UNITS)
    with default_registry(max_workers=1) as registry:
        assert isinstance(registry, ToolRegistry)
        result = await registry.invoke("unit_convert", '{"value": 5, "from_unit": "km", "to_unit": "mi"}')
        assert json.loads(result.result_json)["result"] == pytest.approx(3.10686, rel=1e-5)
        with pytest.raises(InvalidArgument) as caught:
            await registry.invoke("unit_convert", '{"value": 5, "from_unit": "km", "to_unit": "kg"}')
        assert [v.field for v in caught.value.violations] == ["arguments.to_unit"]
        stats = json.loads((await registry.invoke("text_stats", '{"text": "a b c"}')).result_json)
        assert stats["words"] == 3
