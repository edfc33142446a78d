"""ApiKeyService and the auth interceptor on a real in-process gRPC server (the shared interceptor outside, the
key check inside, as genmesh.server.serve stacks them): admin only, fields named, pages, masks, revocation."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support.api_keys import bearer, error_info
from support.streams import violated_fields

from gateway.auth.audit import AuditLog
from gateway.auth.caller import Scope
from gateway.auth.file_keys import FileKeyStore
from gateway.auth.interceptor import MISSING_MESSAGE, AuthInterceptor
from gateway.auth.service import ApiKeyServicer
from genmesh.errors import InvalidArgument
from genmesh.interceptor import REQUEST_ID_RULE, ServiceInterceptor
from genmesh.v1 import api_keys_pb2, api_keys_pb2_grpc


@dataclass
class Served:
    stub: api_keys_pb2_grpc.ApiKeyServiceStub
    channel: grpc.aio.Channel
    store: FileKeyStore
    admin: tuple[tuple[str, str], ...]
    generate: tuple[tuple[str, str], ...]


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    store = FileKeyStore(tmp_path / "keys.json")
    _, admin = await store.create("ops", [Scope.ADMIN])
    _, generate = await store.create("app", [Scope.GENERATE])
    server = grpc.aio.server(interceptors=[ServiceInterceptor(), AuthInterceptor(store, AuditLog(burst=1000))])
    api_keys_pb2_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(store), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Served(api_keys_pb2_grpc.ApiKeyServiceStub(channel), channel, store, bearer(admin), bearer(generate))
    await channel.close()
    await server.stop(0)


def _create(name: str, *scopes: str, request_id: str = "") -> api_keys_pb2.CreateApiKeyRequest:
    return api_keys_pb2.CreateApiKeyRequest(
        request_id=request_id, api_key=api_keys_pb2.ApiKey(display_name=name, scopes=scopes)
    )


async def test_key_management_needs_the_admin_scope(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await served.stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=served.generate)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(denied.value).reason == "SCOPE_MISSING"
    assert "'app' lacks the scope 'admin'" in (denied.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await served.stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest())
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED and missing.value.details() == MISSING_MESSAGE
    assert error_info(missing.value).reason == "API_KEY_MISSING"
    health_stub = health_pb2_grpc.HealthStub(served.channel)
    assert (await health_stub.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("value", "reason"),
    [("bearer {}", None), ("BEARER  {} ", None), ("Basic {}", "API_KEY_MISSING"), ("Bearer ", "API_KEY_MISSING")],
)
async def test_the_bearer_scheme_in_any_case(served: Served, value: str, reason: str | None) -> None:
    secret = served.admin[0][1].removeprefix("Bearer ")
    call = served.stub.ListApiKeys(
        api_keys_pb2.ListApiKeysRequest(), metadata=(("authorization", value.format(secret)),)
    )
    if reason is None:
        assert len((await call).api_keys) == 2
        return
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert error_info(refused.value).reason == reason and secret not in (refused.value.details() or "")


async def test_create_is_idempotent_and_the_new_key_works_at_once(served: Served) -> None:
    first = await served.stub.CreateApiKey(_create("batch", "jobs", "admin", request_id="r-1"), metadata=served.admin)
    assert first.secret.startswith(first.api_key.secret_prefix + "_") and first.api_key.name.startswith("apiKeys/")
    assert list(first.api_key.scopes) == ["admin", "jobs"] and first.api_key.create_time.seconds > 0
    again = await served.stub.CreateApiKey(_create("batch", "jobs", "admin", request_id="r-1"), metadata=served.admin)
    assert again.api_key == first.api_key and again.secret == ""
    listed = await served.stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=bearer(first.secret))
    assert len(listed.api_keys) == 3


@pytest.mark.parametrize(
    ("key", "field"),
    [
        (api_keys_pb2.ApiKey(display_name="no spaces", scopes=["generate"]), "api_key.display_name"),
        (api_keys_pb2.ApiKey(display_name="x", scopes=["root"]), "api_key.scopes"),
        (api_keys_pb2.ApiKey(display_name="x"), "api_key.scopes"),
        (
            api_keys_pb2.ApiKey(display_name="x", scopes=["jobs"], quota=api_keys_pb2.Quota(requests_per_minute=-1)),
            "api_key.quota.requests_per_minute",
        ),
        (api_keys_pb2.ApiKey(display_name="x", scopes=["jobs"], allowed_tools=[""]), "api_key.allowed_tools"),
    ],
)
async def test_create_names_the_bad_field(served: Served, key: api_keys_pb2.ApiKey, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await served.stub.CreateApiKey(api_keys_pb2.CreateApiKeyRequest(api_key=key), metadata=served.admin)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violated_fields(bad.value) == [field]


async def test_an_expire_time_in_the_past_is_refused(served: Served) -> None:
    request = _create("late", "generate")
    request.api_key.expire_time.seconds = 1
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await served.stub.CreateApiKey(request, metadata=served.admin)
    assert violated_fields(bad.value) == ["api_key.expire_time"]


async def test_list_pages_through_every_key(served: Served) -> None:
    for index in range(5):
        await served.stub.CreateApiKey(_create(f"k{index}", "generate"), metadata=served.admin)
    seen, token = [], ""
    while True:
        page = await served.stub.ListApiKeys(
            api_keys_pb2.ListApiKeysRequest(page_size=2, page_token=token), metadata=served.admin
        )
        assert len(page.api_keys) <= 2
        seen += [key.name for key in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 7 and seen == sorted(seen)
    for request, field in (
        (api_keys_pb2.ListApiKeysRequest(page_size=1001), "page_size"),
        (api_keys_pb2.ListApiKeysRequest(page_token="bogus"), "page_token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await served.stub.ListApiKeys(request, metadata=served.admin)
        assert violated_fields(bad.value) == [field]


async def test_update_changes_only_the_masked_fields(served: Served) -> None:
    created = await served.stub.CreateApiKey(_create("tuned", "generate"), metadata=served.admin)
    change = api_keys_pb2.ApiKey(
        name=created.api_key.name,
        display_name="renamed",
        scopes=["jobs"],
        quota=api_keys_pb2.Quota(requests_per_minute=30, tokens_per_day=5),
    )
    updated = await served.stub.UpdateApiKey(
        api_keys_pb2.UpdateApiKeyRequest(
            api_key=change, update_mask=field_mask_pb2.FieldMask(paths=["scopes", "quota.requests_per_minute"])
        ),
        metadata=served.admin,
    )
    assert updated.api_key.display_name == "tuned" and list(updated.api_key.scopes) == ["jobs"]
    assert updated.api_key.quota.requests_per_minute == 30 and not updated.api_key.quota.HasField("tokens_per_day")
    caller = await served.store.authenticate(created.secret)
    assert caller.scopes == {Scope.JOBS} and caller.limits.requests_per_minute == 30
    for paths, name, field in (
        ([], created.api_key.name, "update_mask"),
        (["secret_prefix"], created.api_key.name, "update_mask"),
        (["display_name"], "apiKeys/zz", "api_key.name"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await served.stub.UpdateApiKey(
                api_keys_pb2.UpdateApiKeyRequest(
                    api_key=api_keys_pb2.ApiKey(name=name), update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=served.admin,
            )
        assert violated_fields(bad.value) == [field]
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await served.stub.UpdateApiKey(
            api_keys_pb2.UpdateApiKeyRequest(
                api_key=api_keys_pb2.ApiKey(name="apiKeys/0123456789ab", display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=served.admin,
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_revoke_takes_effect_on_the_next_call(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    created = await served.stub.CreateApiKey(_create("temp", "admin"), metadata=served.admin)
    await served.stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=bearer(created.secret))
    revoked = await served.stub.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(name=created.api_key.name), metadata=served.admin
    )
    assert revoked.api_key.HasField("revoke_time")
    caplog.set_level(logging.WARNING, logger="genmesh.audit")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=bearer(created.secret))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (refused.value.details() or "")
    audit = [r for r in caplog.records if r.name == "genmesh.audit"]
    assert [(r.event, r.key, r.reason, r.method) for r in audit] == [  # type: ignore[attr-defined]
        ("auth_failed", "temp", "API_KEY_INVALID", "/genmesh.v1.ApiKeyService/ListApiKeys")
    ]
    for name, code in (("apiKeys/0123456789ab", grpc.StatusCode.NOT_FOUND), ("x", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await served.stub.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=name), metadata=served.admin)
        assert bad.value.code() == code


@pytest.mark.parametrize("request_id", ["x" * 129, "tab\there", "é"])
async def test_create_names_a_bad_request_id(tmp_path: Path, request_id: str) -> None:
    # The servicer itself checks it (the shared interceptor does too, in front of it): a long one would not fit
    # Postgres's index of api_keys.request_id.
    store = FileKeyStore(tmp_path / "keys.json")
    with pytest.raises(InvalidArgument) as bad:
        await ApiKeyServicer(store).CreateApiKey(_create("x", "generate", request_id=request_id), None)
    assert [v.field for v in bad.value.violations] == ["request_id"] and REQUEST_ID_RULE in bad.value.message
    assert await store.list() == []
    created = await ApiKeyServicer(store).CreateApiKey(_create("x", "generate", request_id="x" * 128), None)
    assert created.secret


async def test_update_reads_only_the_masked_quota_fields(served: Served) -> None:
    created = await served.stub.CreateApiKey(_create("quota", "generate"), metadata=served.admin)

    async def update(paths: list[str], **quota: int) -> api_keys_pb2.ApiKey:
        change = api_keys_pb2.ApiKey(name=created.api_key.name, display_name="quota", quota=api_keys_pb2.Quota(**quota))
        request = api_keys_pb2.UpdateApiKeyRequest(api_key=change, update_mask=field_mask_pb2.FieldMask(paths=paths))
        updated: api_keys_pb2.UpdateApiKeyResponse = await served.stub.UpdateApiKey(request, metadata=served.admin)
        return updated.api_key

    # A bad value of a limit not in the mask is neither read nor refused.
    assert not (await update(["display_name"], requests_per_minute=-1)).quota.HasField("requests_per_minute")
    updated = await update(["quota.tokens_per_day"], tokens_per_day=7, requests_per_minute=-1)
    assert updated.quota.tokens_per_day == 7 and not updated.quota.HasField("requests_per_minute")
    for paths in (["quota.requests_per_minute"], ["quota"]):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await update(paths, requests_per_minute=-1)
        assert violated_fields(bad.value) == ["api_key.quota.requests_per_minute"]
    assert (await update(["quota"], max_concurrent_streams=2)).quota == api_keys_pb2.Quota(max_concurrent_streams=2)
