"""API keys through the client against a real gateway that requires them (served in-process over scripted
upstreams): no key or an unknown one is Unauthenticated, a key without the scope is PermissionDenied, a good key
answers; another owner's job is NotFound."""

from __future__ import annotations

from pathlib import Path

import pytest
from served import served_gateway

from gateway.auth.caller import Limits, Scope
from gateway.auth.file_keys import FileKeyStore
from genmesh.client import NO_RETRIES, AsyncClient, NotFound, PermissionDenied, RateLimited, Unauthenticated
from genmesh.errors import Reason

QUESTION = "What does yield do?"


async def test_keys_reach_the_gateway_and_refusals_are_typed(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "api-keys.json")
    _, app = await store.create("app", [Scope.GENERATE])
    _, batch = await store.create("batch", [Scope.JOBS])
    _, other = await store.create("other", [Scope.JOBS])
    _, once = await store.create("once", [Scope.GENERATE], Limits(requests_per_minute=1))
    async with served_gateway(tmp_path, api_keys=store, metrics=False) as served:
        target = served.address
        async with AsyncClient(target) as anonymous, AsyncClient(target, api_key="gm_not-a-key") as unknown:
            with pytest.raises(Unauthenticated) as missing:
                await anonymous.answer(QUESTION)
            with pytest.raises(Unauthenticated) as invalid:
                await unknown.answer(QUESTION)
        async with AsyncClient(target, api_key=app) as client:
            answer = await client.answer(QUESTION, retrieval=False)
            with pytest.raises(PermissionDenied):
                await client.jobs.submit(QUESTION)
        async with AsyncClient(target, api_key=batch) as owner, AsyncClient(target, api_key=other) as stranger:
            job = await owner.jobs.submit(QUESTION, retrieval=False)
            with pytest.raises(NotFound):
                await stranger.jobs.get(job.id)
        async with AsyncClient(target, api_key=once, retry=NO_RETRIES) as limited:
            await limited.answer(QUESTION, retrieval=False)
            with pytest.raises(RateLimited) as refused:
                await limited.answer(QUESTION, retrieval=False)
    assert missing.value.reason == Reason.API_KEY_MISSING and invalid.value.reason == Reason.API_KEY_INVALID
    assert answer.text == "Generators yield values."
    assert refused.value.reason == Reason.RATE_LIMITED and (refused.value.retry_after_s or 0) > 0
    (quota,) = refused.value.quota_violations
    assert quota.subject == refused.value.metadata["key"] and quota.description == "requests_per_minute: 1"
