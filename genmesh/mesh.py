"""The mesh's topology: which services exist, their default ports, and the command that runs each."""

from __future__ import annotations

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


def serve_args(spec: ServiceSpec, host: str, ports: dict[str, int], upstream_hosts: dict[str, str]) -> list[str]:
    """Arguments of ``genmesh`` that run ``spec``: what `genmesh up` spawns and docker-compose runs.

    ``ports`` maps every service name to its port; ``upstream_hosts`` maps the upstreams (the gateway's,
    and retrieval for the tools service's search_docs) to the host they are reached at (127.0.0.1 locally,
    the service name under docker-compose).
    """
    args = ["serve", spec.name, "--host", host, "--port", str(ports[spec.name])]
    for upstream in UPSTREAMS.get(spec.name, ()):
        args += [f"--{upstream.name}-target", f"{upstream_hosts[upstream.name]}:{ports[upstream.name]}"]
    if spec is RETRIEVAL:
        args.append("--seed-demo")  # the demo collection the gateway searches by default, loaded once per data dir
    return args
