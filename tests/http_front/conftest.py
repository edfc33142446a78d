"""The HTTP front's tests run it in-process (front.py) before a real gateway served in-process over scripted
upstreams: tests/gateway's helpers, as tests/client uses them. (Not tests/http: with tests/ on sys.path that
package would shadow the standard library's ``http``.)"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateway"))
