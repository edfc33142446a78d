"""The security rules as a grpcurl user meets them: a key without the scope is PermissionDenied, a key past its
requests per minute is ResourceExhausted with RetryInfo and QuotaFailure, another key's job is NotFound and
absent from its list, and a service requiring client certificates answers only to a client presenting one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from genmesh.cli.certs import CertDir, create_certs
from genmesh.cli.launcher import ServiceProcess
from security.keyed_gateway import KeyedGateway, grpcurl
from security.tls_processes import start_tools, stop, tools_flags

GENERATE = "genmesh.v1.GatewayService/Generate"
ASK = {
    "question": "What is a decorator?",
    "sampling": {"maxTokens": 4, "temperature": 0},
    "retrieval": {"disabled": True},
}


def _messages(out: str) -> list[dict[str, Any]]:
    """The JSON messages grpcurl printed one after the other."""
    decoder, messages, position = json.JSONDecoder(), [], 0
    while (position := _skip_space(out, position)) < len(out):
        message, position = decoder.raw_decode(out, position)
        messages.append(message)
    return messages


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


async def _call(
    keyed: KeyedGateway, key: str, method: str, request: dict[str, Any], *flags: str
) -> tuple[int, str, str]:
    """grpcurl ``method`` of the keyed gateway with ``key``'s bearer header and ``request`` as JSON."""
    args = ("-plaintext", *flags, "-H", keyed.header(key), "-d", json.dumps(request), keyed.process.address, method)
    return await grpcurl(*args)


async def test_a_key_without_the_generate_scope_is_permission_denied(keyed: KeyedGateway) -> None:
    rc, out, err = await _call(keyed, "batch", GENERATE, ASK)
    assert rc != 0 and out == ""
    assert "Code: PermissionDenied" in err
    assert "Message: API key 'batch' lacks the scope 'generate' that /genmesh.v1.GatewayService/Generate" in err
    assert keyed.secrets["batch"] not in err


async def test_a_key_past_its_requests_per_minute_is_told_the_limit_and_when_to_retry(keyed: KeyedGateway) -> None:
    rc, out, err = await _call(keyed, "one-a-minute", GENERATE, ASK)
    assert rc == 0, err
    kinds = [next(iter(message)) for message in _messages(out)]
    assert "delta" in kinds and kinds[-1] == "complete"

    rc, out, err = await _call(keyed, "one-a-minute", GENERATE, ASK)
    assert rc == 64 + 8, err  # grpcurl exits with 64 + the status code
    assert "Code: ResourceExhausted" in err and "reached its requests_per_minute limit of 1; retry in" in err
    rc, out, err = await _call(keyed, "one-a-minute", GENERATE, ASK, "-format-error")
    status = json.loads(err)
    assert status["code"] == 8 and "API key 'one-a-minute' (apiKeys/" in status["message"]
    details = {detail.pop("@type").rsplit(".", 1)[1]: detail for detail in status["details"]}
    assert details["ErrorInfo"]["reason"] == "RATE_LIMITED"
    assert 0 < float(details["RetryInfo"]["retry_delay"].removesuffix("s")) <= 60
    ((violation),) = details["QuotaFailure"]["violations"]
    assert violation["subject"].startswith("apiKeys/") and violation["description"] == "requests_per_minute: 1"
    assert keyed.secrets["one-a-minute"] not in err


async def test_another_key_s_job_is_not_found_and_not_listed(keyed: KeyedGateway) -> None:
    jobs = "genmesh.v1.JobService/"
    rc, out, err = await _call(keyed, "owner-a", jobs + "SubmitJob", {"request": ASK})
    assert rc == 0, err
    job = json.loads(out)["job"]
    assert job["owner"].startswith("apiKeys/")

    rc, out, err = await _call(keyed, "owner-b", jobs + "GetJob", {"id": job["id"]})
    assert rc == 64 + 5 and "Code: NotFound" in err and f"Message: no job '{job['id']}'" in err
    rc, out, err = await _call(keyed, "owner-a", jobs + "GetJob", {"id": job["id"]})
    assert rc == 0, err
    assert json.loads(out)["job"]["id"] == job["id"] and json.loads(out)["job"]["owner"] == job["owner"]

    rc, out, err = await _call(keyed, "owner-b", jobs + "ListJobs", {})
    assert rc == 0 and json.loads(out) == {}, err
    rc, out, err = await _call(keyed, "owner-a", jobs + "ListJobs", {})
    assert rc == 0 and job["id"] in [listed["id"] for listed in json.loads(out)["jobs"]], err


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertDir:
    return create_certs(tmp_path_factory.mktemp("grpcurl-certs"))


@pytest_asyncio.fixture(scope="module")
async def mtls_tools(certs: CertDir, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    """A tools service that requires a client certificate from the CA of ``certs``."""
    service = await start_tools(tmp_path_factory.mktemp("grpcurl-tls"), tools_flags(certs, "require"), certs.client())
    yield service
    await stop(service)


async def test_grpcurl_with_a_client_certificate_lists_and_checks_health_and_without_one_fails(
    mtls_tools: ServiceProcess, certs: CertDir
) -> None:
    trust = ("-cacert", str(certs.ca))
    identity = ("-cert", str(certs.cert("client")), "-key", str(certs.key("client")))
    health = "grpc.health.v1.Health/Check"
    # Refused (no certificate, or plaintext), grpc-go's dial tries again until its connect timeout: a shorter
    # one than the default 10 s, and all calls at once, so that this wait is the test's only one.
    listed, checked, no_certificate, plaintext = await asyncio.gather(
        grpcurl(*trust, *identity, mtls_tools.address, "list"),
        grpcurl(*trust, *identity, mtls_tools.address, health),
        grpcurl(*trust, "-connect-timeout", "3", mtls_tools.address, health),
        grpcurl("-plaintext", "-connect-timeout", "3", mtls_tools.address, health),
    )
    assert listed[0] == 0, listed[2]
    assert {"genmesh.v1.ToolsService", "grpc.health.v1.Health"} <= set(listed[1].split())
    assert checked[0] == 0 and json.loads(checked[1]) == {"status": "SERVING"}, checked[2]
    for rc, out, err in (no_certificate, plaintext):
        assert rc != 0 and out == "" and f'Failed to dial target host "{mtls_tools.address}"' in err
