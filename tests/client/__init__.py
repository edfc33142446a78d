"""Tests of the Python client library, genmesh.client (a package, so that its conftest has a module name of its own)."""
