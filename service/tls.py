"""TLS for the gRPC port and the OpenAI front: server certificate and key, optional client CA (mTLS),
reloaded without a restart.

`server_credentials` builds gRPC dynamic SSL server credentials. gRPC asks the certificate fetcher before
every new connection's handshake; the fetcher looks at the files (a stat each, no read:
lmroute.service.file_watch) and, when they changed, reads them again and hands gRPC the new
configuration, so a rotated certificate (a Secret remounted, files replaced) is used from the next
connection on. Files that cannot be read or do not parse as PEM keep the current certificate in use,
and the failure is logged once per change. Connections already open keep their session.

`FrontTLS` does the same for the OpenAI front's HTTPS listener: its context's SNI callback, which the
server runs in every handshake (with or without a name sent), hands the connection the context of the
current files, looked at no more than once a second.

With a client CA the server requires a client certificate signed by it (mTLS).
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import Any

import grpc
import structlog

from lmroute.service.file_watch import RECHECK_S, FileStamps

__all__ = ["CertificateFiles", "FrontTLS", "server_credentials"]

_log = structlog.get_logger("lmroute.tls")


def _read_pem(path: Path, what: str) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path}: not a PEM {what}")
    return data


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
        self.ssl_context()  # the key matches the certificate and each parses: gRPC would find out at a handshake
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: a new configuration when the files changed, else None (no change)."""
        with self._lock:
            if not self._watch.changed():
                return None
            try:
                self.config = self._load()
            except (OSError, ValueError) as exc:  # the message names the files
                _log.error("tls_reload_failed", error=str(exc)[:300])
                return None
            self.reloads += 1
            _log.info("tls_reloaded", cert=str(self.cert), reloads=self.reloads)
            return self.config

    def ssl_context(self) -> ssl.SSLContext:
        """A server context of the files as they are now (client certificates required with a client CA);
        ValueError naming the files when the key does not match the certificate or one does not parse."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cert, self.key)
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
                _log.error("front_tls_reload_failed", error=str(exc)[:300])
            else:
                self.reloads += 1
                _log.info("front_tls_reloaded", cert=str(self._files.cert), reloads=self.reloads)
        conn.context = self._current


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Dynamic SSL credentials over `files` (client certificates required when it has a client CA)."""
    return grpc.dynamic_ssl_server_credentials(
        files.config, files.fetch, require_client_authentication=files.client_ca is not None
    )
