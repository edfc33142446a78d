"""The web page (gateway/http/static/) in a real headless Chromium, against the HTTP front over a real mesh.

The session's mesh gives retrieval (the demo corpus) and tools; a gateway of this module's own, requiring API keys
(the page sends its key field as Bearer), answers with a slowed inference service (support.slow_inference: 20 ms
a forward pass, one row, no queue), so the answer streams visibly and a long one cannot end on its own inside the
cancel test. The HTTP front runs in-process (front.py),
with the tools route pointed at the mesh's tools service. Chromium is Debian's (/usr/bin/chromium, driven by
Playwright: its own browsers cannot be downloaded here); without it the module is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support.api_keys import create_key
from support.jobs_gateway import stop
from support.slow_inference import start_slow_inference

from gateway.http.tools_route import tools_target
from genmesh import mesh as topology
from genmesh.channels import open_channel
from genmesh.cli.launcher import Mesh, ServiceProcess, free_port, start_service, wait_ready
from genmesh.v1 import inference_pb2, inference_pb2_grpc
from http_front.front import Front, served_front

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (.ci/run installs it)", allow_module_level=True)

from playwright.async_api import Browser, Page, async_playwright  # noqa: E402

QUESTION = "How does the with statement use a context manager?"
SLACK_TOKENS = 50
"""Tokens the generation may still add between the click on Cancel and its row being freed (a few slowed steps
and the way through browser, HTTP front and gateway); one left running adds ~450."""

# Runs in the page: records each length the answer had while the page streamed, and the state it ended in.
WATCH_ANSWER = """() => {
  window.lengths = [];
  new MutationObserver(() => {
    const answer = document.getElementById("answer");
    if (document.body.dataset.state === "streaming") window.lengths.push(answer.textContent.length);
  }).observe(document.getElementById("answer"), {childList: true, characterData: true, subtree: true});
}"""


@pytest_asyncio.fixture(scope="module")
async def slow(log_root: Path) -> AsyncIterator[ServiceProcess]:
    """The slowed inference service: one row, no queue."""
    flags = ("--threads", "1", "--max-running", "1", "--max-waiting", "0")
    service = await start_slow_inference(log_root / "web-inference", *flags)
    yield service
    await stop(service)


@pytest.fixture(scope="module")
def key_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-keys") / "keys.json"


@pytest.fixture(scope="module")
def secret(key_store: Path) -> str:
    """An API key of the gateway's store (made before the gateway starts: the store exists then)."""
    return create_key(key_store, "web-page")


@pytest_asyncio.fixture(scope="module")
async def front(mesh: Mesh, slow: ServiceProcess, key_store: Path, secret: str, log_root: Path) -> AsyncIterator[Front]:
    """A gateway requiring API keys over the mesh's retrieval and tools and ``slow``, and the HTTP front over it,
    with the tools route."""
    ports = {name: int(service.address.rsplit(":", 1)[1]) for name, service in mesh.services.items()}
    ports |= {"inference": int(slow.address.rsplit(":", 1)[1]), "gateway": free_port()}
    hosts = {s.name: "127.0.0.1" for s in topology.SERVICES}
    args = [*topology.serve_args(topology.GATEWAY, "127.0.0.1", ports, hosts), "--api-keys", str(key_store)]
    gateway = await start_service(topology.GATEWAY, args, f"127.0.0.1:{ports['gateway']}", log_root / "web-gateway")
    try:
        await wait_ready(gateway, timeout_s=60)
        tools = tools_target(mesh.address(topology.TOOLS.name))
        async with open_channel(gateway.address) as channel, served_front(channel, tools=tools) as served:
            yield served
    finally:
        await stop(gateway)


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture
async def inference(slow: ServiceProcess) -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    async with open_channel(slow.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        end = time.monotonic() + 60
        while (await _load(stub)).running:  # what an earlier test left generating
            assert time.monotonic() < end, "the inference service stays busy"
            await asyncio.sleep(0.05)
        yield stub


@pytest_asyncio.fixture
async def page(browser: Browser, front: Front, secret: str) -> AsyncIterator[Page]:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(front.url + "/")
    await page.evaluate(WATCH_ANSWER)
    await page.get_by_label("API key").fill(secret)
    yield page
    await page.close()
    assert not errors, f"the page's script failed: {errors}"


async def _load(stub: inference_pb2_grpc.InferenceServiceStub) -> inference_pb2.GetLoadResponse:
    load: inference_pb2.GetLoadResponse = await stub.GetLoad(inference_pb2.GetLoadRequest(), timeout=5)
    return load


def _cancelled_generations(log: Path) -> int:
    """Generate calls the inference service logged as ended CANCELLED."""
    lines = log.read_text(errors="replace").splitlines()
    return sum("method=/genmesh.v1.InferenceService/Generate" in line and "status=CANCELLED" in line for line in lines)


async def _ask(page: Page, max_tokens: int) -> None:
    await page.get_by_label("Question").fill(QUESTION)
    await page.get_by_label("Max tokens").fill(str(max_tokens))
    await page.get_by_role("button", name="Ask").click()


async def _state(page: Page, state: str) -> None:
    """Wait until the page's answer ended (done, error or cancelled); it must have ended in ``state``."""
    ended = "['done', 'error', 'cancelled'].includes(document.body.dataset.state)"
    await page.wait_for_function(ended, timeout=120_000)
    status = await page.locator("#status").text_content()
    assert await page.evaluate("document.body.dataset.state") == state, status


async def test_the_answer_streams_in_token_by_token_with_sources_and_timings(page: Page, inference: object) -> None:
    await _ask(page, max_tokens=12)
    await _state(page, "done")

    lengths = await page.evaluate("window.lengths")
    assert len(set(lengths)) >= 2 and lengths == sorted(lengths), f"the answer did not grow while streaming: {lengths}"
    answer = await page.locator("#answer").text_content()
    assert answer and len(answer) >= lengths[-1] > 0
    assert (await page.locator("#answer").get_attribute("aria-live")) == "polite"
    assert (await page.locator("#status").text_content() or "").startswith("done (")

    documents = await page.locator("#sources li").evaluate_all("items => items.map(item => item.dataset.document)")
    assert documents and len(documents) == len(set(documents)), f"each source document once: {documents}"
    assert "rank score 0.0" in (await page.locator("#sources li").first.text_content() or "")
    timings = await page.locator("#timings dt").all_text_contents()
    assert {"time to first token", "total", "retrieval", "stage inference"} <= set(timings), timings


async def test_a_picked_tool_is_run_and_its_result_shown(page: Page, inference: object) -> None:
    calculator = page.get_by_role("checkbox", name="calculator")
    await calculator.wait_for()
    arguments = page.get_by_label("Arguments of calculator (JSON)")
    assert "expression" in await arguments.input_value(), "prefilled from the tool's schema"
    await calculator.check()
    await arguments.fill('{"expression": "2 ** 10 + 1"}')
    await _ask(page, max_tokens=4)
    await _state(page, "done")

    shown = await page.locator("#tool-results").inner_text() + await page.locator("#degraded").inner_text()
    result = page.locator('#tool-results li[data-tool="calculator"]')
    assert await result.count() == 1, shown
    assert "1025" in (await result.text_content() or ""), shown
    assert await result.get_attribute("data-failed") is None


async def test_cancel_stops_the_generation_on_the_server(
    page: Page, inference: inference_pb2_grpc.InferenceServiceStub, slow: ServiceProcess
) -> None:
    assert slow.log_path is not None
    cancelled_before = _cancelled_generations(slow.log_path)
    await _ask(page, max_tokens=4096)
    await page.wait_for_function("document.getElementById('answer').textContent.length > 0", timeout=120_000)
    load = await _load(inference)
    assert load.running == 1, "the answer holds the only row"

    await page.get_by_role("button", name="Cancel").click()
    await _state(page, "cancelled")
    assert await page.locator("#status").text_content() == "cancelled"
    while (load_now := await _load(inference)).running:
        grown = load_now.kv_used_tokens - load.kv_used_tokens
        assert grown <= SLACK_TOKENS, f"the generation went on for {grown} tokens after Cancel"
        await asyncio.sleep(0.005)
    end = time.monotonic() + 10
    while _cancelled_generations(slow.log_path) == cancelled_before:
        assert time.monotonic() < end, "inference logged no cancelled Generate"
        await asyncio.sleep(0.05)


async def test_without_the_api_key_the_page_says_so(page: Page) -> None:
    await page.get_by_label("API key").fill("")
    await _ask(page, max_tokens=4)
    await _state(page, "error")
    assert (await page.locator("#status").text_content() or "").startswith("error 401: ")
