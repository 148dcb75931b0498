"""FakeUpstream: an OpenAI-compatible chat completions server on 127.0.0.1, for tests and benchmarks of the
HTTP front (lmroute.service.openai_front). It stands in for an upstream LLM: real HTTP, its own event
loop in a daemon thread, deterministic answers.

    with FakeUpstream("strong") as up:      # up.base_url = http://127.0.0.1:<port>/v1
        ...                                 # up.requests: every request body it received, in order;
                                            # up.keys: their Authorization headers

It answers `POST /v1/chat/completions` with the content `<name>: <last user message>`, as one JSON
completion or, with `"stream": true`, as server-sent events of one word each, ending in `data: [DONE]`
(its `usage` counts words as tokens: the messages' for the prompt, the answer's for the completion; a
stream carries it in a last chunk when `stream_options.include_usage` asks, as OpenAI's does);
and `POST /v1/embeddings` with one unit vector of `embed_dim` per input, drawn from a generator seeded by
a hash of the model name and the text (`fake_embedding`): the same text always gets the same vector.
Its faults are settings: `status` (answer every request with this HTTP status and an OpenAI-shaped error),
`delay_s` (wait before answering; `waiting`, `most_waiting` and `callers_gone` count the chat requests waiting
now, the most at once, and those whose caller closed the connection meanwhile), `break_after` (a stream drops
the connection after that many events), `fail_first` (answer the first that many embeddings requests 503),
`redirect_to` (answer chat completions 307 with this Location), `event_delay_s` (wait this long before each
streamed event) `pad_events` (each streamed event carries an `x_pad` field of that many bytes, which clients
ignore), `pad_answer` (a whole answer carries one of that many bytes), `retry_after` (a Retry-After header
sent with an error status), `error_page` (an error status answered with this HTML page instead of the
OpenAI-shaped error), `plain_stream` (a stream ends after its last word's event, with no finish_reason and no
`data: [DONE]`), `split_events` (each streamed event written in two pieces, split mid-line; with
`break_after`, the connection drops after the first piece of the event that follows) and `json_for_stream` (a
request for a stream answered with a whole JSON completion).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any

import numpy as np
from aiohttp import web

__all__ = ["FakeUpstream", "fake_embedding"]


class FakeUpstream:
    """A fake upstream LLM endpoint; `start()` / `stop()` or a `with` block."""

    def __init__(
        self,
        name: str,
        *,
        status: int = 200,
        delay_s: float = 0.0,
        break_after: int | None = None,
        record: bool = True,
        embed_dim: int = 1536,
        fail_first: int = 0,
        redirect_to: str = "",
        event_delay_s: float = 0.0,
        pad_events: int = 0,
        pad_answer: int = 0,
        retry_after: str = "",
        error_page: str = "",
        plain_stream: bool = False,
        split_events: bool = False,
        json_for_stream: bool = False,
    ) -> None:
        self.name = name
        self.record = record  # keep each request body in `requests` (off for long benchmark runs)
        self.served = 0
        self.embed_dim = embed_dim
        self.embedded = 0  # texts embedded
        self.fail_first = fail_first  # answer this many requests 503 first (then as configured)
        self.failed = 0
        self.status = status
        self.delay_s = delay_s
        self.break_after = break_after
        self.redirect_to = redirect_to
        self.event_delay_s = event_delay_s
        self.pad_events = pad_events
        self.pad_answer = pad_answer
        self.retry_after = retry_after
        self.error_page = error_page
        self.plain_stream = plain_stream
        self.split_events = split_events
        self.json_for_stream = json_for_stream
        self.requests: list[dict[str, Any]] = []
        self.keys: list[str] = []  # each recorded request's Authorization header ("" when none)
        self.waiting = 0  # chat requests in their `delay_s` now
        self.most_waiting = 0  # the most at once
        self.callers_gone = 0  # chat requests whose caller closed the connection during their `delay_s`
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fake-upstream-{name}", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, body: dict[str, Any]) -> str:
        """The content this upstream answers `body` with."""
        users = [m.get("content") for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users and isinstance(users[-1], str) else ""
        return f"{self.name}: {last}"

    def start(self) -> FakeUpstream:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _close(self) -> None:
        """Stop serving and cancel the handlers still waiting (a `delay_s` answer nobody waits for)."""
        assert self._runner is not None
        runner, self._runner = self._runner, None
        await runner.cleanup()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return int(self._runner.addresses[0][1])

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failed < self.fail_first:
            self.failed += 1
            return web.json_response({"error": {"message": "try again", "type": "fake"}}, status=503)
        if self.status != 200:
            error = {"error": {"message": f"{self.name} refuses with {self.status}", "type": "fake", "code": None}}
            return web.json_response(error, status=self.status)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return web.json_response({"error": {"message": "input: strings expected", "type": "fake"}}, status=400)
        model = str(body.get("model", ""))
        self.embedded += len(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(model, t, self.embed_dim).tolist()}
            for i, t in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.served += 1
        if self.record:
            self.requests.append(body)
            self.keys.append(request.headers.get("Authorization", ""))
        if self.delay_s:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.waiting -= 1
            if request.transport is None or request.transport.is_closing():  # the caller went away meanwhile
                self.callers_gone += 1
        if self.redirect_to:
            return web.json_response({"moved": True}, status=307, headers={"Location": self.redirect_to})
        if self.status != 200:
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            if self.error_page:
                return web.Response(text=self.error_page, status=self.status, content_type="text/html", headers=headers)
            error = {"error": {"message": f"{self.name} refuses with {self.status}", "type": "fake", "code": None}}
            return web.json_response(error, status=self.status, headers=headers)
        model = str(body.get("model", ""))
        content = self.answer(body)
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        asked = sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))
        usage = {"prompt_tokens": asked, "completion_tokens": len(content.split()), "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream") is not True or self.json_for_stream:
            whole: dict[str, Any] = {
                "id": f"chatcmpl-{self.name}-{self.served}",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
            if self.pad_answer:
                whole["x_pad"] = "." * self.pad_answer
            return web.json_response(whole)
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        words = content.split(" ")
        for j, word in enumerate(words):
            delta: dict[str, Any] = {"content": word if j == 0 else " " + word}
            if j == 0:
                delta["role"] = "assistant"
            if self.break_after is not None and j >= self.break_after:
                if self.split_events:  # the drop comes in the middle of an event
                    event = _event(self.name, model, delta, None, self.pad_events)
                    await out.write(event[: len(event) // 2])
                    await asyncio.sleep(0.01)
                assert request.transport is not None
                request.transport.close()  # the upstream goes away mid-answer
                return out
            if self.event_delay_s:
                await asyncio.sleep(self.event_delay_s)
            event = _event(self.name, model, delta, None, self.pad_events)
            if self.split_events:
                await out.write(event[: len(event) // 2])
                await asyncio.sleep(0.01)  # the halves reach the front as chunks of their own
                event = event[len(event) // 2 :]
            await out.write(event)
        if not self.plain_stream:
            await out.write(_event(self.name, model, {}, "stop"))
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:  # as OpenAI: no choices
                last = {"id": f"chatcmpl-{self.name}", "object": "chat.completion.chunk", "model": model}
                await out.write(b"data: " + json.dumps({**last, "choices": [], "usage": usage}).encode() + b"\n\n")
            await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out


def fake_embedding(model: str, text: str, dim: int) -> np.ndarray:
    """The fake endpoint's embedding of `text`: float64 [dim], unit length, a pure function of its inputs."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\x00{text}".encode()).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(dim)
    unit: np.ndarray = v / np.linalg.norm(v)
    return unit


def main(argv: list[str] | None = None) -> int:
    """`python -m lmroute.service.fake_upstream [NAME ...]`: serve one fake upstream per name (default
    strong weak), print `fake-upstream NAME on BASE_URL` for each, run until SIGTERM or SIGINT."""
    import argparse
    import signal
    import sys

    ap = argparse.ArgumentParser(description="fake OpenAI-compatible upstream LLMs on 127.0.0.1")
    ap.add_argument("names", nargs="*", default=["strong", "weak"])
    ap.add_argument("--delay-s", type=float, default=0.0, help="wait this long before each answer")
    args = ap.parse_args(argv)
    ups = [FakeUpstream(name, delay_s=args.delay_s, record=False).start() for name in args.names]
    for up in ups:
        print(f"fake-upstream {up.name} on {up.base_url}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    for up in ups:
        up.stop()
    print("fake-upstream: stopped", file=sys.stderr)
    return 0


def _event(name: str, model: str, delta: dict[str, Any], finish: str | None, pad: int = 0) -> bytes:
    chunk: dict[str, Any] = {
        "id": f"chatcmpl-{name}",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if pad:
        chunk["x_pad"] = "." * pad
    return b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n"


if __name__ == "__main__":
    raise SystemExit(main())
