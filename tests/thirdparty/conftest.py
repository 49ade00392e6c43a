"""TLS material for the third-party tests: a self-signed localhost certificate made with the
``openssl`` CLI at test time (the core suite's conftest has the fuller fallback chain)."""
from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest


@pytest.fixture(scope="session")
def tp_tls_contexts(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server_context, client_context) trusting each other, for localhost / 127.0.0.1."""
    exe = shutil.which("openssl")
    if not exe:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tp-tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([exe, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert), str(key))
    client = ssl.create_default_context(cafile=str(cert))
    return server, client
