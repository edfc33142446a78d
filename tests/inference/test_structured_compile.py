"""ResponseFormat bounds and compilation: bad input is INVALID_ARGUMENT naming the field; masks and their vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from genmesh.errors import InvalidArgument
from genmesh.response_format import (
    JSON_OBJECT,
    FormatKind,
    ResponseFormat,
    choice_format,
    grammar_format,
    json_schema_format,
    regex_format,
    response_format_from_proto,
)
from genmesh.v1 import common_pb2
from services.inference.constraints import GrammarCompiler, MaskPrefetcher, apply_bitmask, fill_bitmask

TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "genmesh-tiny-llama" / "tokenizer.json"
EOS = 1


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    return GrammarCompiler(Tokenizer.from_file(str(TOKENIZER)), [EOS], cache_size=2)


def field_of(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return error.value.violations[0].field


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (ResponseFormat(FormatKind.JSON_SCHEMA, '{"type": "nope"}', "s"), "response_format.json_schema.schema_json"),
        (
            ResponseFormat(FormatKind.JSON_SCHEMA, '{"$ref": "#/nowhere"}', "s"),
            "response_format.json_schema.schema_json",
        ),
        (ResponseFormat(FormatKind.REGEX, "(["), "response_format.regex"),
        (ResponseFormat(FormatKind.LARK, "start: undefined_rule"), "response_format.grammar.definition"),
        (ResponseFormat(FormatKind.LARK, 'start: "a" ('), "response_format.grammar.definition"),
        (ResponseFormat(FormatKind.EBNF, "root ::= ("), "response_format.grammar.definition"),
        (ResponseFormat(FormatKind.REGEX, r"[^\s\S]"), "response_format.regex"),
        (ResponseFormat(FormatKind.LARK, 'start: a\na: a "x"'), "response_format.grammar.definition"),
        (ResponseFormat(FormatKind.JSON_SCHEMA, '{"not": {}}', "s"), "response_format.json_schema.schema_json"),
    ],
)
def test_an_invalid_definition_names_its_field(compiler: GrammarCompiler, fmt: ResponseFormat, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        compiler.constraint(fmt)
    assert field_of(error) == field
    assert len(str(error.value)) < 600, "the client's text is quoted bounded"


@pytest.mark.parametrize(
    ("fmt", "says"),
    [
        (ResponseFormat(FormatKind.REGEX, "(["), "unclosed character class"),
        (ResponseFormat(FormatKind.LARK, "start: undefined_rule"), "undefined_rule"),
        (ResponseFormat(FormatKind.EBNF, "root ::= ("), "Expected ')'"),
    ],
)
def test_a_definition_that_does_not_parse_is_refused_with_the_parser_s_reason(
    compiler: GrammarCompiler, fmt: ResponseFormat, says: str
) -> None:
    """Not the generic "no output matches it" of a format that parses but matches nothing: the client learns what
    to fix."""
    with pytest.raises(InvalidArgument) as error:
        compiler.constraint(fmt)
    assert says in str(error.value)
    assert "no output matches it" not in str(error.value)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: json_schema_format("s", "{bad"), "response_format.json_schema.schema_json"),
        (lambda: json_schema_format("s", "[1]"), "response_format.json_schema.schema_json"),
        (lambda: json_schema_format("s", ""), "response_format.json_schema.schema_json"),
        (lambda: json_schema_format("s", " " * 262_145), "response_format.json_schema.schema_json"),
        (lambda: json_schema_format("bad name", "{}"), "response_format.json_schema.name"),
        (lambda: json_schema_format("", "{}"), "response_format.json_schema.name"),
        (lambda: json_schema_format("n" * 65, "{}"), "response_format.json_schema.name"),
        (lambda: regex_format(""), "response_format.regex"),
        (lambda: regex_format("a" * 16_385), "response_format.regex"),
        (lambda: grammar_format(FormatKind.LARK, ""), "response_format.grammar.definition"),
        (lambda: choice_format([]), "response_format.choice.choices"),
        (lambda: choice_format([str(i) for i in range(257)]), "response_format.choice.choices"),
        (lambda: choice_format(["a", "a"]), "response_format.choice.choices"),
        (lambda: choice_format(["a", ""]), "response_format.choice.choices[1]"),
        (lambda: choice_format(["x" * 1025]), "response_format.choice.choices[0]"),
    ],
)
def test_bounds_name_the_field(build: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        build()  # type: ignore[operator]
    assert field_of(error) == field


def test_bounds_accept_their_limits() -> None:
    assert json_schema_format("n" * 64, "{}").name == "n" * 64
    assert regex_format("a" * 16_384).text == "a" * 16_384
    assert json.loads(choice_format(["é", "x" * 1024]).text) == ["é", "x" * 1024]
    assert len(json.loads(choice_format([str(i) for i in range(256)]).text)) == 256


def test_from_proto_reads_every_kind() -> None:
    pb = common_pb2
    assert response_format_from_proto(pb.ResponseFormat()) is None
    schema = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="p", schema_json='{"type": "object"}'))
    assert response_format_from_proto(schema) == ResponseFormat(FormatKind.JSON_SCHEMA, '{"type": "object"}', "p")
    assert response_format_from_proto(pb.ResponseFormat(json_object=pb.JsonObjectFormat())) == JSON_OBJECT
    assert response_format_from_proto(pb.ResponseFormat(regex="a+")) == ResponseFormat(FormatKind.REGEX, "a+")
    lark = pb.ResponseFormat(grammar=pb.Grammar(definition='start: "a"'))
    assert response_format_from_proto(lark) == ResponseFormat(FormatKind.LARK, 'start: "a"')
    ebnf = pb.ResponseFormat(grammar=pb.Grammar(syntax=pb.GRAMMAR_SYNTAX_EBNF, definition='root ::= "a"'))
    assert response_format_from_proto(ebnf) == ResponseFormat(FormatKind.EBNF, 'root ::= "a"')
    choice = pb.ResponseFormat(choice=pb.ChoiceFormat(choices=["a", "b"]))
    assert response_format_from_proto(choice) == ResponseFormat(FormatKind.CHOICE, '["a", "b"]')
    with pytest.raises(InvalidArgument) as error:
        response_format_from_proto(pb.ResponseFormat(grammar=pb.Grammar(syntax=7, definition='start: "a"')))  # type: ignore[arg-type]
    assert field_of(error) == "response_format.grammar.syntax"


def test_requests_sharing_a_format_share_its_compiled_grammar(compiler: GrammarCompiler) -> None:
    fmt = regex_format("[0-9]{3}")
    first, second = compiler.constraint(fmt), compiler.constraint(fmt)
    assert first is not None and second is not None and first.matcher is not second.matcher
    assert first.advance(compiler.tokenizer.tokenize_str("1")[0])
    assert second.matcher.validate_tokens(compiler.tokenizer.tokenize_str("12")) == 1, "copies advance apart"
    compiler.constraint(regex_format("a"))
    compiler.constraint(regex_format("b"))
    assert len(compiler) == 2, "the cache keeps its size"


def allowed(mask: torch.Tensor, width: int) -> list[int]:
    logits = torch.zeros((1, width))
    apply_bitmask(logits, [0], mask)
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_a_complete_format_allows_only_eos_and_ids_past_the_tokenizer_never(compiler: GrammarCompiler) -> None:
    constraint = compiler.constraint(choice_format(["yes"]))
    assert constraint is not None
    for token in compiler.tokenizer.tokenize_str("yes"):
        assert constraint.advance(token)
    assert constraint.matcher.is_stopped()  # the format is complete
    vocab = compiler.vocab_size
    assert allowed(fill_bitmask([constraint], vocab), vocab + 64) == [EOS]
    free = compiler.constraint(JSON_OBJECT)
    assert free is not None
    ids = allowed(fill_bitmask([free], vocab), vocab + 64)
    assert ids and max(ids) < vocab and compiler.tokenizer.decode_str(ids[:1]).startswith("{")


def test_masks_apply_to_their_rows_only(compiler: GrammarCompiler) -> None:
    constraint = compiler.constraint(regex_format("7"))
    assert constraint is not None
    logits = torch.zeros((3, compiler.vocab_size))
    apply_bitmask(logits, [1], fill_bitmask([constraint], compiler.vocab_size))
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[2]).all()
    assert compiler.tokenizer.decode_str(torch.isfinite(logits[1]).nonzero().flatten().tolist()) == "7"


def test_the_prefetcher_hands_a_fill_only_to_its_batch(compiler: GrammarCompiler) -> None:
    constraint = compiler.constraint(regex_format("7"))
    assert constraint is not None
    prefetcher = MaskPrefetcher()
    prefetcher.start((1,), [constraint], compiler.vocab_size)
    taken = prefetcher.take((1,))
    assert taken is not None and torch.equal(taken, fill_bitmask([constraint], compiler.vocab_size))
    prefetcher.start((1,), [constraint], compiler.vocab_size)
    assert prefetcher.take((2,)) is None
    assert prefetcher.take((1,)) is None, "a fill is taken once"
