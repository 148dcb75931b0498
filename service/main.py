"""`lmroute-serve`: parse config, check the device, serve until SIGTERM/SIGINT, drain, exit.

Exit codes: 0 after a clean drain; 2 for a bad setting, a router kind plug-in (`--plugin`) that cannot
be imported included (message on stderr, prefixed `lmroute-serve: config error:`); 1 when the compiled
scoring core or the bundle cannot be loaded (the message names the module or the file).

On SIGTERM or SIGINT the health turns NOT_SERVING; with `--shutdown-delay-s` the server goes on answering
calls that long (load balancers stop sending meanwhile), then drains: new calls are refused UNAVAILABLE
(DRAINING), calls in flight get `--grace-s`. A second SIGTERM or SIGINT meanwhile ends the process at once
(exit 1, logged `forced_exit`), as SIGKILL would: acknowledged outcomes are in the store, decisions not
yet written are lost. A signal while the bundle is still loading is acted on once it has loaded.

SIGHUP changes nothing: nothing is reloaded (the bundle and the settings are read once, at start), the
server keeps serving and logs one line, `sighup_ignored`. Without a handler SIGHUP would end the
process at once, without a drain.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from lmroute.outcomes.store import StoreError
from lmroute.service.config import ServiceConfig, build_arg_parser, config_from_args, mistyped_variables
from lmroute.service.cpus import limit_blas_threads
from lmroute.service.errors import ConfigError
from lmroute.service.logs import configure_logging, wait_written
from lmroute.service.server import (
    RouterServer,
    ScorerFactory,
    certificate_files,
    check_ports_free,
    check_target_tenants,
    import_plugins,
    load_bundle_scorer,
)

__all__ = ["main", "serve", "DEFAULT_BUNDLE"]

DEFAULT_BUNDLE = Path("artifacts/default")
_log = structlog.get_logger("lmroute.main")


def _force_exit() -> None:
    """A second SIGTERM or SIGINT: leave now, without the rest of the drain."""
    _log.error("forced_exit", detail="a second SIGTERM or SIGINT while stopping: exiting without the drain")
    wait_written(1.0)  # the lines a stalled log holds, this one last: bounded (the exit is forced)
    os._exit(1)


def _on_sighup() -> None:
    _log.warning(
        "sighup_ignored",
        detail="nothing is reloaded on SIGHUP; still serving (a new bundle: AdminService.ReloadBundle)",
    )


async def serve(cfg: ServiceConfig, scorer_factory: ScorerFactory = load_bundle_scorer) -> int:
    """Run one server until SIGTERM or SIGINT (SIGHUP: logged, ignored); return the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _on_sighup)
    server = RouterServer(cfg, scorer_factory)
    try:
        port = await server.start()
    except ConfigError as exc:
        print(f"lmroute-serve: config error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"lmroute-serve: cannot open the outcome store: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # BundleError and friends: the message names the file
        _log.error("load_failed", error=str(exc), kind=type(exc).__name__)
        print(f"lmroute-serve: cannot load bundle: {exc}", file=sys.stderr)
        return 1
    if server.http_port is not None:
        scheme = "https" if cfg.tls_cert_file else "http"
        print(
            f"lmroute-serve: OpenAI-compatible front on {scheme}://{cfg.address(server.http_port)}/v1", file=sys.stderr
        )
    print(f"lmroute-serve: serving on {cfg.address(port)}", file=sys.stderr, flush=True)
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _force_exit)
    if cfg.shutdown_delay_s > 0:
        await server.announce_shutdown()
        await asyncio.sleep(cfg.shutdown_delay_s)
    await server.stop()
    return 0


def _check_public_key(cfg: ServiceConfig) -> None:
    """`--check`: the bundle_public_key file read as the start reads it (`BundleScorer.load`): ConfigError
    about bundle_public_key, naming the file, when it holds no Ed25519 public key."""
    if not cfg.bundle_public_key:
        return
    from lmroute.bundle.signing import load_public_key

    try:
        load_public_key(Path(cfg.bundle_public_key))
    except ValueError as exc:
        raise ConfigError(f"bundle_public_key: {exc}") from None


def _check_targets(cfg: ServiceConfig) -> None:
    """`--check`: the start's check of the share and spend targets' tenants (`check_target_tenants`), over
    the settings' targets and the tenants of the tokens it would load."""
    if not cfg.tenants:
        return
    from lmroute.service.auth import Authenticator
    from lmroute.service.targets import parse_share_targets

    try:
        shares = parse_share_targets(cfg.share_targets)
        spends = parse_share_targets(cfg.spend_targets, high=math.inf)
        bound = Authenticator(cfg.auth_tokens_file, cfg.auth_tokens_env).bound_tenants() if cfg.auth_enabled else ()
    except ValueError as exc:  # said by the settings' own checks already; here for safety
        raise ConfigError(str(exc)) from None
    check_target_tenants(cfg, shares, spends, bound)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lmroute-serve` (see `lmroute-serve --help`)."""
    try:
        args = build_arg_parser(DEFAULT_BUNDLE).parse_args(argv)
        cfg = config_from_args(args, default_bundle=DEFAULT_BUNDLE)
        for name, meant in mistyped_variables():
            print(
                f"lmroute-serve: warning: {name} is no setting's variable and is ignored (did you mean {meant}?)",
                file=sys.stderr,
            )
        if args.check:
            check_ports_free(cfg)
            import_plugins(cfg.plugins)  # as the start does: a module that cannot be imported said now
            certificate_files(cfg)  # and TLS files that are no certificate and key of each other
            _check_public_key(cfg)  # a file that holds no Ed25519 public key
            _check_targets(cfg)  # a share or spend target of a tenant no call can name
            print("lmroute-serve: settings and ports checked", file=sys.stderr)
            return 0
    except ConfigError as exc:
        print(f"lmroute-serve: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log_level)
    limit_blas_threads(cfg.intra_op_threads)
    try:  # no fallback to the NumPy reference: a missing or stale core stops the server here
        importlib.import_module("lmroute.kernels.compiled")
    except ImportError as exc:
        print(f"lmroute-serve: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
