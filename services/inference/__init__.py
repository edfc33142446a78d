"""The inference service: a local Llama model behind a streaming engine."""
