"""API keys at a real gateway process (--api-keys FILE) in front of the session mesh: refusals with their codes,
reasons and helpful messages, open health and reflection, keys changed by the CLI while it runs, audit lines."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.api_keys import bearer, error_info, random_part
from support.streams import collect

from genmesh.cli.launcher import Mesh
from genmesh.v1 import api_keys_pb2, api_keys_pb2_grpc, gateway_pb2, gateway_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from security.keyed_gateway import KeyedGateway, grpcurl

GENERATE = "/genmesh.v1.GatewayService/Generate"
#: Well formed, but no key has this id.
UNKNOWN = "gmk_ffffffffffff_" + "A" * 43


def _ask(max_tokens: int = 4) -> gateway_pb2.GatewayRequest:
    request = gateway_pb2.GatewayRequest(question="What is a generator?")
    request.sampling.max_tokens = max_tokens
    request.sampling.temperature = 0
    return request


async def _generate(keyed: KeyedGateway, metadata: tuple[tuple[str, str], ...] = ()) -> list[str]:
    stub = gateway_pb2_grpc.GatewayServiceStub(keyed.channel)
    return (await collect(stub.Generate(_ask(), metadata=metadata, timeout=120))).kinds


async def _refused(keyed: KeyedGateway, metadata: tuple[tuple[str, str], ...]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _generate(keyed, metadata)
    return refused.value


async def test_a_valid_key_streams_an_answer(keyed: KeyedGateway) -> None:
    kinds = await _generate(keyed, bearer(keyed.secrets["app"]))
    assert "delta" in kinds and kinds[-1] == "complete"


@pytest.mark.parametrize(
    ("key", "code", "reason", "says"),
    [
        (None, "UNAUTHENTICATED", "API_KEY_MISSING", "missing API key: send the metadata 'authorization: Bearer"),
        ("unknown", "UNAUTHENTICATED", "API_KEY_INVALID", "invalid API key"),
        ("gone", "UNAUTHENTICATED", "API_KEY_INVALID", "API key 'gone' (apiKeys/"),
        ("old", "UNAUTHENTICATED", "API_KEY_INVALID", "API key 'old' (apiKeys/"),
        ("batch", "PERMISSION_DENIED", "SCOPE_MISSING", f"API key 'batch' lacks the scope 'generate' that {GENERATE}"),
    ],
)
async def test_refusals_say_why(keyed: KeyedGateway, key: str | None, code: str, reason: str, says: str) -> None:
    secret = UNKNOWN if key == "unknown" else keyed.secrets[key] if key else ""
    error = await _refused(keyed, bearer(secret) if secret else ())
    assert error.code().name == code and error_info(error).reason == reason
    assert says in (error.details() or "")
    if key in ("gone", "old"):
        assert ("was revoked at" if key == "gone" else "expired at") in (error.details() or "")
    if secret:
        assert secret not in (error.details() or "")


async def test_the_start_up_log_says_who_may_call(keyed: KeyedGateway, mesh: Mesh) -> None:
    assert "API keys required" in keyed.log() and "the gateway is open" not in keyed.log()
    open_log = mesh.services["gateway"].log_path
    assert open_log is not None and "no API keys: the gateway is open" in open_log.read_text()


async def test_health_and_reflection_need_no_key(keyed: KeyedGateway) -> None:
    health = health_pb2_grpc.HealthStub(keyed.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="genmesh.v1.ApiKeyService"), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    rc, out, err = await grpcurl("-plaintext", keyed.process.address, "list")
    assert rc == 0, err
    assert {"genmesh.v1.GatewayService", "genmesh.v1.JobService", "genmesh.v1.ApiKeyService"} <= set(out.split())


async def test_each_service_needs_its_scope(keyed: KeyedGateway) -> None:
    keys = api_keys_pb2_grpc.ApiKeyServiceStub(keyed.channel)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=bearer(keyed.secrets["app"]))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'admin'" in (denied.value.details() or "")
    listed = await keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=bearer(keyed.secrets["ops"]))
    assert {k.display_name for k in listed.api_keys} >= {"ops", "app", "batch", "gone", "old"}
    assert any(k.HasField("revoke_time") for k in listed.api_keys)
    jobs = jobs_pb2_grpc.JobServiceStub(keyed.channel)
    await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(keyed.secrets["batch"]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as no_jobs:
        await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=bearer(keyed.secrets["app"]), timeout=10)
    assert no_jobs.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'jobs'" in (no_jobs.value.details() or "")


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "genmesh.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_keys_the_cli_creates_and_revokes_take_effect_without_a_restart(keyed: KeyedGateway) -> None:
    store = ("keys", "--store", str(keyed.store_path))
    rc, out, err = await _cli(*store, "create", "fresh", "--scopes", "generate,jobs", "--rpm", "100")
    assert rc == 0, err
    secret = out.strip()
    assert out.count("\n") == 1 and re.fullmatch(r"gmk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", secret)
    assert "created apiKeys/" in err and secret not in err
    assert "complete" in await _generate(keyed, bearer(secret))
    rc, out, err = await _cli(*store, "list")
    assert rc == 0 and "fresh" in out and "revoked" in out and secret not in out
    rc, out, err = await _cli(*store, "revoke", "fresh")
    assert rc == 0, err
    error = await _refused(keyed, bearer(secret))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "'fresh'" in (error.details() or "")
    assert "was revoked at" in (error.details() or "")


async def test_audit_lines_name_the_key_never_the_secret(keyed: KeyedGateway) -> None:
    for key in ("gone", "batch"):
        await _refused(keyed, bearer(keyed.secrets[key]))
    await _refused(keyed, ())
    lines = keyed.audit_lines()
    assert any(
        "event=auth_failed" in line and "key=gone" in line and "reason=API_KEY_INVALID" in line for line in lines
    )
    assert any(
        "key=batch" in line and "reason=SCOPE_MISSING" in line and f"method={GENERATE}" in line for line in lines
    )
    assert any("key=- " in line and "reason=API_KEY_MISSING" in line for line in lines)
    log = keyed.log()
    for secret in keyed.secrets.values():
        assert secret not in log and random_part(secret) not in log


async def test_a_flood_of_bad_keys_writes_a_bounded_number_of_audit_lines(keyed: KeyedGateway) -> None:
    flood = "gmk_eeeeeeeeeeee_" + "B" * 43
    before = len(keyed.audit_lines())
    started = time.monotonic()
    for _ in range(10):
        results = await asyncio.gather(*(_refused(keyed, bearer(flood)) for _ in range(50)))
        assert all(e.code() == grpc.StatusCode.UNAUTHENTICATED for e in results)
    elapsed = time.monotonic() - started
    lines = keyed.audit_lines()[before:]
    flood_lines = [line for line in lines if "key=apiKeys/eeeeeeeeeeee" in line]
    # The audit log writes a burst of 20, then 5 a second: the bound follows from the flood's own duration.
    assert 1 <= len(flood_lines) <= 20 + 5 * (elapsed + 1), (len(flood_lines), elapsed)
    assert len(lines) < 500 and flood not in keyed.log()


async def test_grpcurl_needs_a_key_and_streams_with_one(keyed: KeyedGateway) -> None:
    request = json.dumps({"question": "What is a decorator?", "sampling": {"maxTokens": 4, "temperature": 0}})
    target = (keyed.process.address, "genmesh.v1.GatewayService/Generate")
    rc, out, err = await grpcurl("-plaintext", "-d", request, *target)
    assert rc != 0 and "Unauthenticated" in err and "missing API key" in err
    header = f"authorization: Bearer {keyed.secrets['app']}"
    rc, out, err = await grpcurl("-plaintext", "-H", header, "-d", request, *target)
    assert rc == 0, err
    assert '"complete"' in out and '"delta"' in out
