"""The tool-call parsers on outputs written as Qwen2.5 (Hermes) and Llama 3.1/3.3 write them: calls read whole,
text around them sent, nothing of a call leaking into the text however the output is split into chunks, and a
call that cannot be read (bad JSON, no name, cut off) still a call, never an exception."""

from __future__ import annotations

import itertools

import pytest

from services.inference.tool_calls import FORMATS, ParsedCall, Parser
from services.inference.tool_calls.hermes import HermesParser
from services.inference.tool_calls.llama3 import Llama3JsonParser
from services.inference.tool_calls.mistral import MistralParser


def run(parser: Parser, chunks: list[str]) -> tuple[str, list[ParsedCall]]:
    """The text and the calls ``parser`` reads from ``chunks``."""
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    text = "".join(e for e in events if isinstance(e, str))
    return text, [e for e in events if isinstance(e, ParsedCall)]


def splits(output: str) -> list[list[str]]:
    """``output`` whole, in single characters, and cut in two and three at every offset (three: a sample)."""
    ways = [[output], list(output)]
    ways += [[output[:i], output[i:]] for i in range(1, len(output))]
    ways += [[output[:i], output[i:j], output[j:]] for i, j in itertools.combinations(range(1, len(output), 7), 2)]
    return ways


QWEN_TWO_CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'
)
PARIS = ParsedCall("get_weather", '{"city":"Paris","unit":"C"}')
TIME = ParsedCall("get_time", '{"tz":"Europe/Paris"}')


@pytest.mark.parametrize(
    ("output", "text", "calls"),
    [
        (QWEN_TWO_CALLS, "", [PARIS, TIME]),
        ("Let me check that.\n" + QWEN_TWO_CALLS + "\n", "Let me check that.\n", [PARIS, TIME]),
        (
            "Paris is sunny today, 21°C. No <tool> needed, a < b.",
            "Paris is sunny today, 21°C. No <tool> needed, a < b.",
            [],
        ),
        (
            '<tool_call>\n{"name": "get_weather", "arguments": '
            '"{\\"city\\": \\"Paris\\", \\"unit\\": \\"C\\"}"}\n</tool_call>',
            "",
            [PARIS],
        ),  # arguments as a JSON string, as some fine-tunes write them
        ('<tool_call>\n{"name": "now"}\n</tool_call>', "", [ParsedCall("now", "{}")]),
        (QWEN_TWO_CALLS + "\nDone: it is 21°C.", "\nDone: it is 21°C.", [PARIS, TIME]),
    ],
    ids=["two-calls", "text-before", "text-only", "string-arguments", "no-arguments", "text-after"],
)
def test_hermes_reads_qwen_outputs_however_they_are_split(output: str, text: str, calls: list[ParsedCall]) -> None:
    for chunks in splits(output):
        assert run(HermesParser(), chunks) == (text, calls), chunks


@pytest.mark.parametrize(
    ("output", "text", "call"),
    [
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\n</tool_call>',
            "",
            ParsedCall("get_weather", '{"name": "get_weather", "arguments": {"city": "Par', False),
        ),
        (
            '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',
            "",
            ParsedCall("", '{"arguments": {"city": "Paris"}}', False),
        ),
        (
            'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa',
            "Sure.",
            ParsedCall("get_weather", '{"name": "get_weather", "arguments": {"city": "Pa', False),
        ),
        (
            '<tool_call>\n{"name": "f", "arguments": [1, 2]}\n</tool_call>',
            "",
            ParsedCall("f", '{"name": "f", "arguments": [1, 2]}', False),
        ),
        (
            '<tool_call>\n{"name": "f", "arguments": {"x": 1e999}}\n</tool_call>',
            "",
            ParsedCall("f", '{"name": "f", "arguments": {"x": 1e999}}', False),
        ),
        ("<tool_call>", "", ParsedCall("", "", False)),
    ],
    ids=[
        "bad-json",
        "missing-name",
        "unterminated",
        "arguments-not-an-object",
        "number-out-of-range",
        "only-the-marker",
    ],
)
def test_hermes_turns_an_unreadable_call_into_a_call_with_what_it_could_read(
    output: str, text: str, call: ParsedCall
) -> None:
    for chunks in splits(output):
        assert run(HermesParser(), chunks) == (text, [call]), chunks


def test_hermes_holds_a_partial_marker_until_it_is_decided() -> None:
    parser = HermesParser()
    assert parser.feed("It is <tool_") == ["It is "]
    assert parser.feed("tip> not a call") == ["<tool_tip> not a call"]
    assert parser.feed(" <tool_call>\n{") == [" "]
    assert parser.feed('"name": "x", "arguments": {}}\n</tool_call>') == [ParsedCall("x", "{}")]
    assert parser.feed("\n") == []  # whitespace after a call: held, then dropped at the end
    assert parser.finish() == []
    cut = HermesParser()
    assert cut.feed("a <tool_c") == ["a "] and cut.finish() == ["<tool_c"]  # an output ending mid-marker: text


LLAMA_CALL = '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}'


@pytest.mark.parametrize(
    ("output", "text", "calls"),
    [
        (LLAMA_CALL, "", [PARIS]),
        ("<|python_tag|>" + LLAMA_CALL, "", [PARIS]),
        (LLAMA_CALL + '; {"name": "get_time", "parameters": {"tz": "Europe/Paris"}}', "", [PARIS, TIME]),
        ("  \n" + LLAMA_CALL + "\n", "", [PARIS]),
        ("It is 21°C in Paris {as of now}.", "It is 21°C in Paris {as of now}.", []),
        ('{"answer": 42, "unit": "C"}', '{"answer": 42, "unit": "C"}', []),  # a JSON answer, not a call
        ('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}', "", [PARIS]),
    ],
    ids=["one-call", "python-tag", "two-calls", "blank-around", "text", "json-answer", "arguments-key"],
)
def test_llama3_json_reads_llama_outputs_however_they_are_split(
    output: str, text: str, calls: list[ParsedCall]
) -> None:
    for chunks in splits(output):
        assert run(Llama3JsonParser(), chunks) == (text, calls), chunks


@pytest.mark.parametrize(
    ("output", "calls"),
    [
        (
            '{"name": "get_weather", "parameters": {"city": "Paris"',
            [ParsedCall("get_weather", '{"name": "get_weather", "parameters": {"city": "Paris"', False)],
        ),
        ('{"parameters": {"city": "Paris"}}', [ParsedCall("", '{"parameters": {"city": "Paris"}}', False)]),
        (
            LLAMA_CALL + '; {"name": "get_time", "parameters": {',
            [PARIS, ParsedCall("get_time", '{"name": "get_time", "parameters": {', False)],
        ),
        ("<|python_tag|>get_weather(city='Paris')", [ParsedCall("", "get_weather(city='Paris')", False)]),
    ],
    ids=["unterminated", "missing-name", "second-cut", "not-json-after-tag"],
)
def test_llama3_json_turns_an_unreadable_call_into_a_call(output: str, calls: list[ParsedCall]) -> None:
    for chunks in splits(output):
        assert run(Llama3JsonParser(), chunks) == ("", calls), chunks


def test_llama3_json_sends_each_call_as_soon_as_it_is_whole() -> None:
    parser = Llama3JsonParser()
    assert parser.feed("<|python") == []
    assert parser.feed("_tag|>" + LLAMA_CALL[:20]) == []
    assert parser.feed(LLAMA_CALL[20:] + ";") == [PARIS]
    assert parser.finish() == []


def test_mistral_reads_its_array_of_calls() -> None:
    output = (
        'Checking.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}, '
        '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}]'
    )
    for chunks in splits(output):
        assert run(MistralParser(), chunks) == ("Checking.", [PARIS, TIME]), chunks
    text, calls = run(MistralParser(), ['[TOOL_CALLS][{"name": "get_weather", "arguments": {"ci'])
    assert text == "" and calls == [ParsedCall("get_weather", '[{"name": "get_weather", "arguments": {"ci', False)]


def test_every_parser_is_registered_by_name() -> None:
    assert {name: type(f.new_parser()) for name, f in FORMATS.items()} == {
        "hermes": HermesParser,
        "llama3_json": Llama3JsonParser,
        "mistral": MistralParser,
    }
