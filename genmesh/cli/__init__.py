"""The `genmesh` command line and the local launcher; nothing in genmesh/, gateway/ or services/ imports it."""
