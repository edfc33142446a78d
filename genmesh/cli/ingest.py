"""`genmesh ingest`: stream documents into the retrieval service with UpsertStream, resumably, with a progress bar.

The load has an ingest id (derived from what is loaded unless given). Before streaming, the client asks the
service how far a load with that id got; an unfinished one resumes after the documents already committed,
and a stream that breaks (the service restarted) is resumed the same way, up to ``retries`` times. The bar
shows committed documents, as GetIngestProgress reports them, not merely sent ones.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc
from tqdm import tqdm

from genmesh.channels import open_channel
from genmesh.tasks import cancel_and_wait
from genmesh.tls import ClientTLS
from genmesh.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.corpus import Document, load_folder, load_python_reference

_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """What to load, where, and how."""

    target: str
    collection: str
    ingest_id: str
    batch: int = 8
    restart: bool = False
    retries: int = 3
    poll_s: float = 0.5
    tls: ClientTLS | None = None


def demo_documents() -> list[Document]:
    """The demo corpus: the Python language reference of this interpreter."""
    return load_python_reference()


def folder_documents(path: Path) -> list[Document]:
    """The .txt and .md files under ``path``."""
    return load_folder(path)


def default_ingest_id(collection: str, source: str) -> str:
    """``<collection>:<source>``, e.g. ``python-reference:demo`` (kept short enough for the service)."""
    return f"{collection}:{source}"[-256:]


def _messages(
    options: IngestOptions, documents: Sequence[Document], start: int, resume: bool
) -> AsyncIterator[retrieval_pb2.UpsertStreamRequest]:
    async def generate() -> AsyncIterator[retrieval_pb2.UpsertStreamRequest]:
        first = True
        for offset in range(start, len(documents), options.batch):
            message = retrieval_pb2.UpsertStreamRequest(
                documents=[
                    retrieval_pb2.Document(id=d.doc_id, title=d.title, text=d.text, metadata=dict(d.metadata))
                    for d in documents[offset : offset + options.batch]
                ]
            )
            if first:
                message.collection, message.ingest_id, message.resume = options.collection, options.ingest_id, resume
                first = False
            yield message
        if first:  # nothing left to send: one message still closes the ingest as completed
            yield retrieval_pb2.UpsertStreamRequest(
                collection=options.collection, ingest_id=options.ingest_id, resume=resume
            )

    return generate()


async def _progress(
    stub: retrieval_pb2_grpc.RetrievalServiceStub, ingest_id: str
) -> retrieval_pb2.IngestProgress | None:
    try:
        response = await stub.GetIngestProgress(retrieval_pb2.GetIngestProgressRequest(ingest_id=ingest_id), timeout=5)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.NOT_FOUND, *_RESUMABLE):
            return None
        raise
    progress: retrieval_pb2.IngestProgress = response.progress
    return progress


async def ingest(options: IngestOptions, documents: Sequence[Document], out: TextIO = sys.stderr) -> int:
    """Load ``documents``; returns the documents committed in total by this ingest id. Raises AioRpcError."""
    async with open_channel(options.target, tls=options.tls) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        start, resume = 0, False
        before = None if options.restart else await _progress(stub, options.ingest_id)
        if before is not None and not before.completed and before.collection == options.collection:
            start, resume = min(int(before.documents), len(documents)), True
            print(f"resuming {options.ingest_id!r} after {start} committed documents", file=out)
        bar = tqdm(total=len(documents), initial=start, unit="doc", desc=options.collection, file=out)
        attempts = 0
        try:
            while True:
                watcher = asyncio.create_task(_watch(stub, options, bar))
                try:
                    response = await stub.UpsertStream(_messages(options, documents, start, resume))
                except grpc.aio.AioRpcError as error:
                    if error.code() not in _RESUMABLE or attempts >= options.retries:
                        raise
                    attempts += 1
                    await asyncio.sleep(min(2.0**attempts, 10.0))
                    now = await _progress(stub, options.ingest_id)
                    start, resume = (int(now.documents), True) if now is not None else (start, resume)
                    bar.write(f"stream broke ({error.code().name}); resuming after {start} documents", file=out)
                    continue
                finally:
                    await cancel_and_wait(watcher)
                bar.update(int(response.progress.documents) - bar.n)
                return int(response.progress.documents)
        finally:
            bar.close()


async def _watch(stub: retrieval_pb2_grpc.RetrievalServiceStub, options: IngestOptions, bar: tqdm[None]) -> None:
    """Move the bar to the committed count while the stream runs."""
    while True:
        await asyncio.sleep(options.poll_s)
        progress = await _progress(stub, options.ingest_id)
        if progress is not None and not progress.completed and int(progress.documents) > bar.n:
            bar.update(int(progress.documents) - bar.n)
