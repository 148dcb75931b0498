"""The OpenAI-compatible front on loopback: the official `openai` client against a real server (gRPC and
HTTP in one process, FakeScorer routers) forwarding to two fake upstream LLMs (real HTTP on 127.0.0.1).

Each answer must come from the upstream that the gRPC Route call picks for the same prompt and policy;
streaming and non-streaming; request fields pass through untouched; upstream faults and bad names are
clear HTTP errors."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import structlog

from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy
from lmroute.service.fake_upstream import FakeUpstream
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

PROMPTS = [f"question {i}: how would you prove claim {i * 7 % 11}?" for i in range(24)]
TOKEN = "front-test-token-0123456789"


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    ups = {"strong": FakeUpstream("strong-llm").start(), "weak": FakeUpstream("weak-llm").start()}
    yield ups
    for up in ups.values():
        up.stop()


def _file(tmp_path: Path, ups: dict[str, Any], **extra: dict[str, Any]) -> str:
    doc = {
        tier: {"model": f"{tier}-model", "base_url": up if isinstance(up, str) else up.base_url, **extra.get(tier, {})}
        for tier, up in ups.items()
    }
    path = tmp_path / "upstreams.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _front(make: Callable[..., ServerThread], path: str, **settings: Any) -> tuple[ServerThread, str]:
    srv = make(http_port=0, upstreams_file=path, **settings)
    return srv, f"http://127.0.0.1:{srv.server.http_port}/v1"


def _client(base: str, key: str = "unused", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30, **kw)


def test_answers_come_from_the_model_the_router_chose(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    srv, base = _front(fake_servers, _file(tmp_path, upstreams))
    client, grpc_client = _client(base), RouterClient(srv.target)
    tiers = []
    for i, prompt in enumerate(PROMPTS):
        raw = client.chat.completions.with_raw_response.create(
            model="router-mf-0.5",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}],
        )
        answer = raw.parse()
        direct = grpc_client.route(prompt, router="mf", threshold=0.5)
        tier = "strong" if direct.tier == router_pb2.TIER_STRONG else "weak"
        tiers.append(tier)
        assert raw.headers["x-lmroute-tier"] == tier
        assert raw.headers["x-lmroute-model"] == f"{tier}-model"
        assert float(raw.headers["x-lmroute-score"]) == pytest.approx(direct.score, abs=1e-5)
        assert len(raw.headers["x-lmroute-decision-id"]) == 32
        assert answer.choices[0].message.content == f"{tier}-llm: {prompt}"
        assert answer.model == f"{tier}-model"  # the upstream was asked for its own model name
        assert upstreams[tier].requests[-1]["messages"][-1]["content"] == prompt
        assert sum(len(u.requests) for u in upstreams.values()) == i + 1  # exactly one upstream call each
    assert set(tiers) == {"strong", "weak"}  # both sides reached
    grpc_client.close()


def test_streaming_answers_and_share_policy(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    srv, base = _front(fake_servers, _file(tmp_path, upstreams))
    client, grpc_client = _client(base), RouterClient(srv.target)
    seen = set()
    for prompt in PROMPTS[:12]:
        raw = client.chat.completions.with_raw_response.create(
            model="router-mf@0.5", messages=[{"role": "user", "content": prompt}], stream=True
        )
        direct = grpc_client.route(prompt, router="mf", strong_share=0.5)
        tier = "strong" if direct.tier == router_pb2.TIER_STRONG else "weak"
        assert raw.headers["x-lmroute-tier"] == tier
        assert raw.headers["content-type"].startswith("text/event-stream")
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"{tier}-llm: {prompt}"
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert len(chunks) == len(text.split(" ")) + 1  # one event per word, then the finish
        seen.add(tier)
    assert seen == {"strong", "weak"}
    grpc_client.close()


def test_request_fields_pass_through_untouched(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    _, base = _front(fake_servers, _file(tmp_path, upstreams))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "find a fact",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    body = {
        "messages": [{"role": "user", "content": "what is the capital of France?"}],
        "tools": tools,
        "tool_choice": "auto",
        "temperature": 0.2,
        "max_tokens": 17,
        "seed": 3,
        "metadata": {"trace": "é-ü"},
    }
    raw = _client(base).chat.completions.with_raw_response.create(model="router-random-0", **body)
    tier = raw.headers["x-lmroute-tier"]
    assert tier == "strong"  # threshold 0: every score is >= 0
    got = upstreams[tier].requests[-1]
    assert got == {**body, "model": "strong-model"}


def test_models_list_and_bad_names(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    _, base = _front(fake_servers, _file(tmp_path, upstreams))
    client = _client(base)
    assert sorted(m.id for m in client.models.list()) == ["router-mf", "router-random"]
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="router-nosuch-0.5", messages=msgs)
    assert err.value.status_code == 400 and "unknown router 'nosuch'" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    assert "'gpt-4o' is not a router model" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # no share targets on this server
        client.chat.completions.create(model="router-mf", messages=msgs)
    assert "MISSING_POLICY" in str(err.value.body)
    assert "'router-mf' names no threshold or strong share; name one, router-mf-<threshold>" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="router-mf-0.5", messages=[{"role": "wizard", "content": "x"}])
    assert "messages[0].role: unknown role 'wizard'" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # this bundle names no default router
        client.chat.completions.create(model="router-default@0.5", messages=msgs)
    assert err.value.message.endswith(
        "model: 'router-default@0.5' asks for the default router; the serving bundle names none"
    )
    assert sum(len(u.requests) for u in upstreams.values()) == 0  # nothing bad went upstream
    with pytest.raises(openai.NotFoundError) as missing:  # an OpenAI-shaped error, not a plain-text page
        client.embeddings.create(model="router-mf-0.5", input="hi")
    assert "POST /v1/embeddings: not served here" in missing.value.message
    for odd in ("router-mf-٠.٥", "router-mf-0_5", "router-mf@０.５", "router-mf-nan", "router-mf- 0.5"):
        with pytest.raises(openai.BadRequestError) as err:  # float() takes these; a model name does not
            client.chat.completions.create(model=odd, messages=msgs)
        assert "is not a number (ASCII digits" in err.value.message, odd
    status, answer = _post(f"{base}/models", {})  # GET only
    assert status == 405 and answer["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_bodies_no_text_can_be_made_of_are_400_not_500(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A lone surrogate escaped in any string (a user, system or tool message), JSON nested past what the
    parser takes: 400 BAD_JSON naming what is wrong, before any routing decision; nothing goes upstream."""
    _, base = _front(fake_servers, _file(tmp_path, upstreams))
    user = '{"role": "user", "content": "hi"}'
    bodies = {
        "user": '{"model": "router-mf-0.5", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}',
        "system": '{"model": "router-mf-0.5", "messages": [{"role": "system", "content": "\\udfff"}, ' + user + "]}",
        "tool": '{"model": "router-mf-0.5", "messages": [' + user + ', {"role": "tool", "content": "x\\uDBFF"}]}',
        "nested": '{"model": "router-mf-0.5", "x": ' + "[" * 100_000 + "]" * 100_000 + ', "messages": [' + user + "]}",
    }
    for what, body in bodies.items():
        for path in ("/chat/completions", "/feedback"):
            status, answer = _post(base + path, body.encode())
            assert (status, answer["error"]["code"]) == (400, "BAD_JSON"), (what, path, status, answer)
            assert ("nested too deeply" if what == "nested" else "unpaired surrogate") in answer["error"]["message"]
    ok = '{"model": "router-mf-0.5", "messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00"}]}'
    status, answer = _post(base + "/chat/completions", ok.encode())
    assert status == 200, answer  # an escaped surrogate pair is text (an emoji)
    assert sum(len(u.requests) for u in upstreams.values()) == 1


def test_the_default_router_by_name(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """`router-default...` routes with the bundle's default router, as a gRPC Route naming no router."""
    srv, base = _front(lambda **kw: fake_servers(default_router="mf", **kw), _file(tmp_path, upstreams))
    client, grpc_client = _client(base), RouterClient(srv.target)
    assert sorted(m.id for m in client.models.list()) == ["router-default", "router-mf", "router-random"]
    tiers = set()
    for prompt in PROMPTS[:12]:
        raw = client.chat.completions.with_raw_response.create(
            model="router-default@0.5", messages=[{"role": "user", "content": prompt}]
        )
        direct = grpc_client.route(prompt, strong_share=0.5)
        assert direct.router == raw.headers["x-lmroute-router"] == "mf"
        tier = "strong" if direct.tier == router_pb2.TIER_STRONG else "weak"
        assert (
            raw.headers["x-lmroute-tier"] == tier and raw.parse().choices[0].message.content == f"{tier}-llm: {prompt}"
        )
        tiers.add(tier)
    assert tiers == {"strong", "weak"}
    grpc_client.close()


def test_a_tenant_with_a_router_of_its_own_gets_it_as_the_default(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """`router-default...` from a tenant the bundle gives a router of its own routes with that router, as
    its gRPC Route naming no router does; the other callers keep the bundle's default, or are refused
    when there is none."""
    for default in ("mf", ""):
        srv, base = _front(
            lambda **kw: fake_servers(default_router=default, tenant_routers={"app": "random"}, **kw),  # noqa: B023
            _file(tmp_path, upstreams),
        )
        msgs = [{"role": "user", "content": PROMPTS[0]}]
        app = _client(base, default_headers={"x-lmroute-tenant": "app"})
        assert "router-default" in [m.id for m in app.models.list()]
        raw = app.chat.completions.with_raw_response.create(model="router-default@0.5", messages=msgs)
        with RouterClient(srv.target, tenant="app") as grpc_app:
            direct = grpc_app.route(PROMPTS[0], strong_share=0.5)
        assert raw.headers["x-lmroute-router"] == direct.router == "random"
        other = _client(base, default_headers={"x-lmroute-tenant": "batch"})
        if default:
            raw = other.chat.completions.with_raw_response.create(model="router-default@0.5", messages=msgs)
            assert raw.headers["x-lmroute-router"] == "mf"
        else:
            assert "router-default" not in [m.id for m in other.models.list()]
            with pytest.raises(openai.BadRequestError) as err:
                other.chat.completions.create(model="router-default@0.5", messages=msgs)
            assert "asks for the default router; the serving bundle names none" in err.value.message


def test_upstream_down_slow_refusing_and_breaking(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    msgs = [{"role": "user", "content": "hello there"}]
    # threshold 0 routes everything strong; the strong side is each fault in turn
    down = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    _, base = _front(fake_servers, _file(tmp_path, {"strong": down, "weak": upstreams["weak"]}))
    with structlog.testing.capture_logs() as logs, pytest.raises(openai.InternalServerError) as err:
        _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
    assert err.value.status_code == 502
    assert "upstream strong ('strong-model'): cannot be reached" in err.value.message
    assert "127.0.0.1:9" not in str(err.value.body)  # the caller is not told where the upstream is
    [logged] = [e for e in logs if e["event"] == "http_error"]  # the log is
    assert "upstream strong ('strong-model' at http://127.0.0.1:9/v1): cannot be reached" in logged["error"]

    with (
        FakeUpstream("slow", delay_s=3.0) as slow,
        FakeUpstream("refusing", status=503) as refusing,
        FakeUpstream("picky", status=400) as picky,
        FakeUpstream("breaking", break_after=2) as breaking,
    ):
        for up, status, words in [
            (slow, 504, "no answer in 0.3 s"),
            (refusing, 502, "answered HTTP 503: "),
            (picky, 400, "picky refuses with 400"),  # a 4xx is the upstream's own verdict, passed on
        ]:
            path = _file(tmp_path, {"strong": up, "weak": upstreams["weak"]}, strong={"timeout_s": 0.3})
            _, base = _front(fake_servers, path)
            with structlog.testing.capture_logs() as logs, pytest.raises(openai.APIStatusError) as err:
                _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
            assert err.value.status_code == status and words in err.value.message
            if up is refusing:  # the caller reads the upstream's answer; the log does not (it may quote the prompt)
                assert "refusing refuses with 503" in err.value.message
                [logged] = [e for e in logs if e["event"] == "http_error"]
                assert logged["error"].endswith("answered HTTP 503 (its error message quoted to the caller)")
                assert "refuses" not in str(logs)
        _, base = _front(fake_servers, _file(tmp_path, {"strong": breaking, "weak": upstreams["weak"]}))
        stream = _client(base).chat.completions.create(model="router-mf-0", messages=msgs, stream=True)
        got = []
        with pytest.raises(openai.APIError) as api_err:
            for chunk in stream:
                got.append(chunk.choices[0].delta.content)
        assert got == ["breaking:", " hello"]  # what arrived before the upstream went away
        assert "answer broke off" in api_err.value.message


def test_a_stream_that_breaks_or_stops_short_ends_on_an_error_event(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """The caller's client raises an APIError naming what happened: an upstream gone in the middle of an
    event (the half event is not passed on: the error event would have been glued to it, a JSON error in
    the client), a stream that ends with neither a finish_reason nor `data: [DONE]` (a cut answer taken as
    whole), and a JSON answer to a request for a stream (502 before any event)."""
    msgs = [{"role": "user", "content": "hello there friend"}]
    with (
        FakeUpstream("halved", split_events=True, break_after=2) as halved,
        FakeUpstream("short", plain_stream=True) as short,
        FakeUpstream("whole", json_for_stream=True) as whole,
    ):
        for up, words, first in [
            (halved, "answer broke off", ["halved:", " hello"]),
            (
                short,
                "the stream ended before data: [DONE] or a finish_reason",
                ["short:", " hello", " there", " friend"],
            ),
        ]:
            srv, base = _front(fake_servers, _file(tmp_path, {"strong": up, "weak": upstreams["weak"]}), metrics_port=0)
            got = []
            with pytest.raises(openai.APIError) as err:
                for chunk in _client(base).chat.completions.create(model="router-mf-0", messages=msgs, stream=True):
                    got.append(chunk.choices[0].delta.content)
            assert got == first and words in err.value.message, (got, err.value)
            assert 'code="UNAVAILABLE",method="/v1/chat/completions"} 1.0' in _metrics(srv)
        _, base = _front(fake_servers, _file(tmp_path, {"strong": whole, "weak": upstreams["weak"]}))
        with pytest.raises(openai.APIStatusError) as status_err:
            next(iter(_client(base).chat.completions.create(model="router-mf-0", messages=msgs, stream=True)))
        assert status_err.value.status_code == 502
        assert "asked for a stream, answered 'application/json'" in status_err.value.message


def test_an_answer_never_shows_the_upstreams_key(
    fake_servers: Callable[..., ServerThread],
    upstreams: dict[str, FakeUpstream],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream echoing its own key, in a stream (each event split in two chunks: the key may straddle
    them) and in a whole answer: the caller reads *** where the key was."""
    key = "sk-streamed-secret-0123456789"
    monkeypatch.setenv("FRONT_STREAM_KEY", key)
    with FakeUpstream("echo", split_events=True) as echo_up:
        path = _file(
            tmp_path, {"strong": echo_up, "weak": upstreams["weak"]}, strong={"api_key_env": "FRONT_STREAM_KEY"}
        )
        _, base = _front(fake_servers, path)
        text = " ".join(["my", "key", "is", key, "and", f"x{key}y"])
        chunks = _client(base).chat.completions.create(
            model="router-mf-0", messages=[{"role": "user", "content": text}], stream=True
        )
        answer = "".join(c.choices[0].delta.content or "" for c in chunks)
        whole = _client(base).chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": text}])
    assert answer == "echo: my key is *** and x***y" and echo_up.keys == [f"Bearer {key}"] * 2
    assert whole.choices[0].message.content == "echo: my key is *** and x***y"


def test_the_tokens_upstreams_report_are_counted_per_upstream(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """The usage each answer reports (whole, and streamed with stream_options.include_usage, which the
    fake upstream sends as OpenAI does: a last chunk without choices) is summed per upstream and kind;
    the streamed chunk with the usage still reaches the caller."""
    srv, base = _front(fake_servers, _file(tmp_path, upstreams), metrics_port=0)
    client = _client(base)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "three words here"}]
    whole = client.chat.completions.create(model="router-mf-0", messages=msgs)  # strong: threshold 0
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (5, 4)
    chunks = list(
        client.chat.completions.create(
            model="router-mf-0", messages=msgs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4 and not chunks[-1].choices
    list(client.chat.completions.create(model="router-mf-0", messages=msgs, stream=True))  # no usage asked: none
    metrics = _metrics(srv)
    assert 'lmroute_upstream_tokens_total{kind="prompt",upstream="strong"} 10.0' in metrics
    assert 'lmroute_upstream_tokens_total{kind="completion",upstream="strong"} 8.0' in metrics
    assert 'upstream="weak"' not in metrics.split("lmroute_upstream_tokens")[1].split("# HELP")[0]


def test_usage_in_streams_counts_the_tokens_of_streams_whose_caller_did_not_ask(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """`usage_in_streams` on the strong side: a stream sent to it asks for its usage whether or not the
    caller did; the tokens are counted, and the usage chunk reaches only a caller that asked for it (the
    other chunks come as the caller would have had them). Whole answers and the weak side's streams are
    sent as the caller wrote them."""
    with FakeUpstream("strong", split_events=True) as strong_up:
        path = _file(tmp_path, {"strong": strong_up, "weak": upstreams["weak"]}, strong={"usage_in_streams": True})
        srv, base = _front(fake_servers, path, metrics_port=0)
        client = _client(base)
        msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "three words here"}]

        def stream(model: str, **kw: Any) -> list[Any]:
            return list(client.chat.completions.create(model=model, messages=msgs, stream=True, **kw))

        plain = stream("router-mf-0")  # strong: threshold 0
        declined = stream("router-mf-0", stream_options={"include_usage": False})
        asked = stream("router-mf-0", stream_options={"include_usage": True})
        client.chat.completions.create(model="router-mf-0", messages=msgs)
        stream("router-mf-1")  # weak: threshold 1
    for chunks in (plain, declined):
        assert all(c.choices and c.usage is None for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "strong: three words here"
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 4 and not asked[-1].choices
    sent = [r.get("stream_options") for r in strong_up.requests]
    assert sent == [{"include_usage": True}] * 3 + [None]  # the whole answer: as the caller wrote it
    assert "stream_options" not in upstreams["weak"].requests[-1]
    metrics = _metrics(srv)
    assert 'lmroute_upstream_tokens_total{kind="prompt",upstream="strong"} 20.0' in metrics  # 3 streams + 1 whole
    assert 'lmroute_upstream_tokens_total{kind="completion",upstream="strong"} 16.0' in metrics


def test_an_upstream_key_read_from_a_file_is_rotated_without_a_restart(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """`api_key_file` on the strong side: requests carry the file's key; the file replaced (as a Secret
    volume is), requests carry the new key from about a second on, and an answer quoting it shows ***; a
    file that then holds no key keeps the key in use (logged)."""
    key_file = tmp_path / "strong.key"
    key_file.write_text("sk-first-0123456789\n")
    with FakeUpstream("echo") as echo_up:
        path = _file(tmp_path, {"strong": echo_up, "weak": upstreams["weak"]}, strong={"api_key_file": str(key_file)})
        srv, base = _front(fake_servers, path, metrics_port=0)
        client = _client(base)

        def ask(text: str) -> str:
            answer = client.chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": text}])
            return answer.choices[0].message.content or ""

        assert ask("hi") == "echo: hi" and echo_up.keys[-1] == "Bearer sk-first-0123456789"
        (tmp_path / "next.key").write_text("sk-second-0123456789")
        (tmp_path / "next.key").replace(key_file)
        time.sleep(1.2)  # RECHECK_S: the file is looked at no more than once a second
        assert ask("my key is sk-second-0123456789") == "echo: my key is ***"
        assert echo_up.keys[-1] == "Bearer sk-second-0123456789"
        key_file.write_text("")  # half-written, say
        time.sleep(1.2)
        with structlog.testing.capture_logs() as logs:
            assert ask("again") == "echo: again"
        assert echo_up.keys[-1] == "Bearer sk-second-0123456789"  # the key in use, kept
        [failed] = [e for e in logs if e["event"] == "upstream_key_reload_failed"]
        assert failed["tier"] == "strong" and "holds no key; the key in use is kept" in failed["error"]
        assert not any("sk-" in str(e) for e in logs)  # no key in the log
        metrics = _metrics(srv)
        assert 'lmroute_upstream_key_reloads_total{result="reloaded",upstream="strong"} 1.0' in metrics
        assert 'lmroute_upstream_key_reloads_total{result="failed",upstream="strong"} 1.0' in metrics


def test_upstream_errors_keep_their_retry_delay_and_say_what_was_decided(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A 429 is passed on with the upstream's Retry-After; a 503 becomes 502 with it; a 5xx HTML page
    (a proxy's, naming internal hosts) is not quoted to the caller; every error after the route carries
    the decision's headers (its id, for Feedback)."""
    page = "<html><body>502 Bad Gateway: nginx at internal-host-7.corp:8443</body></html>"
    msgs = [{"role": "user", "content": "hello there"}]
    with (
        FakeUpstream("limited", status=429, retry_after="7") as limited,
        FakeUpstream("busy", status=503, retry_after="9") as busy,
        FakeUpstream("proxy", status=502, error_page=page) as proxy,
    ):
        for up, status, retry, words in [
            (limited, 429, "7", "limited refuses with 429"),
            (busy, 502, "9", "upstream strong ('strong-model'): answered HTTP 503: busy refuses with 503"),
            (proxy, 502, None, "upstream strong ('strong-model'): answered HTTP 502"),
        ]:
            _, base = _front(fake_servers, _file(tmp_path, {"strong": up, "weak": upstreams["weak"]}))
            with pytest.raises(openai.APIStatusError) as err:
                _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
            headers = err.value.response.headers
            assert err.value.status_code == status and words in err.value.message, err.value.message
            assert headers.get("retry-after") == retry and "internal-host" not in err.value.response.text
            assert len(headers["x-lmroute-decision-id"]) == 32 and headers["x-lmroute-tier"] == "strong"


def test_a_side_that_falls_back_passes_a_request_its_upstream_fails_to_the_other_side(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """`fallback` on the strong side: a request its upstream fails before answering (unreachable, a 5xx,
    no answer in time), whole or streamed, is answered by the weak side's upstream, the answer naming
    the side that answered and the one that failed, without the decision's id; a 4xx is still the
    upstream's own verdict; both sides failing is a 502 naming both, with the decision's id. Off (the
    default), the same fault is a 502 (test_upstream_down_slow_refusing_and_breaking)."""
    msgs = [{"role": "user", "content": "hello there"}]
    down = "http://127.0.0.1:9/v1"  # nothing listens
    weak = upstreams["weak"]
    with (
        FakeUpstream("refusing", status=503) as refusing,
        FakeUpstream("slow", delay_s=3.0) as slow,
        FakeUpstream("picky", status=400) as picky,
    ):
        for strong, fault in [(down, "cannot be reached"), (refusing, "answered HTTP 503"), (slow, "no answer in")]:
            path = _file(tmp_path, {"strong": strong, "weak": weak}, strong={"fallback": True, "timeout_s": 0.5})
            srv, base = _front(fake_servers, path, metrics_port=0)
            before = len(weak.requests)
            with structlog.testing.capture_logs() as logs:
                raw = _client(base).chat.completions.with_raw_response.create(model="router-mf-0", messages=msgs)
                streamed = _client(base).chat.completions.with_raw_response.create(
                    model="router-mf-0", messages=msgs, stream=True
                )
                text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
            assert raw.parse().choices[0].message.content == "weak-llm: hello there" and text == "weak-llm: hello there"
            for answer in (raw, streamed):
                assert answer.headers["x-lmroute-tier"] == "weak" and answer.headers["x-lmroute-model"] == "weak-model"
                assert answer.headers["x-lmroute-fallback"] == "strong"
                assert answer.headers["x-lmroute-router"] == "mf"  # what was decided, still said
                assert "x-lmroute-decision-id" not in answer.headers  # its outcomes are the strong side's
            assert [r["model"] for r in weak.requests[before:]] == ["weak-model", "weak-model"]
            fell = [e for e in logs if e["event"] == "upstream_fallback"]
            assert len(fell) == 2 and all(e["tier"] == "strong" and fault in e["error"] for e in fell), fell
            metrics = _metrics(srv)
            assert 'lmroute_upstream_fallbacks_total{upstream="strong",why="failed"} 2.0' in metrics
            assert 'lmroute_upstream_skipped{upstream="strong"} 0.0' in metrics  # 2 failures: under the 3 that skip
            assert 'upstream="weak"' not in metrics.split("lmroute_upstream_fallbacks")[1]  # weak does not fall back

        before = len(weak.requests)
        _, base = _front(fake_servers, _file(tmp_path, {"strong": picky, "weak": weak}, strong={"fallback": True}))
        with pytest.raises(openai.BadRequestError, match="picky refuses with 400"):
            _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
        assert len(weak.requests) == before  # the request's fault, not the upstream's: no other side asked

        _, base = _front(fake_servers, _file(tmp_path, {"strong": down, "weak": refusing}, strong={"fallback": True}))
        with pytest.raises(openai.InternalServerError) as err:
            _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
        assert err.value.status_code == 502
        assert (
            "upstream strong ('strong-model'): cannot be reached (ClientConnectorError); "
            "then its fallback upstream weak ('weak-model'): answered HTTP 503: refusing refuses with 503"
        ) in err.value.message, err.value.message
        headers = err.value.response.headers
        assert len(headers["x-lmroute-decision-id"]) == 32 and headers["x-lmroute-tier"] == "strong"
        assert "x-lmroute-fallback" not in headers


def test_a_side_that_keeps_failing_is_skipped_then_tried_again(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """`fallback_after` 2, `fallback_for_s` 1.5 on the strong side: after its upstream fails two requests
    in a row, the next go straight to the weak side (the strong upstream not asked); 1.5 s on one request
    tries it again (failing: skipped another 1.5 s); once it answers, the side is its own again."""
    msgs = [{"role": "user", "content": "hello there"}]
    weak = upstreams["weak"]
    with FakeUpstream("flaky", status=503) as flaky:
        extra = {"fallback": True, "fallback_after": 2, "fallback_for_s": 1.5}
        srv, base = _front(fake_servers, _file(tmp_path, {"strong": flaky, "weak": weak}, strong=extra), metrics_port=0)
        client = _client(base)

        def ask() -> Any:
            return client.chat.completions.with_raw_response.create(model="router-mf-0", messages=msgs).headers

        configure_logging("info")  # upstream_restored is an info line
        try:
            with structlog.testing.capture_logs() as logs:
                for _ in range(2):
                    assert ask()["x-lmroute-fallback"] == "strong"
                assert flaky.served == 2
                for _ in range(3):
                    headers = ask()
                    assert headers["x-lmroute-tier"] == "weak" and headers["x-lmroute-fallback"] == "strong"
                assert flaky.served == 2  # skipped: not asked
                metrics = _metrics(srv)
                assert 'lmroute_upstream_skipped{upstream="strong"} 1.0' in metrics
                assert 'lmroute_upstream_fallbacks_total{upstream="strong",why="failed"}' in metrics
                assert [e["event"] for e in logs].count("upstream_skipped") == 1

                time.sleep(1.6)
                assert ask()["x-lmroute-fallback"] == "strong"  # the probe: asked, failed, answered by weak
                assert flaky.served == 3
                assert ask()["x-lmroute-fallback"] == "strong" and flaky.served == 3  # skipped again

                flaky.status = 200  # it comes back
                time.sleep(1.6)
                headers = ask()
                assert headers["x-lmroute-tier"] == "strong" and "x-lmroute-fallback" not in headers
                assert len(headers["x-lmroute-decision-id"]) == 32
                assert ask()["x-lmroute-tier"] == "strong"
        finally:
            configure_logging("warning")
        events = [e["event"] for e in logs if e["event"].startswith("upstream_")]
        assert events.count("upstream_skipped") == 2 and events.count("upstream_restored") == 1, events
        assert events[-1] == "upstream_restored", events
        metrics = _metrics(srv)
        assert 'lmroute_upstream_skipped{upstream="strong"} 0.0' in metrics
        assert 'lmroute_upstream_fallbacks_total{upstream="strong",why="failed"} 3.0' in metrics
        assert 'lmroute_upstream_fallbacks_total{upstream="strong",why="skipped"} 4.0' in metrics


def test_the_exchanges_time_running_out_counts_against_the_breaker_and_names_both_upstreams(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """--upstream-max-s 1.5 s. A strong upstream that hangs, one request at a time (`max_concurrency` 1,
    `timeout_s` 1): the first request fails it after 1 s and is answered by the weak side; the second,
    which waited 0.7 s for the slot, is cut by the exchange's deadline before the upstream's own timeout
    (504): that counts as its second failure, so the third skips it. And a strong side that fails at once
    whose weak fallback hangs past the deadline: the 504 names both."""
    msgs = [{"role": "user", "content": "hello there"}]
    weak = upstreams["weak"]
    with FakeUpstream("hung", delay_s=30.0) as hung:
        extra = {"fallback": True, "fallback_after": 2, "fallback_for_s": 60, "timeout_s": 1.0, "max_concurrency": 1}
        _, base = _front(
            fake_servers, _file(tmp_path, {"strong": hung, "weak": weak}, strong=extra), upstream_max_s=1.5
        )
        client = _client(base)

        def ask() -> Any:
            return client.chat.completions.with_raw_response.create(model="router-mf-0", messages=msgs)

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(ask)
            time.sleep(0.3)
            second = pool.submit(ask)
            assert first.result().headers["x-lmroute-fallback"] == "strong"
            with pytest.raises(openai.APIStatusError) as err:
                second.result()
        assert err.value.status_code == 504 and "no whole answer in 1.5 s" in err.value.message
        t0 = time.perf_counter()
        third = ask()
        assert third.headers["x-lmroute-fallback"] == "strong" and time.perf_counter() - t0 < 0.5  # skipped
        assert len(hung.requests) == 2

        down = "http://127.0.0.1:9/v1"
        _, base = _front(
            fake_servers,
            _file(
                tmp_path,
                {"strong": down, "weak": hung},
                strong={"fallback": True, "timeout_s": 0.5},
                weak={"timeout_s": 10},
            ),
            upstream_max_s=1.0,
        )
        with pytest.raises(openai.APIStatusError) as err:
            _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
    assert err.value.status_code == 504
    assert (
        "upstream strong ('strong-model'): cannot be reached (ClientConnectorError); "
        "then its fallback upstream weak ('weak-model'): no whole answer in 1 s"
    ) in err.value.message, err.value.message


def test_a_probe_whose_caller_hangs_up_lets_the_next_request_try_the_upstream(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """The strong side (falls back after 1 failure, for 1 s) is skipped; after the window its probe
    waits on the upstream and its caller hangs up: the next request tries the upstream again (and gets
    its answer) instead of skipping it for good."""
    import http.client

    msgs = [{"role": "user", "content": "hello there"}]
    with FakeUpstream("stuck", status=503) as stuck:
        extra = {"fallback": True, "fallback_after": 1, "fallback_for_s": 1.0, "timeout_s": 10}
        srv, base = _front(fake_servers, _file(tmp_path, {"strong": stuck, "weak": upstreams["weak"]}, strong=extra))
        front = srv.server.front
        assert front is not None
        client = _client(base)
        first = client.chat.completions.with_raw_response.create(model="router-mf-0", messages=msgs)
        assert first.headers["x-lmroute-fallback"] == "strong" and front.client.breakers["strong"].is_open
        time.sleep(1.1)
        stuck.status, stuck.delay_s = 200, 4.0  # the probe waits on it
        body = json.dumps({"model": "router-mf-0", "messages": msgs})
        gone = http.client.HTTPConnection("127.0.0.1", srv.server.http_port, timeout=30)
        gone.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 5
        while front.client.slots["strong"].in_use == 0:  # the probe is with the upstream
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gone.close()
        while front.client.slots["strong"].in_use:  # the front has dropped it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stuck.delay_s = 0.0
        again = client.chat.completions.with_raw_response.create(model="router-mf-0", messages=msgs)
        assert again.headers["x-lmroute-tier"] == "strong" and "x-lmroute-fallback" not in again.headers
        assert not front.client.breakers["strong"].is_open


def test_a_caller_that_hangs_up_frees_its_upstream_slot(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """An upstream of one slot taking 4 s to answer; the caller of a whole answer hangs up after 0.3 s:
    the exchange is dropped and the slot free at once (it was held until the upstream answered), the
    call counted CANCELLED."""
    import http.client

    with FakeUpstream("slow", delay_s=4.0) as slow:
        path = _file(
            tmp_path, {"strong": slow, "weak": upstreams["weak"]}, strong={"max_concurrency": 1, "timeout_s": 10}
        )
        srv, _ = _front(fake_servers, path, metrics_port=0)
        front = srv.server.front
        assert front is not None
        body = json.dumps({"model": "router-mf-0", "messages": [{"role": "user", "content": "hi"}]})
        gone = http.client.HTTPConnection("127.0.0.1", srv.server.http_port, timeout=30)
        gone.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 5
        while front.client.slots["strong"].in_use == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)
        gone.close()
        t0 = time.monotonic()
        while front.client.slots["strong"].in_use:
            assert time.monotonic() - t0 < 2.0, "the slot is held for the caller that hung up"
            time.sleep(0.01)
        cancelled = 'lmroute_calls_total{code="CANCELLED",method="/v1/chat/completions"} 1.0'
        while cancelled not in _metrics(srv):
            assert time.monotonic() - t0 < 5.0, _metrics(srv)
            time.sleep(0.05)


def test_a_long_pasted_document_is_routed_on_its_head_and_tail_and_forwarded_whole(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A last user message of 30,000 characters (Route's prompt limit is 20,000): routed on its head and
    tail, the request forwarded whole (it was refused with 400 PROMPT_TOO_LONG)."""
    _, base = _front(fake_servers, _file(tmp_path, upstreams))
    document = "".join(f"line {i:05d} of the pasted report.\n" for i in range(1000)) + "Summarise it."
    assert len(document) > 30_000
    answer = _client(base).chat.completions.create(
        model="router-mf-0", messages=[{"role": "user", "content": document}]
    )
    assert answer.choices[0].message.content == f"{upstreams['strong'].name}: {document}"
    assert upstreams["strong"].requests[-1]["messages"][0]["content"] == document


def test_the_whole_conversation_is_held_to_max_request_chars_as_sent(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """--max-request-chars counts the messages as sent: a last user turn of 60,000 characters over a limit
    of 50,000 was cut to 20,000 before the count and forwarded whole; and an earlier turn's 40,000 plus
    that turn's 30,000 were counted as 60,000."""
    _, base = _front(fake_servers, _file(tmp_path, upstreams), max_request_chars=50_000)
    client = _client(base)
    for messages, total in (
        ([{"role": "user", "content": "x " * 30_000}], 60_000),
        ([{"role": "user", "content": "a" * 40_000}, {"role": "user", "content": "b " * 15_000}], 70_000),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="router-mf-0", messages=messages)  # type: ignore[arg-type]
        assert err.value.code == "REQUEST_TOO_LONG"
        assert f"messages: {total} characters in all (limit 50000)" in err.value.message
    assert upstreams["strong"].requests == [] and upstreams["weak"].requests == []
    answer = client.chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": "y " * 20_000}])
    assert answer.choices[0].message.content == f"{upstreams['strong'].name}: {'y ' * 20_000}"  # 40,000: within


def test_tokens_and_tenants(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} team-a\n")
    _, base = _front(fake_servers, _file(tmp_path, upstreams), auth_tokens_file=str(tokens), share_targets="team-a=1.0")
    msgs = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.AuthenticationError) as err:
        _client(base, key="wrong-token-0123456789").chat.completions.create(model="router-mf", messages=msgs)
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _client(base, key="wrong-token-0123456789").models.list()
    with urllib.request.urlopen(base.removesuffix("/v1") + "/health", timeout=10) as probe:  # no token needed
        assert probe.status == 200
    # the token's tenant (team-a, target share 1.0) decides the policy; a tenant header cannot change it
    raw = _client(
        base, key=TOKEN, default_headers={"x-lmroute-tenant": "other"}
    ).chat.completions.with_raw_response.create(model="router-mf", messages=msgs)
    assert raw.headers["x-lmroute-tier"] == "strong"
    assert raw.parse().choices[0].message.content == "strong-llm: hello"
    assert "Authorization" not in json.dumps(upstreams["strong"].requests[-1])  # our token stays here


def test_a_bound_token_is_not_offered_another_tenants_own_router(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} team-a\nother-token-0123456789abc\n")
    _, base = _front(
        fake_servers,
        _file(tmp_path, upstreams),
        auth_tokens_file=str(tokens),
        tenant_routers={"team-b": "random"},
    )
    assert sorted(m.id for m in _client(base, key=TOKEN).models.list()) == ["router-mf"]
    with pytest.raises(openai.BadRequestError) as err:  # as for a router that is not loaded
        _client(base, key=TOKEN).chat.completions.create(
            model="router-random-0.5", messages=[{"role": "user", "content": "hello"}]
        )
    assert "ROUTER_NOT_FOUND" in str(err.value.body) and "(loaded: mf)" in str(err.value.body)
    unbound = _client(base, key="other-token-0123456789abc")
    assert sorted(m.id for m in unbound.models.list()) == ["router-mf", "router-random"]


def test_a_tenants_list_refuses_a_header_naming_another(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    _, base = _front(fake_servers, _file(tmp_path, upstreams), share_targets="team-a=1.0", tenants=("team-a",))
    msgs = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.BadRequestError) as err:
        _client(base, default_headers={"x-lmroute-tenant": "team-b"}).chat.completions.create(
            model="router-mf", messages=msgs
        )
    assert err.value.status_code == 400 and "UNKNOWN_TENANT" in str(err.value.body)
    assert "tenant 'team-b' (named in x-lmroute-tenant): not one of the tenants" in err.value.message
    assert sum(len(u.requests) for u in upstreams.values()) == 0  # nothing went upstream
    raw = _client(base, default_headers={"x-lmroute-tenant": "team-a"}).chat.completions.with_raw_response.create(
        model="router-mf", messages=msgs
    )
    assert raw.headers["x-lmroute-tier"] == "strong"  # team-a's target, share 1.0


@pytest.mark.parametrize("fair", [True, False])
def test_an_upstreams_slots_go_to_a_waiting_tenant_before_another_tenants_flood(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path, fair: bool
) -> None:
    """An upstream of 2 slots answering in 0.5 s; tenant `flood` sends 6 requests (2 in flight, 4 waiting),
    then tenant `other` sends one. Fair slots: the next slot that frees is other's (it holds none), so
    its answer comes before most of the flood's; first come (tenant_fair_share off): it waits for all."""
    with FakeUpstream("slow", delay_s=0.5) as slow:
        path = _file(tmp_path, {"strong": slow, "weak": upstreams["weak"]}, strong={"max_concurrency": 2})
        srv, base = _front(fake_servers, path, batch=BatchPolicy(tenant_fair_share=fair), metrics_port=0)
        front = srv.server.front
        assert front is not None
        slots = front.client.slots["strong"]
        done: list[str] = []

        def ask(tenant: str) -> None:
            client = _client(base, default_headers={"x-lmroute-tenant": tenant})
            client.chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": tenant}])
            done.append(tenant)

        with ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(ask, "flood") for _ in range(6)]
            deadline = time.monotonic() + 10
            while slots.waiting() < 4:
                assert time.monotonic() < deadline, "the flood's requests did not queue"
                time.sleep(0.005)
            scraped = urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10)
            text = scraped.read().decode()
            assert 'lmroute_upstream_slots{upstream="strong"} 2.0' in text
            assert 'lmroute_upstream_requests{state="in_flight",upstream="strong"} 2.0' in text
            assert 'lmroute_upstream_requests{state="waiting",upstream="strong"} 4.0' in text
            calls.append(pool.submit(ask, "other"))
            for call in calls:
                call.result(timeout=20)
    assert sorted(done) == ["flood"] * 6 + ["other"] and slots.in_use == 0 and slots.waiting() == 0
    if fair:
        assert done.index("other") <= 3  # in the second wave of answers (two flood answers first at most)
    else:
        assert done.index("other") == 6


def _write_tls(root: Path, ca: Any, clients: Any) -> tuple[Path, Path, Path]:
    """The server's certificate for 127.0.0.1 from `ca`, its key, and the client CA `clients` (trustme
    CAs) written (again) to `root`: (chain, key, client CA)."""
    chain, key, client_ca = root / "server.pem", root / "server.key", root / "clients-ca.pem"
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    clients.cert_pem.write_to_path(str(client_ca))
    return chain, key, client_ca


def _mtls_front(
    fake_servers: Callable[..., ServerThread],
    upstreams: dict[str, FakeUpstream],
    root: Path,
    ca: Any,
    clients: Any,
    **settings: Any,
) -> ServerThread:
    """A server whose front speaks HTTPS with `_write_tls`'s files (client certificates required)."""
    chain, key, client_ca = _write_tls(root, ca, clients)
    return fake_servers(
        http_port=0,
        upstreams_file=_file(root, upstreams),
        tls_cert_file=str(chain),
        tls_key_file=str(key),
        tls_client_ca_file=str(client_ca),
        **settings,
    )


def test_https_mtls_and_metrics(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """With the gRPC port's certificate files the front serves HTTPS only (mTLS with a client CA), and its
    calls are counted in the Prometheus metrics under its path."""
    import ssl
    import urllib.error
    import urllib.request

    import trustme

    ca, clients = trustme.CA(), trustme.CA()
    srv = _mtls_front(fake_servers, upstreams, tmp_path, ca, clients, metrics_port=0)
    url = f"https://127.0.0.1:{srv.server.http_port}/v1/chat/completions"
    body = json.dumps({"model": "router-mf-0.5", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def post(ctx: ssl.SSLContext | None, target: str = url) -> int:
        req = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status)

    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    refused = (urllib.error.URLError, ConnectionError, ssl.SSLError)  # TLS 1.3 may refuse after the handshake
    with pytest.raises(refused):  # no client certificate
        post(trusted)
    clients.issue_cert("client@example.test").configure_cert(trusted)
    assert post(trusted) == 200
    with pytest.raises(refused):  # a server certificate nobody vouches for
        untrusted = ssl.create_default_context()
        clients.issue_cert("client@example.test").configure_cert(untrusted)
        post(untrusted)
    with pytest.raises(refused):  # plain HTTP on the TLS port
        post(None, url.replace("https://", "http://"))
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10).read()
    assert b'lmroute_calls_total{code="OK",method="/v1/chat/completions"} 1.0' in metrics


def test_a_tls_handshake_not_made_is_closed_after_the_idle_timeout(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """An HTTPS front with --front-idle-timeout-s 0.5: a connection that never starts its TLS handshake is
    closed within seconds (asyncio's own handshake limit is 60 s)."""
    import socket

    import trustme

    srv = _mtls_front(fake_servers, upstreams, tmp_path, trustme.CA(), trustme.CA(), front_idle_timeout_s=0.5)
    sock = socket.create_connection(("127.0.0.1", srv.server.http_port), timeout=10)
    t0 = time.monotonic()
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass
    assert 0.3 < time.monotonic() - t0 < 5.0
    sock.close()


def test_https_certificate_and_client_ca_rotated_without_a_restart(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """The front's certificate and client CA replaced on disk: new connections get the new ones (the
    trust of the old ones refused), as on the gRPC port."""
    import ssl
    import urllib.error
    import urllib.request

    import trustme

    def client(ca: trustme.CA, clients: trustme.CA) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        clients.issue_cert("client@example.test").configure_cert(ctx)
        return ctx

    def models(ctx: ssl.SSLContext) -> bool:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/models", timeout=10, context=ctx) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, ConnectionError, ssl.SSLError):
            return False

    old, new = (trustme.CA(), trustme.CA()), (trustme.CA(), trustme.CA())
    srv = _mtls_front(fake_servers, upstreams, tmp_path, *old)
    port = srv.server.http_port
    assert models(client(*old)) and not models(client(*new))
    _write_tls(tmp_path, *new)
    t_end = time.monotonic() + 10
    while not models(client(*new)):
        assert time.monotonic() < t_end, "the rotated certificate was not taken"
        time.sleep(0.2)
    assert not models(client(*old))  # the old server CA's trust and the old clients' certificates
    assert not models(client(new[0], old[1])) and not models(client(old[0], new[1]))
    assert srv.server.front_tls is not None and srv.server.front_tls.reloads >= 1


def test_a_kept_alive_https_connection_made_before_a_rotation_is_closed_after_its_answer(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A client whose CA is removed from the client CA file: its kept-alive connection is answered once
    more, with `Connection: close`, then closed, and its reconnection refused (it kept calling on the old
    connection for as long as it stayed busy)."""
    import http.client
    import ssl

    import trustme

    ca, clients, others = trustme.CA(), trustme.CA(), trustme.CA()
    srv = _mtls_front(fake_servers, upstreams, tmp_path, ca, clients)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    clients.issue_cert("client@example.test").configure_cert(ctx)
    conn = http.client.HTTPSConnection("127.0.0.1", srv.server.http_port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/v1/models")
        first = conn.getresponse()
        assert first.status == 200 and first.getheader("Connection") != "close"
        first.read()
        others.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))  # the client's CA removed
        time.sleep(1.1)  # the front looks at the files at most once a second
        conn.request("GET", "/v1/models")
        last = conn.getresponse()
        assert last.status == 200 and last.getheader("Connection") == "close"  # answered, then closed
        last.read()
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # the connection made again: refused
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
    finally:
        conn.close()


def test_a_streamed_answer_is_counted_before_it_ends(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A scrape right after a caller read a streamed answer to its end already holds that call."""
    import urllib.request

    srv = fake_servers(http_port=0, upstreams_file=_file(tmp_path, upstreams), metrics_port=0)
    url = f"http://127.0.0.1:{srv.server.http_port}/v1/chat/completions"
    metrics = f"http://127.0.0.1:{srv.server.metrics_port}/metrics"
    for i in range(1, 6):
        msgs = [{"role": "user", "content": f"tell me about {i}"}]
        body = json.dumps({"model": "router-mf-0.5", "messages": msgs, "stream": True}).encode()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert b"data: [DONE]" in resp.read()  # read to the response's end
        seen = urllib.request.urlopen(metrics, timeout=10).read()
        assert f'lmroute_calls_total{{code="OK",method="/v1/chat/completions"}} {i}.0'.encode() in seen


def test_every_request_is_counted_and_logged_with_the_code_of_its_answer(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """An upstream's own error answer (429, 400) is counted under its code, not OK, with reason
    UPSTREAM_<status>; GET /v1/models is counted too; each request has its access line (none had one)."""
    import urllib.request

    msgs = [{"role": "user", "content": "hello"}]
    with FakeUpstream("busy", status=429) as busy:
        path = _file(tmp_path, {"strong": busy, "weak": upstreams["weak"]})
        srv, base = _front(fake_servers, path, metrics_port=0)
        configure_logging("info")  # access lines are info lines
        try:
            with structlog.testing.capture_logs() as logs:
                with pytest.raises(openai.RateLimitError):
                    _client(base).chat.completions.create(model="router-mf-0", messages=msgs)  # strong: busy
                _client(base).chat.completions.create(model="router-mf-1", messages=msgs)  # weak: answers
                _client(base).models.list()
        finally:
            configure_logging("warning")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10).read()
    chat = "/v1/chat/completions"
    assert f'lmroute_calls_total{{code="RESOURCE_EXHAUSTED",method="{chat}"}} 1.0'.encode() in metrics
    # the upstream's 429, counted as its exchange's outcome, not as a refusal of the caller's
    assert b'reason="UPSTREAM_429"' not in metrics
    assert b'lmroute_upstream_calls_total{code="429",upstream="strong"} 1.0' in metrics
    assert f'lmroute_calls_total{{code="OK",method="{chat}"}} 1.0'.encode() in metrics
    assert b'lmroute_calls_total{code="OK",method="/v1/models"} 1.0' in metrics
    lines = [(e["code"], e["reason"]) for e in logs if e["event"] == "rpc"]  # the method is in the call's context
    assert lines == [("RESOURCE_EXHAUSTED", "UPSTREAM_429"), ("OK", ""), ("OK", "")]


def _post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST `body` as JSON; (status, the JSON answer), error statuses included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_feedback_over_http_reaches_the_store_as_the_callers_tenant(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """POST /v1/feedback takes the gRPC FeedbackRequest in protobuf's JSON mapping: outcomes of the
    decisions the front's answers name (x-lmroute-decision-id) are stored as reported by the caller's
    tenant, each with its own status; a malformed body is a 400 naming what was wrong; the token is
    needed as for chat."""
    from lmroute.outcomes.store import open_store

    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    _, base = _front(fake_servers, _file(tmp_path, upstreams), auth_tokens_file=str(tokens), store=dsn)
    chat = _client(base, key=TOKEN, default_headers={"x-lmroute-tenant": "team-a"})
    raw = chat.chat.completions.with_raw_response.create(
        model="router-mf-0.5", messages=[{"role": "user", "content": "Explain TCP slow start."}]
    )
    decision = raw.headers["x-lmroute-decision-id"]
    auth = {"Authorization": f"Bearer {TOKEN}", "x-lmroute-tenant": "team-a"}
    body = {
        "outcomes": [
            {"decision_id": decision, "single": {"quality": 0.75}, "source": "thumbs"},
            {"decision_id": decision, "paired": {"strong_quality": 1, "weak_quality": 0}, "source": "judge"},
            {"decision_id": decision, "single": {"quality": 1.5}},
            {"prompt": {"text": "Write a haiku."}, "preference": "PREFERENCE_TIE"},
        ]
    }
    deadline = time.monotonic() + 10
    while (answer := _post(f"{base}/feedback", body, auth))[1]["results"][0].get("reason") == (
        "DECISION_NOT_RECORDED_YET"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, doc = answer
    assert status == 200 and doc["stored"] == 1 + 2 + 2, doc
    assert [(r["code"], r["reason"]) for r in doc["results"]] == [(0, ""), (0, ""), (3, "INVALID_OUTCOME"), (0, "")]
    assert doc["results"][2]["message"] == "outcomes[2].single.quality: must be in [0, 1] (got 1.5)"
    again = _post(f"{base}/feedback", body, auth)[1]
    assert [r["reason"] for r in again["results"]] == ["DUPLICATE", "DUPLICATE", "INVALID_OUTCOME", "DUPLICATE"]

    store = open_store(dsn)
    try:
        mine = store.labeled_prompts(reporters={"team-a"})
        assert len(mine) == 2 and store.labeled_prompts(reporters={""}) == []
        [judged] = [r for r in mine if r.decision_id == decision]
        assert len(judged.qualities) == 2 and judged.chosen_model in judged.qualities  # the pair, by the paired one
    finally:
        store.close()

    for bad, words in [
        ({"outcomes": [{"decision_id": decision, "single": {"quality": "high"}}]}, "not a FeedbackRequest"),
        ({"outcomes": [{"no_such_field": 1}]}, "not a FeedbackRequest"),
        ({"outcomes": []}, "at least one outcome"),
        (b"[1, 2", "not valid JSON"),
    ]:
        status, doc = _post(f"{base}/feedback", bad, auth)
        assert status == 400 and words in doc["error"]["message"], (bad, doc)
    status, doc = _post(f"{base}/feedback", body, {"x-lmroute-tenant": "team-a"})
    assert status == 401 and doc["error"]["code"] == "UNAUTHENTICATED"
    _, storeless = _front(fake_servers, _file(tmp_path, upstreams))
    status, doc = _post(f"{storeless}/feedback", body)
    assert status == 400 and doc["error"]["code"] == "NO_OUTCOME_STORE", doc


def _metrics(srv: ServerThread) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10).read().decode()


def test_a_caller_that_does_not_read_its_stream_loses_it_and_frees_the_slot(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """An upstream of one slot streaming 20 MB; a caller opens the stream and reads nothing. After
    --front-write-timeout-s its connection is closed and the slot is free: another caller's request is
    answered (without the write deadline the slot stays held and it is 504 'no free slot')."""
    import http.client

    with FakeUpstream("big", pad_events=100_000) as big:
        path = _file(
            tmp_path, {"strong": big, "weak": upstreams["weak"]}, strong={"max_concurrency": 1, "timeout_s": 4}
        )
        srv, base = _front(fake_servers, path, front_write_timeout_s=0.5, metrics_port=0)
        front = srv.server.front
        assert front is not None
        words = " ".join(f"w{i}" for i in range(200))
        body = json.dumps({"model": "router-mf-0", "messages": [{"role": "user", "content": words}], "stream": True})
        stalled = http.client.HTTPConnection("127.0.0.1", srv.server.http_port, timeout=30)
        stalled.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 10
        while front.client.slots["strong"].in_use == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with structlog.testing.capture_logs() as logs:
            t0 = time.monotonic()
            answer = _client(base).chat.completions.create(
                model="router-mf-0", messages=[{"role": "user", "content": "me next"}]
            )
            waited = time.monotonic() - t0
        # without the write deadline the slot stays held: a 504 after the 4 s slot wait
        assert answer.choices[0].message.content == "big: me next" and waited < 4
        assert any(e["event"] == "http_caller_stalled" for e in logs)
        stalled.close()
        text = _metrics(srv)
        assert 'lmroute_calls_total{code="CANCELLED",method="/v1/chat/completions"} 1.0' in text
        assert front.client.slots["strong"].in_use == 0


def test_a_caller_that_does_not_read_a_whole_answer_loses_it(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A whole (non-streamed) answer of 20 MB to a caller that reads nothing: after --front-write-timeout-s
    its connection is closed, counted CANCELLED and logged (without the write deadline aiohttp writes it
    for as long as the caller keeps the connection open, holding the answer's bytes)."""
    import http.client

    with FakeUpstream("big", pad_answer=20 << 20) as big:
        path = _file(tmp_path, {"strong": big, "weak": upstreams["weak"]}, strong={"timeout_s": 10})
        srv, base = _front(fake_servers, path, front_write_timeout_s=0.5, metrics_port=0)
        body = json.dumps({"model": "router-mf-0", "messages": [{"role": "user", "content": "all of it"}]})
        stalled = http.client.HTTPConnection("127.0.0.1", srv.server.http_port, timeout=30)
        with structlog.testing.capture_logs() as logs:
            stalled.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            cancelled = 'lmroute_calls_total{code="CANCELLED",method="/v1/chat/completions"} 1.0'
            deadline = time.monotonic() + 10  # the upstream answers at once; 0.5 s after, the caller is dropped
            while cancelled not in _metrics(srv):
                assert time.monotonic() < deadline, "the stalled caller was never dropped"
                time.sleep(0.05)
        assert any(e["event"] == "http_caller_stalled" and e["stream"] is False for e in logs), logs
        with pytest.raises((ConnectionError, http.client.HTTPException)):  # closed part way
            answer = stalled.getresponse()
            json.loads(answer.read())
        stalled.close()
        again = _client(base).chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": "x"}])
        assert again.choices[0].message.content == "big: x"


def test_an_exchange_past_upstream_max_s_is_aborted(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """An upstream trickling its stream (an event each 0.2 s, under its 1 s read timeout): after
    --upstream-max-s 1 the stream ends with an error event naming the deadline and the slot is free; a
    whole answer slower than that is 504."""
    msgs = [{"role": "user", "content": " ".join(["slowly"] * 30)}]
    with FakeUpstream("trickle", event_delay_s=0.2) as trickle, FakeUpstream("late", delay_s=3) as late:
        for up in (trickle, late):
            path = _file(tmp_path, {"strong": up, "weak": upstreams["weak"]}, strong={"timeout_s": 5})
            srv, base = _front(fake_servers, path, upstream_max_s=1.0, metrics_port=0)
            front = srv.server.front
            assert front is not None
            t0 = time.monotonic()
            if up is trickle:
                got = []
                with pytest.raises(openai.APIError) as err:
                    for chunk in _client(base).chat.completions.create(model="router-mf-0", messages=msgs, stream=True):
                        got.append(chunk.choices[0].delta.content)
                assert 2 <= len(got) <= 8  # what arrived in the second
            else:
                with pytest.raises(openai.APIStatusError) as err:
                    _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
                assert err.value.status_code == 504
            assert "upstream strong ('strong-model'): no whole answer in 1 s" in err.value.message
            # before the upstream would have finished (30 events of 0.2 s; an answer in 3 s)
            assert time.monotonic() - t0 < 2.9 and front.client.slots["strong"].in_use == 0
            text = _metrics(srv)
            assert 'lmroute_calls_total{code="DEADLINE_EXCEEDED",method="/v1/chat/completions"} 1.0' in text
            assert 'reason="UPSTREAM_DEADLINE"' not in text  # the upstream's doing: no refusal of the caller's


def test_upstream_redirects_are_not_followed(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """An upstream answering 307 to another URL: the prompt is not sent there; the caller gets 502."""
    elsewhere = upstreams["weak"]
    with FakeUpstream("mover", redirect_to=f"{elsewhere.base_url}/chat/completions") as mover:
        _, base = _front(fake_servers, _file(tmp_path, {"strong": mover, "weak": elsewhere}))
        with pytest.raises(openai.APIStatusError) as err:
            _client(base).chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": "secret"}])
    assert err.value.status_code == 502 and "answered HTTP 307, a redirect (not followed)" in err.value.message
    assert len(mover.requests) == 1 and elsewhere.requests == []


def test_a_streamed_answer_over_front_max_stream_bytes_is_cut(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A stream longer than --front-max-stream-bytes ends with an error event; the slot is freed."""
    srv, base = _front(fake_servers, _file(tmp_path, upstreams), front_max_stream_bytes=4096)
    front = srv.server.front
    assert front is not None
    msgs = [{"role": "user", "content": " ".join(f"word{i}" for i in range(200))}]
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in _client(base).chat.completions.create(model="router-mf-0", messages=msgs, stream=True):
            got.append(chunk.choices[0].delta.content)
    assert "upstream strong ('strong-model'): streamed answer longer than 4096 bytes" in err.value.message
    assert len(got) < 200 and front.client.slots["strong"].in_use == 0
    short = _client(base).chat.completions.create(model="router-mf-0", messages=[{"role": "user", "content": "hi"}])
    assert short.choices[0].message.content == "strong-llm: hi"


def test_the_upstreams_key_is_masked_in_what_the_caller_gets(
    fake_servers: Callable[..., ServerThread],
    upstreams: dict[str, FakeUpstream],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream quoting its own API key in a 4xx or 5xx answer: the caller gets *** in its place."""
    key = "sk-upstream-secret-0123456789"
    monkeypatch.setenv("FRONT_TEST_KEY", key)
    msgs = [{"role": "user", "content": "hello"}]
    for status in (401, 503):
        with FakeUpstream(f"bad key {key}", status=status) as quoting:
            path = _file(
                tmp_path, {"strong": quoting, "weak": upstreams["weak"]}, strong={"api_key_env": "FRONT_TEST_KEY"}
            )
            _, base = _front(fake_servers, path)
            with pytest.raises(openai.APIStatusError) as err:
                _client(base).chat.completions.create(model="router-mf-0", messages=msgs)
            assert quoting.keys == [f"Bearer {key}"]  # the upstream got its key
        expected = 401 if status == 401 else 502
        assert err.value.status_code == expected and "bad key *** refuses with" in err.value.message
        assert key not in str(err.value.body) and key not in err.value.response.text


def test_parsed_bodies_are_bounded_and_not_held_while_waiting_for_a_slot(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """Five bodies of 250,000 `[]` each (~22 MB each parsed) to an upstream of one slot: while one is at the
    upstream and four wait for the slot, none of them holds the parse budget (each body was parsed, routed,
    turned into the upstream's bytes and dropped before the wait); and at most the parse budget (4 bodies
    of --front-max-body-bytes) was held at once."""
    n = 250_000
    # the first answer takes 8 s: time for the other four to be parsed, routed and queue for the slot even on
    # a busy machine (with 1 s the first could be answered before the last had queued); then the rest at once
    with FakeUpstream("slow", delay_s=8.0, record=False) as slow:
        path = _file(
            tmp_path, {"strong": slow, "weak": upstreams["weak"]}, strong={"max_concurrency": 1, "timeout_s": 30}
        )
        # admission out of the way: the bodies' parsing stalls the event loop while the first prompt is
        # scored, the fake scorer's measured cost swells with it and admission may refuse the next routes
        # (429 OVERLOADED, "about 871 ms of work ahead"): then fewer than four ever wait for the slot
        policy = BatchPolicy(admit_wait_ms=20_000, queue_timeout_ms=30_000)
        srv, base = _front(fake_servers, path, front_max_body_bytes=1 << 20, batch=policy)
        front = srv.server.front
        assert front is not None
        body = json.dumps({"model": "router-mf-0", "messages": [{"role": "user", "content": "x"}]})
        body = body[:-1] + ', "metadata_list": [' + ",".join(["[]"] * n) + "]}"
        assert len(body) < 1 << 20
        with ThreadPoolExecutor(5) as pool:
            calls = [pool.submit(_post, f"{base}/chat/completions", body.encode()) for _ in range(5)]
            deadline = time.monotonic() + 30
            while front.client.slots["strong"].waiting() < 4:
                assert time.monotonic() < deadline, "the requests did not queue for the slot"
                time.sleep(0.01)
            held_while_waiting = front.bodies.held
            slow.delay_s = 0.0
            assert all(call.result(timeout=60)[0] == 200 for call in calls)
    assert held_while_waiting == 0, f"{held_while_waiting} bytes of bodies held while 4 requests wait for the slot"
    assert len(body) <= front.bodies.peak <= 4 << 20 and front.bodies.held == 0


def test_open_connections_are_capped_and_idle_ones_make_room(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """--front-max-connections 4. Four connections that hold no request (two send nothing, two a request
    head cut short) do not keep a caller out: at the cap the longest idle one is closed for the newcomer,
    whose requests are answered. Four connections each with a request in progress do: a fifth is closed
    at once, unanswered."""
    import http.client
    import socket

    with FakeUpstream("slow", delay_s=2.0) as slow:
        srv, base = _front(fake_servers, _file(tmp_path, {"strong": slow, "weak": slow}), front_max_connections=4)
        front = srv.server.front
        assert front is not None
        port = srv.server.http_port
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        newcomers = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(2)]
        try:
            for sock in idle[2:]:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
            time.sleep(0.2)
            for n, newcomer in enumerate(newcomers):  # each kept open (idle, kept alive) after its answer
                newcomer.request("GET", "/v1/models")
                answer = newcomer.getresponse()
                assert answer.status == 200 and json.loads(answer.read())["data"]
                assert idle[n].recv(100) == b""  # the oldest idle connection made room: closed, nothing said
            assert front.refused_connections == 0 and front.idle_connections_closed == 2
        finally:
            for conn in [*idle, *newcomers]:
                conn.close()
        time.sleep(0.2)
        msgs = [{"role": "user", "content": "hello"}]
        with ThreadPoolExecutor(4) as pool:
            busy = [
                pool.submit(_client(base).chat.completions.create, model="router-mf-0", messages=msgs) for _ in range(4)
            ]
            deadline = time.monotonic() + 5
            while len(slow.requests) < 4:  # each of the four has its request at the upstream
                assert time.monotonic() < deadline, len(slow.requests)
                time.sleep(0.02)
            extra = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                extra.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            except OSError:
                pass
            try:
                assert extra.recv(100) == b""  # closed by the server, nothing answered
            except ConnectionResetError:
                pass
            extra.close()
            assert front.refused_connections >= 1
            assert [f.result().choices[0].message.content for f in busy] == ["slow: hello"] * 4


def test_a_connection_without_a_whole_request_head_is_closed_after_the_idle_timeout(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """--front-idle-timeout-s 0.5: a connection that sends nothing, one that trickles its request head a
    byte at a time, and one kept alive after its answer are each closed about 0.5 s after they opened or
    were answered (aiohttp's own default is an hour, which let idle connections fill the cap)."""
    import socket

    srv, _ = _front(fake_servers, _file(tmp_path, upstreams), front_idle_timeout_s=0.5)
    port = srv.server.http_port

    def closed_after(sock: socket.socket, trickle: bytes = b"") -> float:
        t0 = time.monotonic()
        sock.settimeout(0.1)
        got = b""
        while time.monotonic() - t0 < 10:
            if trickle:
                try:
                    sock.sendall(trickle[:1])
                except OSError:
                    break
                trickle = trickle[1:]
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        assert b"HTTP/1.1" not in got, got  # nothing answered
        return time.monotonic() - t0

    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert 0.3 < closed_after(silent) < 3.0
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"y" * 200 + b"\r\n\r\n"
    trickling = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert 0.3 < closed_after(trickling, head) < 3.0  # sending, yet 20 s from a whole head
    kept = socket.create_connection(("127.0.0.1", port), timeout=5)
    kept.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = kept.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    t0 = time.monotonic()
    kept.settimeout(5)
    while kept.recv(65536):  # the rest of the answer, then the close
        pass
    assert 0.3 < time.monotonic() - t0 < 3.0
    for sock in (silent, trickling, kept):
        sock.close()


def test_a_body_not_sent_in_time_is_408(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """A caller that sends its headers and part of its body, then stalls: 408 after --front-body-timeout-s,
    and the connection is closed."""
    import socket

    srv, _ = _front(fake_servers, _file(tmp_path, upstreams), front_body_timeout_s=0.5)
    sock = socket.create_connection(("127.0.0.1", srv.server.http_port), timeout=5)
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": '
        )
        t0 = time.monotonic()
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
        assert time.monotonic() - t0 < 4
    finally:
        sock.close()
    assert got.startswith(b"HTTP/1.1 408 ") and b"BODY_TIMEOUT" in got and b"not received in 0.5 s" in got


def test_before_the_bundle_is_loaded_the_front_answers_503_not_ready(
    upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """The front listens while the bundle loads: a chat completion then was 400 'unknown router' (no
    router loaded yet; the openai client does not retry a 400) and /v1/models an empty list. Both are 503
    NOT_READY with Retry-After, as gRPC's Route is UNAVAILABLE NOT_READY; once loaded, both are answered."""
    import threading

    from lmroute.service.config import ServiceConfig
    from lmroute.service.fake_scorer import FakeScorer

    configure_logging("warning")
    gate = threading.Event()
    scorer = FakeScorer(routers=("random", "mf"))

    def slow_factory(_cfg: ServiceConfig) -> FakeScorer:
        gate.wait(20)
        return scorer

    cfg = ServiceConfig(
        bundle_path=Path("unused"),
        port=0,
        http_port=0,
        upstreams_file=_file(tmp_path, upstreams),
        grace_s=0.0,
        transport="threads",
        log_level="warning",
    )
    srv = ServerThread(cfg, scorer_factory=slow_factory).start(wait_ready=False)
    try:
        base = f"http://127.0.0.1:{srv.server.http_port}/v1"
        msgs = [{"role": "user", "content": "early"}]
        with pytest.raises(openai.APIStatusError) as err:
            _client(base).chat.completions.create(model="router-mf-0.5", messages=msgs)
        assert err.value.status_code == 503 and "bundle not loaded and warmed yet" in err.value.message
        assert err.value.response.headers["Retry-After"] == "1"
        with pytest.raises(openai.APIStatusError) as err:
            _client(base).models.list()
        assert err.value.status_code == 503 and "NOT_READY" in err.value.response.text
        health = f"http://127.0.0.1:{srv.server.http_port}/health"  # a load balancer's probe
        with pytest.raises(urllib.error.HTTPError) as probe:
            urllib.request.urlopen(health, timeout=10)
        assert probe.value.code == 503 and json.loads(probe.value.read()) == {
            "status": "NOT_SERVING",
            "reason": "NOT_READY",
        }
        gate.set()
        assert srv.loaded is not None
        srv.loaded.result(20)
        with urllib.request.urlopen(health, timeout=10) as up:
            assert up.status == 200 and json.loads(up.read()) == {"status": "SERVING"}
        assert [m.id for m in _client(base).models.list()] == ["router-random", "router-mf"]
        answer = _client(base).chat.completions.create(model="router-mf-0.5", messages=msgs)
        assert answer.choices[0].message.content.endswith(": early")
    finally:
        gate.set()
        srv.stop()


_FRONT_CHILD = """
import asyncio, resource, sys
from pathlib import Path
from lmroute.service.config import ServiceConfig
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.main import serve
configure_logging("warning")
soft, hard = int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
cfg = ServiceConfig(bundle_path=Path("unused"), port=0, http_port=0, upstreams_file=sys.argv[1], grace_s=0.0)
sys.exit(asyncio.run(serve(cfg, lambda _cfg: FakeScorer(routers=("mf",)))))
"""


def test_the_front_raises_the_open_file_limit_it_needs_or_is_refused_naming_it(tmp_path: Path) -> None:
    """Out of files, asyncio's listener spun a core retrying accepts and logged a traceback per try (48 MB
    in 30 s): the front's 1,024 connections by default need more than a common soft limit of 1,024."""
    import subprocess
    import sys

    path = _file(tmp_path, {"strong": "http://127.0.0.1:9/v1", "weak": "http://127.0.0.1:9/v1"})
    proc = subprocess.Popen(
        [sys.executable, "-c", _FRONT_CHILD, path, "300", "8192"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "serving on" not in (line := proc.stderr.readline()):
            assert line or proc.poll() is None, f"the server exited {proc.poll()}"
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft = int(next(row for row in limits.splitlines() if row.startswith("Max open files")).split()[3])
        assert 2 * 1024 < soft <= 8192, limits  # raised to what 1,024 connections need, within the hard limit
    finally:
        proc.terminate()
        proc.wait(20)
    refused = subprocess.run(
        [sys.executable, "-c", _FRONT_CHILD, path, "1024", "1024"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, refused.stderr
    assert (
        "lmroute-serve: config error: front_max_connections: this process may open 1024 files (ulimit -n, hard "
        "limit), and the OpenAI front's 1024 connections with their upstreams' and 264 files for the rest of the "
        "server leave fewer than 64 for the gRPC port's connections: lower --front-max-connections or raise the "
        "limit"
    ) in refused.stderr


def test_a_scan_of_unknown_paths_is_logged_once_a_second_and_long_paths_are_cut(
    fake_servers: Callable[..., ServerThread], upstreams: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    """Unknown paths were answered 404 with no line at all (a scan of the front left no trace), and the
    answer quoted a path of any length whole."""
    srv, base = _front(fake_servers, _file(tmp_path, upstreams))
    root = base.removesuffix("/v1")
    with structlog.testing.capture_logs() as logs:
        for i in range(50):
            req = urllib.request.Request(f"{root}/v1/probe{i}", data=b"{}", method="POST")
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(req, timeout=10)
            assert missing.value.code == 404
        long = urllib.request.Request(f"{root}/{'x' * 5000}", method="GET")
        with pytest.raises(urllib.error.HTTPError) as too_long:
            urllib.request.urlopen(long, timeout=10)
        message = json.loads(too_long.value.read())["error"]["message"]
    assert too_long.value.code == 404 and "(5001 characters)" in message and len(message) < 400, message
    lines = [e for e in logs if e["event"] == "http_not_served"]
    assert lines and len(lines) <= 3, lines  # one a second (the 51 requests take well under 3 s)
    assert lines[0]["path"] == "/v1/probe0" and lines[0]["status"] == 404 and lines[0]["peer"] == "127.0.0.1"
