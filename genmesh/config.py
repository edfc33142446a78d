"""Command-line flags with environment fallbacks, read once at start-up."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any


class Flags:
    """Adds flags whose default comes from ``{PREFIX}_{NAME}`` in the environment.

    ``Flags(parser, "GENMESH_INFERENCE").add("--max-waiting", type=int, default=64)`` reads
    ``GENMESH_INFERENCE_MAX_WAITING`` when the flag is not given. Precedence: flag, environment, default.
    """

    def __init__(self, parser: argparse.ArgumentParser, env_prefix: str) -> None:
        self.parser = parser
        self.env_prefix = env_prefix

    def env_name(self, flag: str) -> str:
        """The environment variable that backs ``flag``."""
        return f"{self.env_prefix}_{flag.lstrip('-').replace('-', '_').upper()}"

    def add(
        self,
        flag: str,
        *,
        default: Any,
        help: str,
        type: Callable[[str], Any] = str,
        env: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Add ``flag``; ``env`` overrides the derived variable name."""
        name = env or self.env_name(flag)
        raw = os.environ.get(name)
        value = default
        if raw is not None and raw != "":
            try:
                value = type(raw)
            except (TypeError, ValueError) as error:
                self.parser.error(f"environment variable {name}={raw!r} is invalid: {error}")
        self.parser.add_argument(
            flag, type=type, default=value, help=f"{help} [env {name}; default {default!r}]", **kwargs
        )

    def add_repeated(self, flag: str, *, help: str, separator: str = ";", metavar: str | None = None) -> None:
        """Add a repeatable ``flag`` (a list of strings); the environment variable holds the items joined by
        ``separator``. Given on the command line, the flag's items replace the environment's."""
        name = self.env_name(flag)
        raw = os.environ.get(name, "")
        default = [item.strip() for item in raw.split(separator) if item.strip()]
        self.parser.add_argument(
            flag,
            action=_ReplaceDefaultAppend,
            default=default,
            metavar=metavar,
            help=f"{help} (repeatable) [env {name}, items separated by {separator!r}]",
        )


class _ReplaceDefaultAppend(argparse.Action):
    """Like ``action="append"``, except that the first use replaces the default instead of extending it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        seen = f"_{self.dest}_given"
        items = list(getattr(namespace, self.dest)) if getattr(namespace, seen, False) else []
        items.append(values)
        setattr(namespace, self.dest, items)
        setattr(namespace, seen, True)


def add_metrics_port_flag(flags: Flags) -> None:
    """``--metrics-port``: where the process serves Prometheus metrics (-1 off, 0 a free port)."""
    flags.add(
        "--metrics-port",
        type=metrics_port,
        default=-1,
        help="serve Prometheus metrics at http://HOST:PORT/metrics on --host (docs/OBSERVABILITY.md); -1: off, "
        "0: a free port (logged)",
    )


def add_server_flags(parser: argparse.ArgumentParser, service: str, default_port: int) -> Flags:
    """The flags every service has: where to listen, draining and shutdown grace, logging, fault injection."""
    flags = Flags(parser, f"GENMESH_{service.upper()}")
    flags.add("--host", default="127.0.0.1", help="address to listen on")
    flags.add("--port", type=int, default=default_port, help="port to listen on (0 picks a free one)")
    add_metrics_port_flag(flags)
    flags.add(
        "--drain-delay",
        type=float,
        default=0.0,
        help="seconds a stopping service still serves calls while its health says NOT_SERVING, so that balancers "
        "and readiness probes take it out first; a second SIGTERM/SIGINT cuts it short. 0 stops at once, right "
        "for a process on its own; behind a balancer set its health-check period or more (e.g. 5)",
    )
    flags.add("--grace", type=float, default=10.0, help="seconds in-flight RPCs may finish once new calls are refused")
    flags.add("--faults", default="", help="fault-injection rules, e.g. 'Query:delay=200ms' (see genmesh/faults.py)")
    flags.add(
        "--reflection",
        type=parse_bool,
        default=True,
        metavar="on|off",
        help="serve gRPC server reflection (grpc.reflection.v1 and v1alpha) for grpcurl, Postman and grpcui",
    )
    add_server_tls_flags(flags)
    shared = Flags(parser, "GENMESH")
    shared.add("--log-level", default="info", help="log level", choices=["debug", "info", "warning", "error"])
    shared.add("--log-format", default="text", help="log line format", choices=["text", "json"])
    add_tracing_flags(shared)
    return flags


def add_tracing_flags(flags: Flags) -> None:
    """--otlp-endpoint/--trace-sample-ratio: export OpenTelemetry traces (docs/OBSERVABILITY.md); off without an
    endpoint. The endpoint falls back on OpenTelemetry's own variables after ``{prefix}_OTLP_ENDPOINT``."""
    flags.add(
        "--otlp-endpoint",
        default=standard_otlp_endpoint(),
        help="OTLP/gRPC receiver to export traces to: host:port or http://host:port (plaintext), https://host:port "
        "(TLS); empty: no tracing. Falls back on OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT",
    )
    flags.add(
        "--trace-sample-ratio",
        type=sample_ratio,
        default=1.0,
        help="share of the traces started here that are recorded (0..1); a call with a traceparent follows its flag, "
        "but at the gateway the ratio decides for clients' traces too",
    )


def standard_otlp_endpoint() -> str:
    """The traces endpoint that OpenTelemetry's standard variables name ("" under OTEL_SDK_DISABLED=true)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ""
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def sample_ratio(text: str) -> float:
    """A sampling ratio: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{value} is outside 0..1")
    return value


def add_server_tls_flags(flags: Flags) -> None:
    """--tls-cert/--tls-key/--tls-ca/--tls-client-auth: serve TLS (docs/SECURITY.md); files reload on SIGHUP."""
    flags.add("--tls-cert", default="", help="PEM certificate chain to serve TLS with (plaintext without it)")
    flags.add("--tls-key", default="", help="PEM private key of --tls-cert")
    flags.add("--tls-ca", default="", help="PEM CA that client certificates must chain to (mutual TLS)")
    flags.add(
        "--tls-client-auth",
        default="none",
        choices=["none", "request", "require"],
        help="require: refuse clients without a certificate signed by --tls-ca; none: ask for none; request: the "
        "same as none (grpcio cannot ask for an optional certificate; docs/SECURITY.md)",
    )


def add_upstream_tls_flags(flags: Flags) -> None:
    """--upstream-tls-ca/--upstream-tls-cert/--upstream-tls-key: TLS (and mutual TLS) on every channel to the
    service's upstreams; plaintext when none is given."""
    flags.add("--upstream-tls-ca", default="", help="PEM CA the upstreams' certificates must chain to (enables TLS)")
    flags.add("--upstream-tls-cert", default="", help="PEM client certificate presented to upstreams (mutual TLS)")
    flags.add("--upstream-tls-key", default="", help="PEM private key of --upstream-tls-cert")


def metrics_port(text: str) -> int:
    """A --metrics-port: -1 (off), 0 (a free port) or a TCP port."""
    value = int(text)
    if not -1 <= value <= 65535:
        raise ValueError(f"{value} is not -1 (off), 0 (a free port) or a port up to 65535")
    return value


def parse_bool(text: str) -> bool:
    """A boolean flag or environment value: 1/true/yes/on or 0/false/no/off (any case; empty is false)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (sys.argv when None)."""
    return parser.parse_args(argv)
