"""API keys in a table of the Postgres job database, shared by every gateway on it.

``authenticate`` checks a secret against the whole table held in memory, loaded again when it is ``refresh_s``
(1 s) old: one query at a time (concurrent callers await the same load), at most one a second however many
calls come and whatever ids they carry, so made-up keys cost the database nothing. A key revoked or changed
anywhere (the CLI, another gateway) is refused or changed everywhere within that second; on the gateway that
wrote it, at once. While the database cannot be read, calls are refused UNAVAILABLE (never served from keys
that may have been revoked since).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.auth.caller import Caller, Limits, Scope
from gateway.auth.keys import NO_LIMITS, KeyRecord, check_record, key_id_of, new_record, verify
from gateway.jobs.config import JobConfig
from gateway.postgres import Conn, PostgresPool
from genmesh.errors import InvalidArgument, NotFound, Unavailable

REFRESH_S = 1.0
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
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self.label = JobConfig(url).db_label
        self._refresh_s = refresh_s
        self._clock = clock
        self._monotonic = monotonic
        self._db = PostgresPool(url, "API key", POOL_MAX)
        #: Every key by id, as the load that started at ``_loaded_at`` (monotonic; None: never or stale) read them.
        self._keys: dict[str, KeyRecord] = {}
        self._loaded_at: float | None = None
        #: When the last load failed (monotonic), so that a down database is asked at most once per refresh_s.
        self._failed_at: float | None = None
        #: The load in flight, awaited by every caller that needs fresh keys meanwhile.
        self._loading: asyncio.Task[None] | None = None

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
                inserted = cursor.rowcount == 1
                existing = [] if inserted or not request_id else await _select(conn, "request_id = %s", (request_id,))
            if inserted:
                await self._written()
                return record, secret
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
        await self._written()
        return changed

    async def revoke(self, key_id: str) -> KeyRecord:
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE api_keys SET revoke_time = %s WHERE id = %s AND revoke_time IS NULL", (self._clock(), key_id)
            )
            found = await _select(conn, "id = %s", (key_id,))
        if not found:
            raise NotFound(f"no API key apiKeys/{key_id}")
        await self._written()
        return found[0]

    async def authenticate(self, secret: str) -> Caller:
        key_id = key_id_of(secret)
        record = (await self._fresh_keys()).get(key_id) if key_id else None
        return verify(record, secret, self._clock())

    # --- the keys in memory ---

    async def _fresh_keys(self) -> dict[str, KeyRecord]:
        """Every key as read at most ``refresh_s`` ago; Unavailable while the database cannot be read."""
        now = self._monotonic()
        if self._loaded_at is not None and now - self._loaded_at < self._refresh_s:
            return self._keys
        if self._failed_at is not None and now - self._failed_at < self._refresh_s:
            raise Unavailable(self._db.unavailable_message)
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
            self._loading.add_done_callback(_retrieve)
        await asyncio.shield(self._loading)  # a cancelled caller does not cancel the others' load
        return self._keys

    async def _load(self) -> None:
        """Read the whole table; keep it unless a write overtook this load (see ``_written``)."""
        started = self._monotonic()
        task = asyncio.current_task()
        try:
            async with self._db.transaction() as conn:
                records = await _select(conn, "TRUE", ())
        except Unavailable:
            if self._loading is task:
                self._failed_at = started
            raise
        else:
            if self._loading is task:
                self._keys = {record.id: record for record in records}
                self._loaded_at, self._failed_at = started, None
        finally:
            if self._loading is task:
                self._loading = None

    async def _written(self) -> None:
        """After a committed write: drop the load in flight (it may have read before the write) and load afresh,
        so this gateway applies its own change at once. The write stands even if that load fails."""
        self._loading = self._loaded_at = self._failed_at = None
        with contextlib.suppress(Unavailable):
            await self._fresh_keys()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a load's error seen: each awaiting caller got it, and none may be left to (cancelled ones)."""
    if not task.cancelled():
        task.exception()


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
