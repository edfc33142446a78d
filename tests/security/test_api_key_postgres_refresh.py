"""The Postgres key store authenticates from the whole table held in memory: made-up key ids cost no query, a
burst after the refresh interval costs one load, the writing gateway sees its own writes at once, and a lost
database is UNAVAILABLE with a generic message (psycopg's text, naming host, port and user, only in the log)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from gateway.auth.caller import Scope
from gateway.auth.keys import KeyRefused
from gateway.auth.postgres_keys import PostgresKeyStore
from genmesh.errors import Unavailable


class Clock:
    """Wall and monotonic time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    """A gateway's store, the clock it reads, and how many transactions it has opened so far."""

    store: PostgresKeyStore
    clock: Clock
    url: str
    transactions: int = 0


@pytest_asyncio.fixture
async def gateway(postgres_url: str) -> AsyncIterator[Gateway]:
    clock = Clock()
    store = PostgresKeyStore(postgres_url, clock=clock, monotonic=clock)
    await store.open()
    counted = Gateway(store, clock, postgres_url)
    real = store._db.transaction

    def counting() -> contextlib.AbstractAsyncContextManager[Any]:
        counted.transactions += 1
        return real()

    store._db.transaction = counting  # type: ignore[method-assign,assignment]
    yield counted
    await store.close()


def _made_up() -> str:
    """A well-formed secret of a random id: what a flood of unauthenticated clients sends."""
    return f"gmk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


async def _outcomes(store: PostgresKeyStore, attempts: list[str]) -> list[str]:
    """Each attempt's caller display name, or the class of the error it got."""

    async def one(secret: str) -> str:
        try:
            return (await store.authenticate(secret)).display_name
        except (KeyRefused, Unavailable) as error:
            return type(error).__name__

    return await asyncio.gather(*(one(secret) for secret in attempts))


async def test_made_up_ids_cost_no_query_and_a_burst_one_load(gateway: Gateway, postgres_url: str) -> None:
    admin = PostgresKeyStore(postgres_url, clock=gateway.clock, monotonic=gateway.clock)
    await admin.open()
    try:
        _, secret = await admin.create("real", [Scope.GENERATE])
    finally:
        await admin.close()
    assert await _outcomes(gateway.store, [secret]) == ["real"]
    loaded = gateway.transactions
    assert loaded == 1
    flood = [_made_up() for _ in range(300)]
    # 300 unknown ids at once, the real key among them: answered from memory, the pool untouched.
    assert await _outcomes(gateway.store, [*flood, secret]) == ["KeyRefused"] * 300 + ["real"]
    assert gateway.transactions == loaded
    gateway.clock.now += 1.0  # the keys are now stale: the burst shares one load, whoever comes first
    assert await _outcomes(gateway.store, [*flood[:100], secret, *flood[100:]]) == [
        *["KeyRefused"] * 100,
        "real",
        *["KeyRefused"] * 200,
    ]
    assert gateway.transactions == loaded + 1


async def test_the_writing_gateway_applies_its_own_writes_at_once(gateway: Gateway) -> None:
    store = gateway.store
    record, secret = await store.create("fresh", [Scope.GENERATE])
    assert await _outcomes(store, [secret]) == ["fresh"]  # the clock never moves: no interval has passed
    await store.revoke(record.id)
    assert await _outcomes(store, [secret]) == ["KeyRefused"]
    other, other_secret = await store.create("other", [Scope.GENERATE])
    assert await _outcomes(store, [other_secret]) == ["other"]
    await store.update(other.id, lambda r: dataclasses.replace(r, display_name="renamed"))
    assert await _outcomes(store, [other_secret]) == ["renamed"]


@contextlib.contextmanager
def _captured(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    caplog.set_level(logging.ERROR, logger="genmesh.gateway.postgres")
    caplog.clear()
    yield caplog.records


async def test_a_lost_database_is_unavailable_with_the_details_only_in_the_log(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    _, secret = await gateway.store.create("kept", [Scope.GENERATE])
    database = gateway.url.rsplit("/", 1)[1]
    with _captured(caplog) as records:
        async with await psycopg.AsyncConnection.connect(gateway.url, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        gateway.clock.now += 1.0
        with pytest.raises(Unavailable) as lost:
            await gateway.store.authenticate(secret)
        assert lost.value.message == "the API key database is unavailable"
        assert lost.value.__cause__ is not None and str(lost.value.__cause__) not in lost.value.message
        logged = [(r.getMessage(), r.store, r.error) for r in records]  # type: ignore[attr-defined]
        assert logged == [("database unavailable", "API key", str(lost.value.__cause__))]
    tried = gateway.transactions
    with pytest.raises(Unavailable, match=r"^the API key database is unavailable$"):
        await gateway.store.authenticate(secret)  # within the interval: not asked again
    assert gateway.transactions == tried
    gateway.clock.now += 1.0  # the pool has replaced the lost connection: served again
    assert await _outcomes(gateway.store, [secret]) == ["kept"]
