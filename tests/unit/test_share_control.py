"""The share controller (lmroute.service.share_control) and the tenants' targets (lmroute.service.targets):
a target held on drifting scores where a fixed threshold drifts away, the calibration seed, the edges of
the share range, and state rebuilt by replaying decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmroute.service.scorer_api import RouterDescription
from lmroute.service.share_control import ControlSettings, ShareController, seed_scores
from lmroute.service.targets import TenantTargets, parse_share_targets

# A calibration table: share s of calibration prompts scores >= 1 - s (uniform scores on [0, 1]).
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
THRESHOLDS = (1.0, 0.75, 0.5, 0.25, 0.0)
CAL = RouterDescription("mf", "mf", True, SHARES, THRESHOLDS)


def drifting_scores(n: int, seed: int = 0) -> np.ndarray:
    """Scores whose distribution moves abruptly: uniform, then squeezed high, then low, then wide again."""
    rng = np.random.default_rng(seed)
    phases = [rng.uniform(0, 1, n // 4), rng.beta(5, 2, n // 4), rng.beta(2, 6, n // 4), rng.uniform(0, 1, n // 4)]
    return np.concatenate(phases)


def windows(strong: np.ndarray, size: int = 500) -> np.ndarray:
    k = len(strong) // size
    return strong[: k * size].reshape(k, size).mean(axis=1)


def test_seed_scores_reproduce_the_calibration_table() -> None:
    seed = seed_scores(SHARES, THRESHOLDS, 1000)
    ctl = ShareController(0.3, seed)
    assert ctl.threshold == pytest.approx(0.7, abs=2e-3)  # before any traffic: the static calibrated threshold
    assert seed_scores((), (), 3) == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5])
def test_the_target_is_held_on_drifting_scores_where_the_fixed_threshold_drifts_away(target: float) -> None:
    scores = drifting_scores(20_000)
    ctl = ShareController(target, seed_scores(SHARES, THRESHOLDS, 1000))
    strong = np.array([ctl.decide(float(s)) for s in scores])
    held = windows(strong)[2:]
    fixed = windows(scores >= 1.0 - target)[2:]
    # abrupt shifts (the benchmark's stream cross-fades): a window at a shift may miss by a little
    assert np.mean(np.abs(held - target) <= 0.02) >= 0.85 and np.max(np.abs(held - target)) <= 0.06
    assert np.mean(np.abs(held - target)) <= 0.01
    assert np.max(np.abs(fixed - target)) >= 0.1  # the static threshold misses by far on the shifted phases
    st = ctl.state()
    assert st.decisions == 20_000 and abs(st.realised - target) <= 0.02 and st.target == target


def test_shares_zero_and_one_route_all_weak_and_all_strong() -> None:
    scores = drifting_scores(2000).tolist()
    none = ShareController(0.0, scores)
    every = ShareController(1.0, scores)
    assert not any(none.decide(s) for s in scores)
    assert all(every.decide(s) for s in scores)


def test_replaying_the_decisions_rebuilds_the_same_state() -> None:
    settings = ControlSettings(window=300, repay=40, horizon=800)
    scores = drifting_scores(4000, seed=3).tolist()
    live = ShareController(0.3, seed_scores(SHARES, THRESHOLDS, 300), settings)
    made = [(s, live.decide(s)) for s in scores]
    again = ShareController(0.3, seed_scores(SHARES, THRESHOLDS, 300), settings)
    for s, strong in made:
        again.record(s, strong)
    assert again.state() == live.state()


def test_a_decision_without_a_comparable_score_counts_in_the_share_not_the_window() -> None:
    ctl = ShareController(0.5, [0.1, 0.2, 0.3, 0.4], ControlSettings(window=4))
    before = ctl._sorted[:]
    ctl.record(math.nan, True)
    assert ctl._sorted == before and ctl.decisions == 1 and ctl.state().realised == 1.0


def test_bad_settings_and_targets_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"repay: must be an integer >= 1 \(got 0\)"):
        ControlSettings(repay=0)
    with pytest.raises(ValueError, match=r"target: must be in \[0, 1\] \(got 1.5\)"):
        ShareController(1.5, [0.5])
    ctl = ShareController(0.2, [0.5])
    with pytest.raises(ValueError, match="target: must be in"):
        ctl.retarget(math.nan)


def test_share_targets_parse_and_errors_name_the_entry() -> None:
    assert parse_share_targets("default=0.3, batch.jobs=0.1,") == {"default": 0.3, "batch.jobs": 0.1}
    assert parse_share_targets("") == {}
    for text, message in [
        ("default", r"entry 0 \('default'\): expected tenant=value"),
        ("a=0.1,b c=0.2", r"entry 1 \('b c=0.2'\): expected tenant=value"),
        ("a=x", r"entry 0 \('a=x'\): value is not a number"),
        ("a=1.2", r"value must be in \[0, 1\]"),
        ("a=0.1,a=0.2", "tenant a given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_share_targets(text)
    with pytest.raises(ValueError, match=r"entry 0 \('a=inf'\): value must be a finite number >= 0"):
        parse_share_targets("a=inf", high=math.inf)  # a spend target


def test_unknown_tenants_share_the_default_controller_and_create_no_state() -> None:
    targets = TenantTargets({"default": 0.3, "batch": 0.1})
    assert targets.tenant_of("batch") == "batch"
    assert targets.tenant_of("someone-else") == "default" and targets.tenant_of("") == "default"
    assert TenantTargets({"batch": 0.1}).tenant_of("x") is None
    a = targets.controller("default", CAL, "v1")
    assert targets.controller("default", CAL, "v1") is a
    assert [(s.tenant, s.router) for s in targets.states()] == [("default", "mf")]


def test_a_new_bundle_reseeds_the_controller_and_keeps_its_deficit() -> None:
    targets = TenantTargets({"default": 0.3})
    old = targets.controller("default", CAL, "v1")
    for _ in range(20):
        old.record(0.99, True)  # far more strong than the target: a negative deficit
    new = targets.controller("default", CAL, "v2")
    assert new is not old and new.deficit == old.deficit < 0
    assert targets.states()[0].bundle_version == "v2"


def test_restore_replays_each_controller_from_what_the_store_reads() -> None:
    settings = ControlSettings(window=200, repay=30, horizon=400)
    live = TenantTargets({"default": 0.3, "batch": 0.1}, settings)
    made: dict[tuple[str, str], list[tuple[str, float, bool, float | None]]] = {}
    for tenant, scores in (("default", drifting_scores(1000, 1)), ("batch", drifting_scores(1000, 2))):
        ctl = live.controller(tenant, CAL, "v1")
        made[(tenant, "mf")] = [("v1", float(s), ctl.decide(float(s)), ctl.target) for s in scores]
    asked: list[int] = []

    def read(tenant: str, router: str, limit: int) -> list[tuple[str, float, bool, float | None]]:
        asked.append(limit)
        return made.get((tenant, router), [])[-limit:]

    restored = TenantTargets({"default": 0.3, "batch": 0.1}, settings)
    assert restored.restore([CAL], "v1", read) == 2000
    assert set(asked) == {1200}  # 3 horizons
    assert [s.state for s in restored.states()] == [s.state for s in live.states()]


def test_restore_counts_each_decisions_deficit_at_the_target_it_was_made_at() -> None:
    """Decisions made at 0.3, then 0.6 after a live change: the restored controller is the live one
    (the deficit restarted at the change); restored under another target than it last held, the deficit
    restarts as a live change restarts it (it was replayed against today's target: a deficit of about
    50 that sent 98 % strong); decisions whose target was not recorded leave no deficit."""
    settings = ControlSettings(window=200, repay=30, horizon=400)
    live = TenantTargets({"default": 0.3}, settings)
    ctl = live.controller("default", CAL, "v1")
    rows: list[tuple[str, float, bool, float | None]] = []
    for i, s in enumerate(drifting_scores(1200, 3)):
        if i == 700:
            live.set_share("default", 0.6)
        rows.append(("v1", float(s), ctl.decide(float(s)), ctl.target))

    def read(tenant: str, router: str, limit: int) -> list[tuple[str, float, bool, float | None]]:
        return rows[-limit:]

    same = TenantTargets({"default": 0.6}, settings)
    same.restore([CAL], "v1", read)
    assert [s.state for s in same.states()] == [s.state for s in live.states()]
    moved = TenantTargets({"default": 0.9}, settings)  # restarted with another target
    moved.restore([CAL], "v1", read)
    [state] = [s.state for s in moved.states()]
    live.set_share("default", 0.9)
    assert state == live.states()[0].state and state.deficit == 0.0
    unknown = TenantTargets({"default": 0.6}, settings)
    unknown.restore([CAL], "v1", lambda *_: [(v, s, strong, None) for v, s, strong, _ in rows])
    [state] = [s.state for s in unknown.states()]
    assert state.deficit == 0.0 and state.decisions == 1200
