"""`genmesh up` brings the mesh up, streams the demo, and on Ctrl-C stops the gateway (draining) before the rest,
without a drain delay."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
from support.scrape import scrape_async, value
from support.streams import collect

from genmesh import mesh
from genmesh.channels import open_channel
from genmesh.cli.launcher import free_ports
from genmesh.v1 import gateway_pb2, gateway_pb2_grpc

QUERY_DELAY_S = 0.5


async def test_up_demo_then_ctrl_c(tmp_path: Path) -> None:
    *spare, http_port = free_ports(len(mesh.SERVICES) + 1)
    chosen = zip(mesh.SERVICES, spare, strict=True)
    ports = [arg for spec, port in chosen for arg in (f"--{spec.name}-port", str(port))]
    ports += ["--http-port", str(http_port)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genmesh.cli",
        "up",
        "--demo",
        "--max-tokens",
        "12",
        "--log-dir",
        str(tmp_path / "logs"),
        *ports,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "GENMESH_RETRIEVAL_FAULTS": f"Query:delay={QUERY_DELAY_S}s",  # answers wait on retrieval
            # A drain delay from the environment must not slow Ctrl-C: `genmesh up` passes its own (0).
            **{f"GENMESH_{spec.name.upper()}_DRAIN_DELAY": "120" for spec in mesh.SERVICES},
        },
    )
    try:
        output = await _read_until_up(process)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    assert "Sources:" in output and "Tool calculator [0]" in output and "Tool clock [1]" in output
    answer = re.search(r"^Answer: (.*?)^finish:", output, re.MULTILINE | re.DOTALL)
    assert answer and answer.group(1).strip(), output
    assert re.search(r"^finish: \w+ +tokens: prompt \d+, completion \d+", output, re.MULTILINE)
    pids = [int(m) for m in re.findall(r"pid (\d+)", output)]
    assert len(pids) == 4

    gateway = re.search(r"^gateway ready at (\S+)$", output, re.MULTILINE)
    assert gateway, output
    assert f"OpenAI-compatible API and web page at http://127.0.0.1:{http_port}" in output
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
        chat = {"messages": [{"role": "user", "content": "What does yield do?"}], "max_tokens": 2}
        answered_over_http = await http.post("/v1/chat/completions", json=chat)
    assert answered_over_http.status_code == 200, answered_over_http.text
    assert answered_over_http.json()["usage"]["completion_tokens"] >= 1
    front_metrics = re.search(rf"web page at http://127\.0\.0\.1:{http_port}  metrics (\S+)$", output, re.MULTILINE)
    assert front_metrics, output  # `genmesh up` turns the front's metrics on like the services'
    scraped = await scrape_async(front_metrics.group(1))
    assert value(scraped, "genmesh_http_requests_handled_total", route="/v1/chat/completions", code="200") == 1
    async with open_channel(gateway.group(1)) as channel:
        request = gateway_pb2.GatewayRequest(request_id="in-flight-at-ctrl-c", question="What does yield do?")
        request.tool_calls.add(name="calculator", arguments_json='{"expression": "6*7"}')
        request.sampling.max_tokens = 4
        call = gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request, timeout=60)
        first = await anext(call.__aiter__())
        assert first.HasField("tool_result"), "in flight: the tool answered, retrieval (0.5 s) has not"
        process.send_signal(signal.SIGINT)
        answered = await collect(call)  # it still needs retrieval and inference, after Ctrl-C
    assert "sources" in answered.kinds and answered.token_ids, answered.kinds
    assert answered.completion.usage.completion_tokens == len(answered.token_ids)

    rest, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, rest.decode()
    assert "stopped" in rest.decode()
    logs = tmp_path / "logs"
    gateway_stopped = _ts(logs / "gateway.log", "msg=stopped")
    for upstream in ("retrieval", "tools", "inference"):
        assert gateway_stopped <= _ts(logs / f"{upstream}.log", "msg=stopping"), (
            f"{upstream} stopped before the gateway"
        )
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"service process {pid} outlived genmesh up")


async def _read_until_up(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("mesh is up") for line in lines):
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        assert line, "genmesh up exited early:\n" + "".join(lines)
        lines.append(line.decode())
    return "".join(lines)


def _ts(log: Path, needle: str) -> str:
    """The timestamp (ISO 8601, UTC, milliseconds: ordered as text) of the first line of ``log`` holding ``needle``."""
    line = next(line for line in log.read_text().splitlines() if needle in line)
    return line.split(" ", 1)[0].removeprefix("ts=")
