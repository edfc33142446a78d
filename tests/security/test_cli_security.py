"""API keys as a user of the genmesh CLI meets them (the installed `genmesh` script, as subprocesses): `ask` with
--api-key or GENMESH_API_KEY streams an answer; without a key it fails saying how to give one; `jobs submit/get`
keep each key's jobs to itself; no output ever shows a key."""

from __future__ import annotations

import asyncio

from support.api_keys import random_part

from security.keyed_gateway import GENMESH, KeyedGateway, run_tool

ASK = ("--max-tokens", "4", "--temperature", "0", "--no-retrieval", "What is a context manager?")


async def genmesh(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``genmesh args...`` without a key in the environment unless ``env`` gives one."""
    return await run_tool(GENMESH, *args, env={"GENMESH_API_KEY": "", **(env or {})})


def _assert_no_secret(keyed: KeyedGateway, *outputs: str) -> None:
    for secret in keyed.secrets.values():
        for output in outputs:
            assert secret not in output and random_part(secret) not in output


async def test_ask_streams_an_answer_with_a_key_from_the_flag_or_the_environment(keyed: KeyedGateway) -> None:
    target = ("--target", keyed.process.address)
    secret = keyed.secrets["app"]
    flagged, from_env, help_text = await asyncio.gather(
        genmesh("ask", *target, "--api-key", secret, *ASK),
        genmesh("ask", *target, *ASK, env={"GENMESH_API_KEY": secret}),
        genmesh("ask", "--help", env={"GENMESH_API_KEY": secret}),
    )
    for rc, out, err in (flagged, from_env):
        assert rc == 0, err
        assert "Answer: " in out and "finish: " in out
    assert help_text[0] == 0 and "--api-key" in help_text[1]
    _assert_no_secret(keyed, *flagged[1:], *from_env[1:], *help_text[1:])


async def test_ask_without_a_valid_key_fails_and_says_how_to_give_one(keyed: KeyedGateway) -> None:
    target = ("--target", keyed.process.address)
    missing, revoked, unscoped = await asyncio.gather(
        genmesh("ask", *target, *ASK),
        genmesh("ask", *target, *ASK, env={"GENMESH_API_KEY": keyed.secrets["gone"]}),
        genmesh("ask", *target, "--api-key", keyed.secrets["batch"], *ASK),
    )
    rc, out, err = missing
    assert rc != 0 and "Answer:" not in out
    assert "error: UNAUTHENTICATED: missing API key: send the metadata 'authorization: Bearer <key>'" in err
    assert "--api-key KEY or the environment variable GENMESH_API_KEY" in err
    rc, out, err = revoked
    assert rc != 0 and "error: UNAUTHENTICATED: API key 'gone' (apiKeys/" in err and "was revoked at" in err
    rc, out, err = unscoped
    assert rc != 0 and "error: PERMISSION_DENIED: API key 'batch' lacks the scope 'generate'" in err
    _assert_no_secret(keyed, *missing[1:], *revoked[1:], *unscoped[1:])


async def test_jobs_submit_and_get_keep_each_key_s_jobs_to_itself(keyed: KeyedGateway) -> None:
    target = ("--target", keyed.process.address)
    rc, out, err = await genmesh("jobs", "submit", *target, "--api-key", keyed.secrets["owner-a"], *ASK)
    assert rc == 0, err
    job_id = out.strip()
    assert job_id and "\n" not in job_id
    theirs, own = await asyncio.gather(
        genmesh("jobs", "get", *target, job_id, env={"GENMESH_API_KEY": keyed.secrets["owner-b"]}),
        genmesh("jobs", "get", *target, job_id, "--api-key", keyed.secrets["owner-a"]),
    )
    rc, out, err = theirs
    assert rc != 0 and f"error: NOT_FOUND: no job '{job_id}'" in err and out == ""
    rc, out, err = own
    assert rc == 0, err
    assert f"id:        {job_id}" in out and "question:  What is a context manager?" in out
    _assert_no_secret(keyed, *theirs[1:], *own[1:])
