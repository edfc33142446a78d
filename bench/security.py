"""Security benchmark: what mutual TLS on every hop and API keys with limits cost, and how malformed requests end.

Starts two meshes on free loopback ports at once, one plaintext and one with mutual TLS on every hop (the files of
`genmesh certs`), and a second gateway in front of the plaintext mesh's upstreams that requires an API key and
applies its limits. Every figure is a difference or a ratio against a baseline of the same run, trials interleaved
A/B:

- tls_ttft_overhead_ms: time to first token through the TLS mesh's gateway minus through the plaintext mesh's
  (the median of the differences of back-to-back pairs), one stream at a time, each request with retrieval
  (top 1) and one forced tool call, so every hop (client → gateway → retrieval, tools → inference) is on its
  path; connections are established first, so this is the per-call cost, not the handshake's;
  tls_ttft_overhead_relay_ms: the same without retrieval and tools (client → gateway → inference only), where
  the stages' own time and its noise do not hide the few TLS hops;
- tls_relay_ratio_c32: tokens/s received through the TLS mesh over the plaintext one, 32 streams at once, the
  request of bench/gateway.py (retrieval off: the streaming hops client → gateway → inference) (target ≥ 0.9);
- auth_ttft_overhead_ms: the same, time to first token through the gateway that requires a key (its limits
  generous, so nothing is refused, but counted: requests, tokens, streams) minus through the open gateway, both
  in front of the same upstreams, with the relay request (the key is checked and charged once per call and per
  token, whatever the stages; their noise would hide it);
- malformed_requests_unknown: of malformed_requests_total requests that do not parse (tests/support/malformed.py:
  each case to every RPC of every service of the plaintext mesh, found through reflection), how many were
  answered UNKNOWN or INTERNAL (target 0; INVALID_ARGUMENT is right).

    python -m bench.security --quick     # about a minute (two under load), as CI runs it
    python -m bench.security             # the figures of docs/BENCHMARKS.md

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench import harness
from bench.paired import Gateways, full_path_request, relay_request
from gateway.auth.caller import Limits, Scope
from gateway.auth.keystore import open_key_store
from genmesh import mesh as topology
from genmesh.channels import channel_options, open_channel
from genmesh.cli.certs import create_certs
from genmesh.cli.launcher import Mesh, free_port

ROOT = Path(__file__).resolve().parents[1]
RELAY_TARGET = 0.9
DEFECT_CODES = ("UNKNOWN", "INTERNAL")
#: Far above what the benchmark sends: the limits are checked and charged on every call, never hit.
GENEROUS = Limits(requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000, max_concurrent_streams=1024)
INFERENCE_ARGS = {"inference": ["--threads", "1"]}


@dataclass(frozen=True, slots=True)
class Settings:
    max_tokens: int
    trials: int
    concurrency: int
    ttft_samples: int


QUICK = Settings(max_tokens=16, trials=2, concurrency=32, ttft_samples=20)
FULL = Settings(max_tokens=64, trials=5, concurrency=32, ttft_samples=200)


async def _generous_key(path: Path) -> str:
    """A key file at ``path`` holding one generate key with generous limits; the key's secret."""
    store = open_key_store(str(path))
    await store.open()
    try:
        _, secret = await store.create("bench-security", scopes=frozenset({Scope.GENERATE}), limits=GENEROUS)
    finally:
        await store.close()
    return secret


@contextlib.asynccontextmanager
async def keyed_gateway(mesh: Mesh, scratch: Path) -> AsyncIterator[tuple[str, str]]:
    """A second gateway in front of ``mesh``'s upstreams that requires an API key: (its address, a key's secret)."""
    secret = await _generous_key(scratch / "keys.json")
    ports = {name: int(service.address.rsplit(":", 1)[1]) for name, service in mesh.services.items()}
    ports["gateway"] = free_port()
    hosts = {s.name: "127.0.0.1" for s in topology.SERVICES}
    args = [*topology.serve_args(topology.GATEWAY, "127.0.0.1", ports, hosts), "--api-keys", str(scratch / "keys.json")]
    address = f"127.0.0.1:{ports['gateway']}"
    async with harness.serving(topology.GATEWAY, args, address, scratch / "logs" / "keyed", 120):
        yield address, secret


def malformed_counts(mesh: Mesh) -> Counter[str]:
    """How many malformed requests (every case, every RPC of every service of ``mesh``) ended with each code."""
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' malformed-request cases, as bench/multi_gateway.py does
    from support.malformed import malformed_codes

    channels = {name: grpc.insecure_channel(mesh.address(name), options=channel_options()) for name in mesh.services}
    try:
        counts: Counter[str] = malformed_codes(channels)
    finally:
        for channel in channels.values():
            channel.close()
    return counts


async def measure(gateways: Gateways, settings: Settings) -> harness.Figures:
    await gateways.warm()
    rates = await gateways.tokens_per_s(
        "tls", "plain", relay_request(settings.max_tokens), settings.trials, settings.concurrency
    )
    tls_rate, plain_rate = rates.medians
    ratio = tls_rate / plain_rate
    print(
        f"c={settings.concurrency}: tls {tls_rate:8.1f} tok/s   plaintext {plain_rate:8.1f} tok/s"
        f"   ratio {ratio:.3f} (target >= {RELAY_TARGET})",
        flush=True,
    )
    tls = await gateways.ttft("tls", "plain", settings.ttft_samples, full_path_request(1))
    print(
        f"ttft: tls {tls.first_ms:.2f} ms   plaintext {tls.second_ms:.2f} ms   overhead {tls.overhead_ms:.2f} ms",
        flush=True,
    )
    short = await gateways.ttft("tls", "plain", settings.ttft_samples, relay_request(1))
    print(
        f"ttft without retrieval and tools: tls {short.first_ms:.2f} ms   plaintext {short.second_ms:.2f} ms"
        f"   overhead {short.overhead_ms:.2f} ms",
        flush=True,
    )
    key = await gateways.ttft("keyed", "plain", settings.ttft_samples, relay_request(1))
    print(
        f"ttft: api key {key.first_ms:.2f} ms   open {key.second_ms:.2f} ms   overhead {key.overhead_ms:.2f} ms",
        flush=True,
    )
    return {
        f"tokens_per_s_tls_c{settings.concurrency}": round(tls_rate, 1),
        f"tokens_per_s_plain_c{settings.concurrency}": round(plain_rate, 1),
        f"tls_relay_ratio_c{settings.concurrency}": round(ratio, 3),
        "ttft_tls_ms": round(tls.first_ms, 2),
        "ttft_plain_ms": round(tls.second_ms, 2),
        "tls_ttft_overhead_ms": round(tls.overhead_ms, 2),
        "tls_ttft_overhead_relay_ms": round(short.overhead_ms, 2),
        "ttft_api_key_ms": round(key.first_ms, 2),
        "ttft_open_ms": round(key.second_ms, 2),
        "auth_ttft_overhead_ms": round(key.overhead_ms, 2),
    }


async def main_async(settings: Settings, _: argparse.Namespace) -> harness.Figures:
    with harness.scratch() as scratch:
        certs = create_certs(scratch / "certs")
        async with (
            harness.running_mesh(scratch / "logs" / "plain", INFERENCE_ARGS) as plain,
            harness.running_mesh(scratch / "logs" / "tls", INFERENCE_ARGS, tls=certs) as tls,
            keyed_gateway(plain, scratch) as (keyed_address, secret),
            open_channel(plain.address("gateway")) as plain_channel,
            open_channel(tls.address("gateway"), tls=tls.client_tls()) as tls_channel,
            open_channel(keyed_address, api_key=secret) as keyed_channel,
        ):
            gateways = Gateways({"plain": plain_channel, "tls": tls_channel, "keyed": keyed_channel})
            figures = await measure(gateways, settings)
            counts = await asyncio.to_thread(malformed_counts, plain)
    unknown = sum(counts[code] for code in DEFECT_CODES)
    total = sum(counts.values())
    print(f"malformed requests: {unknown} of {total} answered UNKNOWN/INTERNAL (target 0); codes {dict(counts)}")
    return {
        "max_tokens": settings.max_tokens,
        **figures,
        "malformed_requests_unknown": unknown,
        "malformed_requests_total": total,
    }


if __name__ == "__main__":
    harness.main("security", __doc__, main_async, QUICK, FULL)
