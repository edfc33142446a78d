"""The inference service's gRPC server: a thin servicer over the engine, and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from genmesh import mesh
from genmesh.config import add_server_flags, parse
from genmesh.convert import sampling_from_proto
from genmesh.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable
from genmesh.logs import REQUEST_ID
from genmesh.messages import message_violations, template_messages
from genmesh.metrics import current as current_metrics
from genmesh.response_format import response_format_from_proto
from genmesh.sampling import check_logit_bias_vocab
from genmesh.server import StartupFailed, run
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from services.inference.chat_template import ChatTemplate
from services.inference.constraints.tool_grammar import DEFAULT_MAX_CALLS, MAX_CALLS_LIMIT, tool_grammar
from services.inference.counting import count_tokens
from services.inference.engine import Engine, EngineConfig
from services.inference.engine.types import Finished, FinishReason, GenerationRequest, TokenChunk
from services.inference.load_feed import LoadFeed, new_replica_id, now_timestamp, report_interval_s
from services.inference.metrics import InferenceMetrics
from services.inference.models.loader import load_model
from services.inference.shipped_model import shipped_model
from services.inference.tool_calls import AUTO as AUTO_TOOL_FORMAT
from services.inference.tool_calls import FORMATS, ToolCallStream, ToolFormat, ToolRequest, tool_format
from services.inference.tool_calls.request import Choice, tool_request_from_proto

log = logging.getLogger("genmesh.inference")

DEFAULT_MODEL = shipped_model()

_FINISH_REASONS = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
}


def _delta(chunk: TokenChunk) -> inference_pb2.GenerateResponse:
    delta = common_pb2.TokenDelta(token_ids=chunk.token_ids, text=chunk.text)
    for lp in chunk.logprobs:
        delta.logprobs.add(
            token_id=lp.token_id,
            logprob=lp.logprob,
            top=[common_pb2.TopLogprob(token_id=t, text=s, logprob=p) for t, s, p in lp.top],
        )
    return inference_pb2.GenerateResponse(delta=delta)


def _completion(done: Finished) -> inference_pb2.GenerateResponse:
    return inference_pb2.GenerateResponse(
        complete=common_pb2.Completion(
            finish_reason=_FINISH_REASONS[done.finish_reason],
            usage=common_pb2.Usage(
                prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
                cached_tokens=done.cached_tokens,
            ),
            timings=common_pb2.Timings(
                queue_ms=done.queue_ms, time_to_first_token_ms=done.ttft_ms, total_ms=done.total_ms
            ),
        )
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Protobuf in, protobuf out; the engine does the generation."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        engine = self._service.engine()
        tools = tool_request_from_proto(request)
        prompt = self._prompt(request, tools)
        sampling = sampling_from_proto(request.sampling)
        check_logit_bias_vocab(sampling, engine.info().vocab_size)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        rendered = bool(request.messages)
        asked_format = response_format_from_proto(request.response_format)
        calls: ToolCallStream | None = None
        output_format = asked_format
        if tools is not None and tools.choice is not Choice.NONE:
            output_format = tool_grammar(tools, self._service.tool_format(), asked_format, self._service.max_tool_calls)
            calls = ToolCallStream(self._service.tool_format())
        generation = GenerationRequest(
            REQUEST_ID.get(),
            prompt,
            sampling,
            deadline,
            request.truncate_prompt,
            rendered=rendered,
            response_format=output_format,
        )
        # the prompt the engine refused (too long for the context) is the client's messages; the tools' grammar
        # is the tools' (or the response_format's it embeds)
        renamed = {"prompt": "messages"} if rendered else {}
        if output_format is not None and output_format is not asked_format:
            renamed[output_format.field] = "tools" if asked_format is None else asked_format.field
        try:
            async for item in engine.generate(generation):
                response = _delta(item) if isinstance(item, TokenChunk) else _completion(item)
                response.index = item.index  # the sample (n > 1)
                if isinstance(item, Finished):
                    self._service.load_feed.finished(item.total_ms / 1000)
                if calls is None:
                    yield response
                    continue
                for out in calls.delta(response) if isinstance(item, TokenChunk) else calls.complete(response):
                    yield out
        except InvalidArgument as error:
            if not renamed:
                raise
            named = [FieldViolation(renamed.get(v.field, v.field), v.description) for v in error.violations]
            raise InvalidArgument(named) from None

    def _prompt(self, request: inference_pb2.GenerateRequest, tools: ToolRequest | None) -> str:
        """The text to continue: the prompt, or the messages (and tools) rendered with the model's chat template."""
        if request.prompt and request.messages:
            raise InvalidArgument.field("messages", "set either prompt or messages, not both")
        if not request.messages:
            if not request.prompt:
                raise InvalidArgument.field("prompt", "must not be empty")
            return request.prompt
        if bad := message_violations(request.messages):
            raise InvalidArgument(bad)
        return self._service.chat_template().render(
            template_messages(request.messages), tools=None if tools is None else tools.template_tools()
        )

    async def Abort(
        self, request: inference_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.AbortResponse:
        if not request.request_id:
            raise InvalidArgument.field("request_id", "must not be empty")
        return inference_pb2.AbortResponse(found=self._service.engine().abort(request.request_id))

    async def GetModelInfo(
        self, request: inference_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetModelInfoResponse:
        info = self._service.engine().info()
        return inference_pb2.GetModelInfoResponse(
            model=info.name,
            context_length=info.context_length,
            vocab_size=info.vocab_size,
            dtype=info.dtype,
            device=info.device,
        )

    async def CountTokens(
        self, request: inference_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        engine = self._service.engine()
        # In a worker thread: up to 16 MiB of text must not stall the loop that streams every generation's tokens.
        return await asyncio.to_thread(
            count_tokens, request, engine.tokenizer, engine.info().context_length, self._service.chat_template
        )

    async def GetLoad(
        self, request: inference_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GetLoadResponse:
        load = self._service.engine().load()
        return inference_pb2.GetLoadResponse(
            running=load.running,
            waiting=load.waiting,
            kv_used_tokens=load.kv_used_tokens,
            kv_capacity_tokens=load.kv_capacity_tokens,
            replica_id=self._service.load_feed.replica_id,
            report_time=now_timestamp(),
            kv_block_size=load.block_size,
            kv_blocks_used=load.blocks_used,
            kv_blocks_free=load.blocks_free,
            prefix_cache_hit_rate=load.prefix_hit_rate,
        )

    async def WatchLoad(
        self, request: inference_pb2.WatchLoadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.WatchLoadResponse]:
        engine, feed = self._service.engine(), self._service.load_feed
        interval_s = report_interval_s(request.report_interval, request.HasField("report_interval"))
        async for snapshot in feed.watch(engine.load, interval_s):
            stats = snapshot.stats
            yield inference_pb2.WatchLoadResponse(
                running_count=stats.running,
                waiting_count=stats.waiting,
                kv_used_tokens=stats.kv_used_tokens,
                kv_capacity_tokens=stats.kv_capacity_tokens,
                replica_id=feed.replica_id,
                report_time=now_timestamp(),
                accepting=snapshot.accepting,
                named_metrics=feed.named_metrics(snapshot),
            )


class InferenceService:
    """The inference service as the server bootstrap runs it: ready once the model is loaded."""

    service_name = mesh.INFERENCE.grpc_service
    also_serves: tuple[str, ...] = ()
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()

    def __init__(
        self,
        model_dir: Path,
        device: str | None,
        config: EngineConfig,
        threads: int,
        tool_call_parser: str = AUTO_TOOL_FORMAT,
        max_tool_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        """``tool_call_parser``: the format of the model's tool calls (a FORMATS name; ``auto``: the one its chat
        template implies); ``max_tool_calls``: the most calls one turn may hold (1..MAX_CALLS_LIMIT)."""
        if not 1 <= max_tool_calls <= MAX_CALLS_LIMIT:
            raise ValueError(f"--max-tool-calls must be between 1 and {MAX_CALLS_LIMIT}, got {max_tool_calls}")
        self._model_dir = model_dir
        self._tool_call_parser = tool_call_parser
        #: The most tool calls one turn (one sample's output) may hold with parallel_tool_calls.
        self.max_tool_calls = max_tool_calls
        self._tool_format: ToolFormat | None = None
        self._device = device
        self._config = config
        self._threads = threads
        self._engine: Engine | None = None
        self._chat_template: ChatTemplate | None = None
        self._chat_template_error = "the model is still loading"
        self.load_feed = LoadFeed(new_replica_id(), config.max_running, config.max_waiting)

    def engine(self) -> Engine:
        """The engine, once the model is loaded."""
        if self._engine is None:
            raise Unavailable("the model is still loading")
        return self._engine

    def chat_template(self) -> ChatTemplate:
        """The model's chat template, once the model is loaded (FailedPrecondition before)."""
        if self._chat_template is None:
            raise FailedPrecondition(self._chat_template_error)
        return self._chat_template

    def tool_format(self) -> ToolFormat:
        """How the model writes tool calls, once the model is loaded (FailedPrecondition before)."""
        if self._tool_format is None:
            raise FailedPrecondition(self._chat_template_error)
        return self._tool_format

    def register(self, server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(self), server)

    async def start(self) -> None:
        if self._threads > 0:
            import torch

            torch.set_num_threads(self._threads)
        loaded = await asyncio.to_thread(load_model, self._model_dir, self._device)
        log.info(
            "model loaded",
            extra={"model": loaded.name, "device": str(loaded.device), "dtype": str(loaded.dtype)},
        )
        try:
            self._chat_template = ChatTemplate(loaded.chat_template, special_tokens=loaded.special_tokens)
        except ValueError as error:  # the gateway always sends messages: a replica that cannot render them is no use
            raise StartupFailed(f"{loaded.chat_template_file}: {error}") from None
        self._tool_format = tool_format(self._tool_call_parser, self._chat_template.source)
        log.info("tool calls", extra={"tool_call_parser": self._tool_format.name})
        metrics = current_metrics()
        self._engine = Engine(loaded, self._config, None if metrics is None else InferenceMetrics(metrics))

    def drain(self) -> None:
        """Tell balancers (WatchLoad ``accepting=false``), and end the load streams."""
        self.load_feed.drain()

    async def stop(self) -> None:
        if self._engine is not None:
            await self._engine.close()


class _BadFlag(argparse.ArgumentTypeError, ValueError):
    """A bad flag value, reported as such by argparse and by the flags' environment variables."""


def max_tool_calls_flag(text: str) -> int:
    """``--max-tool-calls``: an integer in 1..MAX_CALLS_LIMIT."""
    try:
        value = int(text)
    except ValueError:
        raise _BadFlag(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_CALLS_LIMIT:
        raise _BadFlag(f"must be between 1 and {MAX_CALLS_LIMIT}, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Run the inference service until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="genmesh serve inference", description=__doc__)
    flags = add_server_flags(parser, "inference", mesh.INFERENCE.default_port)
    flags.add("--model", type=Path, default=DEFAULT_MODEL, help="model directory in Hugging Face layout")
    flags.add("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    defaults = EngineConfig()
    flags.add("--max-running", type=int, default=defaults.max_running, help="sequences generating at once")
    flags.add(
        "--max-waiting",
        type=int,
        default=defaults.max_waiting,
        help="requests that may wait; past it RESOURCE_EXHAUSTED",
    )
    flags.add("--max-batched-tokens", type=int, default=defaults.max_batched_tokens, help="tokens one step may feed")
    flags.add(
        "--prefill-chunk", type=int, default=defaults.prefill_chunk, help="prompt tokens fed per sequence per step"
    )
    flags.add(
        "--stream-interval-tokens",
        type=int,
        default=defaults.stream_interval_tokens,
        help="hold a stream's tokens after its first until this many are held (1: off)",
    )
    flags.add(
        "--stream-interval-ms",
        type=int,
        default=defaults.stream_interval_ms,
        help="or hold them until this many ms since the stream's last message (0: off)",
    )
    flags.add(
        "--kv-cache-tokens",
        type=int,
        default=defaults.kv_cache_tokens,
        help="KV-cache positions in all (default: max-running x context length)",
    )
    flags.add("--kv-block-size", type=int, default=defaults.block_size, help="positions per KV-cache block")
    parser.add_argument(
        "--no-prefix-cache",
        dest="prefix_cache",
        action="store_false",
        help="do not reuse the cached KV blocks of a prompt prefix seen before",
    )
    flags.add(
        "--decode-rows",
        choices=["auto", "on", "off"],
        default="auto",
        help="keep the decode batch's keys and values also in rows of their own, read as views instead of "
        "gathering its KV blocks every layer (faster decode, up to max-running x context positions more memory, "
        "never more than the pool); auto: on the CPU only",
    )
    flags.add("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    flags.add(
        "--tool-call-parser",
        default=AUTO_TOOL_FORMAT,
        choices=[AUTO_TOOL_FORMAT, *FORMATS],
        help="format of the model's tool calls (auto: the one its chat template implies)",
    )
    flags.add(
        "--max-tool-calls",
        type=max_tool_calls_flag,
        default=DEFAULT_MAX_CALLS,
        help=f"most tool calls one turn may hold with parallel_tool_calls (1..{MAX_CALLS_LIMIT})",
    )
    args = parse(parser, argv)
    try:
        config = EngineConfig(
            args.max_running,
            args.max_waiting,
            args.max_batched_tokens,
            args.prefill_chunk,
            stream_interval_tokens=args.stream_interval_tokens,
            stream_interval_ms=args.stream_interval_ms,
            kv_cache_tokens=args.kv_cache_tokens,
            block_size=args.kv_block_size,
            prefix_cache=args.prefix_cache,
            decode_rows={"auto": None, "on": True, "off": False}[args.decode_rows],
        )
    except ValueError as error:
        parser.error(str(error))
    device = None if args.device == "auto" else args.device
    run(
        "inference",
        args,
        lambda: InferenceService(args.model, device, config, args.threads, args.tool_call_parser, args.max_tool_calls),
    )


if __name__ == "__main__":
    main()
