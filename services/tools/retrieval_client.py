"""The tools service's gRPC client of the retrieval service: the transport behind the search_docs tool."""

from __future__ import annotations

import grpc

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.errors import DeadlineExceeded, GenmeshError, InvalidArgument, Unavailable
from genmesh.logs import REQUEST_ID
from genmesh.status import from_rpc_error
from genmesh.targets import channel_target, parse_target
from genmesh.tls import ClientTLS, server_name
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.tools.builtin.search_docs import FoundPassage

_RENAMES = {"text": "query", "top_k": "top_k", "collection": "collection"}


class RetrievalSearcher:
    """Calls ``RetrievalService.Query`` at ``target``; open it inside the running event loop, ``close()`` it."""

    def __init__(self, target: str, tls: ClientTLS | None = None) -> None:
        self.target = target
        spec = parse_target(target)
        tls = None if tls is None else tls.for_server(server_name(spec))
        self._channel = open_channel(channel_target(spec), mesh.RETRIEVAL.grpc_service, tls=tls)
        self._stub = retrieval_pb2_grpc.RetrievalServiceStub(self._channel)

    async def __call__(self, query: str, top_k: int, collection: str, timeout_s: float | None) -> list[FoundPassage]:
        request = retrieval_pb2.QueryRequest(
            request_id=REQUEST_ID.get(), text=query, top_k=top_k, collection=collection
        )
        try:
            response: retrieval_pb2.QueryResponse = await self._stub.Query(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            raise _tool_error(error, self.target) from None
        return [
            FoundPassage(p.rank, round(float(p.score), 6), p.title, p.text, p.document_id, p.chunk_id)
            for p in response.passages
        ]

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


def _tool_error(error: grpc.aio.AioRpcError, target: str) -> GenmeshError:
    """Retrieval's failure as the tool call's: argument mistakes name the tool's arguments, the rest is
    UNAVAILABLE (or DEADLINE_EXCEEDED when the call's time ran out)."""
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"search_docs: retrieval did not answer in time ({target})")
    if code == grpc.StatusCode.NOT_FOUND:
        return InvalidArgument.field("collection", error.details() or "no such collection")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        mistake = from_rpc_error(error)
        assert isinstance(mistake, InvalidArgument)
        return InvalidArgument([type(v)(_RENAMES.get(v.field, v.field), v.description) for v in mistake.violations])
    return Unavailable(f"search_docs: retrieval at {target} failed with {code.name}: {error.details() or ''}")
