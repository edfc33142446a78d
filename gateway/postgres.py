"""The Postgres connection pool of a gateway store (jobs, API keys): its schema created once under an advisory
lock, transactions that report a lost database as UNAVAILABLE (the details in the log, never to the client)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from genmesh.errors import Unavailable

Conn = psycopg.AsyncConnection[Any]

log = logging.getLogger("genmesh.gateway.postgres")


class PostgresPool:
    """A pool of at most ``max_size`` connections to ``url`` for the store called ``what`` ("job", "API key")."""

    def __init__(self, url: str, what: str, max_size: int) -> None:
        self._url = url
        self._what = what
        self._max_size = max_size
        self._pool: AsyncConnectionPool[Conn] | None = None

    async def open(self, schema: str, schema_lock: int) -> None:
        """Connect and run ``schema`` (idempotent DDL) holding the advisory lock ``schema_lock``, so that gateways
        starting at once create it in turn."""
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._url, min_size=1, max_size=self._max_size, open=False
        )
        await pool.open(wait=True)
        self._pool = pool
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema_lock,))
            await conn.execute(schema)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """One transaction: committed when the block ends, rolled back on an error."""
        if self._pool is None:
            raise Unavailable(f"the gateway is starting: its {self._what} store is not open yet")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as error:
            # psycopg's text names the database's host, port and user: for the operator's log only.
            log.error("database unavailable", extra={"store": self._what, "error": str(error)})
            raise Unavailable(self.unavailable_message) from error

    @property
    def unavailable_message(self) -> str:
        """What a client is told when the database cannot be reached."""
        return f"the {self._what} database is unavailable"
