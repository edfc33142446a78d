"""The retrieval stage: one Query inside its budget and its share of the client's deadline; its passages become the
Sources event, its failure a Degraded."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import grpc

from gateway.deadlines import budget_timeout
from gateway.resilience import CircuitOpen
from gateway.stages.context import StageContext, client_mistake, degraded
from gateway.stages.span import StageSpan
from genmesh.deadlines import timeout
from genmesh.v1 import gateway_pb2, retrieval_pb2

STAGE = "retrieval"
_CLIENT_FIELDS = {"text": "question", "top_k": "retrieval.top_k"}


def _client_field(name: str) -> str:
    """A QueryRequest field as the gateway request's."""
    return _CLIENT_FIELDS.get(name) or f"retrieval.{name}"


class RetrievalStage:
    """Searches the knowledge base for the question (one attempt: gRPC's retry policy retries Query)."""

    def __init__(self, budget_s: float) -> None:
        self._budget_s = budget_s

    async def run(self, context: StageContext) -> AsyncIterator[gateway_pb2.GatewayEvent]:
        """Yield the Sources found, or a Degraded event when retrieval fails, misses its budget or finds its
        circuit open; a client mistake (bad top_k, unknown collection) fails the request. Traced and timed as
        the stage ``retrieval`` (gateway.stages.span)."""
        with StageSpan(STAGE, context.latency(STAGE)) as span:
            async with aclosing(self._query(context, span)) as events:
                async for event in events:
                    span.saw(event)
                    span.end()  # its one event is its outcome
                    yield event

    async def _query(self, context: StageContext, span: StageSpan) -> AsyncGenerator[gateway_pb2.GatewayEvent, None]:
        plan = context.plan
        budget_s = plan.retrieval_budget_s or self._budget_s
        limit = timeout(context.stage_deadline)
        # A miss of the stage's own budget counts against retrieval's circuit; a miss of the client's share
        # (a short client deadline) does not.
        if limit is None or budget_s < limit:
            by_budget, missed = True, f"{STAGE} missed its {budget_s * 1000:.0f} ms budget"
        else:
            by_budget, missed = False, f"{STAGE} missed its {limit * 1000:.0f} ms share of the request's deadline"
        query = retrieval_pb2.QueryRequest(
            request_id=plan.request_id, text=plan.question, top_k=plan.top_k, collection=plan.collection
        )
        stub = context.upstreams.retrieval
        response = retrieval_pb2.QueryResponse()
        try:
            async for attempt in context.upstreams.guard(STAGE).attempts(context.stage_deadline, "Query"):
                with attempt:
                    try:
                        with span.current():
                            call = stub.Query(query, timeout=budget_timeout(context.stage_deadline, budget_s))
                        response = await context.clock.timed(STAGE, call)
                    except grpc.aio.AioRpcError as error:
                        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and by_budget:
                            attempt.failed(error.code(), missed, counts=True)
                        raise
        except CircuitOpen as refused:
            yield degraded(STAGE, grpc.StatusCode.UNAVAILABLE, refused.message)
            return
        except grpc.aio.AioRpcError as error:
            mistake = client_mistake(error, _client_field)
            if mistake is not None:
                raise mistake from None
            code, message = error.code(), error.details() or ""
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                message = missed
            yield degraded(STAGE, code, message)
            return
        yield gateway_pb2.GatewayEvent(sources=gateway_pb2.Sources(passages=response.passages))
