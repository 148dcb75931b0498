"""RouteLLM's own Python path (PyPI routellm 0.2.0, its router classes), timed on our prompt mix, with
our local ONNX encoder standing in for its OpenAI embedding call, so no network is involved.

    .venv/bin/python benchmarks/ghz/routellm_driver.py --bundle DIR [--routers mf sw_ranking]
        [--concurrency 1 64] [--seconds 8] [--battles 55000] [--json OUT]

- mf: RouteLLM's `MatrixFactorizationRouter.calculate_strong_win_rate` over its own `MFModel` class
  (torch), built with its default shape (dim 128, 64 models, projection on) but text_dim = our
  encoder's dim and RANDOM weights: its trained checkpoint lives on a model hub the benchmark machine
  cannot reach. The cost per call is the same as with trained weights; the scores are not.
- sw_ranking: RouteLLM's `SWRankingRouter.calculate_strong_win_rate`, which refits a weighted
  Bradley-Terry model (sklearn LogisticRegression) over every arena battle for every prompt. Its
  battles and their embeddings also come from the hub; here `--battles` synthetic battles between 10
  tiers with random unit embeddings stand in (55,000 = the size of the 55k Arena set, the first of
  RouteLLM's two default battle sets, so its real table is larger and this is a lower bound on its
  cost).
- The embedding call (`OPENAI_CLIENT.embeddings.create`, patched in the three RouteLLM modules that
  hold it) runs our bundle's encoder on the one prompt (tokenize + embed, batch 1), as RouteLLM embeds
  one prompt per call.

Concurrency c = c Python threads calling the router, one prompt per call (RouteLLM's API is per
prompt; its own server runs calls in a thread pool the same way). Requires scripts/install_routellm.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/ for routellm_env


class LocalEmbeddings:
    """Quacks like `openai.OpenAI()` for `client.embeddings.create(input=[text], model=...)`."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self.embeddings = self

    def create(self, input: Sequence[str], model: str = "") -> SimpleNamespace:
        emb = self._encoder.embed(self._encoder.tokenize(list(input)))
        return SimpleNamespace(data=[SimpleNamespace(embedding=row.tolist()) for row in emb])


def build_routers(bundle: Path, names: Sequence[str], n_battles: int) -> tuple[dict[str, Any], str]:
    import torch
    from routellm_env import import_routellm

    from lmroute.bundle.loader import load_bundle

    torch.set_num_threads(1)
    rl = import_routellm()
    import pandas as pd  # from RouteLLM's side directory (scripts/install_routellm.sh)

    encoder = load_bundle(bundle).encoder
    client = LocalEmbeddings(encoder)
    import routellm.routers.matrix_factorization.model as mf_mod
    import routellm.routers.routers as routers_mod

    for mod in (rl.utils, routers_mod, mf_mod):
        mod.OPENAI_CLIENT = client  # type: ignore[attr-defined]
    strong, weak = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
    out: dict[str, Any] = {}
    if "mf" in names:
        torch.manual_seed(0)
        r = routers_mod.MatrixFactorizationRouter.__new__(routers_mod.MatrixFactorizationRouter)
        r.model = mf_mod.MFModel(dim=128, num_models=64, text_dim=encoder.dim, num_classes=1, use_proj=True).eval()
        r.strong_model_id, r.weak_model_id = mf_mod.MODEL_IDS[strong], mf_mod.MODEL_IDS[weak]
        out["mf"] = r
    if "sw_ranking" in names:
        rng = np.random.default_rng(0)
        tiers = [f"tier{t}" for t in range(10)]
        a = rng.integers(0, 10, n_battles)
        b = (a + rng.integers(1, 10, n_battles)) % 10
        p_a = 1 / (1 + 10 ** ((a - b) / 4))  # lower tier number = stronger
        u = rng.random(n_battles)
        winner = np.where(u < 0.1, "tie", np.where(u < 0.1 + 0.9 * p_a, "model_a", "model_b"))
        r = routers_mod.SWRankingRouter.__new__(routers_mod.SWRankingRouter)
        r.strong_model, r.weak_model = strong, weak
        r.arena_df = pd.DataFrame(
            {"model_a": [tiers[i] for i in a], "model_b": [tiers[i] for i in b], "winner": winner}
        )
        emb = rng.standard_normal((n_battles, encoder.dim))
        r.arena_conv_embedding = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        r.embedding_model = "local-onnx"
        r.model2tier = {strong: "tier0", weak: "tier3"}
        out["sw_ranking"] = r
    return out, rl.version


def drive(fn: Callable[[str], float], prompts: Sequence[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` threads call fn(prompt) (prompts cycled) until `seconds` pass; rate and latency."""
    lat: list[float] = []
    lock = threading.Lock()
    counter = iter(range(10**9))
    t_end = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < t_end:
            with lock:
                i = next(counter)
            t0 = time.perf_counter()
            fn(prompts[i % len(prompts)])
            with lock:
                lat.append((time.perf_counter() - t0) * 1000.0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    arr = np.asarray(lat)
    return {
        "concurrency": concurrency,
        "n": len(lat),
        "per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="routellm_driver.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--routers", nargs="+", default=["mf", "sw_ranking"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--battles", type=int, default=55_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # sklearn on RouteLLM's penalty=None
    prompts = [p["text"] for p in json.loads((HERE / "prompts.json").read_text())]
    routers, version = build_routers(args.bundle, args.routers, args.battles)
    res: dict[str, Any] = {"routellm_version": version, "battles": args.battles, "runs": []}
    for name, router in routers.items():
        fn = router.calculate_strong_win_rate
        fn(prompts[0])  # warm
        for c in args.concurrency:
            row = drive(fn, prompts, c, args.seconds)
            res["runs"].append({"router": name, **row})
            print(json.dumps(res["runs"][-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
