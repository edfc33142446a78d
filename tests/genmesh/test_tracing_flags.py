"""--otlp-endpoint and --trace-sample-ratio: flag, then GENMESH_*, then OpenTelemetry's standard variables; off
without an endpoint, and then not even the SDK is imported."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from genmesh import tracing
from genmesh.config import add_server_flags

ROOT = Path(__file__).resolve().parents[2]
STANDARD = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED")


def _args(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: tuple[str, ...] = ()) -> argparse.Namespace:
    for key in (*STANDARD, "GENMESH_OTLP_ENDPOINT", "GENMESH_TRACE_SAMPLE_RATIO"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = argparse.ArgumentParser()
    add_server_flags(parser, "tools", 50052)
    return parser.parse_args(argv)


def test_tracing_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(monkeypatch, {})
    assert (args.otlp_endpoint, args.trace_sample_ratio) == ("", 1.0)


def test_the_endpoint_comes_from_the_flag_then_genmesh_then_opentelemetry_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://all:4317"}
    assert _args(monkeypatch, env).otlp_endpoint == "http://all:4317"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://traces:4317"
    assert _args(monkeypatch, env).otlp_endpoint == "http://traces:4317"
    env["GENMESH_OTLP_ENDPOINT"] = "mesh:4317"
    assert _args(monkeypatch, env).otlp_endpoint == "mesh:4317"
    assert _args(monkeypatch, env, ("--otlp-endpoint", "flag:4317")).otlp_endpoint == "flag:4317"
    assert _args(monkeypatch, env, ("--otlp-endpoint", "")).otlp_endpoint == ""


def test_otel_sdk_disabled_turns_the_standard_variables_off(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://all:4317", "OTEL_SDK_DISABLED": "true"}
    assert _args(monkeypatch, env).otlp_endpoint == ""


def test_the_sample_ratio_is_a_share(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert _args(monkeypatch, {"GENMESH_TRACE_SAMPLE_RATIO": "0.25"}).trace_sample_ratio == 0.25
    assert _args(monkeypatch, {}, ("--trace-sample-ratio", "0")).trace_sample_ratio == 0.0
    with pytest.raises(SystemExit):
        _args(monkeypatch, {}, ("--trace-sample-ratio", "1.5"))
    assert "--trace-sample-ratio" in capsys.readouterr().err
    for ratio in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"outside 0\.\.1"):
            tracing.TraceSettings("127.0.0.1:4317", ratio)


def test_off_sets_nothing_up_and_imports_no_sdk() -> None:
    code = (
        "import sys\n"
        "from genmesh import server, channels, tracing\n"
        "assert not tracing.install('tools', tracing.TraceSettings(''))\n"
        "assert not tracing.enabled()\n"
        "channel = channels.open_channel('127.0.0.1:1')\n"
        "assert type(channel).__module__.startswith('grpc.'), type(channel)\n"
        "loaded = sorted(name for name in sys.modules if name.startswith('opentelemetry.sdk'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _recorded(service: str, ratio: float, flags: str) -> list[int]:
    """The trace ids that ``service``, traced at ``ratio``, records for a call whose traceparent has ``flags``."""
    exporter = InMemorySpanExporter()
    tracing.install(service, tracing.TraceSettings(sample_ratio=ratio), exporter=exporter)
    try:
        parent = tracing.PROPAGATOR.extract({"traceparent": f"00-{CLIENT_TRACE}-00f067aa0ba902b7-{flags}"})
        tracing.tracer().start_span("call", context=parent).end()
        assert tracing.flush()
        return [span.context.trace_id for span in exporter.get_finished_spans() if span.context is not None]
    finally:
        tracing.shutdown()


def test_at_the_gateway_the_ratio_not_the_client_decides_what_is_recorded() -> None:
    assert _recorded("gateway", 0.0, "01") == []
    assert _recorded("gateway", 1.0, "00") == [int(CLIENT_TRACE, 16)]


def test_services_behind_the_gateway_follow_its_decision() -> None:
    assert _recorded("inference", 0.0, "01") == [int(CLIENT_TRACE, 16)]
    assert _recorded("inference", 1.0, "00") == []
