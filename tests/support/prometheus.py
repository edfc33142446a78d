"""A real Prometheus server for tests: the ``prometheus`` binary (Debian's ``prometheus`` package) on a free loopback
port, scraping the given /metrics URLs every second, its data in a temporary directory; and its HTTP query API.

Without the binary, starting raises PrometheusMissing (tests skip on it with that reason; CI installs it).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from genmesh.cli.launcher import free_port

STARTUP_S = 30.0
T = TypeVar("T")


class PrometheusMissing(RuntimeError):
    """No ``prometheus`` binary on this machine."""


class Prometheus:
    """The HTTP API of a running Prometheus at ``url``."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of GET /api/v1/<path>; AssertionError when Prometheus reports an error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[frozenset[tuple[str, str]], float]:
        """An instant query now: each result's value by its labels (``__name__`` included when kept)."""
        data = self.api("query", query=promql)
        if data["resultType"] == "scalar":
            return {frozenset(): float(data["result"][1])}
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["result"]}

    def scalar(self, promql: str) -> float | None:
        """The value of a query that has one result, None when it has none."""
        found = self.query(promql)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)

    def wait(self, what: str, probe: Callable[[], T | None], timeout_s: float = 30.0) -> T:
        """``probe()`` once it is truthy, polled every 0.2 s; AssertionError naming ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus never saw {what} (last: {found!r}); its log: {self.log}")
            time.sleep(0.2)


def scrape_config(targets: Mapping[str, str], interval_s: float) -> dict[str, Any]:
    """A configuration scraping each metrics URL of ``targets`` (service name → URL) labelled service=<name>, as
    deploy/prometheus labels them."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for name, url in targets.items():
        parts = urllib.parse.urlsplit(url)
        jobs.setdefault(parts.path or "/metrics", []).append({"targets": [parts.netloc], "labels": {"service": name}})
    interval = f"{int(interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": f"genmesh{i}", "metrics_path": path, "static_configs": static}
            for i, (path, static) in enumerate(sorted(jobs.items()))
        ],
    }


def binary() -> str | None:
    """The ``prometheus`` binary: on PATH, or Debian's /usr/bin/prometheus; None when there is none."""
    found = shutil.which("prometheus")
    return found or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


@contextlib.contextmanager
def running_prometheus(directory: Path, targets: Mapping[str, str], interval_s: float = 1.0) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` every ``interval_s``, with its config, data and log under ``directory``;
    stopped (SIGTERM, then SIGKILL) on exit."""
    command = binary()
    if command is None:
        raise PrometheusMissing("no prometheus binary (Debian: apt-get install prometheus)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, interval_s)))
    address = f"127.0.0.1:{free_port()}"
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                command,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://{address}", log)
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: Prometheus, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{server.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer:
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"prometheus not ready after {STARTUP_S} s:\n{server.log.read_text()[-3000:]}")
        time.sleep(0.1)
