"""RemoteEncoder: prompt embeddings from an OpenAI-compatible `/v1/embeddings` endpoint (encoder kind
"remote").

RouteLLM's mf and sw_ranking routers embed prompts with OpenAI's `text-embedding-3-small`; a bundle
imported from them (`lmroute-export import-routellm`) embeds the same way, through this encoder. An
endpoint that speaks the same API (the OpenAI-compatible embeddings route of a local TEI or vLLM server,
say) is called the same way; the tests use a fake one on 127.0.0.1. The bundle's
file `encoder/remote.json` names the embedding model and its dimension (`{"model":
"text-embedding-3-small", "dim": 1536}`): that is bundle content, part of the bundle's version. Where
the endpoint is and its key are deployment settings (`RemoteSettings`: `lmroute-serve
--embeddings-base-url`, `--embeddings-api-key-env`, ...; default OPENAI_BASE_URL or OpenAI's API, and
OPENAI_API_KEY).

Requests: `POST {base_url}/embeddings` with `{"model", "input": [texts]}`, at most `batch_size` texts
each; at most `max_concurrency` requests in flight from this process; each waits at most `timeout_s`.
A request that fails to connect, times out, or is answered 429 or 5xx is retried `retries` times with
exponential backoff (0.25 s, doubling, +-50 % jitter); any other 4xx is not retried. A failure after
that raises `RemoteEncoderError`, whose message names the model and what happened (an HTTP status, a
timeout), never the key or the texts; the service turns it into each prompt's own UNAVAILABLE error.
Each embedding is L2-normalised (OpenAI's already are: it changes nothing there).

Tokens: the endpoint tokenises. `tokenize` keeps the texts (`TokenBatch.texts`) and estimates each
prompt's tokens as ceil(UTF-8 bytes / 4) (what batching and the reported `n_tokens` use); nothing is cut
and nothing is flagged truncated (a text over the endpoint's own limit is that prompt's error).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lmroute.bundle.encoder import EncoderModelError, FileReader, TokenBatch, read_file, read_text
from lmroute.bundle.truncation import HEAD

__all__ = ["REMOTE_SPEC_NAME", "RemoteEncoder", "RemoteEncoderError", "RemoteSettings", "write_remote_spec"]

REMOTE_SPEC_NAME = "remote.json"
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_BACKOFF_S = 0.25
_ERROR_SNIPPET = 200


class RemoteEncoderError(RuntimeError):
    """The embeddings endpoint failed (after retries); the message names the model and the failure."""


@dataclass(frozen=True)
class RemoteSettings:
    """Where the endpoint is and how it is called (deployment settings, not bundle content)."""

    base_url: str = ""  # "" = OPENAI_BASE_URL, else https://api.openai.com/v1
    api_key: str = ""  # "" = OPENAI_API_KEY when set
    timeout_s: float = 10.0
    retries: int = 2
    max_concurrency: int = 8
    batch_size: int = 256

    def resolved(self, environ: Mapping[str, str] | None = None) -> RemoteSettings:
        """These settings with the defaults filled in from the environment."""
        env = os.environ if environ is None else environ
        base = self.base_url or env.get("OPENAI_BASE_URL", "") or "https://api.openai.com/v1"
        key = self.api_key or env.get("OPENAI_API_KEY", "")
        return RemoteSettings(base, key, self.timeout_s, self.retries, self.max_concurrency, self.batch_size)


def write_remote_spec(directory: Path, model: str, dim: int) -> Path:
    """Write `remote.json` (the embedding model and its dimension) into `directory`; its path."""
    path = directory / REMOTE_SPEC_NAME
    path.write_text(json.dumps({"model": model, "dim": int(dim)}, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _read_spec(path: Path, read: FileReader) -> tuple[str, int]:
    try:
        doc = json.loads(read_text(path, read))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EncoderModelError(f"{path}: cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or set(doc) != {"model", "dim"}:
        raise EncoderModelError(f"{path}: expected exactly the keys model and dim")
    model, dim = doc["model"], doc["dim"]
    if not isinstance(model, str) or not model or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise EncoderModelError(f"{path}: model must be a name and dim a positive integer")
    return model, dim


class RemoteEncoder:
    """Embeds through the endpoint (module docstring). Thread-safe."""

    chunk_by_length = False  # the endpoint's cost does not depend on how we group the texts
    pad_id = 0
    truncation = HEAD
    tokenizer = None

    def __init__(
        self,
        spec_path: str | os.PathLike[str],
        *,
        max_tokens: int,
        settings: RemoteSettings | None = None,
        read: FileReader = read_file,
    ):
        self.model_path = Path(spec_path)
        self.model, self.dim = _read_spec(self.model_path, read)
        self.max_tokens = max_tokens
        self.settings = (settings or RemoteSettings()).resolved()
        self.url = self.settings.base_url.rstrip("/") + "/embeddings"
        self._slots = threading.BoundedSemaphore(self.settings.max_concurrency)
        self.requests = 0  # HTTP requests sent, retries included

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """The texts as a batch: estimated token counts (module docstring), the texts kept as they are."""
        n = len(texts)
        counts = np.array([max(1, math.ceil(len(t.encode("utf-8")) / 4)) for t in texts], dtype=np.int64)
        ones = np.ones((n, 1), dtype=np.int64)
        return TokenBatch(ones, ones.copy(), np.zeros((n, 1), np.int64), counts, np.zeros(n, bool), tuple(texts))

    def embed(self, tokens: TokenBatch) -> npt.NDArray[np.float32]:
        """float32 [n, dim], L2-normalised; RemoteEncoderError when the endpoint fails."""
        if len(tokens) and len(tokens.texts) != len(tokens):
            raise ValueError("RemoteEncoder.embed: the batch carries no texts (tokenize it with this encoder)")
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        size = self.settings.batch_size
        for start in range(0, len(tokens), size):
            part = list(tokens.texts[start : start + size])
            out[start : start + len(part)] = self._call(part)
        norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
        if len(out) and (norms == 0).any():
            raise RemoteEncoderError(f"embeddings endpoint (model {self.model}): returned a zero vector")
        unit: npt.NDArray[np.float32] = (out / norms).astype(np.float32)
        return unit

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> npt.NDArray[np.float32]:
        return self.embed(self.tokenize(texts))

    # -- HTTP ----------------------------------------------------------------------------------------

    def _call(self, texts: list[str]) -> npt.NDArray[np.float32]:
        body = json.dumps({"model": self.model, "input": texts}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        what = f"embeddings endpoint (model {self.model})"
        last = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(_BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with self._slots:
                    self.requests += 1
                    with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                        doc = json.loads(resp.read())
                return self._vectors(doc, len(texts), what)
            except urllib.error.HTTPError as exc:
                snippet = exc.read().decode("utf-8", "replace")[:_ERROR_SNIPPET]
                last = f"HTTP {exc.code}: {snippet}"
                if exc.code not in _RETRY_STATUSES:
                    break
            except TimeoutError:
                last = f"no answer in {self.settings.timeout_s:g} s"
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"cannot be reached ({type(reason).__name__})"
            except (ValueError, KeyError) as exc:  # an answer that is not the embeddings API's
                raise RemoteEncoderError(f"{what}: unexpected answer ({exc})") from None
        tries = self.settings.retries + 1
        raise RemoteEncoderError(f"{what}: {last} (after {attempt + 1} of {tries} attempts)")

    def _vectors(self, doc: Any, n: int, what: str) -> npt.NDArray[np.float32]:
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list) or len(data) != n:
            raise ValueError(f"expected {n} embeddings in data")
        rows: list[Any] = [None] * n
        for j, item in enumerate(data):
            index = item.get("index", j) if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < n or rows[index] is not None:
                raise ValueError(f"data[{j}].index is missing, repeated or out of range")
            rows[index] = item.get("embedding")
        arr = np.asarray(rows, dtype=np.float32)
        if arr.shape != (n, self.dim):
            raise ValueError(f"embeddings of shape {arr.shape}, expected ({n}, {self.dim})")
        if not np.isfinite(arr).all():
            raise ValueError("a non-finite embedding")
        return arr
