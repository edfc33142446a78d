"""The retrieval service's gRPC server: a thin servicer over the Retriever, and its entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from genmesh import mesh
from genmesh.config import add_server_flags, parse, parse_bool
from genmesh.errors import FieldViolation, InvalidArgument, Unavailable
from genmesh.metrics import current as current_metrics
from genmesh.server import run
from genmesh.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.catalog import IngestRecord
from services.retrieval.corpus import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, Document
from services.retrieval.embedder import PRECISIONS, SentenceTransformerEmbedder, default_model_path
from services.retrieval.embedding import TextEmbeddings
from services.retrieval.ingest import seed_demo
from services.retrieval.metrics import RetrievalMetrics
from services.retrieval.retriever import Retriever, RetrieverConfig
from services.retrieval.schema import DATABASE_FILE
from services.retrieval.validation import DEFAULT_TOP_K, SearchMode, check_query
from services.retrieval.vectors import IndexKind, IndexOptions

log = logging.getLogger("genmesh.retrieval")

DEFAULT_DATA_DIR = ".genmesh/data/retrieval"
_MODES = {
    retrieval_pb2.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID,
    retrieval_pb2.SEARCH_MODE_DENSE: SearchMode.DENSE,
    retrieval_pb2.SEARCH_MODE_BM25: SearchMode.BM25,
    retrieval_pb2.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
}


def _documents(messages: Sequence[retrieval_pb2.Document]) -> list[Document]:
    return [Document(d.id, d.title, d.text, dict(d.metadata)) for d in messages]


def _progress(record: IngestRecord) -> retrieval_pb2.IngestProgress:
    return retrieval_pb2.IngestProgress(
        ingest_id=record.ingest_id,
        collection=record.collection,
        documents=record.documents,
        chunks=record.chunks,
        last_document_id=record.last_document_id,
        completed=record.completed,
    )


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    """Protobuf in, protobuf out; the Retriever does the work."""

    def __init__(self, service: RetrievalService) -> None:
        self._service = service

    async def Query(
        self, request: retrieval_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.QueryResponse:
        retriever = self._service.retriever()
        params = check_query(
            request.text,
            request.top_k if request.HasField("top_k") else DEFAULT_TOP_K,
            _MODES.get(request.mode),
            request.collection or mesh.DEFAULT_COLLECTION,
            dict(request.filters),
            request.min_score if request.HasField("min_score") else None,
        )
        hits = await retriever.query(params)
        return retrieval_pb2.QueryResponse(
            passages=[
                common_pb2.Passage(
                    chunk_id=h.chunk_id,
                    document_id=h.document_id,
                    title=h.title,
                    text=h.text,
                    score=h.score,
                    rank=h.rank,
                    metadata=h.metadata,
                    start=h.start,
                    end=h.end,
                )
                for h in hits
            ]
        )

    async def Upsert(
        self, request: retrieval_pb2.UpsertRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.UpsertResponse:
        result = await self._service.retriever().upsert(request.collection, _documents(request.documents))
        return retrieval_pb2.UpsertResponse(documents=result.documents, replaced=result.replaced, chunks=result.chunks)

    async def UpsertStream(
        self, request_iterator: AsyncIterator[retrieval_pb2.UpsertStreamRequest], context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.UpsertStreamResponse:
        retriever = self._service.retriever()
        session = None
        async for message in request_iterator:
            if session is None:
                session = retriever.ingest(message.collection, message.ingest_id or None, message.resume)
            elif message.collection and message.collection != session.collection:
                raise InvalidArgument.field("collection", "must be the same in every message of a stream (or empty)")
            await session.add(_documents(message.documents))
        if session is None:
            raise InvalidArgument(FieldViolation("documents", "the stream sent no message"))
        return retrieval_pb2.UpsertStreamResponse(progress=_progress(await session.finish()))

    async def Delete(
        self, request: retrieval_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.DeleteResponse:
        result = await self._service.retriever().delete(
            request.collection, list(request.document_ids), dict(request.filters)
        )
        return retrieval_pb2.DeleteResponse(documents=result.documents, chunks=result.chunks)

    async def GetStats(
        self, request: retrieval_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetStatsResponse:
        retriever = self._service.retriever()
        stats = await retriever.stats(request.collection or None)
        batches = retriever.batch_stats
        return retrieval_pb2.GetStatsResponse(
            collections=[
                retrieval_pb2.CollectionStats(
                    name=s.name,
                    documents=s.documents,
                    chunks=s.chunks,
                    vectors=s.vectors,
                    index_kind=s.index_kind,
                    index_bytes=s.index_bytes,
                    embedder=s.embedder,
                    dim=s.dim,
                    generation=s.generation,
                )
                for s in stats
            ],
            store_bytes=retriever.store_bytes(),
            queries_encoded=batches.items,
            query_batches=batches.batches,
        )

    async def GetIngestProgress(
        self, request: retrieval_pb2.GetIngestProgressRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetIngestProgressResponse:
        record = await self._service.retriever().ingest_progress(request.ingest_id)
        return retrieval_pb2.GetIngestProgressResponse(progress=_progress(record))

    async def Embed(
        self, request: retrieval_pb2.RetrievalServiceEmbedRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.RetrievalServiceEmbedResponse:
        embeddings = self._service.embeddings()
        dimensions = request.dimensions if request.HasField("dimensions") else None
        vectors, tokens = await embeddings.embed(list(request.inputs), dimensions)
        return retrieval_pb2.RetrievalServiceEmbedResponse(
            embeddings=[common_pb2.Embedding(index=i, values=v.tolist()) for i, v in enumerate(vectors)],
            model=embeddings.embedder.name,
            input_tokens=tokens,
        )

    async def GetEmbedderInfo(
        self, request: retrieval_pb2.GetEmbedderInfoRequest, context: grpc.aio.ServicerContext
    ) -> retrieval_pb2.GetEmbedderInfoResponse:
        embedder = self._service.embeddings().embedder
        return retrieval_pb2.GetEmbedderInfoResponse(
            model=embedder.name, dimensions=embedder.dim, max_input_tokens=embedder.max_input_tokens
        )


class RetrievalService:
    """The retrieval service as the server bootstrap runs it: ready once the model is loaded, the store open
    and its indexes current, and (with ``seed_demo``) the demo collection loaded."""

    service_name = mesh.RETRIEVAL.grpc_service
    also_serves: tuple[str, ...] = ()
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._retriever: Retriever | None = None
        self._opened: Retriever | None = None
        self._embeddings: TextEmbeddings | None = None

    def embeddings(self) -> TextEmbeddings:
        """The embedder as clients use it, once ready."""
        if self._embeddings is None or self._retriever is None:
            raise Unavailable("the retrieval service is still starting")
        return self._embeddings

    def retriever(self) -> Retriever:
        """The retriever, once ready."""
        if self._retriever is None:
            raise Unavailable("the retrieval service is still starting")
        return self._retriever

    def register(self, server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(self), server)

    async def start(self) -> None:
        args = self._args
        config = RetrieverConfig(
            data_dir=Path(args.data_dir),
            chunk_size=args.chunk_size,
            chunk_overlap=args.chunk_overlap,
            index=IndexOptions(kind=IndexKind(args.index), hnsw_m=args.hnsw_m),
            batch_window_ms=args.batch_window_ms,
            max_batch=args.max_batch,
            read_threads=args.read_threads,
        )
        model = Path(args.embedder) if args.embedder else default_model_path()
        started = time.perf_counter()
        embedder = await asyncio.to_thread(
            SentenceTransformerEmbedder, model, device=args.device, precision=args.precision, threads=args.threads
        )
        log.info(
            "embedder loaded", extra={**embedder.describe(), "duration_s": round(time.perf_counter() - started, 2)}
        )
        registry = current_metrics()
        metrics = None if registry is None else RetrievalMetrics(registry)
        retriever = Retriever(config, embedder, metrics)
        self._opened = retriever
        await retriever.open()
        self._embeddings = TextEmbeddings(
            embedder, retriever.encoder, window_s=config.batch_window_ms / 1000.0, max_batch=config.max_batch
        )
        if metrics is not None:
            metrics.watch_store(config.data_dir / DATABASE_FILE)
        if args.seed_demo:
            started = time.perf_counter()

            def report(record: IngestRecord) -> None:
                log.info("seeding the demo collection", extra={"documents": record.documents, "chunks": record.chunks})

            if await seed_demo(retriever, report):
                log.info(
                    "demo collection seeded",
                    extra={
                        "collection": mesh.DEFAULT_COLLECTION,
                        "duration_s": round(time.perf_counter() - started, 1),
                    },
                )
        self._retriever = retriever
        log.info("store open", extra={"data_dir": str(config.data_dir), "batch_window_ms": config.batch_window_ms})

    def drain(self) -> None:
        """Nothing to announce: health already reports NOT_SERVING."""

    async def stop(self) -> None:
        self._retriever = None
        if self._embeddings is not None:
            await self._embeddings.close()
            self._embeddings = None
        if self._opened is not None:
            await self._opened.close()
            self._opened = None


def main(argv: Sequence[str] | None = None) -> None:
    """Run the retrieval service until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="genmesh serve retrieval", description=__doc__)
    flags = add_server_flags(parser, "retrieval", mesh.RETRIEVAL.default_port)
    flags.add("--data-dir", default=DEFAULT_DATA_DIR, help="directory of the SQLite store and the vector indexes")
    flags.add("--embedder", default="", help="local sentence-transformers model directory (default: all-MiniLM-L6-v2)")
    flags.add("--device", default="cpu", help="torch device of the embedder: cpu, cuda, cuda:N")
    flags.add(
        "--precision", default="auto", choices=PRECISIONS, help="embedder arithmetic; auto: bfloat16 where native"
    )
    flags.add("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    flags.add("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="characters per passage")
    flags.add("--chunk-overlap", type=int, default=DEFAULT_CHUNK_OVERLAP, help="characters shared by neighbours")
    flags.add("--index", default="flat", choices=[k.value for k in IndexKind], help="dense index: exact or HNSW")
    flags.add("--hnsw-m", type=int, default=32, help="HNSW links per node")
    flags.add("--batch-window-ms", type=float, default=2.0, help="micro-batching window of query encoding; 0 = off")
    flags.add("--max-batch", type=int, default=64, help="most queries encoded in one forward pass")
    flags.add("--read-threads", type=int, default=4, help="threads that run searches")
    flags.add(
        "--seed-demo", type=parse_bool, default=False, nargs="?", const=True, help="load the demo collection if absent"
    )
    args = parse(parser, argv)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    run("retrieval", args, lambda: RetrievalService(args))


if __name__ == "__main__":
    main()
