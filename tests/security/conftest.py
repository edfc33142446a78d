"""Fixtures of the security tests: one gateway with ``--api-keys`` for every test module that needs it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from support.jobs_gateway import stop

from genmesh.cli.launcher import Mesh
from security.keyed_gateway import KeyedGateway, start_keyed_gateway


@pytest_asyncio.fixture(scope="package")
async def keyed(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KeyedGateway]:
    """A gateway requiring the keys of security.keyed_gateway.KEYS, on the session mesh's upstreams."""
    gateway = await start_keyed_gateway(mesh, tmp_path_factory.mktemp("keyed-gateway"))
    yield gateway
    await gateway.channel.close()
    await stop(gateway.process)
