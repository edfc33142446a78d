"""EmbeddingService: embeddings of clients' texts, computed by the retrieval service's embedder
(RetrievalService.Embed), served by the gateway so that API keys, their scopes and their limits apply.

The request is checked here first (genmesh.embeddings, against the embedder GetEmbedderInfo names), so that a bad
one costs its key nothing and never reaches retrieval. A key with limits is let in as one stream of
gateway.auth.limits (requests per minute, concurrent streams) and charged the inputs' tokens.
"""

from __future__ import annotations

import grpc

from gateway.auth.caller import current_caller
from gateway.auth.limits import KeyLimiter
from gateway.upstreams import Upstreams
from genmesh import mesh
from genmesh.deadlines import deadline_after, timeout
from genmesh.embeddings import embed_violations
from genmesh.errors import InvalidArgument, NotFound, quote
from genmesh.logs import REQUEST_ID
from genmesh.status import from_rpc_error
from genmesh.v1 import common_pb2, embeddings_pb2, embeddings_pb2_grpc, retrieval_pb2

SERVICE_NAME = embeddings_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


class EmbeddingServicer(embeddings_pb2_grpc.EmbeddingServiceServicer):
    """Checks, admits and forwards Embed to a retrieval replica (under its circuit breaker)."""

    def __init__(self, upstreams: Upstreams, key_limits: KeyLimiter) -> None:
        self._upstreams = upstreams
        self._key_limits = key_limits

    async def Embed(
        self, request: embeddings_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embeddings_pb2.EmbedResponse:
        deadline = deadline_after(context.time_remaining())
        try:
            info = await self._upstreams.embedder_info(deadline)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        if request.model and request.model != info.model:
            raise NotFound(
                f"model {quote(request.model)} does not exist: the embedding model is {info.model!r} "
                "(ModelService.ListModels lists the models)"
            )
        dimensions = request.dimensions if request.HasField("dimensions") else None
        if bad := embed_violations(request.inputs, dimensions, info.dimensions):
            raise InvalidArgument(bad)
        upstream = retrieval_pb2.RetrievalServiceEmbedRequest(
            request_id=request.request_id or REQUEST_ID.get(), inputs=request.inputs
        )
        if dimensions is not None:
            upstream.dimensions = dimensions
        with self._key_limits.stream(current_caller()) as meter:
            try:
                async for attempt in self._upstreams.guard(mesh.RETRIEVAL.name).attempts(deadline, "Embed"):
                    with attempt:
                        answer = await self._upstreams.retrieval.Embed(upstream, timeout=timeout(deadline))
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from None
            tokens = sum(answer.input_tokens)
            if meter is not None:
                meter.charge(tokens)
        return embeddings_pb2.EmbedResponse(
            embeddings=answer.embeddings, model=answer.model, usage=common_pb2.Usage(prompt_tokens=tokens)
        )
