"""Background inference jobs: a durable queue in the gateway whose workers run the Generate pipeline."""
