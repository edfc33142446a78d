"""The gateway: the mesh's one public entry, fanning out to retrieval and tools, relaying inference."""
