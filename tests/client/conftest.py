"""The client tests run a real gateway in-process over scripted upstreams: tests/gateway's helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))
