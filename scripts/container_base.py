"""Builds the container images with no registry: a debootstrapped Debian base, a host-side wheelhouse, podman.

`python scripts/container_base.py` makes (or reuses) three things, each cached under a version key:

1. ``genmesh/base:bookworm``: Debian bookworm debootstrapped from the mirror apt uses, with python3.11 and its
   venv module, imported into podman. Rebuilt only when ``BASE_VERSION`` changes (or with ``--rebuild-base``).
2. ``.genmesh/containers/wheelhouse/``: every wheel the images install (torch is the CPU wheel pip takes from
   this machine's disk), made by the host's pip; rebuilt when pyproject.toml changes.
3. The service images of docker-compose.yml, built from the Dockerfile with that wheelhouse bind-mounted as
   the ``wheels`` build context and no network (``--network none``), with podman's layer cache.

podman runs with ``--runtime runc`` and explicit ulimits: crun fails on this machine's cgroup setup, and
podman's default nofile limit is above the hard limit a process here may raise it to.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".genmesh" / "containers"
WHEELHOUSE = CACHE / "wheelhouse"

BASE_IMAGE = "localhost/genmesh/base:bookworm"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
#: Bump to rebuild the base image everywhere (it is also rebuilt when the suite or the packages change).
BASE_VERSION = f"1-{SUITE}-{'-'.join(BASE_PACKAGES)}"
VERSION_LABEL = "io.genmesh.base-version"
#: What the images install besides the project itself: the stubs stage's generator and the build requirements of
#: pyproject.toml's [build-system] (pip's isolated build of the project installs them, offline, from here).
EXTRA_WHEELS = ("torch==2.13.0", "grpcio-tools==1.85.1", "mypy-protobuf==5.1.0", "setuptools>=77")
#: Paths of the base's root file system no container needs (the image shrinks from ~275 MB to ~130 MB).
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")

PODMAN = ("podman", "--runtime", "runc")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


def log(message: str) -> None:
    """One progress line with the time it was printed."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def podman(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``podman --runtime runc ARGS``."""
    return subprocess.run([*PODMAN, *args], check=check, text=True, capture_output=capture)


def debian_mirror() -> str:
    """The Debian mirror apt uses here (GENMESH_DEBIAN_MIRROR overrides it)."""
    if override := os.environ.get("GENMESH_DEBIAN_MIRROR"):
        return override
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        text = source.read_text(errors="replace") if source.is_file() else ""
        # one-line style ("deb URI SUITE ...") and deb822 style ("URIs: URI" with "Suites: SUITE ...")
        for uri in re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.MULTILINE):
            return str(uri)
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            if uris and re.search(rf"^Suites:.*\b{SUITE}\b(?!-)", stanza, re.MULTILINE):
                return uris.group(1)
    return "http://deb.debian.org/debian"


def image_label(image: str, label: str) -> str | None:
    """The value of ``label`` on a local image; None when there is no such image."""
    found = podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', image, check=False, capture=True)
    return found.stdout.strip() if found.returncode == 0 else None


def ensure_base_image(rebuild: bool = False) -> str:
    """``genmesh/base:bookworm`` at ``BASE_VERSION``: reused when present, else debootstrapped and imported."""
    if not rebuild and image_label(BASE_IMAGE, VERSION_LABEL) == BASE_VERSION:
        log(f"base image {BASE_IMAGE} ({BASE_VERSION}) is cached")
        return BASE_IMAGE
    if os.geteuid() != 0:
        raise SystemExit("debootstrap needs root (run as root, or import a base image yourself: see the docs)")
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is missing: apt-get install debootstrap")
    mirror = debian_mirror()
    log(f"debootstrapping Debian {SUITE} from {mirror} (about a minute)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        include = ",".join(BASE_PACKAGES)
        cmd = ["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(rootfs), mirror]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        for path in TRIM:
            for child in (rootfs / path).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        changes = [f"LABEL {VERSION_LABEL}={BASE_VERSION}", 'CMD ["/bin/bash"]']
        flags = [flag for change in changes for flag in ("--change", change)]
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run([*PODMAN, "import", "--quiet", *flags, "-", BASE_IMAGE], stdin=tar.stdout)
            if tar.stdout:
                tar.stdout.close()
        if tar.returncode or imported.returncode:
            raise SystemExit(f"importing the base image failed (tar {tar.returncode}, podman {imported.returncode})")
    log(f"base image {BASE_IMAGE} ({BASE_VERSION}) imported")
    return BASE_IMAGE


def wheelhouse_key() -> str:
    """What the wheelhouse depends on: pyproject.toml, the extra wheels and the host's Python."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update("\n".join([*EXTRA_WHEELS, sys.version.split()[0]]).encode())
    return digest.hexdigest()[:16]


def ensure_wheelhouse() -> Path:
    """Every wheel the images install, in one folder; pip runs here (on the host), never inside a build."""
    stamp = WHEELHOUSE / ".key"
    key = wheelhouse_key()
    if stamp.is_file() and stamp.read_text().strip() == key:
        log(f"wheelhouse {WHEELHOUSE.relative_to(ROOT)} ({key}) is cached")
        return WHEELHOUSE
    log("filling the wheelhouse with the host's pip (torch from the CPU wheel on disk)")
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix="wheelhouse-"))
    try:
        extras = ".[inference,retrieval]"
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(staging), *EXTRA_WHEELS, extras]
        done = subprocess.run(cmd, cwd=ROOT, text=True, stderr=subprocess.PIPE)
        # this machine's pip.conf names local index folders that lack most projects: one warning per project
        noise = re.compile(r"WARNING: Location .* is ignored")
        sys.stderr.writelines(line for line in done.stderr.splitlines(True) if not noise.match(line))
        if done.returncode:
            raise SystemExit(f"pip wheel failed ({done.returncode})")
        for own in staging.glob("genmesh-*.whl"):  # the images build the project from its source
            own.unlink()
        staging.chmod(0o755)
        (staging / ".key").write_text(key + "\n")
        shutil.rmtree(WHEELHOUSE, ignore_errors=True)
        staging.rename(WHEELHOUSE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wheelhouse ready: {len(list(WHEELHOUSE.glob('*.whl')))} wheels")
    return WHEELHOUSE


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One image of docker-compose.yml: its Dockerfile target and its tag."""

    service: str
    target: str
    image: str


def compose_images(compose: dict[str, Any]) -> list[ImageSpec]:
    """The images docker-compose.yml builds, in its service order."""
    specs = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if isinstance(build, dict) and "target" in build:
            specs.append(ImageSpec(name, str(build["target"]), str(service["image"])))
    return specs


def build_images(specs: list[ImageSpec], base: str, wheels: Path) -> None:
    """Build each image from the Dockerfile: offline, from ``base`` and ``wheels``, reusing cached layers."""
    for spec in specs:
        log(f"building {spec.image} (target {spec.target})")
        podman(
            "build",
            "--pull=never",
            "--network=none",
            "--format=docker",  # the OCI format drops HEALTHCHECK
            *ULIMITS,
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--build-context",
            f"wheels={wheels}",
            "--target",
            spec.target,
            "--tag",
            spec.image,
            "--file",
            str(ROOT / "Dockerfile"),
            str(ROOT),
        )


def load_compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def ensure_images(rebuild_base: bool = False) -> list[ImageSpec]:
    """Base image, wheelhouse and service images, each reused where its cache is valid."""
    specs = compose_images(load_compose())
    build_images(specs, ensure_base_image(rebuild_base), ensure_wheelhouse())
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-base", action="store_true", help="debootstrap the base image again")
    args = parser.parse_args()
    started = time.monotonic()
    ensure_images(args.rebuild_base)
    log(f"images ready in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
