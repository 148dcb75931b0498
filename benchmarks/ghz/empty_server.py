"""An empty RouterService: the same grpc.aio server setup as `lmroute-serve --transport aio` (options,
reflection, one event loop, the request-context interceptor) but Route and Score answer at once with
fixed values, no scheduler and no scorer. What ghz measures against it is the transport's own cost.

    .venv/bin/python benchmarks/ghz/empty_server.py [--port 0] [--no-interceptor] [--sync [--workers 4]
        [--handoff]] [--bundle DIR [--embed-only]] [--spin-us N] [--refuse]

`--no-interceptor` leaves the request-context interceptor out (its cost is the difference). `--sync`
serves the same handlers from a synchronous `grpc.server` with a pool of `--workers` threads instead of
grpc.aio, the handlers answering on the pool threads themselves (no interceptor, no hand-off to an
event loop): the floor of the service's default transport (`--transport threads`, lmroute.service.transports),
which runs each call's coroutine on its event loop. `--sync --handoff` is that transport itself
(lmroute.service.transports.ThreadTransport, as `lmroute-serve --transport threads` builds it): the pool
thread hands each call's coroutine to an event loop on the main thread and waits for its answer, with the
request-context interceptor's logic around it unless `--no-interceptor` (what the hand-off and the
interceptor each cost on this transport).
`--bundle DIR` makes the handlers do the scoring work itself and nothing else: each prompt through the
bundle's tokenizer, encoder and router (the request's routers; Route: its strong share's threshold from
the calibration table; a static encoder embeds the text in one compiled call, as the service does for a
router that reads no tokens), inline, no scheduler, admission, decision ids or store: the most a service
path on this transport could make of that bundle. With `--embed-only` the handlers do only the least
work any answer of a static-encoder bundle needs: the compiled tokenizer's ids of each prompt, cut by
the truncation rule, and the token table's mean of them, in that one call (answers stay constant).
`--spin-us N` makes each call of a handler spend N microseconds of its thread's CPU time in a loop and
nothing else (benchmarks/ghz/floor.py: what a handler's own work costs the server per call under load).
`--refuse` makes Route and Score end every call with RESOURCE_EXHAUSTED at once (a bare status: no
error details, no log line), the least a refusal can cost on this transport (benchmarks/ghz/refusal_cost.py).

Prints `empty-server: serving on HOST:PORT` on stderr when ready; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_reflection.v1alpha import reflection

from lmroute.service.config import ServiceConfig
from lmroute.service.interceptors import RequestContextInterceptor
from lmroute.service.logs import configure_logging
from lmroute.service.server import SERVICE_NAME, grpc_options, reflection_pool
from lmroute.v1 import router_pb2, router_pb2_grpc


class Scoring:
    """The scoring work of one bundle alone (`--bundle`): None = constant answers; `embed_only`: the
    tokenizer's ids and the token table's mean only (a static-encoder bundle); `spin_s`: that much thread
    CPU time per call instead."""

    bundle: Any = None
    embed_only = False
    spin_s = 0.0

    @classmethod
    def scores(cls, texts: list[str], router: str) -> list[float]:
        if cls.spin_s > 0:
            spin(cls.spin_s)
        if cls.bundle is None:
            return [0.25] * len(texts)
        if cls.embed_only:
            embed_only(cls.bundle.encoder, texts)
            return [0.25] * len(texts)
        kinds, TokenBatch, PromptBatch = scoring_modules()
        enc = cls.bundle.encoder
        reads_tokens = kinds.get(cls.bundle.manifest.routers[router].kind).reads_tokens
        straight = enc.embed_texts(texts) if embeds_only(enc) and not reads_tokens else None
        if straight is not None:  # the service's path for a static encoder and a router that reads no tokens
            batch = PromptBatch(texts, TokenBatch.empty(), straight.embeddings)
        else:
            tokens = enc.tokenize(texts)
            batch = PromptBatch(texts, tokens, enc.embed(tokens))
        return [float(v) for v in cls.bundle.routers[router].score(batch)]

    @classmethod
    def threshold(cls, request: router_pb2.RouteRequest) -> float:
        if cls.bundle is None or cls.embed_only:
            return 0.5
        return float(cls.bundle.threshold_for_share(request.router, request.strong_share))


@functools.cache
def scoring_modules() -> tuple[Any, Any, Any]:
    """What `Scoring.scores` uses, imported on its first call (the empty modes do not load them)."""
    from lmroute.bundle import kinds
    from lmroute.bundle.encoder import TokenBatch
    from lmroute.bundle.routers import PromptBatch

    return kinds, TokenBatch, PromptBatch


def spin(seconds: float) -> None:
    """Spend `seconds` of this thread's CPU time (time spent preempted does not count)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def embeds_only(encoder: Any) -> bool:
    """Whether `embed_only` can run on `encoder`: a static encoder whose tokenizer has the compiled path."""
    return hasattr(encoder, "embed_texts") and encoder.tokenizer.fast_path


def embed_only(encoder: Any, texts: list[str]) -> np.ndarray:
    """The token-table mean of each text's compiled-tokenizer ids, a text longer than the encoder's limit
    cut by its truncation rule first, in one compiled call (`StaticEncoder.embed_texts`, as the service
    embeds a one-prompt call): a static encoder's `tokenize` + `embed` without the padded batch between."""
    got = encoder.embed_texts(texts)
    if got is None:
        raise ValueError("a text the compiled tokenizer leaves to HF")
    out: np.ndarray = got.embeddings
    return out


def route_reply(request: router_pb2.RouteRequest) -> router_pb2.RouteResponse:
    [score] = Scoring.scores([request.prompt.text], request.router)
    threshold = Scoring.threshold(request)
    strong = score >= threshold
    return router_pb2.RouteResponse(
        chosen_model="strong" if strong else "weak",
        tier=router_pb2.TIER_STRONG if strong else router_pb2.TIER_WEAK,
        score=score,
        threshold=threshold,
        router=request.router,
        bundle_version="empty",
        n_tokens=1,
    )


def score_reply(request: router_pb2.ScoreRequest) -> router_pb2.ScoreResponse:
    routers = list(request.routers) or ["mf"]
    texts = [p.text for p in request.prompts]
    by_router = {r: Scoring.scores(texts, r) for r in routers}
    results = [
        router_pb2.PromptScores(
            index=i,
            status=router_pb2.ItemStatus(code=0),
            n_tokens=1,
            scores=[router_pb2.RouterScore(router=r, strong_win_probability=by_router[r][i]) for r in routers],
        )
        for i in range(len(request.prompts))
    ]
    return router_pb2.ScoreResponse(results=results, bundle_version="empty")


class EmptyRouter(router_pb2_grpc.RouterServiceServicer):
    """Answers Route and Score with constant scores, reading only what it must to shape the reply; with
    `refuse`, refuses every call instead."""

    refuse = False

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        if self.refuse:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
        return route_reply(request)

    async def Score(
        self, request: router_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ScoreResponse:
        if self.refuse:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
        return score_reply(request)


class SyncEmptyRouter(router_pb2_grpc.RouterServiceServicer):
    """The same answers for a synchronous grpc.server (each call on a pool thread)."""

    def Route(self, request: router_pb2.RouteRequest, context: grpc.ServicerContext) -> router_pb2.RouteResponse:
        return route_reply(request)

    def Score(self, request: router_pb2.ScoreRequest, context: grpc.ServicerContext) -> router_pb2.ScoreResponse:
        return score_reply(request)


async def serve_until_signalled(server: Any, where: str) -> int:
    """Start `server` (grpc.aio's or the thread transport), say where it serves, stop it on SIGTERM/SIGINT."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"empty-server: serving on {where}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(0)
    return 0


async def serve(host: str, port: int, *, interceptor: bool = True) -> int:
    cfg = ServiceConfig(bundle_path=Path("unused"), host=host, port=port)
    interceptors = [RequestContextInterceptor()] if interceptor else []
    server = grpc.aio.server(options=grpc_options(cfg), interceptors=interceptors)
    router_pb2_grpc.add_RouterServiceServicer_to_server(EmptyRouter(), server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME), server, pool=reflection_pool())
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        print(f"empty-server: could not bind {host}:{port}", file=sys.stderr)
        return 1
    return await serve_until_signalled(server, f"{host}:{bound}")


async def serve_handoff(host: str, port: int, workers: int, *, interceptor: bool = True) -> int:
    """The async handlers on the service's thread transport: each call's coroutine handed to this loop."""
    from lmroute.service.stream_cap import StreamSlots
    from lmroute.service.transports import ThreadTransport

    cfg = ServiceConfig(bundle_path=Path("unused"), host=host, port=port)
    slots = StreamSlots(cfg.max_streams)
    wrap = RequestContextInterceptor(streams=slots).wrap if interceptor else (lambda _method, handler: handler)
    server = ThreadTransport(grpc_options(cfg), workers, wrap, asyncio.get_running_loop(), slots)
    server.add_servicer(router_pb2_grpc.add_RouterServiceServicer_to_server, EmptyRouter())
    server.enable_reflection((SERVICE_NAME, reflection.SERVICE_NAME), reflection_pool())
    bound = server.add_port(f"{host}:{port}", None)
    if bound == 0:
        print(f"empty-server: could not bind {host}:{port}", file=sys.stderr)
        return 1
    return await serve_until_signalled(server, f"{host}:{bound} (sync, hand-off, {workers} threads)")


def serve_sync(host: str, port: int, workers: int) -> int:
    cfg = ServiceConfig(bundle_path=Path("unused"), host=host, port=port)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=grpc_options(cfg))
    router_pb2_grpc.add_RouterServiceServicer_to_server(SyncEmptyRouter(), server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME), server, pool=reflection_pool())
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        print(f"empty-server: could not bind {host}:{port}", file=sys.stderr)
        return 1
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"empty-server: serving on {host}:{bound} (sync, {workers} threads)", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(0)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="empty_server.py", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-interceptor", action="store_true", help="leave the request-context interceptor out")
    ap.add_argument("--sync", action="store_true", help="a synchronous grpc.server with a thread pool")
    ap.add_argument("--workers", type=int, default=4, help="--sync: threads in the pool")
    ap.add_argument("--handoff", action="store_true", help="--sync: each call's coroutine run on an event loop")
    ap.add_argument("--bundle", type=Path, default=None, help="do this bundle's scoring work in the handlers")
    ap.add_argument("--embed-only", action="store_true", help="--bundle: only the tokenizer's ids and the table mean")
    ap.add_argument("--spin-us", type=float, default=0.0, help="spend this much thread CPU time per call")
    ap.add_argument("--refuse", action="store_true", help="refuse every call with RESOURCE_EXHAUSTED at once")
    args = ap.parse_args()
    configure_logging("warning")  # as the service runs in the benchmark: no line per call
    if args.embed_only and args.bundle is None:
        ap.error("--embed-only needs --bundle")
    Scoring.spin_s = args.spin_us * 1e-6
    if args.bundle is not None:
        from lmroute.bundle.loader import load_bundle

        Scoring.bundle = load_bundle(args.bundle)
        Scoring.embed_only = args.embed_only
        if args.embed_only and not embeds_only(Scoring.bundle.encoder):
            ap.error("--embed-only needs a static-encoder bundle whose tokenizer has the compiled fast path")
    if args.refuse and (args.sync or args.bundle is not None or args.spin_us):
        ap.error("--refuse takes no --sync, --bundle or --spin-us")
    if args.handoff and not args.sync:
        ap.error("--handoff needs --sync")
    EmptyRouter.refuse = args.refuse
    if args.handoff:
        return asyncio.run(serve_handoff(args.host, args.port, args.workers, interceptor=not args.no_interceptor))
    if args.sync:
        return serve_sync(args.host, args.port, args.workers)
    return asyncio.run(serve(args.host, args.port, interceptor=not args.no_interceptor))


if __name__ == "__main__":
    raise SystemExit(main())
