"""Routing among N models learnt from outcomes, end to end: a small real bundle with a `quality` router (a
real tiny ONNX encoder, `make_tiny_bundle`), per-model outcomes in a real store (SQLite; PostgreSQL for the
round trip), `adapt --kind qualities` -> gate -> a written `adapted_quality` router that corrects the base
models and adds a model only the deployment knows; the served qualities equal the offline heads; outcomes
without signal are refused; prompts kept without their text (the privacy switch) learn the same heads;
and the loop through a real server: Feedback in, the round swaps the bundle, Route among candidates
reaches the new model."""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmroute.adapt.from_store import adapt_from_store
from lmroute.adapt.quality_from_store import adapt_qualities_from_store
from lmroute.bundle.errors import BundleError
from lmroute.bundle.files import sha256_file
from lmroute.bundle.loader import load_bundle
from lmroute.bundle.manifest import encoder_identity
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
from lmroute.bundle.writer import restamp_bundle
from lmroute.export.cli import main
from lmroute.outcomes.records import Decision, Outcome, OutcomeKind, prompt_sha256
from lmroute.outcomes.store import open_store

N = 600
NEW = "local-llama-8b"  # a model the shipped quality router does not know
CHEAP = "model-00"  # a base model whose in-domain quality the base router misjudges


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapt_qualities")
    encoder = make_fake_encoder_dir(root / "encoder", dim=16, seed=3)
    return make_tiny_bundle(root / "parent", encoder_dir=encoder, seed=5, quality=True)


def _judged(parent: Path, *, signal: bool, seed: int = 2) -> tuple[list[str], np.ndarray, np.ndarray]:
    """N prompts and the qualities of NEW and CHEAP on them. With signal: NEW is right where one direction
    of the embedding is positive, CHEAP right 90 % of the time. Without: each is drawn from what the base
    router already predicts (CHEAP) or at a flat 0.5 (NEW): nothing a head could add."""
    bundle = load_bundle(parent)
    texts = synthetic_prompts(N, seed=9)
    batch = bundle.prompt_batch(texts)
    assert batch.embeddings is not None
    rng = np.random.default_rng(seed)
    if signal:
        u = np.random.default_rng(1).standard_normal(batch.embeddings.shape[1])
        new = rng.random(N) < 1.0 / (1.0 + np.exp(-8.0 * (batch.embeddings @ u)))
        cheap = rng.random(N) < 0.9
    else:
        base_q = bundle.routers["quality"].qualities(batch)  # type: ignore[attr-defined]
        new = rng.random(N) < 0.5
        cheap = rng.random(N) < base_q[:, 0]
    return texts, new.astype(float), cheap.astype(float)


def _outcomes(texts: list[str], new: np.ndarray, cheap: np.ndarray) -> list[Outcome]:
    t0 = int(time.time() * 1000) - N * 1000
    return [
        Outcome(OutcomeKind.SCORES, model, float(q), prompt_text=text, source="judge", observed_ms=t0 + i * 1000)
        for i, text in enumerate(texts)
        for model, q in ((NEW, new[i]), (CHEAP, cheap[i]))
    ]


def test_adapt_writes_a_router_that_corrects_the_base_and_adds_a_model(parent: Path, tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path / 'o.sqlite3'}")
    store.write([], _outcomes(*_judged(parent, signal=True)))
    run = adapt_qualities_from_store(parent, store, tmp_path / "b1")
    assert run.accepted, run.report["gate"]
    gate = run.report["gate"]
    assert gate["candidate_error"] < gate["champion_error"] and run.report["champion"] == "quality"
    bundle = load_bundle(tmp_path / "b1")
    router = bundle.routers["adapted_quality"]
    base_models = bundle.routers["quality"].models  # type: ignore[attr-defined]
    assert router.models == (*base_models, NEW)  # type: ignore[attr-defined]
    assert run.report["heads"]["models"][NEW]["outcomes"] == N
    assert run.report["heads"]["models"]["model-01"]["penalty"] is None  # never judged: the base's prediction
    # served == what was learnt: NEW follows the planted direction, CHEAP moved up towards 0.9
    probe = synthetic_prompts(200, seed=31)
    batch = bundle.prompt_batch(probe)
    q = router.qualities(batch)  # type: ignore[attr-defined]
    base_q = bundle.routers["quality"].qualities(batch)  # type: ignore[attr-defined]
    assert batch.embeddings is not None
    u = np.random.default_rng(1).standard_normal(batch.embeddings.shape[1])
    new_col = router.models.index(NEW)  # type: ignore[attr-defined]
    assert np.corrcoef(q[:, new_col], batch.embeddings @ u)[0, 1] > 0.8
    assert abs(q[:, 0].mean() - 0.9) < 0.05 and abs(base_q[:, 0].mean() - 0.9) > 0.1
    assert np.array_equal(q[:, 1], base_q[:, 1])  # model-01: untouched
    # the two-model score and the lineage
    pair = bundle.manifest.default_pair
    s, w = router.models.index(pair.strong), router.models.index(pair.weak)  # type: ignore[attr-defined]
    assert np.allclose(router.score(batch), np.clip((q[:, s] - q[:, w] + 1) / 2, 0, 1))
    lineage = bundle.manifest.lineage
    assert lineage is not None and lineage.outcome_kind == "qualities" and lineage.router == "adapted_quality"
    assert lineage.n_outcomes == N and lineage.parent_version == run.parent_version
    # a second round starts from it: the adapted router is the champion, judged only on outcomes it was
    # not fitted on (judged after its lineage's last outcome); with none, nothing can be judged
    stale = adapt_qualities_from_store(tmp_path / "b1", store, tmp_path / "b2", margin=1.0, order_margin=2.0)
    assert not stale.accepted and stale.report["outcomes_unseen_by_champion"] == 0
    assert "0 held-out prompts" in stale.report["gate"]["reason"]
    texts, new, cheap = _judged(parent, signal=True, seed=3)
    later = int(time.time() * 1000) + 2000
    store.write(
        [],
        [
            Outcome(OutcomeKind.SCORES, model, float(q), prompt_text=f"later: {text}", observed_ms=later + i)
            for i, text in enumerate(texts[:200])
            for model, q in ((NEW, new[i]), (CHEAP, cheap[i]))
        ],
    )
    again = adapt_qualities_from_store(tmp_path / "b1", store, tmp_path / "b2", margin=1.0, order_margin=2.0)
    assert again.accepted and again.report["champion"] == "adapted_quality"
    assert again.report["outcomes_unseen_by_champion"] == 200 and again.report["gate"]["n_held_out"] == 200
    assert again.n_outcomes == N + 200  # trained on every outcome, held out only the unseen ones
    b2 = load_bundle(tmp_path / "b2")
    assert list(b2.routers).count("adapted_quality") == 1
    runs = store.adaptations()
    assert [r["accepted"] for r in runs if r["kind"] == "qualities"] == [True, False, True]
    # a pair head is blended with a trained router, never with one learnt from outcomes
    with pytest.raises(ValueError, match="'adapted_quality' is not a trained router"):
        adapt_from_store(tmp_path / "b2", store, tmp_path / "b3", kind="paired", base_router="adapted_quality")
    store.close()


def test_the_gate_judges_per_model_qualities_by_the_trusted_reporters(parent: Path, tmp_path: Path) -> None:
    """`gate_reporters` with qualities: tenant `app` reports NEW's quality reversed on two thirds of the
    prompts; judged by every reporter the candidate passes, judged by the operator's third alone it is
    refused; an honest `app` passes either way, learnt from every prompt."""
    texts, new, cheap = _judged(parent, signal=True)
    judge = set(texts[: N // 3])
    runs = {}
    for poisoned in (True, False):
        store = open_store(f"sqlite:{tmp_path / f'poisoned-{poisoned}.sqlite3'}")
        store.write(
            [],
            [
                o
                if o.prompt_text in judge
                else dataclasses.replace(
                    o, reporter="app", quality=1.0 - o.quality if poisoned and o.model == NEW else o.quality
                )
                for o in _outcomes(texts, new, cheap)
            ],
        )
        for gate in (None, {""}):
            out = tmp_path / f"out-{poisoned}-{gate is not None}"
            runs[poisoned, gate is not None] = adapt_qualities_from_store(parent, store, out, gate_reporters=gate)
        store.close()
    assert runs[True, False].accepted  # the poisoner's own outcomes vouch for what they taught
    refused = runs[True, True]
    assert not refused.accepted and refused.report["gate"]["n_held_out"] == refused.report["outcomes_gated"] == N // 3
    assert runs[False, True].accepted and runs[False, True].n_outcomes == N


def test_outcomes_without_signal_are_refused_and_nothing_is_written(parent: Path, tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path / 'o.sqlite3'}")
    store.write([], _outcomes(*_judged(parent, signal=False)))
    run = adapt_qualities_from_store(parent, store, tmp_path / "never")
    assert not run.accepted and run.candidate_version is None, run.report["gate"]
    assert run.report["gate"]["upper_bound"] > 0
    assert not (tmp_path / "never").exists()
    [recorded] = store.adaptations()
    assert recorded["kind"] == "qualities" and recorded["accepted"] is False
    store.close()


def test_prompts_kept_without_text_learn_the_same_heads(parent: Path, tmp_path: Path) -> None:
    """The privacy switch: decisions keep the embedding and the character count, outcomes come by
    decision id; the heads equal those learnt from the texts."""
    texts, new, cheap = _judged(parent, signal=True)
    bundle = load_bundle(parent)
    emb = bundle.prompt_batch(texts).embeddings
    assert emb is not None
    t0 = int(time.time() * 1000) - N * 1000
    decisions, outcomes = [], []
    for i, text in enumerate(texts):
        d = Decision(
            decision_id=secrets.token_hex(16),
            time_ms=t0 + i * 1000,
            kind="score",
            bundle_version=bundle.version,
            scores={},
            strong_model=bundle.manifest.default_pair.strong,
            weak_model=bundle.manifest.default_pair.weak,
            prompt_sha256=prompt_sha256(text),
            n_tokens=10,
            encoder_id=encoder_identity(bundle.manifest),
            prompt_chars=len(text),
            embedding=emb[i],
        )
        decisions.append(d)
        for model, q in ((NEW, new[i]), (CHEAP, cheap[i])):
            outcomes.append(
                Outcome(OutcomeKind.SCORES, model, float(q), decision_id=d.decision_id, observed_ms=t0 + i * 1000)
            )
    private = open_store(f"sqlite:{tmp_path / 'private.sqlite3'}", store_prompts=False)
    private.write(decisions, outcomes)
    without = adapt_qualities_from_store(parent, private, tmp_path / "private")
    public = open_store(f"sqlite:{tmp_path / 'public.sqlite3'}")
    public.write([], _outcomes(texts, new, cheap))
    with_text = adapt_qualities_from_store(parent, public, tmp_path / "public")
    assert without.accepted and without.report["outcomes_skipped"] == 0 and without.n_outcomes == N
    assert with_text.accepted
    assert with_text.report["gate"]["candidate_error"] == pytest.approx(without.report["gate"]["candidate_error"])
    a = load_bundle(tmp_path / "private").routers["adapted_quality"]
    b = load_bundle(tmp_path / "public").routers["adapted_quality"]
    assert a.models == b.models  # type: ignore[attr-defined]
    np.testing.assert_allclose(a.bias, b.bias, atol=1e-6)  # type: ignore[attr-defined]
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-6)  # type: ignore[attr-defined]
    private.close()
    public.close()


def test_adapt_command_qualities_exit_codes_and_a_bad_base(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    texts, new, cheap = _judged(parent, signal=True)
    store = open_store(dsn)
    store.close()
    args = ["adapt", "--kind", "qualities", "--bundle", str(parent), "--store", dsn, "--out", str(tmp_path / "out")]
    assert main(args) == 4  # nothing judged yet: said so, not only "0 usable outcomes"
    assert "0 usable outcomes (need 50); no judged prompt read" in capsys.readouterr().err
    store = open_store(dsn)
    store.write([], _outcomes(texts[:20], new[:20], cheap[:20]))
    store.close()
    assert main(args) == 4
    refused = capsys.readouterr()
    assert "refused by the gate: 20 usable outcomes (need 50)" in refused.err
    report = json.loads(refused.out, parse_constant=lambda c: pytest.fail(f"stdout holds {c}, not JSON"))
    assert "20 usable outcomes (need 50)" in report["gate"]["reason"]  # stdout: the report alone, strict JSON
    store = open_store(dsn)
    store.write([], _outcomes(texts, new, cheap))
    store.close()
    assert main(args) == 0
    accepted = capsys.readouterr()
    assert "accepted: bundle" in accepted.err and json.loads(accepted.out)["gate"]["accepted"] is True
    assert main([*args, "--overwrite", "--base-router", "mf"]) == 1
    assert "base_router: 'mf' is not a router of kind quality" in capsys.readouterr().err


def test_a_tampered_adapted_quality_router_is_refused_by_name(parent: Path, tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path / 'o.sqlite3'}")
    store.write([], _outcomes(*_judged(parent, signal=True)))
    assert adapt_qualities_from_store(parent, store, tmp_path / "b").accepted
    store.close()

    def edit(change: object, *, array: tuple[str, np.ndarray] | None = None) -> str:
        broken = tmp_path / secrets.token_hex(4)
        shutil.copytree(tmp_path / "b", broken)
        m = json.loads((broken / "manifest.json").read_text())
        if array is not None:
            rel, value = array
            np.save(broken / rel, value, allow_pickle=False)
            m["files"][rel] = {"sha256": sha256_file(broken / rel), "bytes": (broken / rel).stat().st_size}
        change(m)  # type: ignore[operator]
        (broken / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError) as err:
            restamp_bundle(broken)
            load_bundle(broken)
        return str(err.value)

    def drop_base_model(m: dict) -> None:
        m["routers"]["adapted_quality"]["params"]["models"].remove("model-03")

    def base_is_mf(m: dict) -> None:
        m["routers"]["adapted_quality"]["params"]["base_router"] = "mf"

    def keep(m: dict) -> None:
        pass

    assert "params.models" in edit(drop_base_model)
    assert "base_router: 'mf' is of kind mf, not quality" in edit(base_is_mf)
    bias = ("routers/adapted_quality/bias.npy", np.zeros(3, dtype=np.float32))
    assert "routers/adapted_quality/bias.npy: shape (3,)" in edit(keep, array=bias)


def _served(parent: Path, tmp_path: Path) -> tuple[Any, str, list[Any]]:
    """A server's config over a copy of `parent` whose default quality router is `quality` (as a build
    names it), with an SQLite store (its DSN); two candidates, NEW cheap and model-05 dear."""
    from lmroute.service.config import ServiceConfig
    from lmroute.v1 import router_pb2

    served = tmp_path / "served"
    shutil.copytree(parent, served)
    restamp_bundle(served, default_quality_router="quality")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    cfg = ServiceConfig(bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0)
    priced = [
        router_pb2.Candidate(model=NEW, input_price_per_mtok=0.1, output_price_per_mtok=0.1),
        router_pb2.Candidate(model="model-05", input_price_per_mtok=10.0, output_price_per_mtok=30.0),
    ]
    return cfg, dsn, priced


def test_the_loop_learns_a_new_model_from_feedback_and_routes_to_it(parent: Path, tmp_path: Path) -> None:
    from lmroute.adapt.loop import RoundSettings, run_round
    from lmroute.service.client import RouterClient, to_prompt
    from lmroute.service.testing import ServerThread
    from lmroute.v1 import router_pb2

    cfg, dsn, priced = _served(parent, tmp_path)
    texts, new, cheap = _judged(parent, signal=True)
    with ServerThread(cfg) as srv, RouterClient(srv.target) as client:
        with pytest.raises(Exception, match=NEW):  # the shipped router does not know the new model
            client.route_among("Explain quicksort.", priced, router="quality", cost_weight=0.0)
        assert client.list_routers().default_quality_router == "quality"
        known = priced[1:] + [  # a call naming no router is answered by the default quality router
            router_pb2.Candidate(model="model-00", input_price_per_mtok=0.1, output_price_per_mtok=0.1)
        ]
        unnamed = client.route_among("Explain quicksort.", known, cost_weight=0.0)
        named = client.route_among("Explain quicksort.", known, router="quality", cost_weight=0.0)
        assert unnamed.router == "quality" and unnamed.chosen == named.chosen
        reports = [
            router_pb2.OutcomeReport(
                prompt=to_prompt(text),
                qualities=router_pb2.ModelQualities(
                    qualities=[
                        router_pb2.ModelQuality(model=NEW, quality=float(new[i])),
                        router_pb2.ModelQuality(model=CHEAP, quality=float(cheap[i])),
                    ]
                ),
                source="judge",
            )
            for i, text in enumerate(texts)
        ]
        answer = client.feedback(reports)
        assert all(s.code == 0 for s in answer.results) and answer.stored == 2 * N
        done = run_round(srv.target, dsn, tmp_path / "bundles", RoundSettings(kind="qualities"))
        assert done.accepted, done.report["gate"]
        infos = {r.name: r for r in client.list_routers().routers}
        assert NEW in infos["adapted_quality"].models
        swapped = load_bundle(done.candidate)  # type: ignore[arg-type]
        router = swapped.routers["adapted_quality"]
        col = router.models.index(NEW)  # type: ignore[attr-defined]
        after = client.list_routers()
        assert (after.default_quality_router, after.default_router) == ("adapted_quality", "")  # pair default kept
        for i, text in enumerate(synthetic_prompts(20, seed=77)):
            # naming the router and naming none (the adapted bundle's default quality router) alike
            d = client.route_among(text, priced, router="adapted_quality" if i % 2 else "", cost_weight=0.0)
            assert d.router == "adapted_quality"
            q = router.qualities(swapped.prompt_batch([text]))[0]  # type: ignore[attr-defined]
            best = NEW if q[col] >= q[router.models.index("model-05")] else "model-05"  # type: ignore[attr-defined]
            assert d.chosen_model == best
            assert d.chosen.predicted_quality == pytest.approx(q[router.models.index(best)], abs=1e-6)  # type: ignore[attr-defined]


def test_single_outcomes_of_explored_routes_feed_the_routing_condition(parent: Path, tmp_path: Path) -> None:
    """Route among candidates with exploration logs each choice (candidates' costs, the chosen one, its
    propensity); single outcomes by decision id judge the model that answered; the gate estimates both
    predictors' routing value from them off-policy and records it."""
    from lmroute.service.client import RouterClient
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread
    from lmroute.v1 import router_pb2

    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    cfg = ServiceConfig(bundle_path=parent, port=0, store=dsn, log_level="warning", grace_s=0.0, explore_rate=0.5)
    bundle = load_bundle(parent)
    texts = synthetic_prompts(240, seed=13)
    emb = bundle.prompt_batch(texts).embeddings
    assert emb is not None
    u = np.random.default_rng(1).standard_normal(emb.shape[1])
    rng = np.random.default_rng(4)
    priced = [
        router_pb2.Candidate(model=CHEAP, input_price_per_mtok=0.1, output_price_per_mtok=0.1),
        router_pb2.Candidate(model="model-05", input_price_per_mtok=10.0, output_price_per_mtok=30.0),
    ]
    with ServerThread(cfg) as srv, RouterClient(srv.target) as client:
        reports, explored = [], 0
        for i, text in enumerate(texts):
            d = client.route_among(text, priced, router="quality", cost_weight=0.0)
            explored += d.propensity < 0.5
            # CHEAP is right where the planted direction is positive, model-05 70 % of the time
            p = 1.0 / (1.0 + np.exp(-8.0 * (emb[i] @ u))) if d.chosen_model == CHEAP else 0.7
            reports.append(
                router_pb2.OutcomeReport(
                    decision_id=d.decision_id,
                    single=router_pb2.SingleOutcome(quality=float(rng.random() < p)),
                    source="tests",
                )
            )
        answer = client.feedback(reports)
        assert all(s.code == 0 for s in answer.results)
    assert explored > 20  # the policy's other candidate was tried now and then, with its propensity logged
    store = open_store(dsn)
    rows = [r for r in store.labeled_prompts() if r.qualities]
    assert len(rows) == len(texts) and all(r.choice and r.propensity for r in rows)
    run = adapt_qualities_from_store(parent, store, tmp_path / "b1")
    gate = run.report["gate"]
    assert gate["n_logged"] >= 200, gate["reason"]  # the folds keep both models: nearly every choice counts
    assert np.isfinite(gate["champion_routing"]) and np.isfinite(gate["candidate_routing"])
    assert "routing AIQ" in gate["reason"] and "off-policy" in gate["reason"]
    assert run.accepted == (gate["routing_lower_bound"] >= -gate["routing_margin"] and gate["accepted"])
    [recorded] = store.adaptations()
    assert recorded["report"]["gate"]["n_logged"] == gate["n_logged"]
    store.close()


def test_a_tenants_own_quality_router_answers_its_calls_among_candidates(parent: Path, tmp_path: Path) -> None:
    """`--for-tenant` with qualities through a real server: `app`'s prompts scored as `app`, their
    per-model outcomes sent by decision id; the round adds `adapted_quality-app` for `app` alone. `app`'s
    calls among candidates that name no router get it (and ListRouters says so to `app`); another
    tenant's keep the bundle's default quality router, which the round left as it was."""
    from lmroute.adapt.loop import RoundSettings, run_round
    from lmroute.service.client import RouterClient
    from lmroute.service.testing import ServerThread
    from lmroute.v1 import router_pb2

    cfg, dsn, priced = _served(parent, tmp_path)
    texts, new, cheap = _judged(parent, signal=True)
    with ServerThread(cfg) as srv, RouterClient(srv.target, tenant="app") as app:
        ids = [r.decision_id for start in range(0, N, 100) for r in app.score(texts[start : start + 100]).results]
        reports = [
            router_pb2.OutcomeReport(
                decision_id=ids[i],
                qualities=router_pb2.ModelQualities(
                    qualities=[
                        router_pb2.ModelQuality(model=NEW, quality=float(new[i])),
                        router_pb2.ModelQuality(model=CHEAP, quality=float(cheap[i])),
                    ]
                ),
                source="judge",
            )
            for i in range(N)
        ]
        assert app.feedback(reports).stored == 2 * N
        everyone_else = run_round(srv.target, dsn, tmp_path / "bundles", RoundSettings(kind="qualities", tenant="b"))
        assert not everyone_else.accepted and everyone_else.report["outcomes_read"] == 0  # b made no calls
        done = run_round(srv.target, dsn, tmp_path / "bundles", RoundSettings(kind="qualities", tenant="app"))
        assert done.accepted and done.report["router"] == "adapted_quality-app", done.report["gate"]
        m = load_bundle(done.candidate).manifest  # type: ignore[arg-type]
        assert m.tenant_quality_routers == {"app": "adapted_quality-app"} and m.default_quality_router == "quality"
        assert app.list_routers().default_quality_router == "adapted_quality-app"
        d = app.route_among("Explain quicksort.", priced, cost_weight=0.0)
        assert d.router == "adapted_quality-app" and d.bundle_version == done.serving_version
        with RouterClient(srv.target, tenant="b") as other:
            assert other.list_routers().default_quality_router == "quality"
            with pytest.raises(Exception, match=NEW):  # its router, the shipped one, does not know the new model
                other.route_among("Explain quicksort.", priced, cost_weight=0.0)


def test_recalibration_counts_a_hot_prompt_once(parent: Path, tmp_path: Path) -> None:
    """The latest decisions are one templated prompt 2,000 times among 150 others: the adapted_quality
    router's pair thresholds are calibrated on the 151 distinct prompts, each once (on the decisions as
    they came, the shares the hot prompt covers all had its score for their threshold)."""
    store = open_store(f"sqlite:{tmp_path / 'o.sqlite3'}")
    store.write([], _outcomes(*_judged(parent, signal=True)))
    hot = "Summarise this support ticket for the on-call engineer: printer offline again"
    texts = [hot] * 2000 + synthetic_prompts(150, seed=33)
    np.random.default_rng(4).shuffle(texts)
    pair = load_bundle(parent).manifest.default_pair
    start = int(time.time() * 1000) + 1000
    recent = [
        Decision(
            f"{i:032x}", start + i, "score", "before", {}, pair.strong, pair.weak, prompt_sha256(t), 8, prompt_text=t
        )
        for i, t in enumerate(texts)
    ]
    store.write(recent, [])
    run = adapt_qualities_from_store(parent, store, tmp_path / "b1")
    store.close()
    assert run.accepted, run.report["gate"]
    assert run.report["calibration_prompts"] == 151
    cal = load_bundle(tmp_path / "b1").manifest.calibration
    assert cal is not None
    shares = np.asarray(cal.strong_share)
    thresholds = np.asarray(cal.thresholds["adapted_quality"])
    middle = (shares >= 0.05 - 1e-9) & (shares <= 0.95 + 1e-9)
    assert len(set(thresholds[middle])) > 80, sorted(set(thresholds[middle].tolist()))
