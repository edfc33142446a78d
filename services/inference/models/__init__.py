"""Model architectures and the Hugging Face layout loader."""
