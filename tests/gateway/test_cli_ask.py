"""`genmesh ask` (a subprocess, as a user runs it) against a real gateway served in-process over scripted
upstreams (tests/gateway/served.py): --json prints one event per line and the new flags reach the upstreams; a
server validation error is told once; Ctrl-C mid-answer exits 130 with one line; UNAVAILABLE comes with a hint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import grpc
from inprocess import Fault
from served import served_gateway
from support.genmesh_cli import ROOT, genmesh

QUESTION = "What does yield do?"


async def test_json_lines_carry_every_event_and_the_flags_reach_the_upstreams(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        ran = await genmesh(
            "ask", "--target", served.address, "--json", "--collection", "notes", "--stop", "END", "--stop", "\n\n",
            "--logprobs", "2", "--request-id", "cli-json-1", "--require-all-stages", "--max-tokens", "3", QUESTION,
        )  # fmt: skip
        (generate,) = served.replicas.replicas[0].servicer.requests
        (query,) = served.upstreams.retrieval.requests
    assert ran.returncode == 0, ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "sources" and kinds[-1] == "complete" and set(kinds[1:-1]) == {"delta"}, kinds
    assert "".join(e["delta"]["text"] for e in events[1:-1]) == "Generators yield values."
    assert events[0]["sources"]["passages"][0]["documentId"] == "yield"
    assert query.collection == "notes" and query.request_id == "cli-json-1"
    assert list(generate.sampling.stop) == ["END", "\n\n"] and generate.sampling.logprobs == 2
    assert generate.sampling.max_tokens == 3 and generate.request_id.startswith("cli-json-1.")


async def test_a_validation_error_is_told_once_with_each_field(tmp_path: Path) -> None:
    bad = ("--max-tokens", "0", "--temperature", "9")
    async with served_gateway(tmp_path, metrics=False) as served:
        text, as_json = await asyncio.gather(
            genmesh("ask", "--target", served.address, *bad, QUESTION),
            genmesh("ask", "--target", served.address, "--json", *bad, QUESTION),
        )
    assert text.returncode == 1 and text.stdout == f"Question: {QUESTION}\n"
    lines = text.stderr.splitlines()
    assert lines[0] == "error: INVALID_ARGUMENT: 2 bad fields:", text.stderr
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["sampling.max_tokens", "sampling.temperature"]
    for line in lines[1:]:
        assert text.stderr.count(line.strip()) == 1, text.stderr
    assert as_json.returncode == 1 and as_json.stderr == ""
    (error,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert error["error"]["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in error["error"]["fieldViolations"]] == ["sampling.max_tokens", "sampling.temperature"]


async def test_ctrl_c_mid_answer_exits_130_with_one_line(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        inference = served.replicas.replicas[0].servicer
        inference.deltas = [f"word{i} " for i in range(200)]
        inference.delta_delay_s = 0.05
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "genmesh.cli", "ask", "--target", served.address, "--no-retrieval", QUESTION,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GENMESH_API_KEY": ""},
        )  # fmt: skip
        try:
            assert process.stdout is not None
            seen = b""
            while b"word1 " not in seen:
                chunk = await asyncio.wait_for(process.stdout.read(64), 30)
                assert chunk, seen
                seen += chunk
            process.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 130
    assert err.decode() == "interrupted: the answer was cancelled\n"
    assert (seen + out).decode().endswith("\n") and "finish:" not in (seen + out).decode()


async def test_unavailable_from_the_gateway_comes_with_a_hint(tmp_path: Path) -> None:
    async with served_gateway(tmp_path, metrics=False) as served:
        served.replicas.replicas[0].servicer.fault = Fault(grpc.StatusCode.UNAVAILABLE, "inference is down")
        ran = await genmesh("ask", "--target", served.address, "--no-retrieval", QUESTION)
    assert ran.returncode == 1
    first, hint = ran.stderr.splitlines()
    assert first.startswith("error: UNAVAILABLE: ")
    assert hint == (
        f"  the gateway at {served.address} answered, but a service it needs is down or draining: "
        f"`genmesh status --target {served.address}` shows which"
    )
