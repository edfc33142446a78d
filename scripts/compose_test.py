"""`make compose-test`: the docker-compose.yml stack built and run under podman, asked through its gateway.

Builds the images (scripts/container_base.py: local Debian base, host wheelhouse, cached layers), runs each
service of docker-compose.yml as a container with the file's image, command, volumes and health check, in the
file's dependency order (a service starts once the services it depends on are healthy), streams one answer
through the gateway container from the host with `genmesh ask`, then adds a second inference replica, points
the gateway at both and checks that both serve Generate calls. Everything it made (containers, volumes) is
removed at the end, on failure and on Ctrl-C too.

The containers use the host's network, each on a free loopback port given on its command line: the file's
``--port`` and ``<service>:<port>`` targets are rewritten, nothing else. No traffic leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from container_base import ULIMITS, ensure_images, load_compose, log, podman

from genmesh.cli.ask import AskOptions, ask

PROJECT = "genmesh-ct"
LABEL = "io.genmesh.compose-test"
LOOPBACK = "127.0.0.1"
GENERATE = "/genmesh.v1.InferenceService/Generate"
QUESTION = "How does the with statement use a context manager?"
TOOL = 'calculator:{"expression": "2 ** 10 + 1"}'
QUESTIONS = (
    "What does the yield statement do?",
    "How are exceptions raised and caught?",
    "What is a list comprehension?",
    "How does the import system find a module?",
    "What is a decorator?",
    "How do the global and nonlocal statements differ?",
    "What is an async generator?",
    "How are keyword arguments matched to parameters?",
)


class Failed(Exception):
    """A check of the stack failed; the message says which."""


@dataclass(slots=True)
class Container:
    """One container of the stack: a compose service (or a replica of one) on its own loopback port."""

    service: str
    name: str
    image: str
    command: list[str]
    port: int
    health: list[str]
    health_flags: list[str]
    volumes: list[str]
    depends_on: list[str]
    start_deadline_s: float
    stop_grace_s: int
    started_at: float = 0.0
    healthy: bool = False


def seconds(value: Any, default: float) -> float:
    """A compose duration ("5s", "1m30s", "180s") in seconds."""
    if value is None:
        return default
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(value))
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts) or default


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free on the loopback interface now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def rewrite(words: list[str], own_port: int, replicas: dict[str, list[int]], defaults: dict[str, int]) -> list[str]:
    """A compose command or health check for the host network: our ports, loopback addresses, replica lists."""
    out: list[str] = []
    for i, word in enumerate(words):
        previous = words[i - 1] if i else ""
        host, _, port = word.rpartition(":")
        if previous == "--port":
            word = str(own_port)
        elif previous == "--host":
            word = LOOPBACK  # the host's network: listen on loopback only, not on the machine's interfaces
        elif host in replicas and port.isdigit():
            word = ",".join(f"{LOOPBACK}:{p}" for p in replicas[host])
        elif host == LOOPBACK and port.isdigit() and int(port) in defaults.values():
            word = f"{LOOPBACK}:{own_port}"
        out.append(word)
    return out


def plan(compose: dict[str, Any], replicas: dict[str, list[int]], min_start_s: float) -> list[Container]:
    """The containers of docker-compose.yml with ``replicas[service]`` giving each replica's port.

    Each may take the longer of its health check's budget (start period + interval x retries) and
    ``min_start_s`` to become healthy: on two cores shared with other work, seeding can outlast the budget.
    """
    services: dict[str, Any] = compose["services"]
    defaults = {name: int(s["command"][s["command"].index("--port") + 1]) for name, s in services.items()}
    containers = []
    for name, service in services.items():
        check = service["healthcheck"]
        test = [str(word) for word in check["test"]]
        if test[0] != "CMD":
            raise Failed(f"{name}: health check {test[0]} is not handled (CMD only)")
        deadline = seconds(check.get("start_period"), 0) + seconds(check.get("interval"), 5) * check.get("retries", 3)
        knobs = ("interval", "timeout", "retries", "start_period")
        flags = [w for k in knobs if k in check for w in (f"--health-{k.replace('_', '-')}", str(check[k]))]
        volumes = [f"{PROJECT}_{v}" if not v.startswith(("/", ".")) else v for v in service.get("volumes", [])]
        for index, port in enumerate(replicas[name], start=1):
            containers.append(
                Container(
                    service=name,
                    name=f"{PROJECT}-{name}-{index}",
                    image=str(service["image"]),
                    command=rewrite([str(w) for w in service["command"]], port, replicas, defaults),
                    port=port,
                    health=rewrite(test[1:], port, replicas, defaults),
                    health_flags=flags,
                    volumes=volumes,
                    depends_on=list(service.get("depends_on", {})),
                    start_deadline_s=max(deadline, min_start_s),
                    stop_grace_s=int(seconds(service.get("stop_grace_period"), 10)),
                )
            )
    return containers


def run_container(c: Container) -> None:
    """`podman run -d` of one container on the host network, labelled for the teardown."""
    args = ["run", "--detach", "--name", c.name, "--label", f"{LABEL}={PROJECT}", "--network", "host", *ULIMITS]
    args += ["--health-cmd", json.dumps(c.health), *c.health_flags, "--stop-timeout", str(c.stop_grace_s)]
    args += ["--env", "GENMESH_LOG_FORMAT=json"]  # one JSON line per RPC: the replica check counts them
    for volume in c.volumes:
        args += ["--volume", volume]
    done = podman(*args, c.image, *c.command, check=False, capture=True)
    if done.returncode:
        raise Failed(f"podman run {c.name} failed: {done.stderr.strip()}")
    c.started_at, c.healthy = time.monotonic(), False
    log(f"started {c.name}: {' '.join(c.command)}")


def running(name: str) -> bool:
    """Whether the container is still running."""
    state = podman("inspect", "--format", "{{.State.Running}}", name, check=False, capture=True)
    return state.stdout.strip() == "true"


def tail(name: str, lines: int = 30) -> str:
    """The last lines the container wrote."""
    logs = podman("logs", "--tail", str(lines), name, check=False, capture=True)
    return (logs.stdout + logs.stderr).rstrip()


def preflight(containers: list[Container]) -> None:
    """Each image imports its service (``genmesh serve NAME --help``): a missing dependency fails in seconds,
    not after retrieval's minutes of seeding."""
    for c in {c.service: c for c in containers}.values():
        args = ["run", "--rm", "--network", "none", *ULIMITS, c.image, *c.command[:3], "--help"]
        done = podman(*args, check=False, capture=True)
        if done.returncode:
            raise Failed(f"{c.image} cannot start {c.service}:\n{(done.stdout + done.stderr)[-3000:]}")
    log("every image imports its service")


def wait_healthy(containers: list[Container], start: list[Container] | None = None) -> None:
    """Start the containers in ``start`` (default: all) in dependency order and wait until all are healthy.

    podman runs health checks from systemd timers; there is no systemd here, so this loop runs each
    container's check itself (`podman healthcheck run`), as compose's ``condition: service_healthy`` would wait.
    """
    pending = list(containers if start is None else start)
    while True:
        # a service is healthy when all its replicas are (as compose waits for every replica)
        healthy_services = {c.service for c in containers} - {c.service for c in containers if not c.healthy}
        for c in [c for c in pending if set(c.depends_on) <= healthy_services]:
            run_container(c)
            pending.remove(c)
        waiting = [c for c in containers if c.started_at and not c.healthy]
        if not waiting and not pending:
            return
        for c in waiting:
            if podman("healthcheck", "run", c.name, check=False, capture=True).returncode == 0:
                c.healthy = True
                log(f"{c.name} is healthy after {time.monotonic() - c.started_at:.0f} s")
            elif not running(c.name):
                raise Failed(f"{c.name} exited:\n{tail(c.name)}")
            elif time.monotonic() - c.started_at > c.start_deadline_s:
                raise Failed(f"{c.name} not healthy after {c.start_deadline_s:.0f} s:\n{tail(c.name)}")
        time.sleep(2)


def ask_once(gateway_port: int) -> str:
    """`genmesh ask` from the host, streamed to stdout as it arrives; the full output."""
    genmesh = Path(sys.executable).parent / "genmesh"
    cmd = [str(genmesh), "ask", QUESTION, "--tool", TOOL, "--target", f"{LOOPBACK}:{gateway_port}"]
    cmd += ["--max-tokens", "64", "--seed", "7", "--timeout", "120"]
    log(f"$ {' '.join(cmd)}")
    out: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout or ():
            sys.stdout.write(line)
            out.append(line)
    text = "".join(out)
    missing = [m for m in ("Sources:", "Tool calculator", "Answer: ", "finish: ") if m not in text]
    if proc.returncode or missing:
        raise Failed(f"genmesh ask failed (exit {proc.returncode}; missing {missing})")
    return text


def generate_calls(name: str) -> int:
    """How many Generate RPCs the inference container has logged (one JSON line per RPC)."""
    logs = podman("logs", name, check=False, capture=True)
    count = 0
    for line in (logs.stdout + logs.stderr).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        count += isinstance(record, dict) and record.get("msg") == "rpc" and record.get("method") == GENERATE
    return count


async def ask_many(gateway_port: int, questions: list[str]) -> None:
    """Ask ``questions`` at once through the gateway (the repo's own client code); all must complete."""

    async def one(question: str) -> None:
        options = AskOptions(question=question, max_tokens=32, seed=7, timeout_s=180)
        await ask(f"{LOOPBACK}:{gateway_port}", options, out=io.StringIO())

    await asyncio.gather(*(one(q) for q in questions))


def check_replicas(containers: list[Container], count: int) -> dict[str, int]:
    """Send ``count`` questions at once; every inference replica must serve at least one Generate."""
    gateway = next(c for c in containers if c.service == "gateway")
    replicas = [c for c in containers if c.service == "inference"]
    before = {c.name: generate_calls(c.name) for c in replicas}
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    log(f"asking {count} questions at once through {gateway.name}")
    asyncio.run(ask_many(gateway.port, questions))
    served = {c.name: generate_calls(c.name) - before[c.name] for c in replicas}
    log(f"Generate calls per replica: {served}")
    if sum(served.values()) < count:
        raise Failed(f"{count} questions but only {sum(served.values())} Generate calls were logged")
    idle = [name for name, n in served.items() if n == 0]
    if idle:
        raise Failed(f"inference replicas {idle} served no Generate call: the gateway does not balance over them")
    return served


def remove_everything() -> None:
    """Remove every container and volume this script made (by label), whatever state they are in."""
    found = podman("ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}", check=False, capture=True)
    names = found.stdout.split()
    if names:
        podman("rm", "--force", "--time", "15", *names, check=False, capture=True)
    vols = podman("volume", "ls", "--filter", f"label={LABEL}", "--format", "{{.Name}}", check=False, capture=True)
    if vols.stdout.split():
        podman("volume", "rm", "--force", *vols.stdout.split(), check=False, capture=True)
    if names or vols.stdout.split():
        log(f"removed containers {names} and volumes {vols.stdout.split()}")


@contextmanager
def stack_teardown() -> Iterator[None]:
    """Remove leftovers before, and everything made, after (on failure, Ctrl-C or SIGTERM too)."""

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    remove_everything()
    try:
        yield
    finally:
        remove_everything()
        signal.signal(signal.SIGTERM, previous)


def create_volumes(compose: dict[str, Any]) -> None:
    """The named volumes of docker-compose.yml, fresh for this run."""
    for name in compose.get("volumes") or {}:
        podman("volume", "create", "--label", f"{LABEL}={PROJECT}", f"{PROJECT}_{name}", capture=True)


def scale_inference(
    compose: dict[str, Any], containers: list[Container], ports: dict[str, int], args: argparse.Namespace
) -> None:
    """Add a second inference replica (on port ``ports["spare"]``), restart the gateway with both as its
    inference target, and check that both replicas serve Generate calls."""
    log("scaling inference to 2 replicas; the gateway restarts with both as its inference target")
    replicas = {name: [ports[name]] for name in compose["services"]}
    replicas["inference"].append(ports["spare"])
    scaled = plan(compose, replicas, args.start_timeout)
    old = {c.name: c for c in containers}
    gateway = next(c for c in scaled if c.service == "gateway")
    for c in scaled:
        if c.name in old and c is not gateway:
            c.started_at, c.healthy = old[c.name].started_at, True
    podman("rm", "--force", "--time", str(gateway.stop_grace_s), gateway.name, capture=True)
    wait_healthy(scaled, start=[c for c in scaled if c.name not in old or c is gateway])
    check_replicas(scaled, args.questions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="use the images as they are")
    parser.add_argument("--no-scale", action="store_true", help="stop after the single-replica answer")
    parser.add_argument("--questions", type=int, default=8, help="questions sent to the two replicas")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds a container may take to be healthy")
    args = parser.parse_args()
    compose = load_compose()
    timings: dict[str, float] = {}
    started = time.monotonic()
    if not args.no_build:
        ensure_images()
        timings["build"] = time.monotonic() - started
    *service_ports, spare = free_ports(len(compose["services"]) + 1)  # spare: the second inference replica
    ports = dict(zip(compose["services"], service_ports, strict=True))
    try:
        with stack_teardown():
            phase = time.monotonic()
            containers = plan(compose, {name: [port] for name, port in ports.items()}, args.start_timeout)
            preflight(containers)
            create_volumes(compose)
            wait_healthy(containers)
            timings["stack healthy"] = time.monotonic() - phase
            phase = time.monotonic()
            ask_once(ports["gateway"])
            timings["first answer"] = time.monotonic() - phase
            if not args.no_scale:
                phase = time.monotonic()
                scale_inference(compose, containers, {**ports, "spare": spare}, args)
                timings["two replicas"] = time.monotonic() - phase
            phase = time.monotonic()
    except Failed as failure:
        log(f"FAILED: {failure}")
        return 1
    except KeyboardInterrupt as stop:
        log(f"interrupted ({stop or 'Ctrl-C'}); everything it made is removed")
        return 130
    timings["teardown"] = time.monotonic() - phase
    timings["total"] = time.monotonic() - started
    log("compose test passed: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
