"""TLS for the gRPC port: server certificate and key, optional client CA (mTLS), reloaded without a restart.

`server_credentials` builds gRPC dynamic SSL server credentials. gRPC asks the certificate fetcher before
every new connection's handshake; the fetcher looks at the files' modification times and sizes (a stat
each, no read) and, when they changed, reads them again and hands gRPC the new configuration, so a
rotated certificate (a Secret remounted, files replaced) is used from the next connection on. Files that
cannot be read or do not parse as PEM keep the current certificate in use, and the failure is logged
once per change. Connections already open keep their session.

With a client CA the server requires a client certificate signed by it (mTLS).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

__all__ = ["CertificateFiles", "server_credentials"]

_log = structlog.get_logger("lmroute.tls")


def _read_pem(path: Path, what: str) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN " not in data:
        raise ValueError(f"{path}: not a PEM {what}")
    return data


@dataclass(frozen=True)
class _Stamp:
    """What the fetcher compares: each file's (mtime_ns, size)."""

    parts: tuple[tuple[int, int], ...]


class CertificateFiles:
    """The server's certificate chain, key and (optional) client CA files, and their last loaded state."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = Path(cert), Path(key), (Path(client_ca) if client_ca else None)
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        self.config = self._load()  # raises at startup: a server never starts without valid files
        self.reloads = 0

    def _paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())

    def _current_stamp(self) -> _Stamp:
        parts = []
        for p in self._paths():
            st = os.stat(p)
            parts.append((st.st_mtime_ns, st.st_size))
        return _Stamp(tuple(parts))

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain = _read_pem(self.cert, "certificate")
        key = _read_pem(self.key, "private key")
        ca = _read_pem(self.client_ca, "CA certificate") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: a new configuration when the files changed, else None (no change)."""
        with self._lock:
            try:
                stamp = self._current_stamp()
            except OSError as exc:
                _log.warning("tls_files_unreadable", error=type(exc).__name__)
                return None
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                self.config = self._load()
            except (OSError, ValueError) as exc:
                _log.error("tls_reload_failed", error=str(exc)[:200])
                return None
            self.reloads += 1
            _log.info("tls_reloaded", cert=str(self.cert), reloads=self.reloads)
            return self.config


def server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Dynamic SSL credentials over `files` (client certificates required when it has a client CA)."""
    return grpc.dynamic_ssl_server_credentials(
        files.config, files.fetch, require_client_authentication=files.client_ca is not None
    )
