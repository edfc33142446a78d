"""The OpenAI-compatible HTTP/SSE and WebSocket front of the mesh (``genmesh serve http``): its own process,
a gRPC client of the gateway (one code path for keys, limits and jobs)."""
