"""The retrieval service: a BM25 passage index over named document collections."""
