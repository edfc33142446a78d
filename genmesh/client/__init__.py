"""genmesh.client: the Python client of a genmesh gateway.

    async with AsyncClient("localhost:50051") as client:
        async for event in client.generate("What does yield do?"):
            ...

``Client`` is the same, blocking. Errors are genmesh.client.errors' (BadRequest, RateLimited, ...).
"""

from genmesh.client.aio import AsyncClient
from genmesh.client.errors import (
    BadRequest,
    DeadlineExceeded,
    GenmeshError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from genmesh.client.events import (
    Answer,
    Complete,
    Degraded,
    Delta,
    Event,
    Passage,
    Sources,
    StageSpan,
    StepEnd,
    Timings,
    TokenLogprob,
    ToolCall,
    ToolResult,
    TopLogprob,
    Usage,
)
from genmesh.client.jobs import Job, JobPage, JobUpdate
from genmesh.client.requests import Sampling, Tool
from genmesh.client.retry import NO_RETRIES, RetryPolicy
from genmesh.client.sync import Client
from genmesh.tls import ClientTLS

__all__ = [
    "NO_RETRIES",
    "Answer",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientTLS",
    "Complete",
    "DeadlineExceeded",
    "Degraded",
    "Delta",
    "Event",
    "GenmeshError",
    "Job",
    "JobPage",
    "JobUpdate",
    "NotFound",
    "Passage",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "Sampling",
    "Sources",
    "StageSpan",
    "StepEnd",
    "Timings",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolResult",
    "TopLogprob",
    "Unauthenticated",
    "Unavailable",
    "Usage",
]
