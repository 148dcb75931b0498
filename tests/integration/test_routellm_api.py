"""`lmroute.Controller` (RouteLLM's Python API) against a real server (FakeScorer routers) and two fake
upstream LLMs (real HTTP on 127.0.0.1): RouteLLM's README quickstart runs with only its import changed,
and every answer comes from the model the server's Route picks."""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmroute.service.client import RouterClient
from lmroute.service.fake_upstream import FakeUpstream
from lmroute.service.front_requests import cut_middle
from lmroute.service.routellm_api import ChatResponse, Controller, RoutingError, UpstreamError, endpoint
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

# RouteLLM's README, "Quickstart" steps 1 and 3 (https://github.com/lm-sys/RouteLLM, README.md at
# 0a4da69, Apache-2.0), copied as they are except the import line (`from routellm.controller import
# Controller` there).
README_QUICKSTART = textwrap.dedent(
    """
    import os
    from lmroute import Controller

    os.environ["OPENAI_API_KEY"] = "sk-XXXXXX"
    # Replace with your model provider, we use Anyscale's Mixtral here.
    os.environ["ANYSCALE_API_KEY"] = "esecret_XXXXXX"

    client = Controller(
      routers=["mf"],
      strong_model="gpt-4-1106-preview",
      weak_model="anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1",
    )

    response = client.chat.completions.create(
      # This tells RouteLLM to use the MF router with a cost threshold of 0.11593
      model="router-mf-0.11593",
      messages=[
        {"role": "user", "content": "Hello!"}
      ]
    )
    """
)


@pytest.fixture
def world(
    fake_servers: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerThread, FakeUpstream, FakeUpstream]]:
    """A server, and OpenAI's and Anyscale's endpoints stood in by fake upstreams (through the variables
    the Controller reads: its server and each provider's base URL)."""
    srv = fake_servers()
    openai_up, anyscale_up = FakeUpstream("openai").start(), FakeUpstream("anyscale").start()
    monkeypatch.setenv("LMROUTE_TARGET", srv.target)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_up.base_url)
    monkeypatch.setenv("ANYSCALE_BASE_URL", anyscale_up.base_url)
    yield srv, openai_up, anyscale_up
    openai_up.stop()
    anyscale_up.stop()


def test_readme_quickstart_runs_with_only_the_import_changed(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream],
) -> None:
    srv, openai_up, anyscale_up = world
    scope: dict[str, Any] = {}
    exec(compile(README_QUICKSTART, "README_QUICKSTART", "exec"), scope)
    response = scope["response"]
    direct = RouterClient(srv.target).route("Hello!", router="mf", threshold=0.11593)
    if direct.tier == router_pb2.TIER_STRONG:
        up, model, key = openai_up, "gpt-4-1106-preview", "Bearer sk-XXXXXX"
    else:
        up, model, key = anyscale_up, "mistralai/Mixtral-8x7B-Instruct-v0.1", "Bearer esecret_XXXXXX"
    assert response.choices[0].message.content == f"{up.name}: Hello!"
    assert response["choices"][0]["message"]["content"] == f"{up.name}: Hello!"
    assert up.requests == [{"model": model, "messages": [{"role": "user", "content": "Hello!"}]}]
    assert up.keys == [key]
    assert response.routing.decision_id and response.routing.score == pytest.approx(direct.score, abs=1e-6)
    assert dict(scope["client"].model_counts["mf"]) == {response.routing.model: 1}


def test_each_answer_comes_from_the_routed_model(world: tuple[ServerThread, FakeUpstream, FakeUpstream]) -> None:
    srv, openai_up, anyscale_up = world
    client = Controller(routers=["mf", "random"], strong_model="gpt-4o", weak_model="anyscale/llama-3-8b")
    direct = RouterClient(srv.target)
    prompts = [f"task {i}: explain step {i * 3 % 7} of the proof" for i in range(16)]
    tiers = set()
    for p in prompts:
        want = direct.route(p, router="mf", strong_share=0.5)
        tier = "strong" if want.tier == router_pb2.TIER_STRONG else "weak"
        tiers.add(tier)
        assert client.route(p, "mf", want.threshold) == ("gpt-4o" if tier == "strong" else "anyscale/llama-3-8b")
        # RouteLLM's `client.routers[name]`: a router with its calculate_strong_win_rate and route
        assert client.routers["mf"].calculate_strong_win_rate(p) == pytest.approx(want.score, abs=1e-9)
        assert client.routers["mf"].route(p, want.threshold, client.model_pair) == client.route(p, "mf", want.threshold)
        r = client.chat.completions.create(model="router-mf@0.5", messages=[{"role": "user", "content": p}])
        assert r.routing.tier == tier
        assert r.choices[0].message.content == f"{'openai' if tier == 'strong' else 'anyscale'}: {p}"
        assert r.choices[0].message.tool_calls is None and r.system_fingerprint is None  # left out: None
    assert tiers == {"strong", "weak"}
    # streaming and async, through the same routing
    r = client.completion(
        router="random", threshold=0.0, messages=[{"role": "user", "content": "hi there"}], stream=True
    )
    chunks = list(r)
    assert all(isinstance(c, ChatResponse) and c.routing.tier == "strong" for c in chunks)
    # as OpenAI's own code reads a stream: its last chunk's delta is {} (content None, no AttributeError)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "openai: hi there"
    assert chunks[-1].choices[0].delta == {} and chunks[-1].choices[0].delta.content is None
    assert chunks[0].model_dump() == json.loads(json.dumps(chunks[0])) and type(chunks[0].model_dump()) is dict
    assert json.loads(chunks[0].model_dump_json()) == chunks[0].model_dump()
    with pytest.raises(AttributeError, match="has no attribute 'model_copy'"):  # a method it lacks: not None
        chunks[0].model_copy()

    async def both() -> tuple[Any, list[Any]]:
        one = await client.chat.completions.acreate(
            model="router-random-1", messages=[{"role": "user", "content": "x y"}]
        )
        stream = await client.acompletion(
            model="router-random-0", messages=[{"role": "user", "content": "a b"}], stream=True
        )
        return one, [c async for c in stream]

    one, chunks = asyncio.run(both())
    assert one.choices[0].message.content in ("anyscale: x y", "openai: x y")  # random's score vs threshold 1
    assert "".join(c.choices[0].delta.get("content", "") for c in chunks) == "openai: a b"
    scores = client.batch_calculate_win_rate(prompts, "mf")
    want_scores = [s.scores[0].strong_win_probability for s in direct.score(prompts, ["mf"]).results]
    assert scores == pytest.approx(want_scores, abs=1e-9)
    client.close()


def test_async_completions_run_at_once_and_a_cancelled_one_closes_its_connection(
    fake_servers: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`acompletion` calls the model on the event loop: 24 calls to an upstream that answers after a second
    are all in flight at once (a pool of threads held them to its size: 6 on 2 cores), and a cancelled
    call closes its connection at once (its thread held it until the upstream answered)."""
    srv = fake_servers()
    with FakeUpstream("openai", delay_s=1.0) as up:
        monkeypatch.setenv("OPENAI_BASE_URL", up.base_url)
        client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="gpt-4o-mini", target=srv.target)

        def ask(i: int) -> Any:
            return client.acompletion(model="router-mf-0", messages=[{"role": "user", "content": f"q {i}"}])

        async def run() -> list[Any]:
            answers = await asyncio.gather(*(ask(i) for i in range(24)))
            doomed = [asyncio.ensure_future(ask(100 + i)) for i in range(5)]
            while up.waiting < 5:
                await asyncio.sleep(0.01)
            for task in doomed:
                task.cancel()
            await asyncio.gather(*doomed, return_exceptions=True)
            return list(answers)

        answers = asyncio.run(run())
        deadline = time.monotonic() + 10
        while up.callers_gone < 5:
            assert time.monotonic() < deadline, f"{up.callers_gone} of 5 cancelled calls closed their connection"
            time.sleep(0.05)
        client.close()
    assert up.most_waiting >= 24
    assert sorted(a.choices[0].message.content for a in answers) == sorted(f"openai: q {i}" for i in range(24))
    assert client.model_counts["mf"]["gpt-4o"] == 29  # every call counted, the cancelled ones too


def test_the_controller_sizes_its_calls_by_the_servers_own_limits(
    fake_servers: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ListRouters says the server's limits; the Controller cuts a prompt to the server's prompt limit
    (a server of 5,000 refused a prompt the Controller cut at its own default of 20,000), and splits
    win-rate prompts into calls the server and the wire take (50 prompts a call where the server takes
    50; 128 prompts of 15,000 CJK characters, 5.7 MB, over several calls under 4 MiB and 1M characters)."""
    from lmroute.service.config import BatchPolicy

    small = fake_servers(batch=BatchPolicy(max_prompt_chars=5000), max_prompts_per_request=50)
    with RouterClient(small.target) as direct:
        limits = direct.list_routers().limits
    assert (limits.max_prompt_chars, limits.max_prompts_per_request) == (5000, 50)
    assert (limits.max_request_chars, limits.max_message_bytes) == (1_000_000, 4 * 1024 * 1024)
    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="gpt-4o-mini", target=small.target)
    long = "word " * 1923  # 9,615 characters
    assert client.route(long, "mf", 0.5) in ("gpt-4o", "gpt-4o-mini")
    prompts = [f"prompt {i}" for i in range(100)]
    with RouterClient(small.target) as direct:
        want = [r.scores[0].strong_win_probability for r in direct.score(prompts[:50], ["mf"]).results]
    assert client.batch_calculate_win_rate(prompts, "mf")[:50] == pytest.approx(want)
    client.close()
    wide = fake_servers()
    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="gpt-4o-mini", target=wide.target)
    cjk = [f"{i} " + "\u4e2d" * 15_000 for i in range(128)]
    scores = client.batch_calculate_win_rate(cjk, "mf")
    assert len(scores) == 128 and all(0.0 <= x <= 1.0 for x in scores)
    client.close()


def test_feedback_on_a_routed_completion_reaches_the_store(
    fake_servers: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from lmroute.outcomes.store import open_store

    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    srv = fake_servers(store=dsn)
    up = FakeUpstream("openai").start()
    monkeypatch.setenv("OPENAI_BASE_URL", up.base_url)
    try:
        client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="gpt-4o-mini", target=srv.target)
        r = client.chat.completions.create(model="router-mf@0.5", messages=[{"role": "user", "content": "Why?"}])
        deadline = time.monotonic() + 10
        while True:  # the decision is written behind the answer
            try:
                status = client.feedback(r.routing, 0.75, source="thumbs")
                break
            except RoutingError as exc:
                assert "DECISION_NOT_RECORDED_YET" in str(exc) and time.monotonic() < deadline
                time.sleep(0.05)
        assert (status.code, status.reason) == (0, "")
        assert client.feedback(r.routing.decision_id, 0.75, source="thumbs").reason == "DUPLICATE"
        assert client.feedback(r.routing, strong=1.0, weak=0.0, source="judge").reason == ""
        with pytest.raises(RoutingError, match="INVALID_OUTCOME") as refused:
            client.feedback(r.routing, 1.5)
        assert (refused.value.code, refused.value.reason) == ("INVALID_ARGUMENT", "INVALID_OUTCOME")
        with pytest.raises(RoutingError, match="give quality, or strong and weak"):
            client.feedback(r.routing, 1.0, strong=1.0)
        client.close()
        store = open_store(dsn)
        [row] = store.labeled_prompts()
        store.close()
        # the server's pair (the fake's): the thumbs on the model it chose, the judge on both
        assert row.decision_id == r.routing.decision_id and set(row.qualities) == {"fake-strong", "fake-weak"}
    finally:
        up.stop()


def test_errors_are_routing_errors(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RoutingError, match="router 'bert' is not served at .* \\(loaded: random, mf\\)"):
        Controller(routers=["bert"], strong_model="a", weak_model="b")
    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="gpt-4o-mini")
    msgs = [{"role": "user", "content": "hello"}]
    with pytest.raises(RoutingError, match="unknown router 'sw_ranking'"):
        client.chat.completions.create(model="router-sw_ranking-0.5", messages=msgs)
    with pytest.raises(RoutingError, match="Router or threshold unspecified"):
        client.completion(messages=msgs)
    with pytest.raises(RoutingError, match="Invalid threshold 2"):
        client.route("x", "mf", 2)
    # the server's refusals are RoutingErrors too, with its code and reason (they were raw gRPC errors)
    with pytest.raises(RoutingError, match="no share targets") as refused:
        client.chat.completions.create(model="router-mf", messages=msgs)
    assert (refused.value.code, refused.value.reason) == ("INVALID_ARGUMENT", "MISSING_POLICY")
    with pytest.raises(RoutingError, match=r"messages\[0\]\.content: no text to route on") as refused:
        client.chat.completions.create(model="router-mf-0.5", messages=[{"role": "user", "content": " "}])
    assert refused.value.reason == "EMPTY_PROMPT"
    with pytest.raises(RoutingError, match="prompts\\[1\\]: empty prompt"):
        client.batch_calculate_win_rate(["fine", ""], "mf")
    with pytest.raises(RoutingError, match="no user message") as refused:
        client.chat.completions.create(model="router-mf-0.5", messages=[{"role": "system", "content": "hi"}])
    assert refused.value.reason == "NO_USER_TURN"
    with pytest.raises(RoutingError, match="the server 127.0.0.1:9 cannot be reached: UNAVAILABLE: ") as refused:
        Controller(routers=["mf"], strong_model="a", weak_model="b", target="127.0.0.1:9")
    assert refused.value.code == "UNAVAILABLE"
    with pytest.raises(RoutingError, match="target: expected host:port of the server, not a URL"):
        Controller(routers=["mf"], strong_model="a", weak_model="b", target="http://127.0.0.1:9")
    for bad in (
        lambda: client.route("a \ud800 b", "mf", 0.5),
        lambda: client.chat.completions.create(model="router-mf-0.5", messages=[{"role": "user", "content": "\udfff"}]),
    ):
        with pytest.raises(RoutingError, match="unpaired surrogate"):
            bad()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens
    with pytest.raises(UpstreamError, match="cannot be reached"):
        client.chat.completions.create(model="router-mf-0", messages=msgs)
    with FakeUpstream("picky", status=400) as picky:
        monkeypatch.setenv("OPENAI_BASE_URL", picky.base_url)
        with pytest.raises(UpstreamError) as err:
            client.chat.completions.create(model="router-mf-0", messages=msgs)
        assert err.value.status == 400 and "picky refuses" in err.value.body
    client.close()


def test_a_long_pasted_document_is_routed_and_sent_whole(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream],
) -> None:
    """A last user turn over the server's 20,000-character prompt limit: routed on its head and tail (it
    was a RoutingError, PROMPT_TOO_LONG), the model asked with the whole text."""
    _, openai_up, _ = world
    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="anyscale/llama-3-8b")
    document = "".join(f"row {i:05d} of the attached table;\n" for i in range(1000)) + "What stands out?"
    assert len(document) > 30_000
    r = client.chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": document}])
    assert r.routing.tier == "strong" and r.choices[0].message.content == f"openai: {document}"
    assert openai_up.requests[-1]["messages"][0]["content"] == document


def test_route_and_win_rates_read_a_long_prompt_as_a_completion_does_and_only_completions_are_counted(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream],
) -> None:
    """route() and batch_calculate_win_rate() score a prompt over the server's limit on its head and tail,
    as completion() does (they raised PROMPT_TOO_LONG); model_counts counts completions only, as
    RouteLLM's does (route() was counted); a numpy threshold is a number (it was refused)."""
    import numpy as np

    srv, _, _ = world
    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="anyscale/llama-3-8b")
    document = "".join(f"row {i:05d} of the attached table;\n" for i in range(1000)) + "What stands out?"
    [score] = client.batch_calculate_win_rate([document], "mf")
    [same] = client.batch_calculate_win_rate([cut_middle(document, 20_000)], "mf")
    assert score == same
    assert client.route(document, "mf", score) == "gpt-4o" and client.route(document, "mf", np.nextafter(score, 1)) == (
        "anyscale/llama-3-8b"
    )
    assert client.route("hi", "mf", np.float32(0.0)) == "gpt-4o" and client.route("hi", "mf", np.int64(1)) in (
        "gpt-4o",
        "anyscale/llama-3-8b",
    )
    assert dict(client.model_counts) == {}
    client.completion(router="mf", threshold=0.0, messages=[{"role": "user", "content": document}])
    assert {r: dict(c) for r, c in client.model_counts.items()} == {"mf": {"gpt-4o": 1}}


def test_client_side_keyword_arguments_are_refused_and_extra_body_is_merged(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream],
) -> None:
    """LiteLLM's and the SDK's own settings were sent to the model as request fields (a per-call api_key
    in the body); they are refused naming them. extra_body's fields join the request, as the SDK does."""
    _, openai_up, _ = world
    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="anyscale/llama-3-8b")
    hello = [{"role": "user", "content": "hello"}]
    for kwargs in ({"timeout": 30}, {"api_key": "sk-other", "num_retries": 2}, {"extra_headers": {"x": "y"}}):
        with pytest.raises(RoutingError) as err:
            client.completion(model="router-mf-0", messages=hello, **kwargs)
        assert err.value.reason == "BAD_ARGUMENT" and str(err.value).startswith(", ".join(sorted(kwargs)) + ":")
    assert openai_up.requests == []
    client.completion(model="router-mf-0", messages=hello, temperature=0.5, extra_body={"top_k": 5})
    assert openai_up.requests == [{"model": "gpt-4o", "messages": hello, "temperature": 0.5, "top_k": 5}]
    with pytest.raises(RoutingError, match="extra_body: expected a dict"):
        client.completion(model="router-mf-0", messages=hello, extra_body=["top_k"])


def test_endpoints_of_model_names() -> None:
    env = {"OPENAI_API_KEY": "o", "ANYSCALE_API_KEY": "a", "MYLAB_BASE_URL": "http://lab/v1", "MYLAB_API_KEY": "m"}
    assert endpoint("gpt-4o", None, None, env) == ("https://api.openai.com/v1", "o", "gpt-4o")
    assert endpoint("anyscale/mistralai/Mixtral", None, None, env) == (
        "https://api.endpoints.anyscale.com/v1",
        "a",
        "mistralai/Mixtral",
    )
    assert endpoint("mylab/llama", None, None, env) == ("http://lab/v1", "m", "llama")
    # a Hugging Face style name is a model name, not a provider
    assert endpoint("meta-llama/Meta-Llama-3-8B", None, None, env)[2] == "meta-llama/Meta-Llama-3-8B"
    assert endpoint("openai/gpt-4o", "http://vllm/v1", "k", env) == ("http://vllm/v1", "k", "gpt-4o")


def test_in_process_controller_decides_as_the_server_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Controller(bundle=PATH) routes in this process, with the same scores and choices as a server
    serving that bundle."""
    from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
    from lmroute.service.config import ServiceConfig

    bundle = make_tiny_bundle(tmp_path / "bundle", encoder_dir=make_fake_encoder_dir(tmp_path / "enc"), seed=2)
    prompts = synthetic_prompts(24, seed=9)
    with FakeUpstream("openai") as up, ServerThread(ServiceConfig(bundle_path=bundle, port=0)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", up.base_url)
        local = Controller(routers=["mf", "sw_ranking"], strong_model="big", weak_model="small", bundle=bundle)
        served = Controller(routers=["mf", "sw_ranking"], strong_model="big", weak_model="small", target=srv.target)
        for router in ("mf", "sw_ranking"):
            ours, theirs = (
                local.batch_calculate_win_rate(prompts, router),
                served.batch_calculate_win_rate(prompts, router),
            )
            assert ours == pytest.approx(theirs, abs=1e-6)
            for p in prompts[:8]:
                assert local.route(p, router, 0.5) == served.route(p, router, 0.5)
        r = local.chat.completions.create(model="router-mf@0.5", messages=[{"role": "user", "content": prompts[0]}])
        s = served.chat.completions.create(model="router-mf@0.5", messages=[{"role": "user", "content": prompts[0]}])
        assert r.routing.tier == s.routing.tier and r.routing.threshold == pytest.approx(s.routing.threshold)
        assert r.routing.decision_id == "" and len(s.routing.decision_id) == 32  # ids come from a server
        assert r.choices[0].message.content == f"openai: {prompts[0]}"
        with pytest.raises(RoutingError, match="a live share target needs a server"):
            local.chat.completions.create(model="router-mf", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(RoutingError, match="feedback needs a server"):
            local.feedback(s.routing, 1.0)
        with pytest.raises(RoutingError, match="router 'bert' is not in the bundle"):
            Controller(routers=["bert"], strong_model="a", weak_model="b", bundle=bundle)
        # what the server refuses, refused here too, with the same reason (a prompt over its limit is not:
        # the Controller routes it on its head and tail, as a completion's)
        for text, reason in (("  ", "EMPTY_PROMPT"), ("\n", "EMPTY_PROMPT")):
            for controller in (local, served):
                with pytest.raises(RoutingError) as refused:
                    controller.route(text, "mf", 0.5)
                assert refused.value.reason == reason
                with pytest.raises(RoutingError) as refused:
                    controller.batch_calculate_win_rate(["fine", text], "mf")
                assert refused.value.reason == reason and "prompts[1]" in str(refused.value)
        served.close()


def test_the_default_router_by_name_in_process_and_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`default` is the bundle's default router (here mf): the same choices and scores as naming mf, in
    process and through a server; a bundle that names none refuses it."""
    from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.config import ServiceConfig

    plain = make_tiny_bundle(tmp_path / "plain", encoder_dir=make_fake_encoder_dir(tmp_path / "enc"), seed=2)
    with pytest.raises(RoutingError, match="router 'default' is not in the bundle"):
        Controller(routers=["default"], strong_model="big", weak_model="small", bundle=plain)
    shutil.copytree(plain, tmp_path / "named")
    bundle = tmp_path / "named"
    restamp_bundle(bundle, default_router="mf")
    prompts = synthetic_prompts(16, seed=9)
    with FakeUpstream("openai") as up, ServerThread(ServiceConfig(bundle_path=bundle, port=0)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", up.base_url)
        for where in ({"bundle": bundle}, {"target": srv.target}):
            client = Controller(routers=["default", "mf"], strong_model="big", weak_model="small", **where)
            by_default = client.batch_calculate_win_rate(prompts, "default")
            assert by_default == pytest.approx(client.batch_calculate_win_rate(prompts, "mf"), abs=1e-9)
            for p in prompts[:6]:
                assert client.route(p, "default", 0.5) == client.route(p, "mf", 0.5)
            r = client.chat.completions.create(
                model="router-default@0.5", messages=[{"role": "user", "content": prompts[0]}]
            )
            assert r.routing.router == "mf" and set(client.model_counts) == {"mf"}
            only_mf = Controller(routers=["mf"], strong_model="big", weak_model="small", **where)
            with pytest.raises(RoutingError, match="Invalid router default"):
                only_mf.route(prompts[0], "default", 0.5)
            with pytest.raises(RoutingError, match="Invalid router default"):
                only_mf.chat.completions.create(model="router-default-0.5", messages=[{"role": "user", "content": "x"}])
            client.close()
            only_mf.close()


class _Upstream:
    """A stdlib HTTP server on 127.0.0.1 answering every POST with `body` under `headers` (status 200),
    then closing: an upstream whose answer is not what an OpenAI endpoint sends is the point here."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> _Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_upstream_answer_that_is_not_whole_is_an_upstream_error(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    msgs = [{"role": "user", "content": "one two three four"}]
    with Controller(routers=["random"], strong_model="gpt-4o", weak_model="gpt-4o-mini") as client:
        with FakeUpstream("cut", break_after=2) as cut:  # goes away mid-stream
            monkeypatch.setenv("OPENAI_BASE_URL", cut.base_url)
            with pytest.raises(UpstreamError, match="the stream (ended before any finish_reason|broke off)"):
                list(client.chat.completions.create(model="router-random-0", messages=msgs, stream=True))
        with _Upstream(b"<html>gateway</html>", {"Content-Type": "text/html"}) as html:
            monkeypatch.setenv("OPENAI_BASE_URL", html.base_url)
            with pytest.raises(UpstreamError, match="the answer is not JSON") as err:
                client.chat.completions.create(model="router-random-0", messages=msgs)
            assert err.value.status == 200
            with pytest.raises(UpstreamError, match="the stream ended before any finish_reason"):
                list(client.chat.completions.create(model="router-random-0", messages=msgs, stream=True))
        with _Upstream(b'{"choices": [', {"Content-Type": "application/json", "Content-Length": "500"}) as short:
            monkeypatch.setenv("OPENAI_BASE_URL", short.base_url)
            with pytest.raises(UpstreamError, match="the answer broke off \\(IncompleteRead"):
                client.chat.completions.create(model="router-random-0", messages=msgs)
        # an answer whose last event says its finish_reason is whole without [DONE]
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}\n\n'
        with _Upstream(event, {"Content-Type": "text/event-stream"}) as no_done:
            monkeypatch.setenv("OPENAI_BASE_URL", no_done.base_url)
            chunks = list(client.chat.completions.create(model="router-random-0", messages=tuple(msgs), stream=True))
            assert [c.choices[0].delta.content for c in chunks] == ["ok"]


def test_arguments_of_another_type_are_routing_errors_naming_them(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream],
) -> None:
    with pytest.raises(
        RoutingError, match=r"routers: expected a list of router names, got one string \(routers=\['mf'\]\?\)"
    ):
        Controller(routers="mf", strong_model="a", weak_model="b")  # type: ignore[arg-type]
    with pytest.raises(RoutingError, match="timeout_s: expected seconds > 0"):
        Controller(routers=["mf"], strong_model="a", weak_model="b", timeout_s=0)
    with Controller(routers=["mf"], strong_model="a", weak_model="b") as client:
        with pytest.raises(RoutingError, match="prompt: expected a string, got NoneType"):
            client.route(None, "mf", 0.5)  # type: ignore[arg-type]
        with pytest.raises(RoutingError, match=r"Invalid threshold '0.5' \(str\)"):
            client.route("hi", "mf", "0.5")  # type: ignore[arg-type]
        with pytest.raises(
            RoutingError, match=r"unknown router 'xx' in 'router-xx-0.5' \(this Controller's routers: mf\)"
        ):
            client.chat.completions.create(model="router-xx-0.5", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(RoutingError, match="prompts: expected prompts .* got one string"):
            client.batch_calculate_win_rate("ab", "mf")
        with pytest.raises(RoutingError, match=r"prompts\[1\]: expected a string, got int"):
            client.batch_calculate_win_rate(["fine", 5], "mf")  # type: ignore[list-item]
        # a refusal past the first Score call of 128 names the prompt's place in the whole list, once
        with pytest.raises(RoutingError) as refused:
            client.batch_calculate_win_rate([f"p{i}" for i in range(130)] + [" "], "mf")
        assert str(refused.value).startswith("prompts[130]: empty prompt") and refused.value.code == "INVALID_ARGUMENT"


class _RawUpstream:
    """A stdlib HTTP server on 127.0.0.1 answering every request with the raw bytes `parts` (status line,
    headers and body as they are), `gap_s` apart, then closing; `hits` records each request's method,
    path and Authorization header: an upstream that redirects, or trickles its answer, is the point here."""

    def __init__(self, parts: list[bytes], gap_s: float = 0.0) -> None:
        import http.server
        import threading

        hits: list[tuple[str, str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                hits.append((self.command, self.path, self.headers.get("Authorization", "")))
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    for i, part in enumerate(parts):
                        if i:
                            time.sleep(gap_s)
                        self.wfile.write(part)
                        self.wfile.flush()
                except OSError:  # the caller gave up
                    pass
                self.close_connection = True

            do_GET = do_POST = answer

            def log_message(self, *args: object) -> None:
                pass

        self.hits = hits
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # a trickle left unread is not waited for
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> _RawUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _http_answer(status: str, headers: dict[str, str], body: bytes) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": str(len(body))}.items())
    return f"HTTP/1.1 {status}\r\n{head}Connection: close\r\n\r\n".encode() + body


_ANSWER = (
    b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "elsewhere"}, "finish_reason": "stop"}]}'
)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_upstream_error_and_not_followed(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream], status: int
) -> None:
    """A 3xx answer is not followed (that would send the prompt and the caller's API key to the Location's
    host): an UpstreamError naming the status, and neither the Location nor its body."""
    msgs = [{"role": "user", "content": "a private prompt"}]
    with _RawUpstream([_http_answer("200 OK", {"Content-Type": "application/json"}, _ANSWER)]) as other:
        location = f"{other.base_url}/chat/completions?sig=LOCATION-SECRET"
        moved = _http_answer(
            f"{status} Moved", {"Location": location, "Content-Type": "text/html"}, f'<a href="{location}">'.encode()
        )
        with _RawUpstream([moved]) as redirecting:
            client = Controller(
                routers=["random"],
                strong_model="gpt-4o",
                weak_model="gpt-4o-mini",
                api_base=redirecting.base_url,
                api_key="sk-CALLERS-KEY",
            )
            for stream in (False, True):
                with pytest.raises(UpstreamError) as err:
                    answer = client.chat.completions.create(model="router-random-0", messages=msgs, stream=stream)
                    list(answer) if stream else answer
                assert err.value.status == status
                assert f"HTTP {status}, a redirect (not followed)" in str(err.value)
                assert "LOCATION-SECRET" not in str(err.value) + err.value.body
            client.close()
        assert [(method, path) for method, path, _ in redirecting.hits] == [("POST", "/v1/chat/completions")] * 2
        assert other.hits == []


def test_timeout_s_bounds_a_whole_answer_and_each_wait_of_a_stream(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream],
) -> None:
    """Non-streamed, timeout_s bounds the whole answer: one trickled a few bytes at a time (each read well
    within timeout_s) is an UpstreamError at timeout_s, its headers trickled or its body. A stream waits
    at most timeout_s for its next bytes, and may last longer in all."""
    msgs = [{"role": "user", "content": "hi"}]
    whole = _http_answer("200 OK", {"Content-Type": "application/json"}, _ANSWER)
    head_end = whole.index(b"\r\n\r\n") + 4
    slow_body = [whole[:head_end]] + [whole[i : i + 6] for i in range(head_end, len(whole), 6)]  # ~2 s in all
    slow_head = [whole[i : i + 4] for i in range(0, head_end, 4)] + [whole[head_end:]]  # ~2.5 s in all
    for parts in (slow_body, slow_head):
        with _RawUpstream(parts, gap_s=0.1) as slow:
            with Controller(
                routers=["random"], strong_model="a", weak_model="b", api_base=slow.base_url, timeout_s=1
            ) as client:
                start = time.monotonic()
                with pytest.raises(UpstreamError, match="no whole answer within timeout_s=1 s"):
                    client.chat.completions.create(model="router-random-0", messages=msgs)
                assert 0.9 < time.monotonic() - start < 1.6
    # the same bytes within timeout_s are an answer
    with _RawUpstream(slow_body, gap_s=0.01) as quick:
        with Controller(
            routers=["random"], strong_model="a", weak_model="b", api_base=quick.base_url, timeout_s=1
        ) as client:
            assert client.chat.completions.create(model="router-random-0", messages=msgs).choices[
                0
            ].message.content == ("elsewhere")
    events = (
        [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"]
        + [
            b'data: {"choices": [{"index": 0, "delta": {"content": "%d"}, "finish_reason": null}]}\n\n' % i
            for i in range(5)
        ]
        + [b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n']
    )
    with _RawUpstream(events, gap_s=0.3) as steady:  # 1.8 s in all, 0.3 s between events
        with Controller(
            routers=["random"], strong_model="a", weak_model="b", api_base=steady.base_url, timeout_s=1
        ) as client:
            chunks = list(client.chat.completions.create(model="router-random-0", messages=msgs, stream=True))
            assert "".join(c.choices[0].delta.get("content", "") for c in chunks) == "01234"
    with _RawUpstream(events[:2] + events[-1:], gap_s=1.5) as stalled:  # 1.5 s without a byte
        with Controller(
            routers=["random"], strong_model="a", weak_model="b", api_base=stalled.base_url, timeout_s=1
        ) as client:
            stream = client.chat.completions.create(model="router-random-0", messages=msgs, stream=True)
            with pytest.raises(UpstreamError, match="the stream broke off \\(TimeoutError"):
                list(stream)


def test_a_closed_controller_refuses_calls_with_a_routing_error(
    world: tuple[ServerThread, FakeUpstream, FakeUpstream],
) -> None:
    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="gpt-4o-mini")
    assert client.route("hi", "mf", 0.5) in ("gpt-4o", "gpt-4o-mini")
    client.close()
    msgs = [{"role": "user", "content": "hi"}]
    for call in (
        lambda: client.route("hi", "mf", 0.5),
        lambda: client.chat.completions.create(model="router-mf-0.5", messages=msgs),
        lambda: client.batch_calculate_win_rate(["hi"], "mf"),
        lambda: client.feedback("0" * 32, 1.0),
    ):
        with pytest.raises(RoutingError, match="this Controller is closed: close\\(\\) ended its connection"):
            call()
    client.close()  # again: nothing


def test_router_clients_score_any_number_of_texts_in_calls_the_server_takes(
    fake_servers: Callable[..., ServerThread],
) -> None:
    """RouterClient.score_all (and AsyncRouterClient's): more texts than a call may carry, by prompts, by
    characters and by message bytes, split as every client splits them; the results are the one-by-one
    scores, in order, indices and a failed text's message naming its place among all."""
    import asyncio

    import grpc

    from lmroute.service.client import AsyncRouterClient, score_calls
    from lmroute.service.config import BatchPolicy

    srv = fake_servers(
        batch=BatchPolicy(max_prompt_chars=4000),
        max_prompts_per_request=5,
        max_request_chars=8000,
        max_message_bytes=16384,
    )
    texts = [f"question {i}" for i in range(12)] + ["x" * 3000] * 3 + ["\u4e2d" * 1500] * 4 + [" ", "last"]
    with RouterClient(srv.target) as client:
        limits = client.limits()
        calls = score_calls(texts, limits, client.max_message_bytes)
        assert [start for start, _ in calls] == [0] + [stop for _, stop in calls[:-1]] and calls[-1][1] == len(texts)
        for start, stop in calls:  # each within the server's limits (a call of one text alone may not be)
            part = texts[start:stop]
            assert stop - start <= 5
            assert stop - start == 1 or sum(map(len, part)) <= 8000
            assert stop - start == 1 or sum(len(t.encode()) + 16 for t in part) <= 0.9 * 16384
        assert calls == [(0, 5), (5, 10), (10, 14), (14, 17), (17, 21)]  # by prompts, characters, bytes
        with pytest.raises(grpc.RpcError):
            client.score(texts, ["mf"])  # one call: refused whole (too many prompts)
        together = client.score_all(texts, ["mf"])
        alone = [client.score([t], ["mf"]).results[0] for t in texts]
    assert [r.index for r in together.results] == list(range(len(texts)))
    for i, (r, one) in enumerate(zip(together.results, alone, strict=True)):
        assert (r.status.code, r.status.reason) == (one.status.code, one.status.reason)
        assert [s.strong_win_probability for s in r.scores] == pytest.approx(
            [s.strong_win_probability for s in one.scores]
        )
        if r.status.code:
            assert r.status.message.startswith(f"prompts[{i}]: ") and i == len(texts) - 2  # the blank one

    async def aio() -> list[float]:
        async with AsyncRouterClient(srv.target) as a:
            return [r.scores[0].strong_win_probability for r in (await a.score_all(texts[:12], ["mf"])).results]

    assert asyncio.run(aio()) == pytest.approx([r.scores[0].strong_win_probability for r in alone[:12]])
