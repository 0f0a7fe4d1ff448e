"""protodrop over TLS and mutual TLS (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``), driven by
third-party clients: Python grpcio (``grpc.ssl_channel_credentials``) and curl over https, HTTP/2 and
HTTP/1.1. The certificates (a CA, a server certificate for 127.0.0.1 and localhost, client
certificates from that CA and from another) are made here with ``cryptography``. tests/tls.rs covers
the rest with a Rust client (start-up errors among them).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import _stop, start_protodrop

CALL_TIMEOUT = 15  # seconds for one call

pytestmark = pytest.mark.skipif(
    os.environ.get("PROTODROP_E2E_TARGET", "protodrop") != "protodrop",
    reason="TLS is protodrop's: the seeds' own servers are plaintext",
)


# --------------------------------------------------------------------------------------------------
# Certificates.


@dataclass
class Pair:
    cert: bytes  # PEM
    key: bytes  # PEM, PKCS#8

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        return cert, key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Ca:
    def __init__(self, cn: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(cn)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, cn: str, usage, sans: list[x509.GeneralName] | None = None) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Pair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))

    def server(self) -> Pair:
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        return self.sign("protodrop test server", ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def client(self, cn: str) -> Pair:
        return self.sign(cn, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass
class Pki:
    dir: Path
    ca: Path  # the CA of the server and of the good client
    client: tuple[Path, Path]  # signed by ca
    stranger: tuple[Path, Path]  # signed by another CA
    server: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("tls")
    ca, other = Ca("protodrop test CA"), Ca("another CA")
    (folder / "ca.pem").write_bytes(ca.pem)
    return Pki(
        dir=folder,
        ca=folder / "ca.pem",
        client=ca.client("good client").write(folder, "client"),
        stranger=other.client("stranger").write(folder, "stranger"),
        server=ca.server().write(folder, "server"),
    )


def _serve(pki: Pki, label: str, *extra: str):
    cert, key = pki.server
    workdir = pki.dir / label  # its own stderr log
    workdir.mkdir()
    server = start_protodrop(workdir, extra_args=("--tls-cert", str(cert), "--tls-key", str(key), *extra))
    if server.proc is None:
        pytest.fail(server.why, pytrace=False)
    return server


@pytest.fixture(scope="module")
def tls_server(pki):
    server = _serve(pki, "tls")
    try:
        yield server
    finally:
        _stop(server.proc)


@pytest.fixture(scope="module")
def mtls_server(pki):
    server = _serve(pki, "mtls", "--tls-client-ca", str(pki.ca))
    try:
        yield server
    finally:
        _stop(server.proc)


# --------------------------------------------------------------------------------------------------
# grpcio


def say_hello(stubs, channel: grpc.Channel, name: str = "you") -> str:
    stub = stubs.hello_world_pb2_grpc.GreeterStub(channel)
    reply = stub.SayHello(stubs.hello_world_pb2.HelloRequest(name=name), timeout=CALL_TIMEOUT)
    return reply.message


def credentials(pki: Pki, client: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    cert, key = client
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(), private_key=key.read_bytes(), certificate_chain=cert.read_bytes()
    )


def refused(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_grpcio_over_tls(stubs, pki, tls_server):
    # The address as printed (127.0.0.1): the certificate names that IP too.
    with grpc.secure_channel(tls_server.address_, credentials(pki)) as channel:
        assert say_hello(stubs, channel) == "Hello, you!"


def test_grpcio_plaintext_is_refused_by_a_tls_server(stubs, tls_server):
    with grpc.insecure_channel(tls_server.address_) as channel:
        assert refused(lambda: say_hello(stubs, channel)) == grpc.StatusCode.UNAVAILABLE


def test_grpcio_mutual_tls(stubs, pki, mtls_server):
    address = mtls_server.address_
    with grpc.secure_channel(address, credentials(pki, pki.client)) as channel:
        assert say_hello(stubs, channel, "mtls") == "Hello, mtls!"
    # No client certificate.
    with grpc.secure_channel(address, credentials(pki)) as channel:
        assert refused(lambda: say_hello(stubs, channel)) == grpc.StatusCode.UNAVAILABLE
    # A client certificate from another CA.
    with grpc.secure_channel(address, credentials(pki, pki.stranger)) as channel:
        assert refused(lambda: say_hello(stubs, channel)) == grpc.StatusCode.UNAVAILABLE


def test_grpcurl_mutual_tls_with_reflection(pki, mtls_server):
    # The README's command: grpcurl (Go's TLS) with the CA and a client certificate, no proto files.
    grpcurl = Path(sys.executable).parent / "grpcurl"
    cert, key = pki.client
    cmd = [str(grpcurl), "-cacert", str(pki.ca), "-cert", str(cert), "-key", str(key)]
    done = subprocess.run(
        cmd + ["-d", '{"name":"go"}', mtls_server.address_, "hello_world.Greeter/SayHello"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"message": "Hello, go!"}


# --------------------------------------------------------------------------------------------------
# curl over https: HTTP/JSON and Connect, HTTP/2 and HTTP/1.1 (ALPN offers both)


@pytest.fixture(scope="module")
def has_curl():
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (tests/run.sh installs it)")


def curl(*args: str) -> subprocess.CompletedProcess:
    cmd = ["curl", "-sS", "--max-time", str(CALL_TIMEOUT), *args]
    return subprocess.run(cmd, capture_output=True, timeout=CALL_TIMEOUT + 5, text=True)


def https(server, path: str) -> str:
    port = server.address_.rsplit(":", 1)[1]
    return f"https://localhost:{port}{path}"


@pytest.mark.parametrize("http_version", ["--http2", "--http1.1"])
def test_curl_https_json_transcoding(has_curl, pki, tls_server, http_version):
    run = curl(
        http_version, "--cacert", str(pki.ca), "-w", "\n%{http_version}", "-d", '{"name":"tls"}',
        https(tls_server, "/v1/example/echo"),
    )
    assert run.returncode == 0, run.stderr
    body, version = run.stdout.rsplit("\n", 1)
    assert json.loads(body) == {"message": "Hello, tls!"}
    assert version == ("2" if http_version == "--http2" else "1.1")


def test_curl_https_connect_with_a_client_certificate(has_curl, pki, mtls_server):
    cert, key = pki.client
    url = https(mtls_server, "/hello_world.Greeter/SayHello")
    run = curl(
        "--http1.1", "--cacert", str(pki.ca), "--cert", str(cert), "--key", str(key),
        "-H", "content-type: application/json", "-d", '{"name":"curl"}', url,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"message": "Hello, curl!"}
    # Without one, the handshake fails (curl's exit code, no HTTP answer at all).
    run = curl("--cacert", str(pki.ca), "-H", "content-type: application/json", "-d", "{}", url)
    assert run.returncode != 0, run.stdout
    assert run.stdout == ""


def test_curl_plain_http_gets_no_answer_from_a_tls_server(has_curl, tls_server):
    run = curl("-d", "{}", f"http://{tls_server.address_}/v1/example/echo")
    assert run.returncode != 0, run.stdout
