"""Quota values and expiry are bounded by what the key's protobuf (int64, int32, Timestamp) and its Postgres row
(BIGINT, INTEGER) can hold: the CLI refuses more with the field named and no traceback, on either store, and the
largest values accepted are listed fine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.auth.caller import Limits, Scope
from gateway.auth.file_keys import FileKeyStore
from gateway.auth.keys import MAX_EXPIRE_TIME, KeyRecord
from gateway.auth.keystore import open_key_store
from gateway.auth.service import ApiKeyServicer
from genmesh.errors import InvalidArgument
from genmesh.v1 import api_keys_pb2
from security.keyed_gateway import GENMESH, run_tool

#: (the store: file or postgres, flag, value, the field the refusal names)
TOO_LARGE = (
    ("file", "--max-streams", str(2**31), "quota.max_concurrent_streams"),
    ("postgres", "--rpm", str(2**63), "quota.requests_per_minute"),
    ("file", "--expires-in", "1e300", "expire_time"),
    ("postgres", "--expires-in", "inf", "expire_time"),
)


async def test_the_cli_refuses_values_the_key_cannot_hold(tmp_path: Path, postgres_url: str) -> None:
    stores = {"file": str(tmp_path / "keys.json"), "postgres": postgres_url}
    results = await asyncio.gather(
        *(
            run_tool(GENMESH, "keys", "--store", stores[kind], "create", "big", "--scopes", "jobs", flag, value)
            for kind, flag, value, _ in TOO_LARGE
        )
    )
    for (kind, flag, _, field), (rc, out, err) in zip(TOO_LARGE, results, strict=True):
        assert rc != 0 and out == "", (kind, flag)
        assert err.startswith(f"genmesh keys create: {field}: must be") and "Traceback" not in err, (kind, err)
    for store in stores.values():
        opened = open_key_store(store)
        await opened.open()
        try:
            assert await opened.list() == []
        finally:
            await opened.close()


async def test_the_largest_values_are_stored_and_listed(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    largest = Limits(2**63 - 1, 2**63 - 1, 2**63 - 1, 2**31 - 1)
    record, _ = await store.create("big", [Scope.JOBS], largest, expire_time=MAX_EXPIRE_TIME)
    listed = await ApiKeyServicer(store).ListApiKeys(api_keys_pb2.ListApiKeysRequest(), None)
    assert listed.api_keys[0].quota.max_concurrent_streams == 2**31 - 1
    assert listed.api_keys[0].expire_time.ToJsonString().startswith("9999-12-31T23:59:")
    for limits, expire_time, field in (
        (Limits(tokens_per_day=2**63), None, "quota.tokens_per_day"),
        (Limits(max_concurrent_streams=2**31), None, "quota.max_concurrent_streams"),
        (largest, MAX_EXPIRE_TIME + 1, "expire_time"),
        (largest, float("nan"), "expire_time"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            await store.update(record.id, _setting(limits, expire_time))
        assert [v.field for v in refused.value.violations] == [field]


def _setting(limits: Limits, expire_time: float | None) -> Callable[[KeyRecord], KeyRecord]:
    """An update that sets a key's limits and expire_time."""
    return lambda record: dataclasses.replace(record, limits=limits, expire_time=expire_time)
