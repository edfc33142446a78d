"""The HTTP front's health check for containers: ``python -m gateway.http.healthcheck HOST:PORT`` exits 0 when
``http://HOST:PORT/healthz`` answers 200 within two seconds, else 1 with one line saying why. (A ``host:port``
word, like ``genmesh health``'s target, so that tools rewriting a compose file's addresses can rewrite it.)"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Sequence

TIMEOUT_S = 2.0


def answers(address: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when ``http://address/healthz`` answers 200 in ``timeout_s``; else why not."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=timeout_s) as response:
            return None if response.status == 200 else f"status {response.status}"
    except OSError as error:
        return str(error)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.exit("usage: python -m gateway.http.healthcheck HOST:PORT")
    problem = answers(args[0])
    if problem is not None:
        sys.exit(f"http front at {args[0]} not healthy: {problem}")


if __name__ == "__main__":
    main()
