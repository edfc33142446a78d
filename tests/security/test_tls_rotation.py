"""Certificate rotation: new files (a new CA even) take effect for new connections on SIGHUP or on change,
while a stream opened before keeps going; a half-written rotation leaves the previous certificates in use."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.channels import open_channel
from genmesh.cli.certs import CertDir, create_certs
from genmesh.tls import CertificateReloader, ServerTLS
from security.tls_processes import health_as, start_tools, stop, tls_flags, wait_for_log

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def _install(source: CertDir, live: Path) -> ServerTLS:
    """Copy ``source``'s tools certificate, key and CA into ``live``, each file replaced atomically."""
    live.mkdir(exist_ok=True)
    tls = ServerTLS(live / "tls.crt", live / "tls.key", live / "ca.crt")
    for src, dst in ((source.key("tools"), tls.key), (source.cert("tools"), tls.cert), (source.ca, tls.ca)):
        assert dst is not None
        partial = dst.with_suffix(".partial")
        shutil.copyfile(src, partial)
        partial.replace(dst)
    return tls


async def test_a_new_ca_on_sighup_serves_new_connections_while_an_open_stream_goes_on(tmp_path: Path) -> None:
    old, new = create_certs(tmp_path / "old"), create_certs(tmp_path / "new")
    tls = _install(old, tmp_path / "live")
    assert tls.ca is not None
    service = await start_tools(tmp_path / "logs", tls_flags(tls.cert, tls.key, tls.ca), old.client())
    try:
        async with open_channel(service.address, tls=old.client()) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING

            _install(new, tmp_path / "live")
            os.kill(service.process.pid, signal.SIGHUP)
            await wait_for_log(service, "tls reload requested")
            assert await health_as(service.address, new.client()) == "SERVING"
            assert "CN=genmesh tools" in await wait_for_log(service, "tls certificates reloaded")
            assert await health_as(service.address, old.client()) == "UNAVAILABLE"

            # The stream opened under the old certificates still runs: it gets the drain's NOT_SERVING.
            assert not watch.done()
            service.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert (await watch.read()).status == NOT_SERVING
                assert await service.process.wait() == 0  # a second SIGTERM after its drain would kill it
    finally:
        await stop(service)


def _rewrite_keeping_stat(path: Path, data: bytes) -> None:
    """Put ``data`` in ``path`` in place with the same size and modification time: only SIGHUP can tell."""
    before = path.stat()
    assert len(data) <= before.st_size
    path.write_bytes(data + b"\n" * (before.st_size - len(data)))  # PEM allows trailing blank lines
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_sighup_rereads_files_whose_change_the_file_system_does_not_show(tmp_path: Path) -> None:
    old, new = create_certs(tmp_path / "old"), create_certs(tmp_path / "new")
    # Pad the live files so that the new contents fit in the same sizes.
    tls = _install(old, tmp_path / "live")
    for path in (tls.cert, tls.key, tls.ca):
        assert path is not None
        path.write_bytes(path.read_bytes() + b"\n" * 200)
    reloader = CertificateReloader(tls)
    before = reloader.material.leaf
    for src, dst in ((new.cert("tools"), tls.cert), (new.key("tools"), tls.key), (new.ca, tls.ca)):
        assert dst is not None
        _rewrite_keeping_stat(dst, src.read_bytes())
    assert reloader() is None  # nothing seen to change
    reloader.request_reload()
    assert isinstance(reloader(), grpc.ServerCertificateConfiguration)
    assert reloader.material.leaf != before
    reloader.material.leaf.verify_directly_issued_by(_ca(new))
    assert reloader() is None  # once


def test_a_half_done_rotation_keeps_the_previous_certificates_until_it_is_complete(tmp_path: Path) -> None:
    old, new = create_certs(tmp_path / "old"), create_certs(tmp_path / "new")
    tls = _install(old, tmp_path / "live")
    reloader = CertificateReloader(tls)
    before = reloader.material.leaf
    shutil.copyfile(new.cert("tools"), tls.cert)  # the key is still the old one
    assert reloader() is None and reloader.material.leaf == before
    shutil.copyfile(new.key("tools"), tls.key)
    assert isinstance(reloader(), grpc.ServerCertificateConfiguration)
    reloader.material.leaf.verify_directly_issued_by(_ca(new))
    assert reloader.reloads == 1


def _ca(certs: CertDir) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certs.ca.read_bytes())
