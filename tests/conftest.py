"""Shared fixtures: a real mesh of four processes on free loopback ports, and clients of it; deploy/k8s rendered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from support.postgres import create_database, running_postgres

from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, start_mesh
from genmesh.v1 import gateway_pb2_grpc, inference_pb2_grpc, retrieval_pb2_grpc, tools_pb2_grpc


@pytest.fixture(scope="session")
def log_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mesh-logs")


@pytest.fixture(scope="session", autouse=True)
def retrieval_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One retrieval data directory for every retrieval process the session starts (never the working tree's).

    Processes share it safely (SQLite is the truth; each one's vector index follows its generation), so the
    demo collection is embedded once per session, by the first retrieval service started with --seed-demo.
    """
    path = tmp_path_factory.mktemp("retrieval-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENMESH_RETRIEVAL_DATA_DIR", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def gateway_jobs_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The job queue file of every gateway the session starts without --jobs-db (never the working tree's).

    The tests that use jobs start their own gateways, each with its own file."""
    path = tmp_path_factory.mktemp("gateway-data") / "jobs.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENMESH_GATEWAY_JOBS_DB", str(path))
        yield path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A Postgres server of the session's own (tests/support/postgres.py), started on first use; its URL."""
    with running_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database of that server, for one test."""
    return create_database(postgres_server)


@pytest_asyncio.fixture(scope="session")
async def mesh(log_root: Path) -> AsyncIterator[Mesh]:
    """The whole mesh with default settings, shared by the tests that don't change its configuration."""
    running = await start_mesh(log_dir=log_root / "default", extra_args={"inference": ["--threads", "1"]})
    yield running
    await running.stop(grace_s=2.0)


@pytest_asyncio.fixture(scope="session")
async def channels(mesh: Mesh) -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """One channel per service of the default mesh, by service name."""
    opened = {name: open_channel(mesh.address(name)) for name in mesh.services}
    yield opened
    for channel in opened.values():
        await channel.close()


@pytest.fixture
def gateway(channels: dict[str, grpc.aio.Channel]) -> gateway_pb2_grpc.GatewayServiceStub:
    return gateway_pb2_grpc.GatewayServiceStub(channels["gateway"])


@pytest.fixture
def inference(channels: dict[str, grpc.aio.Channel]) -> inference_pb2_grpc.InferenceServiceStub:
    return inference_pb2_grpc.InferenceServiceStub(channels["inference"])


@pytest.fixture
def retrieval(channels: dict[str, grpc.aio.Channel]) -> retrieval_pb2_grpc.RetrievalServiceStub:
    return retrieval_pb2_grpc.RetrievalServiceStub(channels["retrieval"])


@pytest.fixture
def tools(channels: dict[str, grpc.aio.Channel]) -> tools_pb2_grpc.ToolsServiceStub:
    return tools_pb2_grpc.ToolsServiceStub(channels["tools"])


@pytest.fixture(scope="session")
def kubectl() -> str:
    """kubectl, with its kustomize (tests/support/k8s.py): a dev tool that must be installed; missing, a test
    that needs it fails, not skips."""
    from support.k8s import kubectl_path  # loads scripts/validate_k8s.py, for the tests that need it only

    return kubectl_path()


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """Each deploy/k8s kustomization's objects, by its path under deploy/k8s."""
    from support.k8s import render_all

    return render_all(kubectl)
