"""The upstream LLM endpoints the OpenAI-compatible front forwards chat completions to.

The upstreams file (`--upstreams-file`, JSON) names the OpenAI-compatible endpoint of each side of the
routed pair (docs/OPENAI_FRONT.md):

    {
      "strong": {"model": "gpt-4o", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
      "weak": {"model": "llama-3.1-8b", "base_url": "http://127.0.0.1:8000/v1", "timeout_s": 60}
    }

Each side: `model` (the name sent upstream), `base_url` (http or https, ending before
`/chat/completions`), optionally `api_key_env` (the variable holding its key: keys never sit in the
file) or `api_key_file` (a file holding it, e.g. a mounted Secret: read again when it changes, so a
rotated key is used without a restart; lmroute.service.upstream_keys), `timeout_s` (most seconds to wait
for the upstream's next bytes, default 120), `connect_timeout_s` (default 5) and `max_concurrency`
(requests in flight to it at once, default 64; more wait for a slot, within `timeout_s`; the front
bounds a whole exchange by `--upstream-max-s`), and `fallback` (default false): true sends a request
this side's upstream fails before its answer starts (unreachable, no slot or no answer within
`timeout_s`, a 5xx or a redirect) to the other side's upstream instead (lmroute.service.openai_front);
after `fallback_after` (3) failures in a row the side's requests go straight to the other side for
`fallback_for_s` (30), then one tries the upstream again (lmroute.service.circuit_breaker).
`usage_in_streams` (default false): true asks the upstream for the usage of every streamed answer
(`stream_options.include_usage`), so that its tokens are counted (lmroute_upstream_tokens_total) when the
caller did not ask for them; the chunk carrying them is then not passed on (set it only for an upstream
that accepts `stream_options`, as OpenAI and vLLM do). An unknown key is refused, so a typo does not
pass silently.

For routing among N models (docs/MODELS.md) the file may also name, under `models`, the endpoint of each
model a `quality` router predicts, by the router's name for it (RouterInfo.models), with the same keys
as a side (a model that falls back falls back to the runner-up: the model the rule would choose were it
not there):

    {"models": {"gpt-4-1106-preview": {"model": "gpt-4o", "base_url": "https://api.openai.com/v1"},
                "mixtral-8x7b-instruct-v0.1": {"model": "mixtral", "base_url": "http://127.0.0.1:8000/v1"}}}

The front's `models...` names route among them (lmroute.service.openai_front). The file names both
sides, at least two models, or both.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lmroute.service.upstream_keys import read_key_file

__all__ = ["MODELS", "OTHER_TIER", "TIERS", "Upstream", "load_upstreams", "models_of", "parse_upstreams", "redact"]

TIERS = ("strong", "weak")
MODELS = "models"  # the file's key naming the endpoints of N models
OTHER_TIER = {"strong": "weak", "weak": "strong"}
_KEYS = {
    "model",
    "base_url",
    "api_key_env",
    "api_key_file",
    "timeout_s",
    "connect_timeout_s",
    "max_concurrency",
    "fallback",
    "fallback_after",
    "fallback_for_s",
    "usage_in_streams",
}


@dataclass(frozen=True)
class Upstream:
    """One side's (or, among N models, one model's) endpoint, with its key read from the environment at load."""

    tier: str  # "strong" or "weak"; for routing among models, the router's name for the model
    model: str
    base_url: str
    api_key: str = ""  # as read at load; from `api_key_file`, re-read when it changes (lmroute.service.upstream_keys)
    api_key_file: str = ""
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    max_concurrency: int = 64
    fallback: bool = False  # a request it fails before answering goes to the other side's (a model's: the runner-up's)
    fallback_after: int = 3  # failures in a row after which its requests skip it ...
    fallback_for_s: float = 30.0  # ... for this long, then one tries it again
    usage_in_streams: bool = False  # every streamed request sent to it asks for the usage chunk

    @property
    def completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def describe(self) -> str:
        """How the server's log names it: side, model and URL (never the key)."""
        return f"upstream {self.tier} ({self.model!r} at {self.base_url})"

    @property
    def label(self) -> str:
        """How errors to callers name it: side and model only (the URL is the deployment's, not theirs)."""
        return f"upstream {self.tier} ({self.model!r})"


def redact(text: bytes, key: str) -> bytes:
    """`text` (an upstream's answer) with every occurrence of `key` (the API key it was sent) replaced by ***."""
    return text.replace(key.encode("utf-8"), b"***") if key else text


def _seconds(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value and math.isfinite(value)):
        raise ValueError(f"{where}.{key}: must be a positive number of seconds (got {value!r})")
    return float(value)


def _upstream(tier: str, entry: object, environ: Mapping[str, str], where: str | None = None) -> Upstream:
    where = where or tier
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be an object with model and base_url")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    model, base_url = entry.get("model"), entry.get("base_url")
    if not isinstance(model, str) or not model:
        raise ValueError(f"{where}.model: required, the model name the upstream serves")
    url = urlsplit(base_url if isinstance(base_url, str) else "")
    if not isinstance(base_url, str) or url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"{where}.base_url: must be an http(s) URL, e.g. https://api.openai.com/v1 (got {base_url!r})")
    key = ""
    env = entry.get("api_key_env", "")
    if not isinstance(env, str):
        raise ValueError(f"{where}.api_key_env: must be the name of an environment variable")
    if env:
        if env not in environ:
            raise ValueError(f"{where}.api_key_env: environment variable {env} is not set")
        key = environ[env]
    key_file = entry.get("api_key_file", "")
    if not isinstance(key_file, str):
        raise ValueError(f"{where}.api_key_file: must be the path of a file holding the key")
    if key_file:
        if env:
            raise ValueError(f"{where}: api_key_env or api_key_file, not both")
        try:
            key = read_key_file(Path(key_file))
        except ValueError as exc:
            raise ValueError(f"{where}.api_key_file: {exc}") from None
    conc = entry.get("max_concurrency", 64)
    if isinstance(conc, bool) or not isinstance(conc, int) or conc < 1:
        raise ValueError(f"{where}.max_concurrency: must be an integer >= 1 (got {conc!r})")
    fallback = entry.get("fallback", False)
    if not isinstance(fallback, bool):
        raise ValueError(f"{where}.fallback: must be true or false (got {fallback!r})")
    after = entry.get("fallback_after", 3)
    if isinstance(after, bool) or not isinstance(after, int) or after < 1:
        raise ValueError(f"{where}.fallback_after: must be an integer >= 1 (got {after!r})")
    usage = entry.get("usage_in_streams", False)
    if not isinstance(usage, bool):
        raise ValueError(f"{where}.usage_in_streams: must be true or false (got {usage!r})")
    if not fallback and ({"fallback_after", "fallback_for_s"} & set(entry)):
        raise ValueError(f"{where}.fallback_after, fallback_for_s: only with fallback: true")
    return Upstream(
        tier=tier,
        model=model,
        base_url=base_url,
        api_key=key,
        api_key_file=key_file,
        timeout_s=_seconds(entry, "timeout_s", 120.0, where),
        connect_timeout_s=_seconds(entry, "connect_timeout_s", 5.0, where),
        max_concurrency=conc,
        fallback=fallback,
        fallback_after=after,
        fallback_for_s=_seconds(entry, "fallback_for_s", 30.0, where),
        usage_in_streams=usage,
    )


def parse_upstreams(doc: object, environ: Mapping[str, str] | None = None) -> dict[str, Upstream]:
    """side ("strong", "weak") or model name -> Upstream from the parsed file; ValueError naming the key
    that is wrong."""
    env = os.environ if environ is None else environ
    if not isinstance(doc, dict):
        raise ValueError("expected an object with strong and weak, or models")
    unknown = sorted(set(doc) - {*TIERS, MODELS})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected strong and weak, or models)")
    sides = [t for t in TIERS if t in doc]
    if len(sides) == 1 or not (sides or MODELS in doc):
        missing = next(t for t in TIERS if t not in doc)
        raise ValueError(f"{missing}: required" + ("" if sides else " (or models)"))
    out = {tier: _upstream(tier, doc[tier], env) for tier in sides}
    if MODELS in doc:
        models = doc[MODELS]
        if not isinstance(models, dict) or len(models) < 2:
            raise ValueError(f"{MODELS}: must be an object naming at least two models, each with its endpoint")
        for name, entry in models.items():
            if name in TIERS or not name:
                raise ValueError(f"{MODELS}: {name!r} cannot name a model (strong and weak are the sides)")
            out[name] = _upstream(name, entry, env, where=f"{MODELS}.{name}")
    return out


def models_of(upstreams: Mapping[str, Upstream]) -> tuple[str, ...]:
    """The models named under `models` (the router's names for them), in the file's order."""
    return tuple(key for key in upstreams if key not in TIERS)


def load_upstreams(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Upstream]:
    """The upstreams file at `path`; ValueError naming the file (and line, for bad JSON) or the key."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    try:
        return parse_upstreams(doc, environ)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
