"""Routing among N models through the OpenAI front: a real server on 127.0.0.1 with a real bundle (a tiny
ONNX encoder, a `quality` router of per-model heads from `make_tiny_bundle`) and a models file, an
upstreams file naming four models' endpoints (fake upstream LLMs, real HTTP on 127.0.0.1). Each answer
must come from the upstream of the model the gRPC Route call picks among the same models by the same
rule, or by the tenant's spend target; bad names are 400s naming what is wrong."""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle
from lmroute.bundle.writer import restamp_bundle
from lmroute.service.client import RouterClient
from lmroute.service.config import ServiceConfig
from lmroute.service.fake_upstream import FakeUpstream
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread

PRICES = {"model-00": 0.2, "model-01": 1.0, "model-03": 3.0, "model-05": 10.0}  # USD per million tokens
PROMPTS = [f"question {i}: explain why claim {i * 5 % 13} holds, step by step" for i in range(16)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny real bundle with a `quality` router as its default quality router, a models file)."""
    root = tmp_path_factory.mktemp("front-models")
    encoder = make_fake_encoder_dir(root / "encoder", dim=16, seed=3)
    bundle = make_tiny_bundle(root / "bundle", encoder_dir=encoder, seed=5, quality=True)
    restamp_bundle(bundle, default_quality_router="quality")  # as a build names it
    models_file = root / "models.json"
    models_file.write_text(
        json.dumps({"models": {m: {"input_price_per_mtok": p, "output_price_per_mtok": p} for m, p in PRICES.items()}})
    )
    return bundle, models_file


def _serve(built: tuple[Path, Path], models: dict[str, dict[str, object]], **settings: object) -> ServerThread:
    bundle, models_file = built
    upstreams = models_file.parent / f"upstreams-{len(list(models_file.parent.iterdir()))}.json"
    upstreams.write_text(json.dumps({"models": models}))
    configure_logging("warning")
    cfg = ServiceConfig(
        bundle_path=bundle,
        port=0,
        log_level="warning",
        grace_s=0.0,
        models_file=str(models_file),
        http_port=0,
        upstreams_file=str(upstreams),
        **settings,  # type: ignore[arg-type]
    )
    return ServerThread(cfg).start()


@pytest.fixture(scope="module")
def front(built: tuple[Path, Path]) -> Iterator[tuple[ServerThread, dict[str, FakeUpstream], str]]:
    ups = {m: FakeUpstream(f"llm-{m}").start() for m in PRICES}
    models = {m: {"model": f"served-{m}", "base_url": up.base_url} for m, up in ups.items()}
    srv = _serve(built, models, spend_targets="default=5")
    yield srv, ups, f"http://127.0.0.1:{srv.server.http_port}/v1"
    srv.stop()
    for up in ups.values():
        up.stop()


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30)


RULES = {
    "models-cost-0": {"cost_weight": 0.0},
    "models-cost-40": {"cost_weight": 40.0},
    "models-margin-0.1": {"quality_margin": 0.1},
    "models-floor-0.5": {"quality_floor": 0.5},
}


def test_each_answer_comes_from_the_model_route_picks_by_the_same_rule(
    front: tuple[ServerThread, dict[str, FakeUpstream], str],
) -> None:
    """Every rule, whole and streamed answers: the chosen model's upstream answers (and no other is
    asked), the headers say the gRPC call's choice, estimate and cost; the rules choose differently."""
    srv, ups, base = front
    picks: dict[str, tuple[str, ...]] = {}
    with RouterClient(srv.target) as grpc_client:
        for name, rule in RULES.items():
            chosen = []
            for i, prompt in enumerate(PROMPTS):
                stream = i % 2 == 1
                before = {m: len(up.requests) for m, up in ups.items()}
                raw = _client(base).chat.completions.with_raw_response.create(
                    model=name, messages=[{"role": "user", "content": prompt}], stream=stream
                )
                direct = grpc_client.route_among(prompt, list(PRICES), **rule)
                model = direct.chosen_model
                chosen.append(model)
                if stream:
                    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                else:
                    text = raw.parse().choices[0].message.content or ""
                assert text == f"llm-{model}: {prompt}", (name, prompt)
                headers = raw.headers
                assert headers["x-lmroute-chosen"] == model and headers["x-lmroute-model"] == f"served-{model}"
                estimate = (
                    float(headers["x-lmroute-predicted-quality"]),
                    float(headers["x-lmroute-expected-cost-usd"]),
                )
                assert estimate[0] == pytest.approx(direct.chosen.predicted_quality, abs=1e-5)
                assert estimate[1] == pytest.approx(direct.chosen.expected_cost_usd, rel=1e-5)
                assert len(headers["x-lmroute-decision-id"]) == 32 and "x-lmroute-tier" not in headers
                after = {m: len(up.requests) for m, up in ups.items()}
                assert {m for m in PRICES if after[m] != before[m]} == {model}  # only the chosen one asked
                assert ups[model].requests[-1]["model"] == f"served-{model}"
            picks[name] = tuple(chosen)
    assert len(set(picks.values())) >= 3, picks  # the rule named is the rule applied


def test_models_by_the_tenants_spend_target_and_the_names_listed(
    front: tuple[ServerThread, dict[str, FakeUpstream], str],
) -> None:
    srv, ups, base = front
    raw = _client(base).chat.completions.with_raw_response.create(
        model="models", messages=[{"role": "user", "content": PROMPTS[0]}]
    )
    model = raw.headers["x-lmroute-chosen"]
    assert model in PRICES and raw.parse().choices[0].message.content == f"llm-{model}: {PROMPTS[0]}"
    with RouterClient(srv.target) as grpc_client:
        spend = grpc_client.list_spend_targets()
    [controller] = spend.controllers  # the default tenant's controller chose (no rule named)
    assert controller.tenant == "default" and controller.router == "quality" and controller.decisions == 1
    ids = [m.id for m in _client(base).models.list().data]
    assert ids == ["models"]  # the file names models only: no router-<router> names to offer


def test_the_expected_cost_counts_what_the_model_is_sent(
    front: tuple[ServerThread, dict[str, FakeUpstream], str],
) -> None:
    """A last user turn over Route's prompt limit is routed on its head and tail, but sent whole, with the
    system turn, a tool turn and the tools offered: the expected cost counts all of that."""
    srv, ups, base = front
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
    messages = [
        {"role": "system", "content": "s" * 1_000},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "t" * 3_000},
        {"role": "user", "content": [{"type": "text", "text": "long question. " * 4_000}]},  # 60,000 characters
    ]
    raw = _client(base).chat.completions.with_raw_response.create(
        model="models-cost-0",
        messages=messages,
        tools=tools,  # type: ignore[arg-type]
    )
    chosen = raw.headers["x-lmroute-chosen"]
    assert ups[chosen].requests[-1]["messages"][-1]["content"][0]["text"] == "long question. " * 4_000  # sent whole
    sent = len("\n".join(["s" * 1_000, "", json.dumps(calls), "t" * 3_000, "long question. " * 4_000]))
    sent += len(json.dumps(tools))
    price = PRICES[chosen]
    out_tokens = srv.server.config.expected_output_tokens
    expected = (math.ceil(sent / 4) * price + out_tokens * price) / 1e6
    assert float(raw.headers["x-lmroute-expected-cost-usd"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("name", "status", "words"),
    [
        ("models-speed-1", 400, "unknown rule 'speed' in 'models-speed-1'"),
        ("models-margin-2", 400, "margin in 'models-margin-2' must be in [0, 1]"),
        ("models-cost-x", 400, "cost 'x' in 'models-cost-x' is not a number"),
        ("router-mf-0.5", 400, "the upstreams file names no strong and weak sides"),
    ],
)
def test_bad_models_names_are_400_naming_what_is_wrong(
    front: tuple[ServerThread, dict[str, FakeUpstream], str], name: str, status: int, words: str
) -> None:
    _, _, base = front
    with pytest.raises(openai.APIStatusError) as err:
        _client(base).chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == status and words in err.value.message, err.value.message


def test_a_model_that_falls_back_passes_a_request_it_fails_to_the_runner_up(built: tuple[Path, Path]) -> None:
    """Every model set to fall back, model-01's endpoint down: a request the rule sends to model-01 is
    answered by the runner-up (the rule's pick without model-01), the headers naming it, its estimate and
    the model that failed, without the decision's id; the others as chosen."""
    ups = {m: FakeUpstream(f"llm-{m}").start() for m in PRICES if m != "model-01"}
    models: dict[str, dict[str, object]] = {
        m: {"model": f"served-{m}", "base_url": ups[m].base_url if m in ups else "http://127.0.0.1:9/v1"}
        for m in PRICES
    }
    for entry in models.values():
        entry.update(fallback=True, fallback_after=100)  # the breaker stays closed: every request tries model-01
    srv = _serve(built, models)
    base = f"http://127.0.0.1:{srv.server.http_port}/v1"
    fell = 0
    try:
        with RouterClient(srv.target) as grpc_client:
            for prompt in PROMPTS:
                raw = _client(base).chat.completions.with_raw_response.create(
                    model="models-cost-0", messages=[{"role": "user", "content": prompt}]
                )
                direct = grpc_client.route_among(prompt, list(PRICES), cost_weight=0.0)
                headers = raw.headers
                if direct.chosen_model != "model-01":
                    assert headers["x-lmroute-chosen"] == direct.chosen_model and "x-lmroute-fallback" not in headers
                    continue
                fell += 1
                runner_up = direct.runner_up.model
                assert raw.parse().choices[0].message.content == f"llm-{runner_up}: {prompt}"
                assert headers["x-lmroute-chosen"] == runner_up and headers["x-lmroute-model"] == f"served-{runner_up}"
                assert headers["x-lmroute-fallback"] == "model-01" and "x-lmroute-decision-id" not in headers
                assert float(headers["x-lmroute-predicted-quality"]) == pytest.approx(
                    direct.runner_up.predicted_quality, abs=1e-5
                )
    finally:
        srv.stop()
        for up in ups.values():
            up.stop()
    assert fell >= 3  # the rule chose model-01 for several prompts (10 of 16 with these seeds)


def test_a_model_whose_endpoint_is_skipped_is_left_out_of_the_choice(built: tuple[Path, Path]) -> None:
    """model-01's endpoint answers 503; once its breaker opens (2 failures in a row), `models...` requests
    are decided among the three others: the rule's pick among them answers with the decision's id (its
    outcomes are of the model that answered), `x-lmroute-left-out` names model-01, model-01's upstream is
    not asked, and the tenant's spend target counts the cost of the models that answered."""
    ups = {m: FakeUpstream(f"llm-{m}", status=503 if m == "model-01" else 200).start() for m in PRICES}
    models: dict[str, dict[str, object]] = {
        m: {
            "model": f"served-{m}",
            "base_url": up.base_url,
            "fallback": True,
            "fallback_after": 2,
            "fallback_for_s": 600,
        }
        for m, up in ups.items()
    }
    srv = _serve(built, models, spend_targets="default=5", metrics_port=0)
    base = f"http://127.0.0.1:{srv.server.http_port}/v1"
    others = [m for m in PRICES if m != "model-01"]

    def ask(model: str, prompt: str) -> dict[str, str]:
        raw = _client(base).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}]
        )
        chosen = raw.headers["x-lmroute-chosen"]
        assert raw.parse().choices[0].message.content == f"llm-{chosen}: {prompt}"
        return dict(raw.headers)

    try:
        with RouterClient(srv.target) as grpc_client:
            to_01 = [
                p
                for p in PROMPTS
                if grpc_client.route_among(p, list(PRICES), cost_weight=0.0).chosen_model == "model-01"
            ]
            assert len(to_01) >= 3
            for prompt in to_01[:2]:  # model-01 fails them: the runner-up answers, and the breaker opens
                assert ask("models-cost-0", prompt)["x-lmroute-fallback"] == "model-01"
            asked = len(ups["model-01"].requests)
            for prompt in PROMPTS:
                headers = ask("models-cost-0", prompt)
                among = grpc_client.route_among(prompt, others, cost_weight=0.0)
                assert headers["x-lmroute-chosen"] == among.chosen_model, prompt
                assert headers["x-lmroute-left-out"] == "model-01" and "x-lmroute-fallback" not in headers
                assert headers["x-lmroute-decision-id"]  # the decision is of the model that answered
            spent = [float(ask("models", p)["x-lmroute-expected-cost-usd"]) for p in PROMPTS[:6]]
            [controller] = grpc_client.list_spend_targets().controllers
        assert len(ups["model-01"].requests) == asked  # not asked while left out
        assert controller.decisions == 6  # the spend target's own calls, each among the three that answer
        assert controller.realised_per_1k_usd == pytest.approx(1000 * sum(spent) / len(spent), rel=1e-4)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10).read()
        text = metrics.decode()
        assert f'lmroute_upstream_fallbacks_total{{upstream="model-01",why="left_out"}} {len(PROMPTS) + 6}.0' in text
        assert 'lmroute_upstream_skipped{upstream="model-01"} 1.0' in text
    finally:
        srv.stop()
        for up in ups.values():
            up.stop()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("model-99", "'model-99' is not predicted by router quality"),  # a model the router does not know
        ("model-02", "no price for model-02"),  # predicted, but not in the models file
    ],
)
def test_an_upstreams_file_that_does_not_fit_the_bundle_is_the_deployments_error(
    built: tuple[Path, Path], extra: str, words: str
) -> None:
    """A model the bundle cannot route to, in the upstreams file: each `models...` request is a 500 saying
    what does not fit (UPSTREAMS_MISMATCH), not a 400 blaming the caller; no upstream is asked."""
    ups = {m: FakeUpstream(f"llm-{m}").start() for m in ("model-00", extra)}
    srv = _serve(built, {m: {"model": m, "base_url": up.base_url} for m, up in ups.items()})
    try:
        with pytest.raises(openai.InternalServerError) as err:
            _client(f"http://127.0.0.1:{srv.server.http_port}/v1").chat.completions.create(
                model="models-cost-0", messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.status_code == 500 and err.value.code == "UPSTREAMS_MISMATCH"
        assert "the upstreams file names models the serving bundle cannot route among" in err.value.message
        assert words in err.value.message, err.value.message
        assert not any(up.requests for up in ups.values())
    finally:
        srv.stop()
        for up in ups.values():
            up.stop()
