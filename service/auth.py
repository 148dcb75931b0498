"""Token authentication: which callers may call, and the tenant a token speaks for.

Tokens come from a file (`--auth-tokens-file`) and/or an environment variable the operator names
(`--auth-tokens-env`, e.g. LMROUTE_TOKENS), never from the command line. Each entry is a token,
optionally bound to a tenant:

    file:  one entry per line, `<token>` or `<token> <tenant>`; blank lines and `#` comments skipped
    env:   entries separated by commas, `<token>` or `<token>:<tenant>`

A caller sends `authorization: Bearer <token>` in its metadata. A call is let in when the token equals
one of the configured ones; the comparison runs over every configured token, each with
`hmac.compare_digest`, so its time does not depend on which token (or which prefix) matched. A token bound
to a tenant decides the call's tenant (the tenant metadata key is then ignored), so a caller cannot speak
for another tenant. The health service is always open. Tokens are never logged: errors about a bad entry
name the file and line, not the token.
"""

from __future__ import annotations

import contextvars
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lmroute.outcomes.records import TENANT_RE

__all__ = ["AUTH_TENANT", "OPEN_METHOD_PREFIXES", "Authenticator", "load_tokens"]

AUTH_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("lmroute_auth_tenant", default=None)
"""The tenant the current call's token is bound to (None: not bound, or no authentication)."""

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")  # URL-safe and base64 characters, at least 16


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
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: cannot be read ({type(exc).__name__})") from None
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


@dataclass(frozen=True)
class Authenticator:
    """Checks a call's `authorization` metadata against the configured tokens."""

    tokens: Mapping[bytes, str | None]

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("authentication: no tokens configured")

    def check(self, metadata: object) -> tuple[bool, str | None]:
        """(admitted, the token's tenant) for a call's invocation metadata."""
        presented = b""
        for key, value in metadata or ():  # type: ignore[attr-defined]
            if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
                presented = value[7:].strip().encode("utf-8", "replace")
                break
        admitted, tenant = False, None
        for token, bound in self.tokens.items():  # every token compared: time independent of the match
            if hmac.compare_digest(presented, token):
                admitted, tenant = True, bound
        return admitted, tenant
