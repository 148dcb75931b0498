"""TLS for the gRPC port and the OpenAI front: server certificate and key, optional client CA (mTLS),
reloaded without a restart.

`server_credentials` builds gRPC dynamic SSL server credentials. gRPC asks the certificate fetcher before
every new connection's handshake; the fetcher looks at the files (a stat each, no read:
lmroute.service.file_watch) and, when they changed, reads them again and hands gRPC the new
configuration, so a rotated certificate (a Secret remounted, files replaced) is used from the next
connection on. Files that cannot be read or do not parse as PEM, a key that is not the certificate's, and
a certificate outside its validity period (expired, or valid only from more than `CLOCK_SKEW_S` on) keep
the current certificate in use; the failure is logged and the files are read again `RELOAD_RETRY_S` later,
changed or not (a certificate not yet valid is taken once it is). At startup they are a config error.
Connections already open keep their session.

`FrontTLS` does the same for the OpenAI front's HTTPS listener: its context's SNI callback, which the
server runs in every handshake (with or without a name sent), hands the connection the context of the
current files, looked at no more than once a second.

With a client CA the server requires a client certificate signed by it (mTLS).
"""

from __future__ import annotations

import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import structlog

from lmroute.service.file_watch import RECHECK_S, FileStamps

__all__ = ["CLOCK_SKEW_S", "RELOAD_RETRY_S", "CertificateFiles", "FrontTLS", "server_credentials"]

#: How far in the future a certificate's notBefore may be and the certificate still load: a certificate
#: issued just now by a host whose clock runs a little ahead.
CLOCK_SKEW_S = 300.0

#: Seconds after a refused certificate reload before the files are read again, changed or not: a
#: certificate not yet valid (this clock behind the issuer's by more than CLOCK_SKEW_S) is taken once it
#: is, instead of the old one serving until it expires.
RELOAD_RETRY_S = 10.0

_log = structlog.get_logger("lmroute.tls")


def _read_pem(path: Path, what: str) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path}: not a PEM {what}")
    return data


_ENCRYPTED = "an encrypted private key, which needs a passphrase: give the key unencrypted"


def _no_password() -> bytes:
    """The passphrase OpenSSL asks for an encrypted key: none (it would prompt on a terminal)."""
    raise ValueError(_ENCRYPTED)


def _check_pair(chain: bytes, key: bytes, cert_path: Path, key_path: Path) -> None:
    """ValueError naming the file when the chain's first certificate or the key does not parse, the key
    is encrypted, or it is not the certificate's key."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        leaf = x509.load_pem_x509_certificate(chain)
    except ValueError as exc:
        raise ValueError(f"{cert_path}: not a PEM certificate ({exc})") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise ValueError(f"{key_path}: {_ENCRYPTED}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{key_path}: not a PEM private key ({exc})") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise ValueError(f"{cert_path}, {key_path}: the private key does not match the certificate")


def _check_dates(chain: bytes, cert_path: Path) -> None:
    """ValueError naming the file and the date when the chain's first certificate has expired (notAfter
    passed) or is not valid yet (notBefore more than `CLOCK_SKEW_S` ahead)."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(chain)
    except ValueError as exc:
        raise ValueError(f"{cert_path}: not a PEM certificate ({exc})") from None
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        raise ValueError(f"{cert_path}: the certificate expired at {_utc(leaf.not_valid_after_utc)} (notAfter)")
    if leaf.not_valid_before_utc > now + timedelta(seconds=CLOCK_SKEW_S):
        raise ValueError(
            f"{cert_path}: the certificate is not valid before {_utc(leaf.not_valid_before_utc)} (notBefore)"
        )


def _utc(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_certificates(pem: bytes, path: Path | None) -> None:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM CA certificate ({exc})") from None


class CertificateFiles:
    """The server's certificate chain, key and (optional) client CA files, and their last loaded state."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = Path(cert), Path(key), (Path(client_ca) if client_ca else None)
        self._lock = threading.Lock()
        self._watch = FileStamps(self.paths)
        self.config = self._load()  # raises at startup: a server never starts without valid files
        self.reloads = 0

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain = _read_pem(self.cert, "certificate")
        key = _read_pem(self.key, "private key")
        ca = _read_pem(self.client_ca, "CA certificate") if self.client_ca else None
        _check_pair(chain, key, self.cert, self.key)  # the bytes gRPC gets: it would find out at a handshake
        _check_dates(chain, self.cert)  # gRPC serves an expired certificate: each client refuses it
        if ca is not None:
            _check_certificates(ca, self.client_ca)
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: a new configuration when the files changed, else None (no change)."""
        with self._lock:
            if not self._watch.changed():
                return None
            try:
                self.config = self._load()
            except (OSError, ValueError) as exc:  # the message names the files
                _log.error("tls_reload_failed", error=str(exc)[:300], retry_s=RELOAD_RETRY_S)
                self._watch.look_again(RELOAD_RETRY_S)  # not yet valid (a clock behind the issuer's): retried
                return None
            self.reloads += 1
            _log.info("tls_reloaded", cert=str(self.cert), reloads=self.reloads)
            return self.config

    def ssl_context(self) -> ssl.SSLContext:
        """A server context of the files as they are now (client certificates required with a client CA);
        ValueError naming the files when the key does not match the certificate, one does not parse, or the
        certificate is outside its validity period."""
        _check_dates(self.cert.read_bytes(), self.cert)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cert, self.key, password=_no_password)
        except ValueError as exc:  # the key is encrypted
            raise ValueError(f"{self.key}: {exc}") from None
        except ssl.SSLError as exc:
            why = (
                "the private key does not match the certificate"
                if exc.reason == "KEY_VALUES_MISMATCH"
                else f"not a certificate chain and its private key ({exc.reason or exc})"
            )
            raise ValueError(f"{self.cert}, {self.key}: {why}") from None
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.client_ca))
            except ssl.SSLError as exc:
                raise ValueError(f"{self.client_ca}: not a CA certificate ({exc.reason or exc})") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


class FrontTLS:
    """The OpenAI front's TLS over `files`: `context` is what its listener holds; each handshake is handed
    the context of the files as last read (module docstring)."""

    def __init__(self, files: CertificateFiles, recheck_s: float = RECHECK_S) -> None:
        self._files = files
        self._watch = FileStamps(files.paths, recheck_s)
        self.context = files.ssl_context()  # the listener's, and the one handed out until the files change
        self.context.sni_callback = self._hand_over
        self._current = self.context
        self.reloads = 0

    def _hand_over(self, conn: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._watch.changed():
            try:
                self._current = self._files.ssl_context()
            except (OSError, ValueError) as exc:  # the message names the files
                _log.error("front_tls_reload_failed", error=str(exc)[:300], retry_s=RELOAD_RETRY_S)
                self._watch.look_again(RELOAD_RETRY_S)
            else:
                self.reloads += 1
                _log.info("front_tls_reloaded", cert=str(self._files.cert), reloads=self.reloads)
        conn.context = self._current


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Dynamic SSL credentials over `files` (client certificates required when it has a client CA)."""
    return grpc.dynamic_ssl_server_credentials(
        files.config, files.fetch, require_client_authentication=files.client_ca is not None
    )
