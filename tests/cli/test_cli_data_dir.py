"""Where `genmesh up` keeps the mesh's state by default: not the working directory, but $GENMESH_DATA_DIR, else
$XDG_DATA_HOME/genmesh, else ~/.local/share/genmesh; `up --help` says so."""

from __future__ import annotations

from pathlib import Path

from support.genmesh_cli import genmesh

from genmesh.cli.up import default_data_dir


def test_the_default_follows_the_environment_not_the_working_directory() -> None:
    home = Path.home() / ".local" / "share" / "genmesh"
    assert default_data_dir({}) == home
    assert default_data_dir({"XDG_DATA_HOME": "relative/ignored"}) == home
    assert default_data_dir({"XDG_DATA_HOME": "/xdg"}) == Path("/xdg/genmesh")
    assert default_data_dir({"XDG_DATA_HOME": "/xdg", "GENMESH_DATA_DIR": "/mine"}) == Path("/mine")


async def test_up_help_names_the_default(tmp_path: Path) -> None:
    ran = await genmesh("up", "--help", env={"XDG_DATA_HOME": str(tmp_path), "GENMESH_DATA_DIR": ""})
    text = " ".join(ran.stdout.split())
    assert ran.returncode == 0 and "$XDG_DATA_HOME/genmesh, else ~/.local/share/genmesh" in text
    assert f"now{tmp_path / 'genmesh'}" in "".join(text.split())  # help lines break paths at their hyphens
