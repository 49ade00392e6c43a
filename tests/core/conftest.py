"""Fixtures for the core semantics suite (the loop fixtures themselves live in tests/conftest.py).

TLS material is made at test time, never shipped: a self-signed certificate for ``localhost`` /
``127.0.0.1`` from the ``openssl`` CLI when present, else from the ``cryptography`` package, else
from ``trustme``; with none of them the TLS tests skip and say why.
"""
from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest


def _openssl_cert(cert: Path, key: Path) -> bool:
    exe = shutil.which("openssl")
    if not exe:
        return False
    cmd = [exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
           "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return cert.exists() and key.exists()


def _cryptography_cert(cert: Path, key: Path) -> bool:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(pkey.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(hours=1))
           .not_valid_after(now + datetime.timedelta(days=2))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
               critical=False)
           .sign(pkey, hashes.SHA256()))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    return True


def _trustme_cert(cert: Path, key: Path) -> bool:
    try:
        import trustme
    except ImportError:
        return False
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.private_key_pem.write_to_path(str(key))
    # the client trusts the CA, the server presents leaf + chain: write both into one bundle
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
        f.write(ca.cert_pem.bytes())
    return True


@pytest.fixture(scope="session")
def tls_cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certfile, keyfile) of a self-signed cert for localhost and 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    for make in (_openssl_cert, _cryptography_cert, _trustme_cert):
        if make(cert, key):
            return cert, key
    pytest.skip("no way to make a test certificate: need the openssl CLI, cryptography or trustme")


@pytest.fixture
def server_ssl(tls_cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, tls_cert_files))
    return ctx


@pytest.fixture
def client_ssl(tls_cert_files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls_cert_files[0]))
    return ctx


@pytest.fixture
def refused_port() -> int:
    """A loopback TCP port with (almost certainly) no listener: bound, never listened, closed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
