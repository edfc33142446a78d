"""`python -m genmesh.cli`: the `genmesh` command, as the launcher spawns it."""

from genmesh.cli.main import main

main()
