"""API keys in a table of the Postgres job database, shared by every gateway on it.

``authenticate`` reads a key's row through a cache of ``cache_s`` (1 s): a gateway asks the database at most
once a second per key id, and a key revoked or changed anywhere (the CLI, another gateway) is refused or
changed everywhere within that second. Unknown ids are cached too (bounded), so a flood of made-up keys
costs the database little.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.auth.caller import Caller, Limits, Scope
from gateway.auth.keys import NO_LIMITS, KeyRecord, check_record, key_id_of, new_record, verify
from gateway.jobs.config import JobConfig
from gateway.postgres import Conn, PostgresPool
from genmesh.errors import InvalidArgument, NotFound

CACHE_S = 1.0
CACHE_MAX = 10_000
POOL_MAX = 4
_SCHEMA_LOCK = 0x67656E6B  # pg_advisory_xact_lock key: gateways starting at once create the table in turn
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    salt BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    scopes TEXT[] NOT NULL,
    requests_per_minute BIGINT,
    tokens_per_minute BIGINT,
    tokens_per_day BIGINT,
    max_concurrent_streams INTEGER,
    allowed_tools TEXT[] NOT NULL,
    create_time DOUBLE PRECISION NOT NULL,
    expire_time DOUBLE PRECISION,
    revoke_time DOUBLE PRECISION,
    request_id TEXT UNIQUE
);
"""
_COLUMNS = (
    "id, display_name, salt, hash, scopes, requests_per_minute, tokens_per_minute, tokens_per_day,"
    " max_concurrent_streams, allowed_tools, create_time, expire_time, revoke_time, request_id"
)


class PostgresKeyStore:
    """KeyStore on the ``api_keys`` table of a Postgres database."""

    def __init__(
        self,
        url: str,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self.label = JobConfig(url).db_label
        self._cache_s = cache_s
        self._clock = clock
        self._monotonic = monotonic
        self._db = PostgresPool(url, "API key", POOL_MAX)
        #: key id → (its row or None, when it was read).
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}

    async def open(self) -> None:
        await self._db.open(_SCHEMA, _SCHEMA_LOCK)

    async def close(self) -> None:
        await self._db.close()

    async def create(
        self,
        display_name: str,
        scopes: Iterable[Scope],
        limits: Limits = NO_LIMITS,
        allowed_tools: Iterable[str] = (),
        expire_time: float | None = None,
        request_id: str = "",
    ) -> tuple[KeyRecord, str]:
        while True:  # again only on an id collision (48 random bits)
            record, secret = new_record(
                display_name, scopes, limits, allowed_tools, expire_time, request_id, self._clock()
            )
            async with self._db.transaction() as conn:
                cursor = await conn.execute(
                    f"INSERT INTO api_keys ({_COLUMNS}) VALUES ({', '.join(['%s'] * 14)}) ON CONFLICT DO NOTHING",
                    _row_of(record),
                )
                if cursor.rowcount == 1:
                    return record, secret
                if request_id:
                    existing = await _select(conn, "request_id = %s", (request_id,))
                    if existing:
                        if existing[0].display_name != display_name:
                            raise InvalidArgument.field(
                                "request_id", f"was used to create {existing[0].name} with another display_name"
                            )
                        return existing[0], ""

    async def list(self) -> list[KeyRecord]:
        async with self._db.transaction() as conn:
            return await _select(conn, "TRUE", ())

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._db.transaction() as conn:
            found = await _select(conn, "id = %s", (key_id,))
        return found[0] if found else None

    async def update(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        async with self._db.transaction() as conn:
            found = await _select(conn, "id = %s", (key_id,), lock=True)
            if not found:
                raise NotFound(f"no API key apiKeys/{key_id}")
            changed = change(found[0])
            check_record(changed)
            columns = _COLUMNS.split(", ")[1:]
            await conn.execute(
                f"UPDATE api_keys SET {', '.join(f'{c} = %s' for c in columns)} WHERE id = %s",
                (*_row_of(changed)[1:], key_id),
            )
        self._cache.pop(key_id, None)
        return changed

    async def revoke(self, key_id: str) -> KeyRecord:
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE api_keys SET revoke_time = %s WHERE id = %s AND revoke_time IS NULL", (self._clock(), key_id)
            )
            found = await _select(conn, "id = %s", (key_id,))
        self._cache.pop(key_id, None)
        if not found:
            raise NotFound(f"no API key apiKeys/{key_id}")
        return found[0]

    async def authenticate(self, secret: str) -> Caller:
        key_id = key_id_of(secret)
        record = await self._cached(key_id) if key_id else None
        return verify(record, secret, self._clock())

    async def _cached(self, key_id: str) -> KeyRecord | None:
        """The key's row as read at most ``cache_s`` ago."""
        now = self._monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[1] < self._cache_s:
            return hit[0]
        record = await self.get(key_id)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key_id] = (record, now)
        return record


def _row_of(record: KeyRecord) -> tuple[Any, ...]:
    limits = record.limits
    return (
        record.id,
        record.display_name,
        record.salt,
        record.hash,
        sorted(record.scopes),
        limits.requests_per_minute,
        limits.tokens_per_minute,
        limits.tokens_per_day,
        limits.max_concurrent_streams,
        sorted(record.allowed_tools),
        record.create_time,
        record.expire_time,
        record.revoke_time,
        record.request_id or None,
    )


async def _select(conn: Conn, where: str, params: tuple[Any, ...], lock: bool = False) -> list[KeyRecord]:
    suffix = " FOR UPDATE" if lock else ""
    cursor = await conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE {where} ORDER BY id{suffix}", params)
    return [
        KeyRecord(
            id=row[0],
            display_name=row[1],
            salt=bytes(row[2]),
            hash=bytes(row[3]),
            scopes=frozenset(Scope(s) for s in row[4]),
            limits=Limits(row[5], row[6], row[7], row[8]),
            allowed_tools=frozenset(row[9]),
            create_time=row[10],
            expire_time=row[11],
            revoke_time=row[12],
            request_id=row[13] or "",
        )
        for row in await cursor.fetchall()
    ]
