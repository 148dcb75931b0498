"""Write the committed prompt mix and the ghz request files made from it (run once; output committed).

    .venv/bin/python benchmarks/ghz/make_prompts.py

The mix: 48 short prompts (<= 300 characters, mostly under 64 tokens) and 16 long ones (>= 1,200
characters, at or near the encoder's 256-token cap), drawn with a fixed seed from the vendored
calibration prompts (real Chatbot Arena prompts, data/), interleaved 3 short : 1 long. Writes
prompts.json (the mix), route_data.json (one RouteRequest per prompt: router mf, strong_share 0.5; ghz
sends them round-robin) and score_data.json (16 ScoreRequests of 4 prompts each (3 short + 1 long),
routers mf and sw_ranking).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
N_SHORT, N_LONG, SEED = 48, 16, 20261128
SHORT_MAX_CHARS, LONG_MIN_CHARS = 300, 1200


def prompt_mix() -> list[dict[str, str]]:
    """The fixed mix, 3 short : 1 long, as [{"kind": "short"|"long", "text": ...}]."""
    from lmroute.export.data import load_calibration_prompts

    pool = load_calibration_prompts(REPO / "data")
    rng = np.random.default_rng(SEED)
    short = [p for p in pool if 0 < len(p.strip()) <= SHORT_MAX_CHARS and "\x00" not in p]
    long_ = [p for p in pool if len(p) >= LONG_MIN_CHARS and "\x00" not in p]
    s = [short[i] for i in rng.choice(len(short), N_SHORT, replace=False)]
    lg = [long_[i] for i in rng.choice(len(long_), N_LONG, replace=False)]
    out = []
    for k in range(N_LONG):
        out += [{"kind": "short", "text": t} for t in s[3 * k : 3 * k + 3]]
        out.append({"kind": "long", "text": lg[k]})
    return out


def main() -> int:
    mix = prompt_mix()
    texts = [m["text"] for m in mix]
    route = [{"prompt": {"text": t}, "router": "mf", "strong_share": 0.5} for t in texts]
    score = [
        {"prompts": [{"text": t} for t in texts[i : i + 4]], "routers": ["mf", "sw_ranking"]}
        for i in range(0, len(texts), 4)
    ]
    for name, obj in (("prompts.json", mix), ("route_data.json", route), ("score_data.json", score)):
        (HERE / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    chars = [len(t) for t in texts]
    print(f"{len(mix)} prompts ({N_SHORT} short, {N_LONG} long), {sum(chars)} characters, {len(score)} Score requests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
