"""genmesh services: inference, retrieval and tools, each its own process."""
