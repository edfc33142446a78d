"""`genmesh ask`'s flags as the parser reads them: every one documented with its default, each new one reaching the
GatewayRequest, and a --tool whose JSON is broken told where it breaks."""

from __future__ import annotations

import argparse

import pytest

from genmesh.cli.ask import build_request, parse_tool
from genmesh.cli.ask_command import add_ask_parser, ask_options
from genmesh.v1 import gateway_pb2


def ask_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genmesh")
    commands = parser.add_subparsers(dest="command")
    add_ask_parser(commands)
    return commands.choices["ask"]


def request_of(*argv: str) -> gateway_pb2.GatewayRequest:
    args = ask_parser().parse_args([*argv, "What is a generator?"])
    return build_request(ask_options(args.question, args))


def test_every_flag_has_help_naming_its_default() -> None:
    undocumented = [
        action.option_strings[0]
        for action in ask_parser()._actions
        if action.option_strings and action.dest != "help" and "default" not in (action.help or "")
    ]
    assert undocumented == []


def test_the_new_flags_reach_the_request() -> None:
    request = request_of(
        "--collection", "my-notes", "--stop", "\n\n", "--stop", "END", "--logprobs", "3",
        "--request-id", "cli-test-1", "--require-all-stages",
    )  # fmt: skip
    assert request.retrieval.collection == "my-notes"
    assert list(request.sampling.stop) == ["\n\n", "END"]
    assert request.sampling.HasField("logprobs") and request.sampling.logprobs == 3
    assert request.request_id == "cli-test-1" and request.require_all_stages


def test_unset_flags_leave_the_server_s_defaults() -> None:
    request = request_of()
    assert request.retrieval.collection == "" and not request.sampling.stop and not request.require_all_stages
    for knob in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "logprobs"):
        assert not request.sampling.HasField(knob), knob
    assert request.request_id == ""


def test_a_tool_whose_json_breaks_is_told_where(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ask_parser().parse_args(["--tool", "calculator:{expression: 1}", "q"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid parse_tool value" not in err
    assert "argument --tool: the arguments of tool 'calculator' are not JSON" in err
    assert "Expecting property name enclosed in double quotes at character 2 of '{expression: 1}'" in err


def test_tool_arguments_must_be_an_object() -> None:
    assert parse_tool('unit_convert:{"value": 1}') == ("unit_convert", '{"value": 1}')
    assert parse_tool("clock") == ("clock", "{}")
    with pytest.raises(argparse.ArgumentTypeError, match="must be a JSON object"):
        parse_tool("calculator:[1, 2]")
    with pytest.raises(argparse.ArgumentTypeError, match="Extra data at line 2 column 2"):
        parse_tool('calculator:{"expression": "1"\n}}')
    with pytest.raises(argparse.ArgumentTypeError, match="must look like NAME:JSON"):
        parse_tool(':{"a": 1}')
