"""The mesh's topology: which services exist, their default ports, and the command that runs each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of the mesh."""

    name: str
    module: str
    default_port: int
    grpc_service: str


GATEWAY = ServiceSpec("gateway", "gateway.server", 50051, "genmesh.v1.GatewayService")
RETRIEVAL = ServiceSpec("retrieval", "services.retrieval.server", 50052, "genmesh.v1.RetrievalService")
TOOLS = ServiceSpec("tools", "services.tools.server", 50053, "genmesh.v1.ToolsService")
INFERENCE = ServiceSpec("inference", "services.inference.server", 50054, "genmesh.v1.InferenceService")

#: The collection searched when a request names none: the one `--seed-demo` fills with the Python reference.
DEFAULT_COLLECTION = "python-reference"

#: Start order: upstreams first, the gateway last.
SERVICES: tuple[ServiceSpec, ...] = (RETRIEVAL, TOOLS, INFERENCE, GATEWAY)
BY_NAME: dict[str, ServiceSpec] = {spec.name: spec for spec in SERVICES}
#: The services each service calls (and gets a ``--<name>-target`` flag for).
UPSTREAMS: dict[str, tuple[ServiceSpec, ...]] = {
    GATEWAY.name: (RETRIEVAL, TOOLS, INFERENCE),
    TOOLS.name: (RETRIEVAL,),
}


@dataclass(frozen=True, slots=True)
class Replica:
    """One process of a service: replica ``index`` (1-based) of ``count``."""

    spec: ServiceSpec
    index: int = 1
    count: int = 1

    @property
    def name(self) -> str:
        """The service's name when it runs once, else ``<name>-<index>`` (``inference-2``): its log file's name."""
        return self.spec.name if self.count == 1 else f"{self.spec.name}-{self.index}"


def layout(counts: Mapping[str, int]) -> list[Replica]:
    """Every process of a mesh with ``counts[name]`` replicas of each service (1 when absent), in start order;
    the gateway runs once. ValueError for an unknown name or a count below 1."""
    unknown = sorted(set(counts) - set(BY_NAME))
    if unknown:
        raise ValueError(f"no such service: {', '.join(unknown)}")
    if counts.get(GATEWAY.name, 1) != 1:
        raise ValueError("the gateway runs once")
    replicas: list[Replica] = []
    for spec in SERVICES:
        count = counts.get(spec.name, 1)
        if count < 1:
            raise ValueError(f"{spec.name} needs at least one replica, got {count}")
        replicas += [Replica(spec, index, count) for index in range(1, count + 1)]
    return replicas


def serve_args(spec: ServiceSpec, host: str, ports: dict[str, int], upstream_hosts: dict[str, str]) -> list[str]:
    """Arguments of ``genmesh`` that run ``spec``: what `genmesh up` spawns and docker-compose runs.

    ``ports`` maps every service name to its port; ``upstream_hosts`` maps the upstreams (the gateway's,
    and retrieval for the tools service's search_docs) to the host they are reached at (127.0.0.1 locally,
    the service name under docker-compose).
    """
    targets = {up.name: [f"{upstream_hosts[up.name]}:{ports[up.name]}"] for up in UPSTREAMS.get(spec.name, ())}
    return replica_args(spec, host, ports[spec.name], targets)


def replica_args(spec: ServiceSpec, host: str, port: int, targets: Mapping[str, Sequence[str]]) -> list[str]:
    """Arguments of ``genmesh`` that run one process of ``spec`` on ``port``; ``targets`` maps each of its
    upstreams' names to the ``host:port`` of that upstream's replicas, passed as one comma-separated target."""
    args = ["serve", spec.name, "--host", host, "--port", str(port)]
    for upstream in UPSTREAMS.get(spec.name, ()):
        args += [f"--{upstream.name}-target", ",".join(targets[upstream.name])]
    if spec is RETRIEVAL:
        args.append("--seed-demo")  # the demo collection the gateway searches by default, loaded once per data dir
    return args
