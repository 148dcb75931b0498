"""Route among N priced candidates through a real gRPC server on 127.0.0.1 with a real bundle (a tiny real
ONNX encoder, a `quality` router of per-model heads from `make_tiny_bundle`) and a models file: every
policy picks what the bundle's own qualities and the stated prices say it should, the runner-up and the
expected costs are reported, the decision is recorded, and each bad request is refused naming its field."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
from lmroute.outcomes.store import open_store
from lmroute.service.client import RouterClient, to_prompt
from lmroute.service.config import ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

# per-model prices: USD per million input / output tokens, answer length
PRICES = {
    "model-00": (0.2, 0.2, 100),
    "model-01": (1.0, 2.0, None),
    "model-03": (3.0, 15.0, 400),
    "model-05": (10.0, 30.0, 300),
}
DEFAULT_OUTPUT_TOKENS = 200


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Bundle, str]]:
    root = tmp_path_factory.mktemp("models")
    encoder = make_fake_encoder_dir(root / "encoder", dim=16, seed=3)
    path = make_tiny_bundle(root / "bundle", encoder_dir=encoder, seed=5, quality=True)
    models_file = root / "models.json"
    models = {}
    for name, (p_in, p_out, tokens) in PRICES.items():
        entry: dict[str, object] = {"input_price_per_mtok": p_in, "output_price_per_mtok": p_out}
        if tokens is not None:
            entry["output_tokens"] = tokens
        models[name] = entry
    models_file.write_text(json.dumps({"models": models}))
    dsn = f"sqlite:{root / 'outcomes.sqlite3'}"
    configure_logging("warning")
    cfg = ServiceConfig(
        bundle_path=path,
        port=0,
        log_level="warning",
        grace_s=0.0,
        models_file=str(models_file),
        expected_output_tokens=DEFAULT_OUTPUT_TOKENS,
        store=dsn,
    )
    srv = ServerThread(cfg).start()
    yield srv, load_bundle(path), dsn
    srv.stop()


def qualities(bundle: Bundle, text: str) -> np.ndarray:
    return bundle.routers["quality"].qualities(bundle.prompt_batch([text]))[0]  # type: ignore[attr-defined]


def cost(model: str, text: str) -> float:
    p_in, p_out, tokens = PRICES[model]
    return (math.ceil(len(text) / 4) * p_in + (tokens or DEFAULT_OUTPUT_TOKENS) * p_out) / 1e6


def route(client: RouterClient, text: str, models: list[str], **rule: float) -> router_pb2.RouteResponse:
    return client.route_among(text, models, router="quality", **rule)


def test_list_routers_names_the_models_a_quality_router_predicts(setup: tuple[ServerThread, Bundle, str]) -> None:
    srv, bundle, _ = setup
    with RouterClient(srv.target) as client:
        info = {r.name: r for r in client.list_routers().routers}
    assert list(info["quality"].models) == list(bundle.manifest.models) and info["quality"].kind == "quality"
    assert list(info["mf"].models) == []


def test_each_policy_picks_what_the_predicted_qualities_and_prices_say(
    setup: tuple[ServerThread, Bundle, str],
) -> None:
    srv, bundle, dsn = setup
    models = list(PRICES)
    col = [bundle.manifest.models.index(m) for m in models]
    checked = 0
    with RouterClient(srv.target) as client:
        for text in synthetic_prompts(12, seed=21):
            q = qualities(bundle, text)[col]
            c = np.array([cost(m, text) for m in models])
            best = models[int(np.argmax(q))]
            cheapest = models[int(np.argmin(c))]

            top = route(client, text, models, cost_weight=0.0)
            assert top.chosen_model == best and top.chosen.model == best
            assert top.chosen.predicted_quality == pytest.approx(q.max(), abs=1e-6)
            assert top.chosen.expected_cost_usd == pytest.approx(c[models.index(best)], rel=1e-9)
            second = models[int(np.argsort(-q)[1])]
            assert top.runner_up.model == second and math.isnan(top.threshold)

            assert route(client, text, models, cost_weight=1e6).chosen_model == cheapest
            assert route(client, text, models, quality_margin=1.0).chosen_model == cheapest
            assert route(client, text, models, quality_floor=1.0).chosen_model == best  # nobody reaches 1

            w = 0.5  # quality per USD of 1,000 requests
            utility = q - w * 1000 * c
            assert route(client, text, models, cost_weight=w).chosen_model == models[int(np.argmax(utility))]
            margin = 0.1
            ok = q >= q.max() - margin
            within = route(client, text, models, quality_margin=margin).chosen_model
            assert within == models[int(np.argmin(np.where(ok, c, np.inf)))]
            checked += 1
        decision_id = top.decision_id
    assert checked == 12
    store = open_store(dsn)
    try:
        for _ in range(200):
            d = store.decision(decision_id)
            if d is not None:
                break
            time.sleep(0.05)
        assert d is not None and d.chosen_model == top.chosen_model and d.policy == "cost_weight"
        assert d.threshold is None and d.router == "quality"
    finally:
        store.close()


def test_prices_in_the_request_win_over_the_models_file(setup: tuple[ServerThread, Bundle, str]) -> None:
    srv, _, _ = setup
    text = "Summarise the causes of the French Revolution."
    req = router_pb2.RouteRequest(
        prompt=to_prompt(text),
        router="quality",
        candidates=[
            router_pb2.Candidate(model="model-00", input_price_per_mtok=500.0, output_price_per_mtok=500.0),
            router_pb2.Candidate(model="model-05"),
        ],
        model_policy=router_pb2.ModelPolicy(cost_weight=1e6),
    )
    with RouterClient(srv.target) as client:
        resp = client.stub.Route(req, timeout=10)
    assert resp.chosen_model == "model-05"  # model-00 made dearer by the request's own prices
    assert resp.runner_up.expected_cost_usd == pytest.approx((math.ceil(len(text) / 4) * 500 + 100 * 500) / 1e6)
    # a conversation costs all its turns' input (the router reads its last user turn; the model gets all)
    turns = [("system", "You are terse. " * 400), ("user", "Here is a report. " * 2000), ("user", text)]
    conversation = router_pb2.Prompt(
        conversation=router_pb2.Conversation(messages=[router_pb2.ChatMessage(role=r, content=m) for r, m in turns])
    )
    req.prompt.CopyFrom(conversation)
    with RouterClient(srv.target) as client:
        resp = client.stub.Route(req, timeout=10)
    n_in = math.ceil(len("\n".join(m for _, m in turns)) / 4)
    assert resp.runner_up.expected_cost_usd == pytest.approx((n_in * 500 + 100 * 500) / 1e6)


@pytest.mark.parametrize(
    ("edit", "message", "reason"),
    [
        (dict(router="mf"), "router: 'mf' (mf) predicts no per-model quality", "ROUTER_NOT_MULTI_MODEL"),
        (dict(models=["model-00"]), "candidates: 1 given (need 2 to 64)", "TOO_FEW_CANDIDATES"),
        (dict(models=["model-00", "nope"]), "candidates[1].model: 'nope' is not predicted", "UNKNOWN_MODEL"),
        (dict(models=["model-00", "model-00"]), "candidates[1].model: model-00 given twice", "DUPLICATE_CANDIDATE"),
        (
            dict(models=["model-00", "model-02"]),
            "candidates[1].input_price_per_mtok: no price for model-02",
            "NO_PRICE",
        ),
        (dict(rule=dict(cost_weight=-1.0)), "model_policy.cost_weight: must be >= 0 (got -1.0)", "OUT_OF_RANGE"),
        (dict(rule=dict(quality_floor=1.5)), "model_policy.quality_floor: must be in [0, 1]", "OUT_OF_RANGE"),
        (dict(rule={}), "model_policy: set cost_weight, quality_margin or quality_floor", "MISSING_POLICY"),
        (dict(threshold=0.5), "model_policy: required with candidates", "MISSING_POLICY"),
        (dict(models=[]), "candidates: at least two required with model_policy", "TOO_FEW_CANDIDATES"),
        (  # a price large enough makes the expected cost inf, which held a spend controller for good
            dict(price=1e308),
            "candidates[0].input_price_per_mtok: must be in [0, 1e+06] USD per million tokens (got 1e+308)",
            "OUT_OF_RANGE",
        ),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    setup: tuple[ServerThread, Bundle, str], edit: dict[str, object], message: str, reason: str
) -> None:
    srv, _, _ = setup
    models = edit.get("models", ["model-00", "model-05"])
    price = float(edit.get("price", 0.0))  # type: ignore[arg-type]
    req = router_pb2.RouteRequest(
        prompt=to_prompt("hello"),
        router=str(edit.get("router", "quality")),
        candidates=[router_pb2.Candidate(model=m, input_price_per_mtok=price) for m in models],  # type: ignore[attr-defined]
    )
    if "threshold" in edit:
        req.threshold = float(edit["threshold"])  # type: ignore[arg-type]
    else:
        req.model_policy.CopyFrom(router_pb2.ModelPolicy(**edit.get("rule", dict(cost_weight=0.1))))  # type: ignore[arg-type]
    with RouterClient(srv.target) as client, pytest.raises(grpc.RpcError) as e:
        client.stub.Route(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (e.value.details() or ""), e.value.details()
    md = dict(e.value.trailing_metadata() or ())
    assert reason.encode() in md.get("grpc-status-details-bin", b"")


def test_spend_targets_are_held_per_tenant_and_resume_after_a_restart(
    setup: tuple[ServerThread, Bundle, str], tmp_path: Path
) -> None:
    srv0, bundle, _ = setup
    dsn = f"sqlite:{tmp_path / 'spend.sqlite3'}"
    cfg = dataclasses.replace(
        srv0.server.config, store=dsn, spend_targets="default=2,batch=0.5", control_window=300, control_horizon=600
    )
    models = list(PRICES)
    texts = synthetic_prompts(1300, seed=31)
    srv = ServerThread(cfg).start()
    try:
        spent: dict[str, list[float]] = {"default": [], "batch": []}
        with RouterClient(srv.target) as plain, RouterClient(srv.target, tenant="batch") as batch:
            for i, text in enumerate(texts[:1200]):
                client, tenant = (batch, "batch") if i % 2 else (plain, "default")
                resp = client.route_among(text, models, router="quality")
                assert resp.chosen.expected_cost_usd == pytest.approx(cost(resp.chosen_model, text), rel=1e-9)
                spent[tenant].append(resp.chosen.expected_cost_usd)
            before = plain.list_spend_targets()
        for tenant, target in (("default", 2.0), ("batch", 0.5)):
            realised = 1000 * float(np.mean(spent[tenant][200:]))
            assert abs(realised - target) / target <= 0.1, (tenant, realised)
        assert {(t.tenant, t.spend_per_1k_usd) for t in before.targets} == {("default", 2.0), ("batch", 0.5)}
        assert [(s.tenant, s.router, s.decisions) for s in before.controllers] == [
            ("batch", "quality", 600),
            ("default", "quality", 600),
        ]
        store = open_store(dsn)
        try:
            deadline = time.monotonic() + 20
            while store.counts()["decisions"] < 1200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            store.close()
    finally:
        srv.stop()
    again = ServerThread(cfg).start()
    try:
        with RouterClient(again.target) as client:
            after = client.list_spend_targets()
    finally:
        again.stop()
    assert after.restored_decisions == 1200
    assert list(after.controllers) == list(before.controllers)


def test_exploring_among_candidates_reports_and_records_propensities(
    setup: tuple[ServerThread, Bundle, str], tmp_path: Path
) -> None:
    """With explore_rate, a share of decisions serves a candidate drawn at random among all of them; each
    answer says the probability its model had, and the store keeps it."""
    srv0, bundle, _ = setup
    dsn = f"sqlite:{tmp_path / 'explore.sqlite3'}"
    rate = 0.3
    srv = ServerThread(dataclasses.replace(srv0.server.config, store=dsn, explore_rate=rate)).start()
    models = list(PRICES)
    texts = synthetic_prompts(400, seed=41)
    try:
        with RouterClient(srv.target) as client:
            answers = [route(client, t, models, cost_weight=0.0) for t in texts]
        col = [bundle.manifest.models.index(m) for m in models]
        policy = [models[int(np.argmax(qualities(bundle, t)[col]))] for t in texts]
        off = [a for a, p in zip(answers, policy, strict=True) if a.chosen_model != p]
        assert 0.12 * len(texts) <= len(off) <= 0.33 * len(texts)  # rate x 3/4 = 22.5 %
        assert len({a.chosen_model for a in off}) >= 2  # explored answers reach several models
        for a, p in zip(answers, policy, strict=True):
            want = rate / 4 if a.chosen_model != p else 1 - rate + rate / 4
            assert a.propensity == pytest.approx(want)
            assert a.chosen.model == a.chosen_model and a.runner_up.model != a.chosen_model
            if a.chosen_model != p:  # explored: the runner-up is the policy's own choice
                assert a.runner_up.model == p
        store = open_store(dsn)
        try:
            deadline = time.monotonic() + 20
            while store.counts()["decisions"] < len(texts):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for a in answers[:50]:
                d = store.decision(a.decision_id)
                assert d is not None and d.chosen_model == a.chosen_model
                assert d.propensity == pytest.approx(a.propensity)
                assert json.loads(d.choice or "{}")["chosen"] == models.index(a.chosen_model)
        finally:
            store.close()
    finally:
        srv.stop()


def test_binding_spend_targets_refuse_a_model_policy_of_the_callers_own(
    setup: tuple[ServerThread, Bundle, str],
) -> None:
    srv0, _, _ = setup
    cfg = dataclasses.replace(srv0.server.config, spend_targets="batch=0.5", binding_targets=True)
    srv = ServerThread(cfg).start()
    try:
        models = list(PRICES)
        with RouterClient(srv.target, tenant="batch") as batch:
            with pytest.raises(grpc.RpcError) as e:
                batch.route_among("hello", models, router="quality", cost_weight=0.0)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "tenant 'batch' holds a spend target, which this server makes binding" in (e.value.details() or "")
            assert batch.route_among("hello", models, router="quality").chosen_model in models  # its target
            # its own prices would move what the budget counts: refused unless they are the file's
            filed = [
                router_pb2.Candidate(model=m, input_price_per_mtok=p[0], output_price_per_mtok=p[1])
                for m, p in PRICES.items()
            ]
            assert batch.route_among("hello", filed, router="quality").chosen_model in models
            for i, field in ((1, "input_price_per_mtok"), (3, "output_price_per_mtok")):
                cheap = [router_pb2.Candidate() for _ in filed]
                for c, f in zip(cheap, filed, strict=True):
                    c.CopyFrom(f)
                setattr(cheap[i], field, 1e-9)  # one price of the call's own, far under the file's
                with pytest.raises(grpc.RpcError) as e:
                    batch.route_among("hello", cheap, router="quality")
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
                said = f"candidates[{i}]: {models[i]!r}: {field} differs from the models file's; the spend target"
                assert said in (e.value.details() or "")
        with RouterClient(srv.target, tenant="other") as other:  # no spend target: its own policy stands
            assert other.route_among("hello", models, router="quality", cost_weight=0.0).chosen_model in models
            cheap = [
                router_pb2.Candidate(model=m, input_price_per_mtok=1e-9, output_price_per_mtok=1e-9) for m in models
            ]
            assert other.route_among("hello", cheap, router="quality", cost_weight=1.0).chosen_model in models
    finally:
        srv.stop()
