"""The wheel, built as a user builds it from a clean checkout (no `make proto`, no stubs in the tree), installed
into a fresh venv and run from outside the repository.

The clean checkout is the files git would commit: tracked and untracked-but-not-ignored (`git ls-files --cached
--others --exclude-standard`), so genmesh/v1 and .venv are not there. The build runs without isolation but with
``--check-build-dependencies``: [build-system].requires must be met by this interpreter (a build with isolation would
download them). The fresh venv is made by this interpreter's ``venv`` (so, its base Python) without pip; the wheel
goes in with ``--no-deps``, and a .pth file appends this interpreter's site-packages (grpcio, protobuf, torch...)
after the venv's own: genmesh itself can only come from the wheel, which the tests check (a .pth line adds a
directory to sys.path without running the .pth files in it, so the editable install there is not seen)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = sorted((ROOT / "protos" / "genmesh" / "v1").glob("*.proto"))
IMPORTED_PROTOS = ("google/rpc/status.proto",)
"""Protos of others the contract imports, vendored in protos/ and shipped with it."""
MODEL = ROOT / "models" / "genmesh-tiny-llama"
SHIPPED_MODEL = "services/inference/shipped/genmesh-tiny-llama"


@dataclass(frozen=True)
class Built:
    wheel: Path
    venv: Path
    outside: Path  # a working directory outside the repository

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """``command`` with the venv's bin first on PATH, from outside the repository."""
        env = {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.outside), "LANG": "C.UTF-8"}
        return subprocess.run(command, cwd=self.outside, env=env, capture_output=True, text=True, timeout=120)


def _checkout(target: Path) -> Path:
    """The files git would commit, copied into ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not there to copy
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _wheel(source: Path, out: Path) -> Path:
    flags = ["--quiet", "--no-deps", "--no-build-isolation", "--check-build-dependencies", "--wheel-dir", str(out)]
    subprocess.run([sys.executable, "-m", "pip", "wheel", *flags, str(source)], check=True, cwd=source)
    (wheel,) = out.glob("genmesh-*.whl")
    return wheel


def _site_packages(built: Built) -> Path:
    return built.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    checkout = _checkout(tmp_path_factory.mktemp("checkout"))
    assert not (checkout / "genmesh" / "v1").exists()
    wheel = _wheel(checkout, tmp_path_factory.mktemp("dist"))
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
    )
    own = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (Path(own) / "genmesh_test_shared_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return Built(wheel, venv, tmp_path_factory.mktemp("outside"))


def test_the_wheel_has_the_stubs_protos_markers_and_model(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        for proto in PROTOS:
            assert wheel.read(f"genmesh/protos/genmesh/v1/{proto.name}") == proto.read_bytes()
            stem = proto.stem
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
                assert f"genmesh/v1/{stem}{suffix}" in names
        for imported in IMPORTED_PROTOS:
            assert wheel.read(f"genmesh/protos/{imported}") == (ROOT / "protos" / imported).read_bytes()
        for model_file in MODEL.iterdir():
            assert wheel.getinfo(f"{SHIPPED_MODEL}/{model_file.name}").file_size == model_file.stat().st_size
    assert {"genmesh/py.typed", "genmesh/v1/py.typed", "services/py.typed", "gateway/py.typed"} <= names
    assert "genmesh/v1/__init__.py" in names
    assert not [name for name in names if name.startswith(("tests/", "models/", "protos/", "bench/", "scripts/"))]


def test_the_installed_wheel_runs_from_outside_the_repository(built: Built) -> None:
    version = built.run("genmesh", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "genmesh 0.1.0"
    probe = (
        "import genmesh, genmesh.client\n"
        "from genmesh.v1 import gateway_pb2\n"
        "from services.inference.shipped_model import shipped_model\n"
        "from genmesh.cli.serve_checks import model_problem\n"
        "print(genmesh.__file__, gateway_pb2.__file__, shipped_model(), model_problem(shipped_model()), sep='\\n')\n"
    )
    ran = built.run("python", "-c", probe)
    assert ran.returncode == 0, ran.stderr
    package, stubs, model, problem = ran.stdout.split("\n")[:4]
    site_packages = _site_packages(built)
    assert Path(package) == site_packages / "genmesh" / "__init__.py"
    assert Path(stubs) == site_packages / "genmesh" / "v1" / "gateway_pb2.py"
    assert Path(model) == site_packages / SHIPPED_MODEL and problem == "None"


def test_the_installed_protos_are_a_complete_include_path_for_codegen(built: Built, tmp_path: Path) -> None:
    """Other languages' generators get every import from site-packages/genmesh/protos (docs/CONTRACTS.md)."""
    protos = _site_packages(built) / "genmesh" / "protos"
    names = [f"genmesh/v1/{proto.name}" for proto in PROTOS]
    out = f"--descriptor_set_out={tmp_path / 'contract.binpb'}"
    ran = built.run("python", "-m", "grpc_tools.protoc", f"-I{protos}", out, *names)
    assert ran.returncode == 0 and (tmp_path / "contract.binpb").stat().st_size > 0, ran.stderr


def test_the_installed_stubs_are_typed_for_a_user_of_the_package(built: Built) -> None:
    code = "from genmesh.v1 import gateway_pb2\nreveal_type(gateway_pb2.GatewayRequest().question)\n"
    ran = built.run("python", "-m", "mypy", "--strict", "--no-incremental", "-c", code)
    # without py.typed mypy would refuse the import ("missing library stubs or py.typed marker") and see Any
    assert ran.returncode == 0 and 'Revealed type is "str"' in ran.stdout, ran.stdout + ran.stderr


def test_the_sdist_carries_what_the_wheel_is_built_from(built: Built, tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "checkout")
    sdist = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[-1]
    with tarfile.open(tmp_path / sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (source,) = (tmp_path / "unpacked").iterdir()
    with zipfile.ZipFile(_wheel(source, tmp_path / "dist")) as rebuilt, zipfile.ZipFile(built.wheel) as first:
        assert set(rebuilt.namelist()) == set(first.namelist())


def test_an_installation_without_its_model_says_to_pass_model_in_one_line(built: Built) -> None:
    site_packages = _site_packages(built)
    shutil.rmtree(site_packages / SHIPPED_MODEL)  # last test of the module: the venv is not used after it
    ran = built.run("genmesh", "serve", "inference", "--port", "1")
    assert ran.returncode == 1 and ran.stdout == ""
    (line,) = ran.stderr.splitlines()
    assert line.startswith("error: the shipped model ") and "no such directory; pass --model DIR" in line
