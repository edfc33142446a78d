"""Helpers the tests share: mesh chaos, gateway streams, job gateways and small tokenizers."""
