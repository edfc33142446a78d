"""The flags of `genmesh ask` (shared with `genmesh jobs submit`) and the command itself: errors told once, with a
hint; Ctrl-C ends the answer with one line and exit status 130."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from genmesh import mesh
from genmesh.cli.ask import AskOptions, IncompleteAnswer, ask, parse_tool
from genmesh.cli.ask_output import JsonEventWriter
from genmesh.cli.client_flags import add_api_key_flag, add_client_tls_flags, client_tls
from genmesh.cli.rpc_errors import describe_rpc_error, error_json
from genmesh.sampling import DEFAULT_MAX_TOKENS, MAX_LOGPROBS, MAX_STOP_SEQUENCES

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it."""

_SERVER = "default: the server's"


def add_ask_flags(parser: argparse.ArgumentParser) -> None:
    """The request flags of `genmesh ask` and `genmesh jobs submit`: tools, sampling, retrieval, deadline."""
    parser.add_argument(
        "--tool",
        action="append",
        default=[],
        type=parse_tool,
        metavar="NAME:JSON",
        help="""a tool call to run before answering, e.g. 'calculator:{"expression": "2**10"}' (repeatable; """
        "`genmesh tools list` shows the tools and their arguments; default: none)",
    )
    sample = parser.add_argument_group("sampling")
    sample.add_argument(
        "--max-tokens", type=int, metavar="N", help=f"most tokens to answer with ({_SERVER}, {DEFAULT_MAX_TOKENS})"
    )
    sample.add_argument(
        "--temperature", type=float, metavar="T", help=f"0 for greedy decoding, up to 2 ({_SERVER}, 1.0)"
    )
    sample.add_argument("--top-p", type=float, metavar="P", help=f"nucleus sampling, in (0, 1] ({_SERVER}, 1.0: off)")
    sample.add_argument("--top-k", type=int, metavar="K", help=f"keep only the K likeliest tokens ({_SERVER}, 0: off)")
    sample.add_argument(
        "--repetition-penalty",
        type=float,
        metavar="R",
        help=f"penalty for repeated tokens, in (0, 10] ({_SERVER}, 1.0: none)",
    )
    sample.add_argument(
        "--seed", type=int, help="the same seed gives the same answer (default: none, nondeterministic)"
    )
    sample.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help=f"end the answer where it contains TEXT, left out of it (repeatable, at most {MAX_STOP_SEQUENCES}; "
        "default: none)",
    )
    sample.add_argument(
        "--logprobs",
        type=int,
        metavar="N",
        help=f"show each token's log-probability and its N likeliest alternatives, 0..{MAX_LOGPROBS} (default: off)",
    )
    search = parser.add_argument_group("retrieval")
    search.add_argument(
        "--collection",
        default="",
        help="the collection to search, e.g. one `genmesh ingest` made "
        f"(default: the server's, {mesh.DEFAULT_COLLECTION})",
    )
    search.add_argument(
        "--sources", type=int, dest="retrieval_top_k", metavar="N", help=f"passages to retrieve, 1..100 ({_SERVER}, 3)"
    )
    search.add_argument("--no-retrieval", action="store_true", help="answer without retrieving (default: retrieve)")
    call = parser.add_argument_group("the call")
    call.add_argument(
        "--timeout", type=float, dest="timeout_s", metavar="SECONDS", help="deadline of the call (default: none)"
    )
    call.add_argument(
        "--request-id",
        default="",
        help="correlation id sent to every service and logged, 1..128 printable ASCII (default: one the gateway makes)",
    )
    call.add_argument(
        "--require-all-stages",
        action="store_true",
        help="fail when retrieval or a tool call fails, instead of answering without it (default: answer anyway)",
    )


def ask_options(question: str, args: argparse.Namespace) -> AskOptions:
    """The AskOptions of the flags add_ask_flags added."""
    return AskOptions(
        question=question,
        tools=tuple(args.tool),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        retrieval_top_k=args.retrieval_top_k,
        no_retrieval=args.no_retrieval,
        timeout_s=args.timeout_s,
        collection=args.collection,
        stop=tuple(args.stop),
        logprobs=args.logprobs,
        request_id=args.request_id,
        require_all_stages=args.require_all_stages,
    )


def add_ask_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `genmesh ask`."""
    parser = commands.add_parser(
        "ask",
        help="ask the gateway a question and stream the answer",
        description="Ask the gateway a question and print the answer as it streams: the sources, tool results, "
        "the answer, then the finish reason, token counts and timings. With --json, one JSON object per event "
        "instead (proto3 JSON of GatewayEvent: sources, toolResult, degraded, delta, then complete), or a last "
        '{"error": {"code", "message", "fieldViolations"}} line when the call fails. Exit status: 0 answered, '
        "1 failed, 130 interrupted (Ctrl-C).",
    )
    parser.add_argument("question", help="the question, 1..4096 characters")
    parser.add_argument(
        "--target",
        default=f"127.0.0.1:{mesh.GATEWAY.default_port}",
        help="the gateway, HOST:PORT (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per event, as it arrives (default: text)")
    add_ask_flags(parser)
    add_client_tls_flags(parser)
    add_api_key_flag(parser)


def run_ask(args: argparse.Namespace) -> int | str:
    """Run `genmesh ask`: 0 when answered, INTERRUPTED on Ctrl-C, else the message to exit with."""
    options = ask_options(args.question, args)
    try:
        asyncio.run(ask(args.target, options, tls=client_tls(args), api_key=args.api_key, as_json=args.json))
    except grpc.aio.AioRpcError as error:
        if args.json:
            JsonEventWriter(sys.stdout).write(error_json(error))
            return 1
        return describe_rpc_error(error, args.target)
    except IncompleteAnswer as error:
        return str(error)
    except KeyboardInterrupt:
        print("interrupted: the answer was cancelled", file=sys.stderr)
        return INTERRUPTED
    return 0
