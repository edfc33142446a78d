"""Refusals answered as HTTP statuses in OpenAI's error shape: inference's queue full after retrieval's sources
(429 with Retry-After, streamed or not, never a 200 with an error event), bodies that are not JSON (415, 413, 400),
headers gRPC cannot carry (400 naming them), unknown /v1 paths and wrong methods (404, 405); and the WebSocket's:
a cross-site Origin refused at the handshake, frames that are not a JSON message answered with an error while the
socket goes on answering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from inprocess import Fault, ScriptedInference
from served import ServedGateway, served_gateway

from gateway.http import websocket
from genmesh.errors import ResourceExhausted
from http_front.front import MODEL, Front, served_front

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What does yield do?"}]}


@pytest_asyncio.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[ServedGateway, Front]]:
    tmp = tmp_path_factory.mktemp("http")
    async with served_gateway(tmp, metrics=False) as served, served_front(served.channel) as front:
        yield served, front


def inference(mesh: tuple[ServedGateway, Front]) -> ScriptedInference:
    servicer: ScriptedInference = mesh[0].replicas.replicas[0].servicer
    return servicer


@pytest.mark.parametrize("stream", [False, True])
async def test_inference_full_after_the_sources_is_a_429(mesh: tuple[ServedGateway, Front], stream: bool) -> None:
    servicer = inference(mesh)
    servicer.fault = Fault(rich=ResourceExhausted("inference queue full", 2.2))
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(mesh[1].url + "/v1/chat/completions", json={**CHAT, "stream": stream})
    finally:
        servicer.fault = None
    assert mesh[0].upstreams.retrieval.requests, "retrieval ran: its sources came before the refusal"
    assert answer.status_code == 429 and answer.headers["content-type"] == "application/json"
    assert int(answer.headers["retry-after"]) >= 1 and answer.json()["error"]["type"] == "rate_limit_error"


async def test_bodies_that_are_not_json_are_refused(mesh: tuple[ServedGateway, Front]) -> None:
    url = mesh[1].url + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=30) as client:
        form = await client.post(url, content=json.dumps(CHAT), headers={"content-type": "text/plain"})
        huge = await client.post(url, content=b" " * (16 * 2**20 + 1), headers={"content-type": "application/json"})
        deep = await client.post(url, content=b"[" * 100_000, headers={"content-type": "application/json"})
        embed = await client.post(mesh[1].url + "/v1/embeddings", data={"input": "x"})
    assert (form.status_code, form.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "request_too_large")
    assert (deep.status_code, deep.json()["error"]["code"]) == (400, "invalid_json")
    assert embed.status_code == 415


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**CHAT, "messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
        ({**CHAT, "response_format": {"type": "regex", "regex": "[\udfff]"}}, "response_format.regex"),
        ({**CHAT, "metadata": {"k\udc80": "v"}}, "metadata.k\\udc80"),
    ],
)
async def test_a_lone_surrogate_is_a_400_naming_its_field(
    mesh: tuple[ServedGateway, Front], body: dict[str, Any], field: str
) -> None:
    """Valid JSON (``"\\ud800"``) but not Unicode text: no protobuf string can carry it, so it is refused, not a 500."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            mesh[1].url + "/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400, answer.text
    assert (answer.json()["error"]["param"], answer.json()["error"]["code"]) == (field, "invalid_unicode")


@pytest.mark.parametrize(
    ("header", "value"),
    [("X-Request-Id", "r" * 129), ("X-Request-Id", "caf\xe9"), ("Authorization", "Bearer caf\xe9")],
)
async def test_a_header_grpc_cannot_carry_is_a_400_naming_it(
    mesh: tuple[ServedGateway, Front], header: str, value: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            mesh[1].url + "/v1/chat/completions", json=CHAT, headers={header.encode(): value.encode("latin-1")}
        )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == header


async def test_unknown_paths_and_wrong_methods_answer_openai_errors(mesh: tuple[ServedGateway, Front]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.post(mesh[1].url + "/v1/nothing", json={})
        wrong = await client.get(mesh[1].url + "/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"


async def test_a_cross_site_websocket_is_refused(mesh: tuple[ServedGateway, Front]) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(mesh[1].ws_url, origin=websockets.Origin("http://evil.example")):
            pass
    assert refused.value.response.status_code == 403
    own = websockets.Origin(mesh[1].url)
    async with websockets.connect(mesh[1].ws_url, origin=own) as ws:
        await ws.send(json.dumps({"type": "generate", "id": 1, "request": CHAT}))
        assert json.loads(await ws.recv())["ref"] == 1


async def test_websocket_frames_that_are_not_a_message_are_errors(mesh: tuple[ServedGateway, Front]) -> None:
    errors: list[dict[str, Any]] = []
    async with websockets.connect(mesh[1].ws_url) as ws:
        surrogate = json.dumps({"type": "generate", "id": "\ud800", "request": CHAT})
        for frame in (b"\x00binary", "{not json", "[1, 2]", json.dumps({"type": "fly", "id": 7}), surrogate):
            await ws.send(frame)
            errors.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        await ws.send(json.dumps({"type": "generate", "id": 8, "request": CHAT}))
        answer: list[dict[str, Any]] = []
        while not answer or answer[-1]["type"] not in ("done", "error"):
            answer.append(json.loads(await ws.recv()))
    assert [(e["type"], e["status"]) for e in errors] == [("error", 400)] * 5
    assert [e["error"]["code"] for e in errors[:2]] == ["invalid_frame", "invalid_json"]
    assert errors[3]["ref"] == 7 and errors[3]["error"]["param"] == "type"
    assert (errors[4]["ref"], errors[4]["error"]["param"]) == (None, "id"), "a lone surrogate is refused, not echoed"
    assert answer[-1]["type"] == "done" and answer[-1]["finish_reason"] == "stop"


async def test_a_websocket_answer_that_breaks_is_a_500_and_the_socket_goes_on(
    mesh: tuple[ServedGateway, Front], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(parsed: object) -> None:
        raise RuntimeError("a bug")

    async with websockets.connect(mesh[1].ws_url) as ws:
        with monkeypatch.context() as patched:
            patched.setattr(websocket, "Translator", broken)
            await ws.send(json.dumps({"type": "generate", "id": 1, "request": CHAT}))
            failed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps({"type": "generate", "id": 2, "request": CHAT}))
        answer = [json.loads(await ws.recv())]
        while answer[-1]["type"] not in ("done", "error"):
            answer.append(json.loads(await ws.recv()))
    assert (failed["type"], failed["status"], failed["ref"]) == ("error", 500, 1)
    assert failed["error"]["type"] == "server_error" and answer[-1]["type"] == "done"
