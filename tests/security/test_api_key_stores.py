"""The API-key stores (a JSON file, a Postgres table): salted hashes only, constant-time checks, revocation and
expiry, idempotent creates, and changes one writer makes seen by another store on the same keys."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import logging
import os
import pwd
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from support.api_keys import random_part

from gateway.auth.caller import Limits, Scope
from gateway.auth.file_keys import FileKeyStore
from gateway.auth.keys import KeyRefused, hash_secret, key_id_of
from gateway.auth.keystore import KeyStore, open_key_store
from gateway.auth.postgres_keys import PostgresKeyStore
from genmesh.errors import InvalidArgument, NotFound, Reason


class Clock:
    """A settable clock: wall time (expiry) and monotonic time (the Postgres read cache)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Stores:
    """Two stores on the same keys: ``admin`` writes (the CLI), ``gateway`` authenticates (a running gateway)."""

    admin: KeyStore
    gateway: KeyStore
    clock: Clock
    kind: str
    path: Path | None = None


@pytest_asyncio.fixture(params=["file", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    clock = Clock()
    if request.param == "file":
        path = tmp_path / "keys" / "api-keys.json"
        pair = Stores(FileKeyStore(path, clock), FileKeyStore(path, clock), clock, "file", path)
    else:
        url = request.getfixturevalue("postgres_url")
        pair = Stores(
            PostgresKeyStore(url, clock=clock, monotonic=clock),
            PostgresKeyStore(url, clock=clock, monotonic=clock),
            clock,
            "postgres",
        )
    await pair.admin.open()
    await pair.gateway.open()
    yield pair
    await pair.admin.close()
    await pair.gateway.close()


def _tampered(secret: str) -> str:
    """The same id, one character of the random part changed."""
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


async def test_a_new_key_authenticates_as_its_caller(stores: Stores) -> None:
    limits = Limits(requests_per_minute=60, max_concurrent_streams=2)
    record, secret = await stores.admin.create(
        "team-search", [Scope.GENERATE, Scope.JOBS], limits, ["calculator"], stores.clock.now + 60
    )
    assert secret.startswith(f"gmk_{record.id}_") and len(secret) == 4 + 12 + 1 + 43
    assert key_id_of(secret) == record.id and len(record.id) == 12
    caller = await stores.gateway.authenticate(secret)
    assert caller.key_name == f"apiKeys/{record.id}" and caller.display_name == "team-search"
    assert caller.scopes == {Scope.GENERATE, Scope.JOBS} and caller.limits == limits
    assert caller.allowed_tools == {"calculator"}


async def test_only_a_salted_hash_is_stored(stores: Stores) -> None:
    record, secret = await stores.admin.create("hashed", [Scope.GENERATE])
    stored = await stores.gateway.get(record.id)
    assert stored is not None and stored.hash == hash_secret(secret, stored.salt) and len(stored.salt) == 16
    if stores.path is not None:
        data = stores.path.read_bytes()
        assert secret.encode() not in data and random_part(secret).encode() not in data
        assert stat.S_IMODE(os.stat(stores.path).st_mode) == 0o600
    else:
        async with await psycopg.AsyncConnection.connect(stores.admin._url) as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute("SELECT * FROM api_keys")
            assert secret not in repr(await cursor.fetchall())
    other, _ = await stores.admin.create("hashed-2", [Scope.GENERATE])
    assert (await stores.gateway.get(other.id)).salt != stored.salt  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "mangle",
    [_tampered, lambda s: "gmk_0123456789ab_" + s[-43:], lambda s: s[:20], lambda s: "x" * 5000],
    ids=["wrong-secret", "unknown-id", "truncated", "huge"],
)
async def test_a_wrong_secret_is_refused(stores: Stores, mangle: Callable[[str], str]) -> None:
    _, secret = await stores.admin.create("real", [Scope.GENERATE])
    with pytest.raises(KeyRefused) as refused:
        await stores.gateway.authenticate(mangle(secret))
    assert refused.value.reason == Reason.API_KEY_INVALID
    assert "genmesh keys create" in refused.value.message and mangle(secret) not in refused.value.message
    assert "real" not in refused.value.key_label  # a caller without the secret learns nothing of the key


async def test_every_check_compares_hashes_in_constant_time(stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    _, secret = await stores.admin.create("timed", [Scope.GENERATE])
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for attempt in (secret, _tampered(secret), "gmk_0123456789ab_" + secret[-43:]):
        compared.clear()
        with contextlib.suppress(KeyRefused):
            await stores.gateway.authenticate(attempt)
        # One digest comparison per check, known id or not: no early exit whose timing tells the two apart.
        assert len(compared) == 1 and all(len(side) == 32 for side in compared[0])


async def test_revoked_and_expired_keys_are_refused_saying_so(stores: Stores) -> None:
    revoked, revoked_secret = await stores.admin.create("gone", [Scope.GENERATE])
    expiring, expiring_secret = await stores.admin.create("brief", [Scope.GENERATE], expire_time=stores.clock.now + 10)
    await stores.gateway.authenticate(revoked_secret)
    await stores.gateway.authenticate(expiring_secret)
    first = await stores.admin.revoke(revoked.id)
    assert first.revoke_time == stores.clock.now
    stores.clock.now += 11  # past the expiry, and past the Postgres read cache
    assert (await stores.admin.revoke(revoked.id)).revoke_time == first.revoke_time  # revoking twice: no change
    with pytest.raises(KeyRefused, match=r"'gone' \(apiKeys/\w+\) was revoked at") as refused:
        await stores.gateway.authenticate(revoked_secret)
    assert refused.value.key_label == "gone"
    with pytest.raises(KeyRefused, match=r"'brief' \(apiKeys/\w+\) expired at"):
        await stores.gateway.authenticate(expiring_secret)
    with pytest.raises(KeyRefused, match="knows no key"):  # revocation is told only to the key's holder
        await stores.gateway.authenticate(_tampered(revoked_secret))
    listed = {r.display_name: r for r in await stores.gateway.list()}
    assert listed["gone"].revoke_time is not None and listed["brief"].expire_time == expiring.expire_time


async def test_a_change_by_one_store_reaches_the_other(stores: Stores) -> None:
    record, secret = await stores.admin.create("moving", [Scope.GENERATE])
    assert (await stores.gateway.authenticate(secret)).scopes == {Scope.GENERATE}
    await stores.admin.update(record.id, lambda r: dataclasses.replace(r, scopes=frozenset({Scope.JOBS})))
    stores.clock.now += 1.0  # the Postgres store reads a key at most once per second; the file store at once
    assert (await stores.gateway.authenticate(secret)).scopes == {Scope.JOBS}
    await stores.admin.revoke(record.id)
    stores.clock.now += 1.0
    with pytest.raises(KeyRefused, match="revoked"):
        await stores.gateway.authenticate(secret)


async def test_a_repeated_request_id_returns_the_first_key_without_its_secret(stores: Stores) -> None:
    first, secret = await stores.admin.create("once", [Scope.GENERATE], request_id="req-1")
    again, no_secret = await stores.gateway.create("once", [Scope.GENERATE], request_id="req-1")
    assert again == first and no_secret == "" and secret
    with pytest.raises(InvalidArgument, match="request_id"):
        await stores.gateway.create("other", [Scope.GENERATE], request_id="req-1")
    assert [r.id for r in await stores.admin.list()] == [first.id]


async def test_bad_fields_and_unknown_keys(stores: Stores) -> None:
    with pytest.raises(InvalidArgument, match="display_name"):
        await stores.admin.create("has space", [Scope.GENERATE])
    with pytest.raises(InvalidArgument, match="scopes"):
        await stores.admin.create("none", [])
    with pytest.raises(InvalidArgument, match=r"quota\.tokens_per_day"):
        await stores.admin.create("neg", [Scope.GENERATE], Limits(tokens_per_day=-1))
    with pytest.raises(NotFound):
        await stores.admin.revoke("0123456789ab")
    with pytest.raises(NotFound):
        await stores.admin.update("0123456789ab", lambda r: r)
    assert await stores.admin.get("0123456789ab") is None


def test_the_spec_picks_the_store(tmp_path: Path) -> None:
    assert isinstance(open_key_store(str(tmp_path / "k.json")), FileKeyStore)
    assert isinstance(open_key_store("postgresql://u:secret@h/db"), PostgresKeyStore)
    assert "secret" not in open_key_store("postgresql://u:secret@h/db").label


async def test_a_broken_file_edit_keeps_the_keys_last_read(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = FileKeyStore(path)
    _, secret = await store.create("kept", [Scope.GENERATE])
    await store.authenticate(secret)
    path.write_text("{ not json")
    await store.authenticate(secret)  # still served, and the error logged
    with pytest.raises(ValueError, match="not an API key file"):
        await FileKeyStore(path).open()  # a fresh start refuses it


NOBODY = pwd.getpwnam("nobody")


@contextlib.contextmanager
def _as_gateway_user() -> Iterator[None]:
    """Run the block with the effective uid and gid of ``nobody``: the gateway's own user (the tests run as root)."""
    os.setegid(NOBODY.pw_gid)
    os.seteuid(NOBODY.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def gateway_home() -> Iterator[Path]:
    """A directory of the gateway's user, outside root's private temporary directories."""
    with tempfile.TemporaryDirectory() as top:
        home = Path(top) / "gateway"
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
        os.chmod(top, 0o755)
        yield home


async def test_a_rewrite_by_root_keeps_the_gateway_users_file(gateway_home: Path) -> None:
    path = gateway_home / "api-keys.json"
    gateway = FileKeyStore(path)
    with _as_gateway_user():
        await gateway.create("first", [Scope.GENERATE])  # the gateway's own file (ApiKeyService)
        os.chmod(path, 0o640)
    _, second = await FileKeyStore(path).create("second", [Scope.GENERATE])  # `sudo genmesh keys create`
    written = os.stat(path)
    assert (written.st_uid, written.st_gid, stat.S_IMODE(written.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o640)
    with _as_gateway_user():
        assert (await gateway.authenticate(second)).display_name == "second"
        await gateway.create("third", [Scope.GENERATE])  # the lock file root used is the gateway's too
    assert sorted(r.display_name for r in await gateway.list()) == ["first", "second", "third"]


async def test_an_unreadable_file_keeps_the_keys_last_read(
    gateway_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = gateway_home / "api-keys.json"
    gateway = FileKeyStore(path)
    with _as_gateway_user():
        _, secret = await gateway.create("kept", [Scope.GENERATE])
        await gateway.open()
    os.chown(path, 0, 0)  # now root's, mode 0600: the gateway's user may not read it
    caplog.set_level(logging.ERROR, logger="genmesh.gateway.auth")
    with _as_gateway_user():
        assert (await gateway.authenticate(secret)).display_name == "kept"
        errors = [r.error for r in caplog.records if r.getMessage() == "api key file not reloaded"]  # type: ignore[attr-defined]
        assert errors == [f"cannot read the API key file {path}: Permission denied"]
        with pytest.raises(ValueError, match=r"cannot read the API key file .*: Permission denied"):
            await FileKeyStore(path).open()  # a fresh start refuses it, saying why
