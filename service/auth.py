"""Token authentication: which callers may call, and the tenant a token speaks for.

Tokens come from a file (`--auth-tokens-file`) and/or an environment variable the operator names
(`--auth-tokens-env`, e.g. LMROUTE_TOKENS), never from the command line. Each entry is a token,
optionally bound to a tenant:

    file:  one entry per line, `<token>` or `<token> <tenant>`; blank lines and `#` comments skipped
    env:   entries separated by commas, `<token>` or `<token>:<tenant>`

A caller sends `authorization: Bearer <token>` in its metadata. A call is let in when the token equals
one of the configured ones: the SHA-256 digest of what it sent is looked up among the tokens' digests (a
dictionary), so the time a check takes depends on the caller's own input and its digest, never on which
token (or which prefix of one) is near it; learning a token from it would need a preimage of SHA-256.
(Comparing with every token in turn, as before, made every call, with a wrong token too, cost time in
proportion to the number of tokens.) The file holds at most `MAX_TOKENS_FILE_BYTES`, as it is read again
on the call that finds it changed. A token bound
to a tenant decides the call's tenant (the tenant metadata key is then ignored), so a caller cannot speak
for another tenant. The health service is always open. Tokens are never logged: errors about a bad entry
name the file and line, not the token.

The tokens file is re-read when it changes, without a restart: a call looks at it (one stat:
lmroute.service.file_watch) at most once every `RECHECK_S` (1 s), and a changed file's tokens replace
the file's old ones from that call on, so a token removed from the file is refused within about a
second and a token added is let in. The variable's tokens stay as they were at startup. A changed file
that cannot be read, has a bad entry or would leave no token keeps the tokens in use; the failure is
logged once per change (file and line, never a token) and counted (`reload_failures`).
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from lmroute.outcomes.records import TENANT_RE
from lmroute.service.file_watch import RECHECK_S, FileStamps

__all__ = ["AUTH_TENANT", "OPEN_METHOD_PREFIXES", "Authenticator", "load_tokens"]

_log = structlog.get_logger("lmroute.auth")

AUTH_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("lmroute_auth_tenant", default=None)
"""The tenant the current call's token is bound to (None: not bound, or no authentication)."""

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")  # URL-safe and base64 characters, at least 16
_UNKNOWN: Any = object()  # `check`'s "no such token" (a token's tenant may be None)
MAX_TOKENS_FILE_BYTES = 1024 * 1024
"""The largest tokens file taken (about 30,000 tokens of 32 characters): it is read on a serving thread."""


def _entry(token: str, tenant: str | None, where: str) -> tuple[bytes, str | None]:
    if not _TOKEN_RE.match(token):
        raise ValueError(f"{where}: a token must be 16-512 of [A-Za-z0-9._~+/=-]")
    if tenant is not None and not TENANT_RE.match(tenant):
        raise ValueError(f"{where}: tenant must be 1-64 of [A-Za-z0-9._-]")
    return token.encode("ascii"), tenant


def load_tokens(file: str = "", env: str = "", environ: Mapping[str, str] | None = None) -> dict[bytes, str | None]:
    """token -> tenant (None: unbound) from the file and the named variable; ValueError naming the file
    and line (or the variable and entry) of a bad entry, never the token."""
    out: dict[bytes, str | None] = {}
    if file:
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_TOKENS_FILE_BYTES + 1)
            lines = data.decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: cannot be read ({type(exc).__name__})") from None
        if len(data) > MAX_TOKENS_FILE_BYTES:
            raise ValueError(f"{file}: more than {MAX_TOKENS_FILE_BYTES} bytes (keep the tokens file under it)")
        for n, line in enumerate(lines, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) > 2:
                raise ValueError(f"{file}:{n}: expected `<token>` or `<token> <tenant>`")
            key, bound = _entry(parts[0], parts[1] if len(parts) == 2 else None, f"{file}:{n}")
            out[key] = bound
    if env:
        value = (os.environ if environ is None else environ).get(env)
        if value is None:
            raise ValueError(f"environment variable {env}: not set")
        for j, raw in enumerate(v.strip() for v in value.split(",")):
            if not raw:
                continue
            text, sep, tenant = raw.partition(":")
            key, bound = _entry(text, tenant if sep else None, f"{env} entry {j}")
            out[key] = bound
    return out


class Authenticator:
    """Checks a call's `authorization` metadata against the configured tokens (the file's re-read when it
    changes: module docstring). ValueError naming the file and line, or the variable, of a bad entry, or
    when there is no token at all."""

    def __init__(
        self,
        file: str = "",
        env: str = "",
        *,
        environ: Mapping[str, str] | None = None,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.file = file
        self._fixed = load_tokens(env=env, environ=environ)  # the variable's: read once
        self._watch = FileStamps([Path(file)], recheck_s) if file else None
        self.tokens: Mapping[bytes, str | None] = {}
        self._by_digest: dict[bytes, str | None] = {}  # sha256 of a token -> its tenant
        self._take(self._merged(load_tokens(file)))
        self.reloads = 0  # times the file's tokens were replaced
        self.reload_failures = 0  # changed files whose tokens were not taken

    def _merged(self, from_file: Mapping[bytes, str | None]) -> dict[bytes, str | None]:
        tokens = {**from_file, **self._fixed}
        if not tokens:
            raise ValueError(f"authentication: no tokens configured{f' ({self.file} has none)' if self.file else ''}")
        return tokens

    def _take(self, tokens: Mapping[bytes, str | None]) -> None:
        """Serve `tokens` from now on, with their digests (computed once here, not at every call)."""
        self.tokens = tokens
        self._by_digest = {hashlib.sha256(token).digest(): bound for token, bound in tokens.items()}

    def _reload(self) -> None:
        """The changed file's tokens in place of the old ones, or the old ones kept (module docstring)."""
        try:
            tokens = self._merged(load_tokens(self.file))
        except ValueError as exc:
            self.reload_failures += 1
            _log.error("auth_tokens_reload_failed", error=f"{exc}; the tokens in use are kept")
            return
        self._take(tokens)
        self.reloads += 1
        _log.info("auth_tokens_reloaded", file=self.file, tokens=len(tokens), reloads=self.reloads)

    def bound_tenants(self) -> frozenset[str]:
        """The tenants the tokens in use are bound to."""
        return frozenset(t for t in self.tokens.values() if t)

    def check(self, metadata: object) -> tuple[bool, str | None]:
        """(admitted, the token's tenant) for a call's invocation metadata."""
        if self._watch is not None and self._watch.changed():
            self._reload()
        presented = b""
        for key, value in metadata or ():  # type: ignore[attr-defined]
            if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
                presented = value[7:].strip().encode("utf-8", "replace")
                break
        digest = hashlib.sha256(presented).digest()  # looked up by digest: the module docstring says why
        tenant = self._by_digest.get(digest, _UNKNOWN)  # one read: a reload may replace the dictionary
        if tenant is _UNKNOWN:
            return False, None
        return True, tenant
