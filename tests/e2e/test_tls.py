"""TLS: a server with a certificate made here (a CA of the test's own, a
server certificate for 127.0.0.1, a client certificate), called over TLS,
with and without client-certificate verification."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path

import grpc
import httpx
import pytest

from geopunch.v1 import admin_pb2
from tests.conftest import Client, ServerProcess
from tests.pki import Pem, issue, pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Pem]:
    d = tmp_path_factory.mktemp("pki")
    ca = issue("geopunch test CA", None, ca=True)
    server = pem(*issue("127.0.0.1", ca, server=True))
    client = pem(*issue("kiosk-7", ca))
    ca_pem = pem(*ca)
    (d / "ca.pem").write_bytes(ca_pem.cert)
    (d / "server.pem").write_bytes(server.cert)
    (d / "server.key").write_bytes(server.key)
    (d / "client.pem").write_bytes(client.cert)
    (d / "client.key").write_bytes(client.key)
    return {"dir": d, "ca": ca_pem, "server": server, "client": client}


def _start(
    tmp_path: Path, pki: dict[str, Path | Pem], creds: grpc.ChannelCredentials, **env: str
) -> ServerProcess:
    d = pki["dir"]
    assert isinstance(d, Path)
    srv = ServerProcess(
        db_url=f"sqlite:///{tmp_path / 'tls.db'}",
        env_extra={
            "GEOPUNCH_TLS_CERT": str(d / "server.pem"),
            "GEOPUNCH_TLS_KEY": str(d / "server.key"),
            **env,
        },
        credentials=creds,
    )
    srv.start(tmp_path)
    return srv


def _trust(d: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(d / "ca.pem"))


def _ping(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    c = Client(address, credentials=creds)
    try:
        c(c.admin.Ping, admin_pb2.PingRequest(), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()
    finally:
        c.close()


def test_a_tls_server_answers_over_tls_only(tmp_path: Path, pki: dict[str, Path | Pem]) -> None:
    ca = pki["ca"]
    assert isinstance(ca, Pem)
    trusted = grpc.ssl_channel_credentials(root_certificates=ca.cert)
    srv = _start(tmp_path, pki, trusted)
    try:
        assert _ping(srv.address, trusted) == grpc.StatusCode.OK
        assert _ping(srv.address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
        # A client that does not trust the test's CA refuses the server.
        assert _ping(srv.address, grpc.ssl_channel_credentials()) == grpc.StatusCode.UNAVAILABLE
        # The HTTP API speaks TLS with the same certificate.
        d = pki["dir"]
        assert isinstance(d, Path)
        ok = httpx.get(f"https://{srv.http_address}/healthz", verify=_trust(d))
        assert ok.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{srv.http_address}/healthz", timeout=5)
    finally:
        srv.terminate()


def test_client_certificates_are_verified_when_a_client_ca_is_given(
    tmp_path: Path, pki: dict[str, Path | Pem]
) -> None:
    ca, client = pki["ca"], pki["client"]
    d = pki["dir"]
    assert isinstance(ca, Pem) and isinstance(client, Pem) and isinstance(d, Path)
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca.cert, private_key=client.key, certificate_chain=client.cert
    )
    srv = _start(tmp_path, pki, with_cert, GEOPUNCH_TLS_CLIENT_CA=str(d / "ca.pem"))
    try:
        assert _ping(srv.address, with_cert) == grpc.StatusCode.OK
        without = grpc.ssl_channel_credentials(root_certificates=ca.cert)
        assert _ping(srv.address, without) == grpc.StatusCode.UNAVAILABLE
        # A certificate from another CA is refused too.
        other = pem(*issue("stranger", issue("other CA", None, ca=True)))
        stranger = grpc.ssl_channel_credentials(
            root_certificates=ca.cert, private_key=other.key, certificate_chain=other.cert
        )
        assert _ping(srv.address, stranger) == grpc.StatusCode.UNAVAILABLE
        url = f"https://{srv.http_address}/healthz"
        mine = _trust(d)
        mine.load_cert_chain(d / "client.pem", d / "client.key")
        assert httpx.get(url, verify=mine).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=_trust(d), timeout=5)
    finally:
        srv.terminate()


def test_an_https_handshake_must_finish_within_the_receive_limit(
    tmp_path: Path, pki: dict[str, Path | Pem]
) -> None:
    """A client that connects to the HTTPS port and never begins its
    handshake, or stops half way, is disconnected after the receive limit
    (asyncio's own default waits 60 s); a handshake that finishes has the
    limit again for its request."""
    ca = pki["ca"]
    d = pki["dir"]
    assert isinstance(ca, Pem) and isinstance(d, Path)
    trusted = grpc.ssl_channel_credentials(root_certificates=ca.cert)
    srv = _start(tmp_path, pki, trusted, GEOPUNCH_RECEIVE_TIMEOUT_SECONDS="1")
    host, _, port = srv.http_address.rpartition(":")
    try:
        hello = ssl.MemoryBIO(), ssl.MemoryBIO()
        half = _trust(d).wrap_bio(*hello, server_hostname="127.0.0.1")
        with pytest.raises(ssl.SSLWantReadError):
            half.do_handshake()
        client_hello = hello[1].read()
        for start in (b"", client_hello[: len(client_hello) // 2]):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(start)
                began = time.monotonic()
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(100) == b""  # closed by the server
                assert 0.5 < time.monotonic() - began < 5, start[:10]
        # Unaffected: a whole handshake and request.
        ok = httpx.get(f"https://{srv.http_address}/healthz", verify=_trust(d))
        assert ok.status_code == 200
    finally:
        srv.terminate()
