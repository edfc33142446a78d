"""The client over TLS: AsyncClient and the blocking Client against a real gateway that serves mutual TLS with the
certificates of `genmesh certs` and requires API keys (served in-process over scripted upstreams); a client that
does not trust the gateway's CA, or speaks plaintext, gets the client's Unavailable at once, naming the cause."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from served import served_gateway

from gateway.auth.caller import Scope
from gateway.auth.file_keys import FileKeyStore
from genmesh.cli.certs import CertDir, create_certs
from genmesh.client import NO_RETRIES, AsyncClient, Client, ClientTLS, Complete, Sources, Unauthenticated, Unavailable
from genmesh.tls import ClientAuth, ServerTLS

QUESTION = "What does yield do?"
ANSWER = "Generators yield values."


@dataclass(frozen=True)
class TLSGateway:
    address: str
    ours: CertDir
    theirs: CertDir  # another CA's certificates
    key: str  # an API key with the generate and jobs scopes


@pytest_asyncio.fixture(scope="module")
async def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TLSGateway]:
    ours = create_certs(tmp_path_factory.mktemp("certs-ours"))
    theirs = create_certs(tmp_path_factory.mktemp("certs-theirs"))
    where = tmp_path_factory.mktemp("tls-gateway")
    store = FileKeyStore(where / "api-keys.json")
    _, key = await store.create("app", [Scope.GENERATE, Scope.JOBS])
    server = ServerTLS(ours.cert("gateway"), ours.key("gateway"), ours.ca, ClientAuth.REQUIRE)
    async with served_gateway(where, metrics=False, api_keys=store, tls=(server, ours.client())) as served:
        yield TLSGateway(served.address, ours, theirs, key)


async def test_the_async_client_answers_and_runs_jobs_over_mutual_tls_with_a_key(tls_gateway: TLSGateway) -> None:
    async with AsyncClient(tls_gateway.address, tls=tls_gateway.ours.client(), api_key=tls_gateway.key) as client:
        events = [event async for event in client.generate(QUESTION)]
        answer = await client.answer(QUESTION, retrieval=False)
        job = await client.jobs.submit(QUESTION, retrieval=False)
        states = [u.job.state async for u in client.jobs.watch(job.id) if u.job is not None]
    assert isinstance(events[0], Sources) and isinstance(events[-1], Complete)
    assert answer.text == ANSWER and states == ["succeeded"]
    async with AsyncClient(tls_gateway.address, tls=tls_gateway.ours.client(), retry=NO_RETRIES) as keyless:
        with pytest.raises(Unauthenticated):  # the handshake passed: the gateway itself refused
            await keyless.answer(QUESTION)


async def test_the_blocking_client_answers_over_mutual_tls_with_a_key(tls_gateway: TLSGateway) -> None:
    def script() -> str:
        with Client(tls_gateway.address, tls=tls_gateway.ours.client(), api_key=tls_gateway.key) as client:
            return client.answer(QUESTION, retrieval=False).text

    assert await asyncio.to_thread(script) == ANSWER


async def test_a_client_that_does_not_trust_the_gateways_ca_gets_unavailable_naming_the_certificate(
    tls_gateway: TLSGateway,
) -> None:
    ours, theirs = tls_gateway.ours, tls_gateway.theirs
    wrong_ca = ClientTLS(theirs.ca, ours.cert("client"), ours.key("client"))
    async with AsyncClient(tls_gateway.address, tls=wrong_ca, api_key=tls_gateway.key, retry=NO_RETRIES) as client:
        with pytest.raises(Unavailable) as refused:
            await asyncio.wait_for(client.answer(QUESTION), 10)  # refused at once, not a wait for the deadline
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value), str(refused.value)

    def blocking() -> None:
        with Client(tls_gateway.address, tls=wrong_ca, api_key=tls_gateway.key, retry=NO_RETRIES) as client:
            client.answer(QUESTION)

    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(blocking)


async def test_a_plaintext_client_or_one_without_a_certificate_is_refused(tls_gateway: TLSGateway) -> None:
    for tls in (None, ClientTLS(tls_gateway.ours.ca)):
        async with AsyncClient(tls_gateway.address, tls=tls, api_key=tls_gateway.key, retry=NO_RETRIES) as client:
            with pytest.raises(Unavailable):
                await asyncio.wait_for(client.answer(QUESTION), 10)
