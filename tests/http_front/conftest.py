"""The HTTP front's tests run it in-process (front.py) before a real gateway served in-process over scripted
upstreams: tests/gateway's helpers, as tests/client uses them. (Not tests/http: with tests/ on sys.path that
package would shadow the standard library's ``http``.) ``model_front`` and ``model_client``: the front before a
gateway over the real inference service (the shipped model), one per test module that asks for them."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import openai
import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))

from genmesh.channels import open_channel
from http_front.front import Front, served_front

if TYPE_CHECKING:
    from support.model_mesh import ModelMesh


@pytest_asyncio.fixture(scope="module")
async def model_front(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ModelMesh, grpc.aio.Channel, Front]]:
    """The mesh, a channel to its gateway, and the front before it."""
    from support.model_mesh import model_mesh  # here: it imports torch, which the other modules here need not

    async with (
        model_mesh(tmp_path_factory.mktemp("model-front")) as parts,
        open_channel(parts.gateway) as channel,
        served_front(channel) as front,
    ):
        yield parts, channel, front


@pytest_asyncio.fixture(scope="module")
async def model_client(model_front: tuple[ModelMesh, grpc.aio.Channel, Front]) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official ``openai`` client of ``model_front``."""
    async with openai.AsyncOpenAI(base_url=model_front[2].url + "/v1", api_key="none", max_retries=0) as opened:
        yield opened
