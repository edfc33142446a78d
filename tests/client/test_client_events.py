"""GatewayEvents as the client's typed events, field by field: log-probabilities, stage spans, passage offsets;
a newer server's enum values (the contract plans FINISH_REASON_TOOL_CALLS = 5) reach the client as ``unknown_<n>``
instead of failing the whole answer or job; Sampling(logprobs=n) reaches SamplingParams.logprobs."""

from __future__ import annotations

from genmesh.client import Delta, Passage, Sampling, Sources, StageSpan, TokenLogprob, TopLogprob
from genmesh.client.events import complete, enum_name, event_of
from genmesh.client.jobs import job_of
from genmesh.v1 import common_pb2, gateway_pb2, jobs_pb2


def test_an_unknown_finish_reason_is_named_not_raised() -> None:
    assert complete(common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_LENGTH)).finish_reason == "length"
    assert complete(common_pb2.Completion(finish_reason=common_pb2.FINISH_REASON_TOOL_CALLS)).finish_reason == (
        "tool_calls"
    )
    assert (
        complete(common_pb2.Completion(finish_reason=common_pb2.FinishReason.ValueType(42))).finish_reason
        == "unknown_42"
    )


def test_an_unknown_job_state_is_named_not_raised() -> None:
    assert job_of(jobs_pb2.Job(id="j", state=jobs_pb2.JOB_STATE_QUEUED)).state == "queued"
    assert job_of(jobs_pb2.Job(id="j", state=jobs_pb2.JobState.ValueType(42))).state == "unknown_42"
    assert enum_name(jobs_pb2.JobState, 0, "JOB_STATE_") == "unspecified"


def test_logprobs_stage_spans_and_passage_offsets_reach_the_events() -> None:
    top = common_pb2.TopLogprob(token_id=8, text=" is", logprob=-1.5)
    token = common_pb2.TokenLogprob(token_id=7, logprob=-0.25, top=[top])
    delta = event_of(gateway_pb2.GatewayEvent(delta=common_pb2.TokenDelta(token_ids=[7], text=" a", logprobs=[token])))
    assert delta == Delta(" a", [7], [TokenLogprob(7, -0.25, [TopLogprob(8, " is", -1.5)])])
    found = common_pb2.Passage(chunk_id="c", document_id="d", text="yield", rank=1, start=10, end=15)
    sources = event_of(gateway_pb2.GatewayEvent(sources=gateway_pb2.Sources(passages=[found])))
    assert isinstance(sources, Sources) and sources.passages == [Passage("c", "d", "", "yield", 0.0, 1, {}, 10, 15)]
    timings = common_pb2.Timings(total_ms=9, stages=[common_pb2.StageSpan(stage="inference", start_ms=2, end_ms=9)])
    done = complete(common_pb2.Completion(timings=timings))
    assert done.timings.stages == [StageSpan("inference", 2.0, 9.0)] and done.timings.total_ms == 9


def test_sampling_asks_for_logprobs() -> None:
    assert Sampling(logprobs=3).proto().logprobs == 3
    assert not Sampling().proto().HasField("logprobs")
