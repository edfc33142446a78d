"""What `genmesh ask` and `genmesh jobs list` print: each source document once with its rank score labelled,
the logprobs asked for, JSON lines that parse back into the events, a job table with a header."""

from __future__ import annotations

import io
import json

from google.protobuf import json_format

from genmesh.cli.ask_output import RRF_BEST, EventPrinter, JsonEventWriter, source_lines
from genmesh.cli.jobs import job_table
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2


def passage(document: str, rank: int, score: float) -> common_pb2.Passage:
    return common_pb2.Passage(
        chunk_id=f"{document}#{rank}", document_id=document, title=document.title(), rank=rank, score=score
    )


EVENTS = [
    gateway_pb2.GatewayEvent(
        sources=gateway_pb2.Sources(
            passages=[
                passage("with", 1, 0.0328),
                passage("with", 2, 0.031),
                passage("yield", 3, 0.016),
                passage("with", 4, 0.015),
            ]
        )
    ),
    gateway_pb2.GatewayEvent(
        delta=common_pb2.TokenDelta(
            token_ids=[7],
            text="The",
            logprobs=[
                common_pb2.TokenLogprob(
                    token_id=7,
                    logprob=-0.25,
                    top=[
                        common_pb2.TopLogprob(token_id=7, text="The", logprob=-0.25),
                        common_pb2.TopLogprob(token_id=9, text="A", logprob=-1.5),
                    ],
                )
            ],
        )
    ),
    gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(token_ids=[8], text=" with")),
    gateway_pb2.GatewayEvent(
        complete=common_pb2.Completion(
            finish_reason=common_pb2.FINISH_REASON_LENGTH, usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=2)
        )
    ),
]


def test_each_source_document_once_with_its_best_passage_and_a_labelled_rank_score() -> None:
    lines = source_lines(EVENTS[0].sources.passages)
    assert lines[0].startswith("Sources:") and "reciprocal rank fusion" in lines[0] and f"{RRF_BEST:.3f}" in lines[0]
    assert lines[1:] == [
        "  1. With (with) rank 1, rank score 0.033, 3 passages",
        "  2. Yield (yield) rank 3, rank score 0.016",
    ]


def test_the_text_shows_the_answer_then_its_logprobs_then_the_finish() -> None:
    out = io.StringIO()
    printer = EventPrinter(out)
    for event in EVENTS:
        printer.show(event)
    text = out.getvalue()
    assert "Answer: The with\n\nLogprobs" in text
    assert "'The'" in text and "-0.250" in text and "'A' -1.500" in text
    assert text.index("Logprobs") < text.index("finish: length  tokens: prompt 5, completion 2")
    assert printer.completion == EVENTS[-1].complete


def test_an_interrupted_answer_ends_its_line() -> None:
    out = io.StringIO()
    printer = EventPrinter(out)
    printer.show(EVENTS[1])
    printer.interrupted()
    assert out.getvalue() == "Answer: The\n"


def test_json_lines_are_the_events_as_proto3_json() -> None:
    out = io.StringIO()
    writer = JsonEventWriter(out)
    for event in EVENTS:
        writer.show(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(EVENTS)
    parsed = [json_format.ParseDict(json.loads(line), gateway_pb2.GatewayEvent()) for line in lines]
    assert parsed == EVENTS
    assert json.loads(lines[-1])["complete"]["finishReason"] == "FINISH_REASON_LENGTH"
    assert writer.completion == EVENTS[-1].complete


def test_jobs_list_has_a_header_and_aligned_columns() -> None:
    jobs = [
        jobs_pb2.Job(
            id="job-1",
            state=jobs_pb2.JOB_STATE_RUNNING,
            priority=5,
            attempts=1,
            request=gateway_pb2.GatewayRequest(question="What\nis yield?"),
        ),
        jobs_pb2.Job(
            id="job-22", state=jobs_pb2.JOB_STATE_SUCCEEDED, request=gateway_pb2.GatewayRequest(question="Hi")
        ),
    ]
    header, first, second = job_table(jobs)
    assert header.split() == ["ID", "STATE", "PRIORITY", "ATTEMPTS", "CREATED", "QUESTION"]
    assert first.split()[:4] == ["job-1", "running", "5", "1"] and first.endswith("What is yield?")
    assert second.split()[:4] == ["job-22", "succeeded", "0", "0"]
    assert header.index("STATE") == first.index("running") == second.index("succeeded")
    assert [row.split() for row in job_table([])] == [header.split()]
