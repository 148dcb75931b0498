"""NumPy reference implementation of the router math (the spec every faster core must match).

Holds the scoring functions of docs/BUNDLE.md "Runtime API": the similarity-weighted Bradley-Terry
router (`sw_cell_weights`, `bt_ratings_from_cells`, `sw_scores`), the matrix-factorisation router
(`mf_logits`, `mf_pair_vector`), the random router's hash (`random_scores`) and the blend of a
router's score with the difficulty prior (`score_logit`, `blend_scores`). All arithmetic is float64;
nothing here imports torch or scipy.

Rating convention. `bt_ratings_from_cells` returns ratings in natural log-odds units:
P(a beats b) = 1 / (1 + exp(R_b - R_a)). RouteLLM's coefficients (its design matrix holds
+-log(base)) are the same ratings divided by log(base): P(a beats b) = 1 / (1 + base ** (r_b - r_a))
with r = R / log(base), and its Elo is INIT + scale * r. The maximum-likelihood fit is invariant to
that reparametrisation, so base and scale are cosmetic: the score 1 / (1 + base ** ((Elo_weak -
Elo_strong) / scale)) equals sigmoid(R_strong - R_weak) for every base > 1 and scale > 0.

Ties. A tie counts as half a win each way (RouteLLM's `compute_elo_mle_with_tie` duplicates every row
and labels a tie's two copies once 1 and once 0; wins then carry twice the weight of each tie half,
which is the same likelihood up to a factor 2).

Existence. Without a penalty the MLE is finite only when, inside every connected group of tiers, the
"beats or ties" graph is strongly connected. When it is not (e.g. a tier that only wins), the fit
adds the ridge `RIDGE_REL * total_weight * ||R||^2`: a tiny penalty (1e-9 of the data) that makes the
optimum finite while leaving every well-posed fit untouched. Separated tiers then end up roughly
~15-20 log-odds apart (scores within ~1e-7 of 0 or 1).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LOGIT_EPS",
    "RIDGE_REL",
    "blend_scores",
    "bt_ratings_from_cells",
    "check_cell_design",
    "check_mf_factors",
    "mf_logits",
    "mf_pair_vector",
    "random_scores",
    "score_logit",
    "sw_cell_weights",
    "sw_scores",
]

RIDGE_REL = 1e-9
"""Ridge (relative to the total cell weight) added only when the unpenalised MLE is infinite."""

_GRAD_TOL_REL = 1e-12
_F_SLACK_REL = 1e-13  # line search: a change of f below this (relative) is rounding, not an increase
_STEP_TOL = 1e-10  # log-odds: with the gradient test, what "converged" means (scores to ~1e-10 relative)
_MAX_NEWTON_ITER = 200

F64 = NDArray[np.float64]


def sw_cell_weights(
    query_emb: NDArray[np.floating],
    prompt_emb: NDArray[np.floating],
    cell_counts: NDArray[np.floating],
    gamma: float,
) -> F64:
    """Per-query cell weights c = w^T C with w_i = gamma ** (1 + sim_i / max_j sim_j).

    query_emb [b, d], prompt_emb [n, d] (both L2-normalised), cell_counts [n, c] -> float64 [b, c].
    Degenerate case: when a query's max_j sim_j <= 0 (it points away from every training prompt) the
    similarities carry no usable scale and every prompt gets the same weight gamma.
    """
    q = _as_2d(query_emb, "query_emb")
    x = _as_2d(prompt_emb, "prompt_emb")
    counts = _as_2d(cell_counts, "cell_counts")
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"query_emb has dim {q.shape[1]} but prompt_emb has dim {x.shape[1]}")
    if counts.shape[0] != x.shape[0]:
        raise ValueError(f"cell_counts has {counts.shape[0]} rows but prompt_emb has {x.shape[0]} prompts")
    if not (gamma > 0.0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
    if x.shape[0] == 0:
        return np.zeros((q.shape[0], counts.shape[1]), dtype=np.float64)
    sim = q @ x.T  # [b, n]
    max_sim = sim.max(axis=1, keepdims=True)
    ratio = np.divide(sim, max_sim, out=np.zeros_like(sim), where=max_sim > 0.0)
    weights = np.power(float(gamma), 1.0 + ratio)
    cell_weights: F64 = weights @ counts
    return cell_weights


def bt_ratings_from_cells(cells: NDArray[np.integer], cell_weights: NDArray[np.floating], n_tiers: int) -> F64:
    """Weighted Bradley-Terry-with-ties ratings (natural log-odds units, sum 0) of `n_tiers` tiers.

    cells [c, 3] = (tier_a, tier_b, outcome) with outcome 0 = a wins, 1 = b wins, 2 = tie;
    cell_weights [c] >= 0. Unpenalised MLE by damped Newton until ||grad|| < 1e-12 * total weight,
    gauge sum(R) = 0 within every connected group of tiers. Tiers in no positively weighted cell get
    0. See the module docstring for the ridge used when the MLE is infinite.
    """
    a, b, y, w = _check_cells(cells, cell_weights, n_tiers)
    ratings = np.zeros(n_tiers, dtype=np.float64)
    keep = w > 0.0
    if not np.any(keep):
        return ratings
    a, b, y, w = a[keep], b[keep], y[keep], w[keep]
    present = np.unique(np.concatenate([a, b]))
    local = np.full(n_tiers, -1, dtype=np.int64)
    local[present] = np.arange(present.size)
    la, lb = local[a], local[b]
    k = present.size
    total = float(w.sum())
    beats = np.zeros((k, k), dtype=bool)  # beats[i, j]: i has a win (or tie) against j
    beats[la[y > 0.0], lb[y > 0.0]] = True
    beats[lb[y < 1.0], la[y < 1.0]] = True
    ridge = 0.0 if _mle_exists(beats) else RIDGE_REL * total
    gauge = _gauge_matrix(beats | beats.T)
    ratings[present] = _newton(la, lb, y, w, k, ridge, gauge, total)
    return ratings


def sw_scores(
    query_emb: NDArray[np.floating],
    prompt_emb: NDArray[np.floating],
    cell_counts: NDArray[np.floating],
    cells: NDArray[np.integer],
    n_tiers: int,
    strong_tier: int,
    weak_tier: int,
    gamma: float = 10.0,
    base: float = 10.0,
) -> F64:
    """sw_ranking scores [b]: P(strong tier beats weak tier) under the per-query weighted BT fit.

    Computed as 1 / (1 + base ** ((r_weak - r_strong))) with r = R / log(base), which equals
    sigmoid(R_strong - R_weak) (base is cosmetic, see the module docstring).
    """
    if not (base > 1.0 and math.isfinite(base)):
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    for name, tier in (("strong_tier", strong_tier), ("weak_tier", weak_tier)):
        if not 0 <= tier < n_tiers:
            raise ValueError(f"{name} {tier} is outside 0..{n_tiers - 1}")
    weights = sw_cell_weights(query_emb, prompt_emb, cell_counts, gamma)
    if weights.shape[1] != np.asarray(cells).shape[0]:
        raise ValueError(f"cell_counts has {weights.shape[1]} columns but cells has {np.asarray(cells).shape[0]} rows")
    log_base = math.log(base)
    out = np.empty(weights.shape[0], dtype=np.float64)
    for i in range(weights.shape[0]):
        r = bt_ratings_from_cells(cells, weights[i], n_tiers) / log_base
        out[i] = 1.0 / (1.0 + base ** (r[weak_tier] - r[strong_tier]))
    return out


def mf_logits(
    emb: NDArray[np.floating],
    text_proj: NDArray[np.floating],
    model_emb: NDArray[np.floating],
    classifier: NDArray[np.floating],
) -> F64:
    """Per-model mf logits [b, n_models]: logit_m(e) = w . (P_m / ||P_m|| * (W e)).

    emb [b, d_text], text_proj W [d_model, d_text], model_emb P [n_models, d_model], classifier w
    [d_model].
    """
    e = _as_2d(emb, "emb")
    w_proj, p_unit, w_cls = check_mf_factors(text_proj, model_emb, classifier)
    if e.shape[1] != w_proj.shape[1]:
        raise ValueError(f"emb has dim {e.shape[1]} but text_proj expects {w_proj.shape[1]}")
    z = e @ w_proj.T  # [b, d_model]
    return z @ (p_unit * w_cls[None, :]).T


def mf_pair_vector(
    text_proj: NDArray[np.floating],
    model_emb: NDArray[np.floating],
    classifier: NDArray[np.floating],
    strong_idx: int,
    weak_idx: int,
) -> F64:
    """The collapsed vector u [d_text] with u . e = logit_strong(e) - logit_weak(e)."""
    w_proj, p_unit, w_cls = check_mf_factors(text_proj, model_emb, classifier)
    n_models = p_unit.shape[0]
    for name, idx in (("strong_idx", strong_idx), ("weak_idx", weak_idx)):
        if not 0 <= idx < n_models:
            raise ValueError(f"{name} {idx} is outside 0..{n_models - 1}")
    u: F64 = w_proj.T @ ((p_unit[strong_idx] - p_unit[weak_idx]) * w_cls)
    return u


def random_scores(texts: Sequence[str], seed: int) -> F64:
    """Deterministic scores in [0, 1): the first 8 bytes (big-endian) of
    sha256(ascii(str(seed)) + b"\\x00" + utf8(text)), top 53 bits divided by 2**53."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    prefix = str(int(seed)).encode("ascii") + b"\x00"
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        digest = hashlib.sha256(prefix + text.encode("utf-8")).digest()
        out[i] = (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)
    return out


# ---------------------------------------------------------------------------------------------
# helpers


LOGIT_EPS = 1e-12
"""Scores are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before the logit (sw_ranking reaches 0 and 1)."""


def score_logit(scores: NDArray[np.floating]) -> F64:
    """log(p / (1 - p)) of scores clipped to [LOGIT_EPS, 1 - LOGIT_EPS], in float64."""
    p = np.clip(np.asarray(scores, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def blend_scores(
    router_scores: NDArray[np.floating],
    query_emb: NDArray[np.floating],
    prior_weights: NDArray[np.floating],
    prior_bias: float,
    prior_center: float,
    prior_scale: float,
    *,
    weight: float,
    center: float,
    scale: float,
) -> F64:
    """sigmoid((logit(p) - center) / scale + weight * (difficulty - prior_center) / prior_scale) with
    difficulty = -(e . prior_weights + prior_bias): a router's scores p [b] blended with the
    difficulty prior of the query embeddings [b, d] (docs/BUNDLE.md "difficulty_prior")."""
    p, q, w = check_blend_inputs(router_scores, query_emb, prior_weights, prior_scale, scale)
    difficulty = -(q @ w + prior_bias)
    z = (score_logit(p) - center) / scale + weight * (difficulty - prior_center) / prior_scale
    return _sigmoid(z)


def check_blend_inputs(
    router_scores: NDArray[np.floating],
    query_emb: NDArray[np.floating],
    prior_weights: NDArray[np.floating],
    prior_scale: float,
    scale: float,
    *,
    emb_dtype: type = np.float64,
) -> tuple[F64, NDArray[np.floating], F64]:
    """Validated blend inputs -> (scores [b], embeddings [b, d] as `emb_dtype`, prior weights [d]), scores
    and weights in float64. Shared with lmroute.kernels.compiled (which reads the embeddings as float32),
    so both refuse the same inputs with the same messages."""
    p = np.asarray(router_scores, dtype=np.float64)
    q: NDArray[np.floating] = np.asarray(query_emb, dtype=emb_dtype)
    if q.ndim != 2:
        raise ValueError(f"query_emb must be 2-D, got shape {q.shape}")
    w = np.asarray(prior_weights, dtype=np.float64)
    if p.shape != (q.shape[0],) or w.shape != (q.shape[1],):
        raise ValueError(f"blend_scores: scores {p.shape}, query_emb {q.shape}, prior_weights {w.shape} do not match")
    if not (scale > 0 and prior_scale > 0):
        raise ValueError(f"blend_scores: scales must be positive, got {scale} and {prior_scale}")
    return p, q, w


def _as_2d(arr: NDArray[np.floating], name: str) -> F64:
    out = np.asarray(arr, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {out.shape}")
    return out


def check_mf_factors(
    text_proj: NDArray[np.floating],
    model_emb: NDArray[np.floating],
    classifier: NDArray[np.floating],
) -> tuple[F64, F64, F64]:
    """Validated mf factors -> (W [k, d], P with unit rows [m, k], w [k]) in float64. Shared with
    lmroute.kernels.compiled, so both refuse the same factors with the same messages."""
    w_proj = _as_2d(text_proj, "text_proj")
    p = _as_2d(model_emb, "model_emb")
    w_cls = np.asarray(classifier, dtype=np.float64)
    if w_cls.ndim != 1 or w_cls.shape[0] != w_proj.shape[0] or p.shape[1] != w_proj.shape[0]:
        raise ValueError(
            f"mf shapes disagree: text_proj {w_proj.shape}, model_emb {p.shape}, "
            f"classifier {w_cls.shape} (want [k, d], [m, k], [k])"
        )
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    if np.any(norms == 0.0):
        raise ValueError("model_emb has an all-zero row: it cannot be normalised")
    return w_proj, p / norms, w_cls


def check_cell_design(cells: NDArray[np.integer], n_tiers: int) -> tuple[NDArray[np.int64], NDArray[np.int64], F64]:
    """Validated cells [c, 3] -> (tier_a, tier_b, y) with y the target P(a wins): 1, 0 or 0.5 (tie).
    Shared with lmroute.kernels.compiled, so both refuse the same designs with the same messages."""
    c = np.asarray(cells)
    if n_tiers < 1:
        raise ValueError(f"n_tiers must be >= 1, got {n_tiers}")
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"cells must have shape [c, 3], got {c.shape}")
    c = c.astype(np.int64)
    a, b, outcome = c[:, 0], c[:, 1], c[:, 2]
    if np.any((a < 0) | (a >= n_tiers) | (b < 0) | (b >= n_tiers)):
        raise ValueError(f"cells hold a tier outside 0..{n_tiers - 1}")
    if np.any(a == b):
        raise ValueError("cells hold a same-tier cell (tier_a == tier_b): it carries no information")
    if np.any((outcome < 0) | (outcome > 2)):
        raise ValueError("cells hold an outcome outside {0, 1, 2}")
    y = np.select([outcome == 0, outcome == 1], [1.0, 0.0], default=0.5)  # P(a wins) target
    return a, b, y


def _check_cells(
    cells: NDArray[np.integer], cell_weights: NDArray[np.floating], n_tiers: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], F64, F64]:
    a, b, y = check_cell_design(cells, n_tiers)
    w = np.asarray(cell_weights, dtype=np.float64)
    if w.shape != (a.shape[0],):
        raise ValueError(f"cell_weights must have shape ({a.shape[0]},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise ValueError("cell_weights must be finite and >= 0")
    return a, b, y, w


def _mle_exists(beats: NDArray[np.bool_]) -> bool:
    """True when every connected group of the comparison graph is strongly connected in `beats`."""
    reach = _closure(beats)
    linked = _closure(beats | beats.T)
    return bool(np.all(reach[linked]))


def _closure(adj: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Reflexive-transitive closure of a small boolean adjacency matrix."""
    k = adj.shape[0]
    reach = adj | np.eye(k, dtype=bool)
    while True:
        nxt = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
        if np.array_equal(nxt, reach):
            return reach
        reach = nxt


def _gauge_matrix(linked: NDArray[np.bool_]) -> F64:
    """Sum over connected groups g of 1_g 1_g^T / |g|: added to the Hessian it fixes sum(R_g) = 0."""
    comp = _closure(linked).astype(np.float64)
    gauge: F64 = comp / comp.sum(axis=1, keepdims=True)
    return gauge


def _sigmoid(x: F64) -> F64:
    """1 / (1 + exp(-x)) with full relative precision on both tails."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def _objective(r: F64, la: NDArray[np.int64], lb: NDArray[np.int64], y: F64, w: F64, ridge: float) -> float:
    d = r[la] - r[lb]
    nll = y * np.logaddexp(0.0, -d) + (1.0 - y) * np.logaddexp(0.0, d)
    return float(np.dot(w, nll) + ridge * np.dot(r, r))


def _newton(
    la: NDArray[np.int64],
    lb: NDArray[np.int64],
    y: F64,
    w: F64,
    k: int,
    ridge: float,
    gauge: F64,
    total: float,
) -> F64:
    """Minimise the negative log-likelihood (+ ridge) by Newton with backtracking.

    Converged when the gradient is below 1e-12 of the total weight *and* the Newton step is below
    1e-10 (cells can span 20 orders of magnitude: a cell 1e-14 of the total leaves a tiny gradient
    while it still moves R by units). Probabilities are formed without 1 - p, and a change of f
    below 1e-13 of |f| counts as no increase in the line search (rounding, not a worse point)."""
    r = np.zeros(k, dtype=np.float64)
    f = _objective(r, la, lb, y, w, ridge)
    tol = _GRAD_TOL_REL * total
    for _ in range(_MAX_NEWTON_ITER):
        d = r[la] - r[lb]
        p, q = _sigmoid(d), _sigmoid(-d)  # P(a wins), P(b wins), each accurate near 0 (no 1 - p)
        resid = w * ((1.0 - y) * p - y * q)  # w * (p - y) without cancellation when p ~ 1
        # bincount with weights is float64 (its stubs say intp): asarray only fixes the static type
        grad = np.asarray(np.bincount(la, resid, minlength=k) - np.bincount(lb, resid, minlength=k), np.float64)
        grad += 2.0 * ridge * r
        small_grad = float(np.linalg.norm(grad)) < tol
        curv = w * p * q
        hess = np.zeros((k, k), dtype=np.float64)
        np.add.at(hess, (la, la), curv)
        np.add.at(hess, (lb, lb), curv)
        np.add.at(hess, (la, lb), -curv)
        np.add.at(hess, (lb, la), -curv)
        hess[np.diag_indices(k)] += 2.0 * ridge
        if ridge == 0.0:
            hess += gauge * max(float(np.trace(hess)) / k, 1e-300)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            # numerically singular: cell weights spanning ~20+ orders of magnitude (e.g. a huge
            # gamma) drown the small cells' curvature; the least-squares step still descends.
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        if small_grad and float(np.max(np.abs(step))) <= _STEP_TOL:
            break  # converged: a small gradient can hide a cell 1e-12 of the total that still moves r
        t = 1.0
        while True:
            cand = r - t * step
            f_new = _objective(cand, la, lb, y, w, ridge)
            if f_new <= f + 1e-4 * t * (-float(np.dot(grad, step))) + _F_SLACK_REL * abs(f) or t < 1e-10:
                break
            t *= 0.5
        if t < 1e-10:
            break  # at the floating-point floor: no further decrease is representable
        r, f = cand, f_new
        if t * float(np.linalg.norm(step)) <= 1e-15 * (1.0 + float(np.linalg.norm(r))):
            break  # the step no longer changes r
    return r
