"""TLS for the gRPC port and the OpenAI front: server certificate and key, optional client CA (mTLS),
reloaded without a restart.

`server_credentials` builds gRPC dynamic SSL server credentials. gRPC asks the certificate fetcher before
every new connection's handshake; the fetcher looks at the files (a stat each, no read:
lmroute.service.file_watch) and, when they changed, reads them again and hands gRPC the new
configuration, so a rotated certificate (a Secret remounted, files replaced) is used from the next
connection on. Files that cannot be read or do not parse as PEM, a key that is not the certificate's, and
a certificate outside its validity period (expired, or valid only from more than `CLOCK_SKEW_S` on) keep
the current certificate in use; the failure is logged and the files are read again `RELOAD_RETRY_S` later,
changed or not (a certificate not yet valid is taken once it is). A new certificate whose notBefore has
not come yet waits so too while the one in use is valid (taken at once, every client would refuse it
until then). A client CA file whose certificates have all expired is refused likewise (taken, it would
lock every mTLS client out). At startup they are a config error. Connections already open keep their
session.

`FrontTLS` does the same for the OpenAI front's HTTPS listener: its context's SNI callback, which the
server runs in every handshake (with or without a name sent), hands the connection the context of the
current files, looked at no more than once a second.

With a client CA the server requires a client certificate signed by it (mTLS). The front then speaks TLS
1.3 only and issues no session tickets, so no connection resumes a session made before a CA was rotated
out: a client whose CA was removed resumed its old session and was let in (TLS 1.2 resumes by session id
from the listener's cache, which no reload reaches). gRPC makes new handshakers at each reload.
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
    try:
        theirs = leaf.public_key().public_bytes(*spki)
    except UnsupportedAlgorithm as exc:  # a key type this build of cryptography cannot read
        raise ValueError(f"{cert_path}: the certificate's public key cannot be read ({exc})") from None
    if theirs != private.public_key().public_bytes(*spki):
        raise ValueError(f"{cert_path}, {key_path}: the private key does not match the certificate")


def _check_dates(chain: bytes, cert_path: Path, serving_until: datetime | None = None) -> datetime:
    """The chain's first certificate's notAfter; ValueError naming the file and the date when it has
    expired, or is not valid yet: its notBefore more than `CLOCK_SKEW_S` ahead, or ahead at all while the
    certificate in use is valid (`serving_until`: its notAfter; None at startup)."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(chain)
    except ValueError as exc:
        raise ValueError(f"{cert_path}: not a PEM certificate ({exc})") from None
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        raise ValueError(f"{cert_path}: the certificate expired at {_utc(leaf.not_valid_after_utc)} (notAfter)")
    starts = leaf.not_valid_before_utc
    if starts > now + timedelta(seconds=CLOCK_SKEW_S):
        raise ValueError(f"{cert_path}: the certificate is not valid before {_utc(starts)} (notBefore)")
    if starts > now and serving_until is not None and serving_until > now:
        raise ValueError(
            f"{cert_path}: the certificate is not valid before {_utc(starts)} (notBefore); the one in use (valid "
            f"until {_utc(serving_until)}) serves until then"
        )
    return leaf.not_valid_after_utc


def _utc(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_certificates(pem: bytes, path: Path | None) -> None:
    """ValueError naming the client CA file when it does not parse, or every certificate in it has expired
    (no client certificate could verify); a warning for those expired among valid ones."""
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM CA certificate ({exc})") from None
    now = datetime.now(UTC)
    expired = [c for c in certificates if c.not_valid_after_utc < now]
    if len(expired) == len(certificates):
        latest = max(c.not_valid_after_utc for c in certificates)
        raise ValueError(f"{path}: every CA certificate in it has expired (the last at {_utc(latest)}, notAfter)")
    if expired:
        _log.warning("tls_client_ca_expired", file=str(path), expired=len(expired), certificates=len(certificates))


class CertificateFiles:
    """The server's certificate chain, key and (optional) client CA files, and their last loaded state."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = Path(cert), Path(key), (Path(client_ca) if client_ca else None)
        self._lock = threading.Lock()
        self._watch = FileStamps(self.paths)
        self.serving_until: datetime | None = None  # the notAfter of the certificate gRPC serves
        self.config = self._load()  # raises at startup: a server never starts without valid files
        self.reloads = 0
        self.reload_failures = 0  # changes not taken (the certificate in use kept)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain = _read_pem(self.cert, "certificate")
        key = _read_pem(self.key, "private key")
        ca = _read_pem(self.client_ca, "CA certificate") if self.client_ca else None
        _check_pair(chain, key, self.cert, self.key)  # the bytes gRPC gets: it would find out at a handshake
        until = _check_dates(chain, self.cert, self.serving_until)  # gRPC serves an expired one: clients refuse it
        if ca is not None:
            _check_certificates(ca, self.client_ca)
        config = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)
        self.serving_until = until
        return config

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: a new configuration when the files changed, else None (no change)."""
        with self._lock:
            if not self._watch.changed():
                return None
            try:
                self.config = self._load()
            except Exception as exc:  # the message names the files; gRPC would swallow an error raised here
                self.reload_failures += 1
                _log.error("tls_reload_failed", error=str(exc)[:300], retry_s=RELOAD_RETRY_S)
                self._watch.look_again(RELOAD_RETRY_S)  # not yet valid (a clock behind the issuer's): retried
                return None
            self.reloads += 1
            _log.info("tls_reloaded", cert=str(self.cert), reloads=self.reloads)
            return self.config

    def ssl_context(self, serving_until: datetime | None = None) -> tuple[ssl.SSLContext, datetime]:
        """A server context of the files as they are now (client certificates required with a client CA,
        then TLS 1.3 without session tickets: the module docstring) and its certificate's notAfter;
        ValueError naming the files when the key does not match the certificate, one does not parse, or the
        certificate is outside its validity period (`serving_until`: `_check_dates`)."""
        until = _check_dates(self.cert.read_bytes(), self.cert, serving_until)
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
            _check_certificates(_read_pem(self.client_ca, "CA certificate"), self.client_ca)
            try:
                ctx.load_verify_locations(cafile=str(self.client_ca))
            except ssl.SSLError as exc:
                raise ValueError(f"{self.client_ca}: not a CA certificate ({exc.reason or exc})") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # no session-id resumption (TLS 1.2's server cache)
            ctx.options |= ssl.OP_NO_TICKET
            ctx.num_tickets = 0  # no TLS 1.3 tickets: nothing to resume once a client's CA is removed
        return ctx, until


class FrontTLS:
    """The OpenAI front's TLS over `files`: `context` is what its listener holds; each handshake is handed
    the context of the files as last read (module docstring)."""

    def __init__(self, files: CertificateFiles, recheck_s: float = RECHECK_S) -> None:
        self._files = files
        self._watch = FileStamps(files.paths, recheck_s)
        # the listener's, and the one handed out until the files change
        self.context, self._serving_until = files.ssl_context()
        self.context.sni_callback = self._hand_over
        self._current = self.context
        self.reloads = 0
        self.reload_failures = 0

    @property
    def serving_until(self) -> datetime:
        """The notAfter of the certificate handed to new connections."""
        return self._serving_until

    def _hand_over(self, conn: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        conn.context = self.current()

    def current(self) -> ssl.SSLContext:
        """The context of the files as last read (read again when they changed: at most once a second):
        what a new connection's handshake gets, and what a kept-alive one made before is checked against
        (lmroute.service.openai_front closes it after its answer, so a client whose CA was removed keeps
        no connection)."""
        if self._watch.changed():
            try:
                self._current, self._serving_until = self._files.ssl_context(self._serving_until)
            except Exception as exc:  # the message names the files
                self.reload_failures += 1
                _log.error("front_tls_reload_failed", error=str(exc)[:300], retry_s=RELOAD_RETRY_S)
                self._watch.look_again(RELOAD_RETRY_S)
            else:
                self.reloads += 1
                _log.info("front_tls_reloaded", cert=str(self._files.cert), reloads=self.reloads)
        return self._current


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Dynamic SSL credentials over `files` (client certificates required when it has a client CA)."""
    return grpc.dynamic_ssl_server_credentials(
        files.config, files.fetch, require_client_authentication=files.client_ca is not None
    )
