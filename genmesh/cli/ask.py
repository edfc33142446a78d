"""`genmesh ask`: stream one answer from the gateway and print it as it arrives (as text, or as JSON lines)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from typing import TextIO

from genmesh.channels import open_channel
from genmesh.cli.ask_output import EventPrinter, JsonEventWriter
from genmesh.cli.rpc_errors import describe_rpc_error
from genmesh.client.requests import Sampling, Tool, gateway_request
from genmesh.tls import ClientTLS
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

__all__ = ["AskOptions", "EventPrinter", "IncompleteAnswer", "ask", "build_request", "describe_rpc_error", "parse_tool"]


class IncompleteAnswer(Exception):
    """The gateway ended the answer's stream without its Completion (the message says so, for the user)."""


@dataclass(frozen=True, slots=True)
class AskOptions:
    """What to ask and how to sample the answer; None and empty values leave the server's defaults."""

    question: str
    tools: tuple[tuple[str, str], ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    retrieval_top_k: int | None = None
    no_retrieval: bool = False
    timeout_s: float | None = None
    collection: str = ""
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    request_id: str = ""
    require_all_stages: bool = False


def parse_tool(text: str) -> tuple[str, str]:
    """``NAME:JSON`` → (name, arguments_json); ``NAME`` alone means ``{}``. argparse.ArgumentTypeError, saying
    where the JSON breaks, for arguments that are not a JSON object."""
    name, sep, arguments = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(
            f'{text!r} must look like NAME:JSON, e.g. \'calculator:{{"expression": "1+1"}}\''
        )
    arguments = arguments if sep else "{}"
    try:
        value = json.loads(arguments)  # a typo is reported here rather than by the server
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"the arguments of tool {name!r} are not JSON: {error.msg} at "
            + (f"line {error.lineno} column {error.colno}" if error.lineno > 1 else f"character {error.colno}")
            + f" of {arguments!r}"
            + (f' (e.g. {name}:{{"name": "text", "n": 1}})' if "double quotes" in error.msg else "")
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"the arguments of tool {name!r} must be a JSON object ({{...}}), got {type(value).__name__}"
        )
    return name, arguments


def build_request(options: AskOptions) -> gateway_pb2.GatewayRequest:
    """The GatewayRequest for ``options``, built by genmesh.client; unset knobs stay unset so server defaults apply."""
    sampling = Sampling(
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        repetition_penalty=options.repetition_penalty,
        stop=options.stop,
        seed=options.seed,
        logprobs=options.logprobs,
    )
    return gateway_request(
        options.question,
        collection=options.collection,
        top_k=options.retrieval_top_k,
        retrieval=not options.no_retrieval,
        tool_calls=[Tool(name, arguments, call_id=str(i)) for i, (name, arguments) in enumerate(options.tools)],
        sampling=sampling,
        require_all_stages=options.require_all_stages,
        request_id=options.request_id,
    )


async def ask(
    target: str,
    options: AskOptions,
    out: TextIO = sys.stdout,
    tls: ClientTLS | None = None,
    api_key: str = "",
    as_json: bool = False,
) -> common_pb2.Completion:
    """Stream an answer from the gateway at ``target`` (over TLS with ``tls``, sending ``api_key`` when the
        gateway requires one), printing each event as it arrives: as text, or with ``as_json`` one JSON object per
        event (JsonEventWriter). Raises grpc.aio.AioRpcError for a failed call, IncompleteAnswer for a stream that
    ended without a completion."""
    printer: EventPrinter | JsonEventWriter = JsonEventWriter(out) if as_json else EventPrinter(out)
    async with open_channel(target, tls=tls, api_key=api_key) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        if not as_json:
            print(f"Question: {options.question}", file=out)
        call = stub.Generate(build_request(options), timeout=options.timeout_s)
        try:
            async for event in call:  # read to the end so that the call closes with its status
                printer.show(event)
        except asyncio.CancelledError:  # Ctrl-C: end the answer's line; the caller says it was interrupted
            printer.interrupted()
            raise
    if printer.completion is None:
        raise IncompleteAnswer("error: the gateway closed the stream without a completion")
    return printer.completion
