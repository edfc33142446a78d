"""The build's requirements agree everywhere they are named: [build-system].requires is in the images' offline
wheelhouse (scripts/container_base.py), and the generator the Dockerfile's stubs stage pins is the build's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build_requires() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        requires: list[str] = tomllib.load(file)["build-system"]["requires"]
    return requires


def test_the_offline_wheelhouse_has_every_build_requirement() -> None:
    source = (ROOT / "scripts" / "container_base.py").read_text()
    match = re.search(r"^EXTRA_WHEELS = \((.*)\)$", source, re.MULTILINE)
    assert match is not None
    extra = set(re.findall(r'"([^"]+)"', match.group(1)))
    assert set(_build_requires()) <= extra


def test_the_dockerfile_generates_stubs_with_the_builds_grpcio_tools() -> None:
    (pinned,) = [r for r in _build_requires() if r.startswith("grpcio-tools")]
    assert re.search(rf"pip install .* {re.escape(pinned)}$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
