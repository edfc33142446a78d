"""The retrieval service: durable document collections searched by embeddings, BM25, or both fused."""
