"""How `genmesh ask` (and `jobs watch`) show an answer's events: as text for people (EventPrinter), or as one JSON
object per line for scripts (JsonEventWriter).

The text shows each source document once, with its best passage's rank score: the gateway retrieves in hybrid
mode, whose score is a reciprocal rank fusion (the sum over the keyword and the embedding ranking of
1 / (60 + rank)), so 2/61 ≈ 0.033 is the best any passage can get, not a poor relevance.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TextIO

from google.protobuf import json_format

from genmesh.status import code_of_value
from genmesh.v1 import common_pb2, gateway_pb2

RRF_BEST = 2 / 61
"""The largest reciprocal-rank-fusion score: first in both rankings."""


def source_lines(passages: Sequence[common_pb2.Passage]) -> list[str]:
    """One line per document, in the order of its best passage (the first listed), with that passage's rank and
    rank score and how many passages of it were retrieved."""
    best: dict[str, tuple[common_pb2.Passage, int]] = {}
    for passage in passages:
        key = passage.document_id or passage.chunk_id
        first, count = best.get(key, (passage, 0))
        best[key] = (first, count + 1)
    lines = [f"Sources: (rank score: reciprocal rank fusion of keyword and embedding ranks, {RRF_BEST:.3f} at best)"]
    for number, (passage, count) in enumerate(best.values(), 1):
        more = f", {count} passages" if count > 1 else ""
        lines.append(
            f"  {number}. {passage.title} ({passage.document_id}) rank {passage.rank}, "
            f"rank score {passage.score:.3f}{more}"
        )
    return lines


def _token_text(entry: common_pb2.TokenLogprob, delta: common_pb2.TokenDelta) -> str:
    for top in entry.top:
        if top.token_id == entry.token_id:
            return top.text
    return delta.text if len(delta.token_ids) == 1 else f"#{entry.token_id}"


def logprob_lines(deltas: Sequence[common_pb2.TokenDelta]) -> list[str]:
    """Each generated token with its log-probability and the alternatives asked for."""
    lines = ["Logprobs (token, logprob, most likely alternatives):"]
    for delta in deltas:
        for entry in delta.logprobs:
            top = ", ".join(f"{t.text!r} {t.logprob:.3f}" for t in entry.top)
            lines.append(f"  {_token_text(entry, delta)!r:<16} {entry.logprob:8.3f}" + (f"   {top}" if top else ""))
    return lines


def _completion_lines(done: common_pb2.Completion) -> list[str]:
    t = done.timings
    reason = common_pb2.FinishReason.Name(done.finish_reason).removeprefix("FINISH_REASON_").lower()
    return [
        "",
        f"finish: {reason}  tokens: prompt {done.usage.prompt_tokens}, completion {done.usage.completion_tokens}",
        f"timings (ms): retrieval {t.retrieval_ms:.1f}  tools {t.tools_ms:.1f}  pre-inference {t.pre_inference_ms:.1f}"
        f"  queue {t.queue_ms:.1f}  first token {t.time_to_first_token_ms:.1f}  total {t.total_ms:.1f}",
    ]


class EventPrinter:
    """Prints the events of one answer as they arrive: sources, tool results, the answer, the completion."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.completion: common_pb2.Completion | None = None
        self._answer_started = False
        self._mid_line = False
        self._logprobs: list[common_pb2.TokenDelta] = []

    def show(self, event: gateway_pb2.GatewayEvent) -> None:
        """Print one event."""
        kind = event.WhichOneof("event")
        if kind == "complete":
            self.completion = event.complete
            lines = _completion_lines(event.complete)
            if self._logprobs:
                lines[1:1] = logprob_lines(self._logprobs)
            self._print(*lines)
        elif kind == "sources":
            self._print(*source_lines(event.sources.passages))
        elif kind == "tool_result":
            r = event.tool_result
            outcome = r.result_json if r.WhichOneof("outcome") == "result_json" else f"error: {r.error.message}"
            self._print(f"Tool {r.name} [{r.call_id}] ({r.duration_ms:.0f} ms): {outcome}")
        elif kind == "degraded":
            d = event.degraded
            self._print(f"Degraded: {d.stage} failed ({code_of_value(d.code).name}): {d.message}")
        elif kind == "delta":
            if not self._answer_started:
                self.out.write("Answer: ")
                self._answer_started = True
            if event.delta.logprobs:
                self._logprobs.append(event.delta)
            self.out.write(event.delta.text)
            self.out.flush()
            self._mid_line = True

    def interrupted(self) -> None:
        """The answer stops here (Ctrl-C): end its line."""
        if self._mid_line:
            self._print()

    def _print(self, *lines: str) -> None:
        if self._mid_line:
            self.out.write("\n")
        for line in lines:
            print(line, file=self.out)
        self.out.flush()
        self._mid_line = False


class JsonEventWriter:
    """`genmesh ask --json`: each event as one line of proto3 JSON, as it arrives (``{"sources": {...}}``,
    ``{"toolResult": {...}}``, ``{"degraded": {...}}``, ``{"delta": {"text": ...}}``, then ``{"complete": {...}}``);
    a failed call ends with one ``{"error": {...}}`` line instead (genmesh.cli.rpc_errors.error_json)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.completion: common_pb2.Completion | None = None

    def show(self, event: gateway_pb2.GatewayEvent) -> None:
        """Write one event."""
        if event.HasField("complete"):
            self.completion = event.complete
        self.write(json_format.MessageToDict(event))

    def write(self, value: object) -> None:
        """One JSON line."""
        self.out.write(json.dumps(value, ensure_ascii=False) + "\n")
        self.out.flush()

    def interrupted(self) -> None:
        """Nothing to end: every line is whole."""
