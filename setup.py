"""What a build does beyond pyproject.toml: the gRPC stubs and their type stubs are generated from protos/ (so
`pip install .` and a wheel built from a clean checkout need no `make proto`), and the wheel carries the .proto
files (genmesh/protos/genmesh/v1/*.proto with the google/rpc/status.proto they import: pass genmesh/protos as the
include path of other languages' codegen) and the shipped model (services/inference/shipped/genmesh-tiny-llama).

grpcio-tools and mypy-protobuf come from [build-system].requires. An editable install (`pip install -e .`)
generates the stubs into the source tree, where `make proto` puts them (genmesh/v1, gitignored)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
CONTRACT = Path("genmesh") / "v1"
"""The protos' package directory under protos/, and the stubs' under the output directory."""
SHIPPED_PROTOS = Path("genmesh") / "protos"
"""Where the wheel has every .proto of protos/: site-packages/genmesh/protos is a complete include path."""
MODEL = Path("models") / "genmesh-tiny-llama"
SHIPPED_MODEL = Path("services") / "inference" / "shipped" / MODEL.name
"""Where the wheel has the shipped model; services/inference/shipped_model.py looks there first."""
STUBS_DOC = '"""Generated from protos/genmesh/v1 at build time; do not edit."""\n'

_PLUGINS = {"protoc-gen-mypy": "main", "protoc-gen-mypy_grpc": "grpc"}
"""mypy-protobuf's protoc plugins and their functions in mypy_protobuf.main."""


def _plugin_scripts(folder: Path) -> list[str]:
    """protoc --plugin flags for mypy-protobuf run by this interpreter: scripts written into ``folder``, so that the
    build needs no console script on PATH (an isolated build environment's bin is not always there)."""
    flags = []
    for name, function in _PLUGINS.items():
        script = folder / name
        script.write_text(f"#!{sys.executable}\nfrom mypy_protobuf.main import {function}\n{function}()\n")
        script.chmod(0o755)
        flags.append(f"--plugin={name}={script}")
    return flags


def generate_stubs(out: Path) -> list[Path]:
    """Generate genmesh/v1 (*_pb2.py, *_pb2_grpc.py, their .pyi, __init__.py, py.typed) under ``out`` from
    protos/genmesh/v1/*.proto; the files made."""
    out = out.resolve()
    target = out / CONTRACT
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    protos = sorted(str(path.relative_to(PROTOS)) for path in (PROTOS / CONTRACT).glob("*.proto"))
    with tempfile.TemporaryDirectory() as plugins:
        command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}"]
        command += [f"--python_out={out}", f"--grpc_python_out={out}", f"--mypy_out={out}", f"--mypy_grpc_out={out}"]
        command += _plugin_scripts(Path(plugins))
        subprocess.run([*command, *protos], check=True, cwd=PROTOS)
    (target / "__init__.py").write_text(STUBS_DOC)
    (target / "py.typed").write_text("")
    return sorted(target.iterdir())


def _copy_tree(source: Path, target: Path, pattern: str) -> list[Path]:
    """Copy the files under ``source`` matching ``pattern`` (recursively, keeping their paths) into ``target``
    (made afresh); the files made."""
    shutil.rmtree(target, ignore_errors=True)
    made = []
    for path in sorted(source.rglob(pattern)):
        if path.is_file():
            copy = target / path.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            made.append(Path(shutil.copy2(path, copy)))
    return made


class BuildPy(build_py):
    """build_py, then the stubs, the .proto files and the shipped model (the last two in a wheel only)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            generate_stubs(ROOT)
            return
        lib = Path(self.build_lib)
        self._generated = generate_stubs(lib)
        self._generated += _copy_tree(PROTOS, lib / SHIPPED_PROTOS, "*.proto")
        self._generated += _copy_tree(ROOT / MODEL, lib / SHIPPED_MODEL, "*")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        made = [str(path) for path in getattr(self, "_generated", [])]
        return [*super().get_outputs(include_bytecode), *made]


if __name__ == "__main__":  # as setuptools runs it; `make proto` imports generate_stubs alone
    setup(cmdclass={"build_py": BuildPy})
