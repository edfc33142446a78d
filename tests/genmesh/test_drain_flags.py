"""Every service has --drain-delay (environment fallback, 0 by default); a negative one is refused."""

from __future__ import annotations

import argparse

import pytest

from genmesh.config import add_server_flags
from genmesh.server import ServerConfig


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_server_flags(parser, "tools", 50053)
    return parser.parse_args(argv)


def test_drain_delay_flag_environment_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENMESH_TOOLS_DRAIN_DELAY", raising=False)
    assert _args([]).drain_delay == 0.0
    monkeypatch.setenv("GENMESH_TOOLS_DRAIN_DELAY", "5")
    assert _args([]).drain_delay == 5.0
    assert _args(["--drain-delay", "1.5"]).drain_delay == 1.5


def test_negative_drain_delay_is_refused() -> None:
    assert ServerConfig("127.0.0.1", 0, drain_delay_s=0.0).drain_delay_s == 0.0
    with pytest.raises(ValueError, match="drain delay must not be negative"):
        ServerConfig("127.0.0.1", 0, drain_delay_s=-1.0)
