"""lmroute-serve with a near-zero-cost scorer: the real RouterServer (config, interceptor, servicer,
admission, scheduler, threads) over `FakeScorer` (a hash per prompt and router, no encoder, nothing
recorded) instead of a bundle. What ghz measures against it is the service path's own cost per call.

    .venv/bin/python benchmarks/ghz/fake_server.py [any lmroute-serve flag or LMROUTE_* variable]

`--bundle` is not read (it defaults to a placeholder). `--fake-routers` names the routers the fake
serves (default mf,sw_ranking: what route.json and score.json ask for); `--fake-delay-s` makes each batch
take that long (a slow scorer, so that admission refuses most calls: what a refusal costs). Prints
`lmroute-serve: serving on HOST:PORT` on stderr when ready; stops on SIGTERM/SIGINT, like lmroute-serve.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from lmroute.service.config import ServiceConfig, config_from_cli
from lmroute.service.errors import ConfigError
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.main import serve


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--fake-routers", default="mf,sw_ranking")
    ap.add_argument("--fake-delay-s", type=float, default=0.0)
    own, rest = ap.parse_known_args(argv)
    routers = tuple(r for r in own.fake_routers.split(",") if r)
    try:
        cfg = config_from_cli(rest, default_bundle=Path("unused"))
    except ConfigError as exc:
        print(f"fake-server: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level)

    def factory(_: ServiceConfig) -> FakeScorer:
        return FakeScorer(routers, version="fake-1", record=False, delay_s=own.fake_delay_s)

    return asyncio.run(serve(cfg, factory))


if __name__ == "__main__":
    raise SystemExit(main())
