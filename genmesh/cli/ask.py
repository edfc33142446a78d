"""`genmesh ask`: stream one answer from the gateway and print it as it arrives."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TextIO

import grpc

from genmesh.channels import open_channel
from genmesh.cli.client_flags import API_KEY_ENV
from genmesh.status import field_violations
from genmesh.tls import ClientTLS
from genmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


@dataclass(frozen=True, slots=True)
class AskOptions:
    """What to ask and how to sample the answer."""

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


def parse_tool(text: str) -> tuple[str, str]:
    """``NAME:JSON`` → (name, arguments_json); ``NAME`` alone means ``{}``."""
    name, sep, arguments = text.partition(":")
    if not name:
        raise ValueError(f"tool {text!r} must look like NAME:JSON")
    arguments = arguments if sep else "{}"
    json.loads(arguments)  # a typo is reported here rather than by the server
    return name, arguments


def describe_rpc_error(error: grpc.aio.AioRpcError) -> str:
    """One readable paragraph for a failed call: code, message and each bad field."""
    lines = [f"error: {error.code().name}: {error.details()}"]
    lines += [f"  {v.field}: {v.description}" for v in field_violations(error)]
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(f"  give the gateway's API key with --api-key KEY or the environment variable {API_KEY_ENV}")
    return "\n".join(lines)


def build_request(options: AskOptions) -> gateway_pb2.GatewayRequest:
    """The GatewayRequest for ``options``; unset knobs stay unset so server defaults apply."""
    request = gateway_pb2.GatewayRequest(question=options.question)
    for i, (name, arguments) in enumerate(options.tools):
        request.tool_calls.add(call_id=str(i), name=name, arguments_json=arguments)
    request.retrieval.disabled = options.no_retrieval
    if options.retrieval_top_k is not None:
        request.retrieval.top_k = options.retrieval_top_k
    sampling = request.sampling
    for knob in ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"):
        value = getattr(options, knob)
        if value is not None:
            setattr(sampling, knob, value)
    return request


def _print_event(event: gateway_pb2.GatewayEvent, out: TextIO) -> None:
    kind = event.WhichOneof("event")
    if kind == "sources":
        print("Sources:", file=out)
        for p in event.sources.passages:
            print(f"  [{p.rank}] {p.title} ({p.document_id}, score {p.score:.2f})", file=out)
    elif kind == "tool_result":
        r = event.tool_result
        outcome = r.result_json if r.WhichOneof("outcome") == "result_json" else f"error: {r.error.message}"
        print(f"Tool {r.name} [{r.call_id}] ({r.duration_ms:.0f} ms): {outcome}", file=out)
    elif kind == "degraded":
        d = event.degraded
        print(f"Degraded: {d.stage} failed ({_code_name(d.code)}): {d.message}", file=out)
    elif kind == "delta":
        out.write(event.delta.text)
        out.flush()


def _code_name(value: int) -> str:
    return next((code.name for code in grpc.StatusCode if code.value[0] == value), str(value))


def _print_completion(done: common_pb2.Completion, out: TextIO) -> None:
    t = done.timings
    reason = common_pb2.FinishReason.Name(done.finish_reason).removeprefix("FINISH_REASON_").lower()
    print("\n", file=out)
    print(
        f"finish: {reason}  tokens: prompt {done.usage.prompt_tokens}, completion {done.usage.completion_tokens}",
        file=out,
    )
    print(
        f"timings (ms): retrieval {t.retrieval_ms:.1f}  tools {t.tools_ms:.1f}  pre-inference {t.pre_inference_ms:.1f}"
        f"  queue {t.queue_ms:.1f}  first token {t.time_to_first_token_ms:.1f}  total {t.total_ms:.1f}",
        file=out,
    )


class EventPrinter:
    """Prints the events of one answer as they arrive: sources, tool results, the answer, the completion."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.completion: common_pb2.Completion | None = None
        self._answer_started = False

    def show(self, event: gateway_pb2.GatewayEvent) -> None:
        """Print one event."""
        if event.HasField("complete"):
            self.completion = event.complete
            _print_completion(event.complete, self.out)
            return
        if event.HasField("delta") and not self._answer_started:
            print("Answer: ", end="", file=self.out)
            self._answer_started = True
        _print_event(event, self.out)


async def ask(
    target: str, options: AskOptions, out: TextIO = sys.stdout, tls: ClientTLS | None = None, api_key: str = ""
) -> common_pb2.Completion:
    """Stream an answer from the gateway at ``target`` (over TLS with ``tls``, sending ``api_key`` when the
    gateway requires one), printing each event as it arrives."""
    async with open_channel(target, tls=tls, api_key=api_key) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        print(f"Question: {options.question}", file=out)
        call = stub.Generate(build_request(options), timeout=options.timeout_s)
        printer = EventPrinter(out)
        async for event in call:  # read to the end so that the call closes with its status
            printer.show(event)
    if printer.completion is None:
        raise RuntimeError("the gateway closed the stream without a completion")
    return printer.completion
