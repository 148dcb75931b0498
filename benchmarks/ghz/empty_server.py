"""An empty RouterService: the same grpc.aio server setup as lmroute-serve (options, reflection, one
event loop, the request-context interceptor) but Route and Score answer at once with fixed values, no
scheduler and no scorer. What ghz measures against it is the transport's own cost.

    .venv/bin/python benchmarks/ghz/empty_server.py [--port 0] [--no-interceptor] [--sync [--workers 4]]
        [--bundle DIR]

`--no-interceptor` leaves the request-context interceptor out (its cost is the difference). `--sync`
serves the same handlers from a synchronous `grpc.server` with a pool of `--workers` threads instead of
grpc.aio (no interceptor: the service's is written for grpc.aio), to compare the two transports.
`--bundle DIR` makes the handlers do the scoring work itself and nothing else: each prompt through the
bundle's tokenizer, encoder and router (the request's routers; Route: its strong share's threshold from
the calibration table), inline, no scheduler, admission, decision ids or store: the most a service
path on this transport could make of that bundle.

Prints `empty-server: serving on HOST:PORT` on stderr when ready; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection

from lmroute.service.config import ServiceConfig
from lmroute.service.interceptors import RequestContextInterceptor
from lmroute.service.logs import configure_logging
from lmroute.service.server import SERVICE_NAME, grpc_options, reflection_pool
from lmroute.v1 import router_pb2, router_pb2_grpc


class Scoring:
    """The scoring work of one bundle alone (`--bundle`): None = constant answers."""

    bundle: Any = None

    @classmethod
    def scores(cls, texts: list[str], router: str) -> list[float]:
        if cls.bundle is None:
            return [0.25] * len(texts)
        from lmroute.bundle.routers import PromptBatch

        enc = cls.bundle.encoder
        tokens = enc.tokenize(texts)
        batch = PromptBatch(texts, tokens, enc.embed(tokens))
        return [float(v) for v in cls.bundle.routers[router].score(batch)]

    @classmethod
    def threshold(cls, request: router_pb2.RouteRequest) -> float:
        if cls.bundle is None:
            return 0.5
        return float(cls.bundle.threshold_for_share(request.router, request.strong_share))


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
    """Answers Route and Score with constant scores, reading only what it must to shape the reply."""

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        return route_reply(request)

    async def Score(
        self, request: router_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ScoreResponse:
        return score_reply(request)


class SyncEmptyRouter(router_pb2_grpc.RouterServiceServicer):
    """The same answers for a synchronous grpc.server (each call on a pool thread)."""

    def Route(self, request: router_pb2.RouteRequest, context: grpc.ServicerContext) -> router_pb2.RouteResponse:
        return route_reply(request)

    def Score(self, request: router_pb2.ScoreRequest, context: grpc.ServicerContext) -> router_pb2.ScoreResponse:
        return score_reply(request)


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
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"empty-server: serving on {host}:{bound}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(0)
    return 0


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
    ap.add_argument("--bundle", type=Path, default=None, help="do this bundle's scoring work in the handlers")
    args = ap.parse_args()
    configure_logging("warning")  # as the service runs in the benchmark: no line per call
    if args.bundle is not None:
        from lmroute.bundle.loader import load_bundle

        Scoring.bundle = load_bundle(args.bundle)
    if args.sync:
        return serve_sync(args.host, args.port, args.workers)
    return asyncio.run(serve(args.host, args.port, interceptor=not args.no_interceptor))


if __name__ == "__main__":
    raise SystemExit(main())
