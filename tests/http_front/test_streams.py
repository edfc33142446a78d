"""Raw server-sent events with ``curl -N`` (genmesh's named events only when asked for, ``data: [DONE]`` last, a
failure after the first token as an ``error`` event), the WebSocket endpoint (answers, a bad request, cancel
mid-answer), and a client that disconnects mid-answer: the generation stops upstream, not at its end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
import websockets
from inprocess import Fault, ScriptedInference, ScriptedTool
from served import ServedGateway, served_gateway

from gateway.http import gateway_call
from gateway.http.context import HttpContext
from gateway.http.openai_chat import parse_request
from gateway.http.openai_routes import EventStream, _sse
from genmesh.logs import REQUEST_ID
from http_front.front import MODEL, Front, served_front

QUESTION = "What does yield do?"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True}


@pytest_asyncio.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[ServedGateway, Front]]:
    tmp = tmp_path_factory.mktemp("http")
    async with served_gateway(tmp, ScriptedTool("lookup"), metrics=False) as served, served_front(served.channel) as f:
        yield served, f


def inference(mesh: tuple[ServedGateway, Front]) -> ScriptedInference:
    servicer: ScriptedInference = mesh[0].replicas.replicas[0].servicer
    return servicer


class Pulled:
    """``count`` deltas of a slow generation, counting how many the scripted inference service produced."""

    def __init__(self, count: int) -> None:
        self.count, self.pulled = count, 0

    def __iter__(self) -> Iterator[str]:
        for _ in range(self.count):
            self.pulled += 1
            yield "tok "

    def __len__(self) -> int:
        return self.count


@pytest.fixture
def slow(mesh: tuple[ServedGateway, Front]) -> Iterator[Pulled]:
    """A 200-token generation at 50 ms a token (10 s) for the next request."""
    servicer = inference(mesh)
    saved = servicer.deltas, servicer.delta_delay_s
    pulled = Pulled(200)
    servicer.deltas, servicer.delta_delay_s = pulled, 0.05
    yield pulled
    servicer.deltas, servicer.delta_delay_s = saved


async def stopped(pulled: Pulled, timeout_s: float = 5.0) -> int:
    """The number of deltas produced once production stopped (unchanged for 0.5 s); fails past ``timeout_s``."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    while loop.time() < until:
        seen = pulled.pulled
        await asyncio.sleep(0.5)
        if pulled.pulled == seen:
            return seen
    raise AssertionError(f"the generation went on: {pulled.pulled} of {pulled.count} deltas")


async def curl(url: str, body: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The (event name, data) of each server-sent event ``curl -N`` receives."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sN", "-X", "POST", url, "-H", "content-type: application/json", "-d", json.dumps(body),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0
    events = []
    for block in out.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((lines.get("event"), lines["data"]))
    return events


async def test_curl_sees_named_events_only_when_asked_and_done_last(mesh: tuple[ServedGateway, Front]) -> None:
    url = mesh[1].url + "/v1/chat/completions"
    calls = [{"name": "lookup", "arguments": {"key": "yield"}, "id": "c1"}]
    named = await curl(url, {**CHAT, "genmesh": {"events": True, "tool_calls": calls}})
    plain = await curl(url, CHAT)
    names = [name for name, _ in named]
    assert names[:2] == ["genmesh.sources", "genmesh.tool_result"] or names[:2] == [
        "genmesh.tool_result",
        "genmesh.sources",
    ]
    assert "genmesh.timings" in names and named[-1] == (None, "[DONE]")
    tool = json.loads(next(data for name, data in named if name == "genmesh.tool_result"))
    assert (tool["call_id"], tool["result"]) == ("c1", {"value": 42})
    assert {name for name, _ in plain} == {None} and plain[-1] == (None, "[DONE]")
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for _, d in plain[:-1])
    assert text == "Generators yield values."


async def test_a_failure_after_the_first_token_is_an_error_event_then_done(mesh: tuple[ServedGateway, Front]) -> None:
    servicer = inference(mesh)
    servicer.fault_after_first = Fault(grpc.StatusCode.INTERNAL, times=None)
    try:
        events = await curl(
            mesh[1].url + "/v1/chat/completions", {**CHAT, "genmesh": {"retrieval": {"disabled": True}}}
        )
    finally:
        servicer.fault_after_first = None
    assert events[-1] == (None, "[DONE]") and events[-2][0] == "error"
    assert json.loads(events[-2][1])["error"]["type"] == "server_error"
    assert json.loads(events[0][1])["choices"][0]["delta"]["content"] == "Generators "


class Paced:
    """The scripted inference's deltas: the first after ``first_s``, then one every 5 s; ``ended``: when the
    upstream Generate let go of them (cancelled: its frame is gone)."""

    def __init__(self, servicer: ScriptedInference, first_s: float) -> None:
        self.servicer, self.first_s = servicer, first_s
        self.asked = 0
        """Deltas asked for: the Generate call is producing the ``asked``-th."""
        self.ended: float | None = None

    def __len__(self) -> int:
        return 20

    def __iter__(self) -> Iterator[str]:
        try:
            for i in range(len(self)):
                self.servicer.delta_delay_s = self.first_s if i == 0 else 5.0  # read before each delta
                self.asked += 1
                yield "tok "
        finally:
            self.ended = asyncio.get_running_loop().time()


async def cancelled_within(paced: Paced, disconnected: float, limit_s: float = 1.0) -> float:
    """Seconds from the client's disconnect to the upstream call's end; fails past ``limit_s``."""
    loop = asyncio.get_running_loop()
    while paced.ended is None and loop.time() < disconnected + limit_s:
        await asyncio.sleep(0.02)
    assert paced.ended is not None, f"the upstream call went on {limit_s} s after the client left"
    return paced.ended - disconnected


@pytest.fixture
def paced(mesh: tuple[ServedGateway, Front], request: pytest.FixtureRequest) -> Iterator[Paced]:
    servicer = inference(mesh)
    saved = servicer.deltas, servicer.delta_delay_s
    servicer.deltas = paced = Paced(servicer, first_s=request.param)
    yield paced
    servicer.deltas, servicer.delta_delay_s = saved


@pytest.mark.parametrize("paced", [0.0], indirect=True)
async def test_an_sse_client_that_disconnects_mid_answer_cancels_upstream_at_once(
    mesh: tuple[ServedGateway, Front], paced: Paced
) -> None:
    url = mesh[1].url + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=10) as client, client.stream("POST", url, json=CHAT) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break
    await cancelled_within(paced, asyncio.get_running_loop().time())


@pytest.mark.parametrize(
    ("paced", "stream", "asked"),
    [(5.0, True, 1), (5.0, False, 1), (0.0, False, 2)],
    indirect=["paced"],
    ids=["streamed-before-the-first-token", "whole-before-the-first-token", "whole-after-the-first-token"],
)
async def test_a_client_that_disconnects_without_a_write_cancels_upstream_at_once(
    mesh: tuple[ServedGateway, Front], paced: Paced, stream: bool, asked: int
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        posted = asyncio.create_task(client.post(mesh[1].url + "/v1/chat/completions", json={**CHAT, "stream": stream}))
        while paced.asked < asked:  # inference is producing this delta (the first one, or the second)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the delta before it reached the front
        posted.cancel()
        disconnected = asyncio.get_running_loop().time()
        with pytest.raises(asyncio.CancelledError):
            await posted
    await cancelled_within(paced, disconnected)


async def test_websocket_answers_refuses_and_cancels(mesh: tuple[ServedGateway, Front], slow: Pulled) -> None:
    servicer = inference(mesh)
    async with websockets.connect(mesh[1].ws_url) as ws:
        await ws.send(json.dumps({"type": "generate", "id": 1, "request": {**CHAT, "temperature": 9}}))
        refused = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "generate", "id": 2, "request": CHAT}))
        chunks = 0
        while chunks < 3:
            message = json.loads(await ws.recv())
            assert message["ref"] == 2
            chunks += message["type"] == "chunk"
        await ws.send(json.dumps({"type": "cancel", "id": 2}))
        kinds: list[dict[str, Any]] = []
        while not kinds or kinds[-1]["type"] != "done":
            kinds.append(json.loads(await ws.recv()))
        produced = await stopped(slow)
        servicer.deltas, servicer.delta_delay_s = ["Generators ", "yield ", "values."], 0.0
        await ws.send(json.dumps({"type": "generate", "id": 3, "request": {**CHAT, "genmesh": {"events": True}}}))
        answer: list[dict[str, Any]] = []
        while not answer or answer[-1]["type"] != "done":
            answer.append(json.loads(await ws.recv()))
    assert refused["type"] == "error" and refused["status"] == 400 and refused["error"]["param"] == "temperature"
    assert kinds[-1]["finish_reason"] == "cancelled" and produced < slow.count // 2
    assert {m["type"] for m in answer} >= {"genmesh.sources", "genmesh.timings", "chunk", "done"}
    text = "".join(m["choices"][0]["delta"].get("content", "") for m in answer if m["type"] == "chunk" and m["choices"])
    assert text == "Generators yield values." and answer[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("paced", [0.0], indirect=True)
async def test_an_event_stream_whose_client_is_gone_at_the_start_cancels_the_call(
    mesh: tuple[ServedGateway, Front], paced: Paced
) -> None:
    parsed = parse_request(CHAT, chat=True, served_model=MODEL)
    generation = await gateway_call.start(HttpContext(mesh[0].channel), parsed.request, {})

    async def gone(message: object) -> None:
        raise OSError("the client left")

    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    with contextlib.suppress(OSError):
        await EventStream(generation, _sse(generation, parsed))({"type": "http"}, never, gone)
    await cancelled_within(paced, asyncio.get_running_loop().time())
    assert generation.call.cancelled()


class _RequestIds(logging.Handler):
    """The request id of each Generate call the gateway logs (its ``rpc`` line, in the call's context)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.ids: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "method", "") == "/genmesh.v1.GatewayService/Generate":
            self.ids.append(REQUEST_ID.get())


async def test_each_websocket_answer_has_its_own_request_id(mesh: tuple[ServedGateway, Front]) -> None:
    seen, logger = _RequestIds(), logging.getLogger("genmesh.rpc")
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # setLevel: it clears the logger's cache of enabled levels
    try:
        async with websockets.connect(mesh[1].ws_url, additional_headers={"X-Request-Id": "ws-7"}) as ws:
            for rid in (1, 2):
                await ws.send(json.dumps({"type": "generate", "id": rid, "request": CHAT}))
                while json.loads(await ws.recv())["type"] != "done":
                    pass
        await asyncio.sleep(0.2)  # the gateway logs a call once it is over
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert seen.ids == ["ws-7-1", "ws-7-2"]
