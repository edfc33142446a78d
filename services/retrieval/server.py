"""The retrieval service's gRPC server: a thin servicer over the passage index, and its entry point."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import grpc

from genmesh import mesh
from genmesh.config import add_server_flags, parse
from genmesh.errors import Unavailable
from genmesh.server import run
from genmesh.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.corpus import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE
from services.retrieval.index import DEFAULT_COLLECTION, PassageIndex

DEFAULT_QUERY_TOP_K = 4


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Protobuf in, protobuf out; the index does the ranking."""

    def __init__(self, service: RetrievalService) -> None:
        self._service = service

    async def Query(
        self, request: retrieval_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.QueryResponse:
        index = self._service.index()
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_QUERY_TOP_K
        hits = index.query(request.text, top_k, request.collection or DEFAULT_COLLECTION)
        return retrieval_pb2.QueryResponse(
            passages=[
                common_pb2.Passage(
                    chunk_id=h.chunk_id,
                    document_id=h.document_id,
                    title=h.title,
                    text=h.text,
                    score=h.score,
                    rank=h.rank,
                )
                for h in hits
            ]
        )

    async def GetStats(
        self, request: retrieval_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetStatsResponse:
        stats = self._service.index().stats()
        return retrieval_pb2.GetStatsResponse(
            collections=[
                retrieval_pb2.CollectionStats(name=s.name, documents=s.documents, chunks=s.chunks)
                for s in stats.values()
            ]
        )


class RetrievalService:
    """The retrieval service as the server bootstrap runs it: ready once the demo index is built."""

    service_name = mesh.RETRIEVAL.grpc_service

    def __init__(self, chunk_size: int, chunk_overlap: int) -> None:
        self._chunk_size = chunk_size
        self._chunk_overlap = chunk_overlap
        self._index: PassageIndex | None = None

    def index(self) -> PassageIndex:
        """The index, once built."""
        if self._index is None:
            raise Unavailable("the index is still being built")
        return self._index

    def register(self, server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(self), server)

    async def start(self) -> None:
        self._index = await asyncio.to_thread(
            PassageIndex, chunk_size=self._chunk_size, chunk_overlap=self._chunk_overlap
        )

    async def stop(self) -> None:
        self._index = None


def main(argv: Sequence[str] | None = None) -> None:
    """Run the retrieval service until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="genmesh serve retrieval", description=__doc__)
    flags = add_server_flags(parser, "retrieval", mesh.RETRIEVAL.default_port)
    flags.add("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="characters per passage")
    flags.add("--chunk-overlap", type=int, default=DEFAULT_CHUNK_OVERLAP, help="characters shared by neighbours")
    args = parse(parser, argv)
    run("retrieval", args, lambda: RetrievalService(args.chunk_size, args.chunk_overlap))


if __name__ == "__main__":
    main()
