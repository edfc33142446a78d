"""The search_docs tool: searches the mesh's retrieval service, so a tool is itself a client of the mesh.

The tool is transport-free: it calls a ``Searcher`` (services/tools/retrieval_client.py holds the gRPC one)
with the call's remaining time as its timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from genmesh.errors import DeadlineExceeded
from genmesh.mesh import DEFAULT_COLLECTION
from services.tools.tool import Tool, time_remaining

DEFAULT_TOP_K = 3
MAX_TOP_K = 20
MAX_QUERY_CHARS = 4096
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class FoundPassage:
    """One passage the search returned."""

    rank: int
    score: float
    title: str
    text: str
    document_id: str
    chunk_id: str


class Searcher(Protocol):
    """Queries a collection; raises Unavailable, DeadlineExceeded or InvalidArgument (fields relative to the
    tool's arguments) on failure."""

    def __call__(
        self, query: str, top_k: int, collection: str, timeout_s: float | None
    ) -> Awaitable[list[FoundPassage]]:
        """The best ``top_k`` passages of ``collection`` for ``query``."""


def search_docs_schema() -> dict[str, Any]:
    """The JSON Schema of search_docs's arguments (a fresh copy)."""
    return {
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "description": "What to look for, in words.",
                "minLength": 1,
                "maxLength": MAX_QUERY_CHARS,
            },
            "top_k": {
                "type": "integer",
                "description": "How many passages to return.",
                "minimum": 1,
                "maximum": MAX_TOP_K,
                "default": DEFAULT_TOP_K,
            },
            "collection": {
                "type": "string",
                "description": "The document collection to search.",
                "minLength": 1,
                "maxLength": 128,
                "default": DEFAULT_COLLECTION,
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    }


def search_docs_tool(searcher: Searcher) -> Tool:
    """The built-in ``search_docs`` tool over ``searcher``; returns ``{"query", "collection", "passages"}``."""

    async def handle(arguments: dict[str, Any]) -> dict[str, Any]:
        query = arguments["query"]
        collection = arguments.get("collection", DEFAULT_COLLECTION)
        remaining = time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("search_docs: no time left to query retrieval")
        found = await searcher(query, arguments.get("top_k", DEFAULT_TOP_K), collection, remaining)
        return {
            "query": query,
            "collection": collection,
            "passages": [
                {
                    "rank": p.rank,
                    "score": p.score,
                    "title": p.title,
                    "text": p.text,
                    "document_id": p.document_id,
                    "chunk_id": p.chunk_id,
                }
                for p in found
            ],
        }

    return Tool(
        name="search_docs",
        description="Search the mesh's document collections (by default the Python language reference) and "
        "return the most relevant passages with their titles and scores.",
        parameters=search_docs_schema(),
        handler=handle,
        timeout_s=TIMEOUT_S,
        idempotent=True,
    )
