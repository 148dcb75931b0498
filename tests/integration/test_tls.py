"""TLS and mTLS on the gRPC port, with CAs made in the test (`trustme`): the right CA connects; a
plaintext client and a client trusting a foreign CA are refused; with a client CA, a client without a
certificate (or with one from a foreign CA) is refused and one signed by the CA connects; a certificate
rotated on disk is served to the next connections without a restart, unless it is outside its validity
period; and TLS combines with tokens."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import trustme

from lmroute.service.client import RouterClient
from lmroute.service.config import ServiceConfig
from lmroute.service.errors import ConfigError
from lmroute.service.testing import ServerThread
from lmroute.service.tls import CertificateFiles

TOKEN = "tls-token-0123456789abcdef"


def write_server_cert(ca: trustme.CA, root: Path, name: str, **valid: datetime) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key; `valid`: trustme's not_before / not_after."""
    cert = ca.issue_cert("127.0.0.1", "localhost", **valid)
    chain, key = root / f"{name}.pem", root / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return chain, key


def write_ca(ca: trustme.CA, root: Path, name: str) -> Path:
    path = root / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def write_client_cert(ca: trustme.CA, root: Path, name: str) -> tuple[Path, Path]:
    cert = ca.issue_cert("client@example.test")
    chain, key = root / f"{name}-client.pem", root / f"{name}-client.key"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return chain, key


@pytest.fixture()
def serve(fake_servers: Callable[..., ServerThread]) -> Callable[..., ServerThread]:
    def make(**kw: object) -> ServerThread:
        return fake_servers(**{**{}, **kw})

    return make


def routes(target: str, **kw: object) -> bool:
    """Whether a fresh client reaches the server and routes a prompt."""
    try:
        with RouterClient(target, timeout_s=5, **kw) as client:  # type: ignore[arg-type]
            client.route("hello", router="mf", threshold=0.5)
        return True
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), e
        return False


def wait_serving(srv: ServerThread, **kw: object) -> None:
    deadline = time.monotonic() + 30
    while not routes(srv.target, **kw):
        assert time.monotonic() < deadline, "server never answered over TLS"
        time.sleep(0.1)


def test_tls_admits_clients_that_trust_its_ca_only(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    ca, foreign = trustme.CA(), trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    srv = serve(tls_cert_file=str(cert), tls_key_file=str(key))
    ca_pem, foreign_pem = write_ca(ca, tmp_path, "ours"), write_ca(foreign, tmp_path, "foreign")
    wait_serving(srv, tls_ca=ca_pem)
    assert not routes(srv.target)  # plaintext
    assert not routes(srv.target, tls_ca=foreign_pem)


def test_mtls_requires_a_client_certificate_from_the_client_ca(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    ca, clients, foreign = trustme.CA(), trustme.CA(), trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    client_ca = write_ca(clients, tmp_path, "clients")
    srv = serve(tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(client_ca))
    ca_pem = write_ca(ca, tmp_path, "ours")
    good_cert, good_key = write_client_cert(clients, tmp_path, "good")
    bad_cert, bad_key = write_client_cert(foreign, tmp_path, "bad")
    wait_serving(srv, tls_ca=ca_pem, tls_cert=good_cert, tls_key=good_key)
    assert not routes(srv.target, tls_ca=ca_pem)  # no client certificate
    assert not routes(srv.target, tls_ca=ca_pem, tls_cert=bad_cert, tls_key=bad_key)


def _serving_one_ca_of_two(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> tuple[ServerThread, Path, Path, trustme.CA, Path, Path]:
    """A server on a certificate of one CA, serving: (the server, its cert and key files, a second CA, the
    first CA's PEM, the second's), for rotating the files to the second CA's."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = write_server_cert(old_ca, tmp_path, "server")
    srv = serve(tls_cert_file=str(cert), tls_key_file=str(key), metrics_port=0)
    old_pem, new_pem = write_ca(old_ca, tmp_path, "old"), write_ca(new_ca, tmp_path, "new")
    wait_serving(srv, tls_ca=old_pem)
    return srv, cert, key, new_ca, old_pem, new_pem


def test_a_rotated_certificate_is_served_to_new_connections_without_a_restart(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv, cert, key, new_ca, old_pem, new_pem = _serving_one_ca_of_two(serve, tmp_path)
    assert not routes(srv.target, tls_ca=new_pem)
    # rotate: the new certificate and key replace the files in place
    new_cert, new_key = write_server_cert(new_ca, tmp_path, "rotated")
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    assert routes(srv.target, tls_ca=new_pem)
    assert not routes(srv.target, tls_ca=old_pem)
    assert srv.server.tls is not None and srv.server.tls.reloads == 1


def test_a_rotation_to_a_key_that_does_not_match_keeps_the_certificate_in_use(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """A new certificate copied in before its key (a rotation that is not atomic): refused, not taken as a
    reload (gRPC would only find out at the next handshake); the old pair serves until the key arrives."""
    srv, cert, key, new_ca, old_pem, new_pem = _serving_one_ca_of_two(serve, tmp_path)
    new_cert, new_key = write_server_cert(new_ca, tmp_path, "rotated")
    cert.write_bytes(new_cert.read_bytes())  # the key file still holds the old key
    assert routes(srv.target, tls_ca=old_pem) and not routes(srv.target, tls_ca=new_pem)
    assert srv.server.tls is not None and srv.server.tls.reloads == 0
    assert 'lmroute_tls_reloads_total{listener="grpc",result="failed"} 1.0' in _scrape(srv)
    key.write_bytes(new_key.read_bytes())
    assert routes(srv.target, tls_ca=new_pem) and srv.server.tls.reloads == 1
    from cryptography import x509

    text = _scrape(srv)  # the rotation counted, and when the certificate now served expires
    assert 'lmroute_tls_reloads_total{listener="grpc",result="reloaded"} 1.0' in text
    not_after = x509.load_pem_x509_certificate(new_cert.read_bytes()).not_valid_after_utc.timestamp()
    [line] = [x for x in text.splitlines() if x.startswith('lmroute_tls_certificate_expiry_seconds{listener="grpc"}')]
    assert float(line.split()[-1]) == not_after


def _scrape(srv: ServerThread) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def out_of_date(ca: trustme.CA, root: Path) -> dict[str, tuple[Path, Path, str]]:
    """An expired certificate and one valid only from tomorrow, with their keys and the refusal's reason."""
    now = datetime.now(UTC).replace(microsecond=0)
    past, future = now - timedelta(days=1), now + timedelta(days=1)
    expired = write_server_cert(ca, root, "expired", not_before=now - timedelta(days=10), not_after=past)
    early = write_server_cert(ca, root, "early", not_before=future, not_after=now + timedelta(days=10))
    return {
        "expired": (*expired, f"the certificate expired at {past:%Y-%m-%dT%H:%M:%SZ} (notAfter)"),
        "early": (*early, f"the certificate is not valid before {future:%Y-%m-%dT%H:%M:%SZ} (notBefore)"),
    }


def test_a_certificate_outside_its_validity_period_is_refused_at_startup(tmp_path: Path) -> None:
    """An expired or not yet valid certificate: a config error naming the file and the date (it was served,
    and every client refused the handshake)."""
    import asyncio

    from lmroute.service.fake_scorer import FakeScorer
    from lmroute.service.server import RouterServer

    ca = trustme.CA()
    soon = write_server_cert(ca, tmp_path, "soon", not_before=datetime.now(UTC) + timedelta(minutes=1))
    assert CertificateFiles(*soon).reloads == 0  # issued by a clock a minute ahead: within CLOCK_SKEW_S
    for cert, key, why in out_of_date(ca, tmp_path).values():
        cfg = ServiceConfig(bundle_path=Path("unused"), port=0, tls_cert_file=str(cert), tls_key_file=str(key))
        server = RouterServer(cfg, lambda _cfg: FakeScorer())
        with pytest.raises(ConfigError) as err:
            asyncio.run(server.start())
        assert str(err.value) == f"tls: {cert}: {why}"


def test_a_rotation_to_a_certificate_outside_its_validity_period_keeps_the_certificate_in_use(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """On the gRPC port and for the OpenAI front's context alike: refused like a key that does not match."""
    srv, cert, key, new_ca, old_pem, new_pem = _serving_one_ca_of_two(serve, tmp_path)
    files = CertificateFiles(cert, key)  # what the front reads its context from
    for new_cert, new_key, why in out_of_date(new_ca, tmp_path).values():
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        assert routes(srv.target, tls_ca=old_pem) and not routes(srv.target, tls_ca=new_pem)
        assert srv.server.tls is not None and srv.server.tls.reloads == 0
        with pytest.raises(ValueError) as err:
            files.ssl_context()
        assert str(err.value) == f"{cert}: {why}"
    new_cert, new_key = write_server_cert(new_ca, tmp_path, "rotated")
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    assert routes(srv.target, tls_ca=new_pem) and srv.server.tls.reloads == 1


def test_tls_files_that_do_not_load_are_named_at_startup(tmp_path: Path) -> None:
    """A key that is not the certificate's, or a certificate that is not one: a config error naming the
    files (they were reported as a port that cannot be bound, or a bundle that cannot be loaded)."""
    import asyncio

    from cryptography.hazmat.primitives import serialization

    from lmroute.service.fake_scorer import FakeScorer
    from lmroute.service.server import RouterServer

    ca = trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    _, other_key = write_server_cert(ca, tmp_path, "other")
    encrypted = tmp_path / "encrypted.key"  # the server never asks for a passphrase (OpenSSL would prompt)
    encrypted.write_bytes(
        serialization.load_pem_private_key(key.read_bytes(), password=None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    for c, k, says in (
        (cert, other_key, f"tls: {cert}, {other_key}: the private key does not match the certificate"),
        (garbage, key, f"tls: {garbage}: not a PEM certificate"),
        (cert, encrypted, f"tls: {encrypted}: an encrypted private key, which needs a passphrase"),
    ):
        cfg = ServiceConfig(bundle_path=Path("unused"), port=0, tls_cert_file=str(c), tls_key_file=str(k))
        server = RouterServer(cfg, lambda _cfg: FakeScorer())
        with pytest.raises(ConfigError) as err:
            asyncio.run(server.start())
        assert str(err.value).startswith(says), err.value


def test_tls_with_tokens(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    srv = serve(tls_cert_file=str(cert), tls_key_file=str(key), auth_tokens_file=str(tokens))
    ca_pem = write_ca(ca, tmp_path, "ours")
    wait_serving(srv, tls_ca=ca_pem, token=TOKEN)
    assert not routes(srv.target, tls_ca=ca_pem)  # TLS without a token


def test_tls_settings_are_checked_at_startup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert_file, tls_key_file: give both or neither"):
        ServiceConfig(bundle_path=Path("b"), tls_cert_file=str(tmp_path))
    with pytest.raises(ConfigError, match="tls_client_ca_file: needs tls_cert_file"):
        ServiceConfig(bundle_path=Path("b"), tls_client_ca_file="x")
    with pytest.raises(ConfigError, match=r"tls_cert_file: no file at /nonexistent/cert.pem"):
        ServiceConfig(bundle_path=Path("b"), tls_cert_file="/nonexistent/cert.pem", tls_key_file="/nonexistent/k")


def test_a_certificate_not_valid_yet_waits_while_the_one_in_use_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation to a certificate whose notBefore has not come (within CLOCK_SKEW_S: taken at once before,
    and every client with this clock refused it until then) keeps the one in use, valid, and is read again
    RELOAD_RETRY_S later (shortened here), changed or not, until it is valid: on the gRPC port's files and
    for the front's context alike. At startup such a certificate is taken (no other to serve)."""
    from lmroute.service import tls

    monkeypatch.setattr(tls, "RELOAD_RETRY_S", 0.3)
    ca = trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "old")
    files = CertificateFiles(cert, key)
    assert files.serving_until is not None and files.serving_until > datetime.now(UTC)
    valid_from = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    new_cert, new_key = write_server_cert(ca, tmp_path, "new", not_before=valid_from)
    cert.write_bytes(new_cert.read_bytes())
    key.write_bytes(new_key.read_bytes())
    assert files.fetch() is None and files.reloads == 0  # not valid yet: the old certificate stays
    with pytest.raises(ValueError) as err:
        files.ssl_context(files.serving_until)  # the front's reload, while its certificate is valid
    assert f"not valid before {valid_from:%Y-%m-%dT%H:%M:%SZ} (notBefore); the one in use (valid until" in str(
        err.value
    )
    assert files.fetch() is None  # not read again before RELOAD_RETRY_S
    deadline = time.monotonic() + 15
    while files.fetch() is None:
        assert time.monotonic() < deadline, "the certificate was not taken once valid"
        time.sleep(0.1)
    assert files.reloads == 1 and datetime.now(UTC) >= valid_from
    at_startup = write_server_cert(ca, tmp_path, "early", not_before=datetime.now(UTC) + timedelta(seconds=60))
    assert CertificateFiles(*at_startup).serving_until is not None  # within the skew, nothing else to serve


def _expired_ca(root: Path) -> Path:
    """A self-signed CA certificate whose validity ended yesterday."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired test CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = root / "expired-ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_client_ca_file_of_expired_certificates_is_refused_and_the_one_in_use_kept(tmp_path: Path) -> None:
    """Every certificate of the client CA file expired: refused at startup, and at a rotation the CA in use
    is kept (taken, it was logged as a reload and every mTLS client was refused)."""
    ca = trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    client_ca = write_ca(trustme.CA(), tmp_path, "clients")
    expired = _expired_ca(tmp_path)
    with pytest.raises(ValueError, match=rf"{expired}: every CA certificate in it has expired \(the last at "):
        CertificateFiles(cert, key, expired)
    files = CertificateFiles(cert, key, client_ca)
    client_ca.write_bytes(expired.read_bytes())
    assert files.fetch() is None and files.reloads == 0
    with pytest.raises(ValueError, match="every CA certificate in it has expired"):
        files.ssl_context()  # the front's context likewise
    both = expired.read_bytes() + write_ca(trustme.CA(), tmp_path, "valid").read_bytes()
    client_ca.write_bytes(both)  # one expired among valid ones: taken (the valid ones verify clients)
    deadline = time.monotonic() + 10
    while files.fetch() is None:
        assert time.monotonic() < deadline, "a client CA file holding a valid certificate was not taken"
        time.sleep(0.1)
    assert files.reloads == 1


def test_a_certificate_whose_key_type_cannot_be_read_is_named(tmp_path: Path) -> None:
    """A certificate whose public key algorithm the cryptography package does not know: a ValueError naming
    the file (it escaped as UnsupportedAlgorithm: a traceback at startup, and at a rotation gRPC swallowed
    it with no log line and no retry)."""
    import ssl

    ca = trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    good = CertificateFiles(cert, key)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    ec_key, unknown = bytes.fromhex("06072A8648CE3D0201"), bytes.fromhex("06072A8648CE3D0209")
    if ec_key not in der:
        pytest.skip("trustme issued a certificate without an EC key")
    cert.write_text(ssl.DER_cert_to_PEM_cert(der.replace(ec_key, unknown)))
    with pytest.raises(ValueError, match=rf"{cert}: the certificate's public key cannot be read"):
        CertificateFiles(cert, key)
    assert good.fetch() is None and good.reloads == 0  # at a rotation: refused, logged, read again later


def test_the_https_front_with_a_client_ca_resumes_no_session(tmp_path: Path) -> None:
    """With a client CA (mTLS) the front's context speaks TLS 1.3 and issues no session to resume: a client
    whose CA was then removed resumed its old session and was let in (its listener's context, which no
    reload reaches, kept the session)."""
    import socket
    import ssl
    import threading

    from lmroute.service.tls import FrontTLS

    ca, clients = trustme.CA(), trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    front = FrontTLS(CertificateFiles(cert, key, write_ca(clients, tmp_path, "clients")))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with front.context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")
                    tls_conn.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    clients.issue_cert("client@example.test").configure_cert(client)

    def connect(ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> tuple[bool, ssl.SSLSession | None]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls_conn:
                assert tls_conn.recv(2) == b"ok"  # after the server's tickets, if it sent any
                return tls_conn.session_reused, tls_conn.session

    try:
        _, session = connect(client)
        reused, _ = connect(client, session)
        assert not reused
        tls12 = ssl.create_default_context()
        ca.configure_trust(tls12)
        clients.issue_cert("client@example.test").configure_cert(tls12)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, OSError)):
            connect(tls12)
    finally:
        listener.close()


def test_a_client_whose_ca_is_removed_keeps_no_connection_past_its_age(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """mTLS: a client CA rotated out refuses that client's new handshakes, and a connection it holds ends at
    --grpc-max-connection-age-s (1 s here): it kept calling on it, let in, for as long as it stayed busy."""
    ca, clients, others = trustme.CA(), trustme.CA(), trustme.CA()
    cert, key = write_server_cert(ca, tmp_path, "server")
    client_ca = write_ca(clients, tmp_path, "clients")
    srv = serve(
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        tls_client_ca_file=str(client_ca),
        grpc_max_connection_age_s=1.0,
    )
    chain, client_key = write_client_cert(clients, tmp_path, "app")
    ca_pem = write_ca(ca, tmp_path, "server")
    wait_serving(srv, tls_ca=ca_pem, tls_cert=chain, tls_key=client_key)
    with RouterClient(srv.target, timeout_s=5, tls_ca=ca_pem, tls_cert=chain, tls_key=client_key) as held:
        held.route("hello", router="mf", threshold=0.5)
        client_ca.write_bytes(write_ca(others, tmp_path, "others").read_bytes())  # the client's CA removed
        deadline = time.monotonic() + 15
        while True:  # busy on its connection: never idle long enough for --grpc-idle-timeout-s
            try:
                held.route("hello", router="mf", threshold=0.5)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                break
            assert time.monotonic() < deadline, "the removed client kept its connection"
            time.sleep(0.05)
