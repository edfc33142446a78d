"""A gateway served in-process over a real retrieval service (its embedder) and a real inference service (the
shipped model), each by the real bootstrap on free loopback ports; the tools service is a health-only stand-in
(the gateway waits for it at start-up, and these tests never call a tool)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.keystore import KeyStore
from gateway.jobs.config import JobConfig
from gateway.server import GatewayService
from gateway.upstreams import UpstreamTargets
from genmesh import mesh
from services.inference.engine import EngineConfig
from services.inference.server import DEFAULT_MODEL, InferenceService
from services.retrieval.server import RetrievalService
from support.served import Hosted, served


@dataclass(frozen=True, slots=True)
class ModelMesh:
    """Where each part answers."""

    gateway: str
    retrieval: str
    inference: str
    retrieval_service: RetrievalService


def retrieval_service(data_dir: Path, batch_window_ms: float = 5.0) -> RetrievalService:
    """A retrieval service with the default embedder, storing under ``data_dir``."""
    args = argparse.Namespace(
        data_dir=str(data_dir),
        embedder="",
        device="cpu",
        precision="float32",
        threads=1,
        chunk_size=800,
        chunk_overlap=160,
        index="flat",
        hnsw_m=32,
        batch_window_ms=batch_window_ms,
        max_batch=64,
        read_threads=1,
        seed_demo=False,
    )
    return RetrievalService(args)


@asynccontextmanager
async def model_mesh(tmp_path: Path, api_keys: KeyStore | None = None) -> AsyncIterator[ModelMesh]:
    """The gateway (requiring ``api_keys``' keys when given) and its real upstreams, until the block ends."""
    async with AsyncExitStack() as stack:
        embedder = retrieval_service(tmp_path / "retrieval")
        retrieval = await stack.enter_async_context(served(embedder, metrics=False))
        inference = await stack.enter_async_context(
            served(InferenceService(DEFAULT_MODEL, "cpu", EngineConfig(), threads=1), metrics=False)
        )
        tools = await stack.enter_async_context(served(Hosted(mesh.TOOLS.grpc_service, lambda _: None), False))
        targets = UpstreamTargets(retrieval.address, tools.address, inference.address)
        jobs = JobConfig(str(tmp_path / "jobs.db"), workers=1)
        gateway = await stack.enter_async_context(
            served(GatewayService(targets, 60.0, jobs, None, api_keys), metrics=False)
        )
        yield ModelMesh(gateway.address, retrieval.address, inference.address, embedder)
