"""The tools service: a registry of JSON-Schema-described tools and the built-in ones."""
