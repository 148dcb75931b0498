"""The OpenAI-compatible front's pure parts: model names, messages -> prompt, the upstreams file, HTTP
statuses of errors, and the config checks that tie them together."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmroute.service.config import ServiceConfig
from lmroute.service.errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    QueueFull,
    ScorerFailed,
    UpstreamFailed,
    UpstreamTimeout,
    http_status,
)
from lmroute.service.front_models import is_models_name, parse_models_name
from lmroute.service.front_requests import ModelAsk, cut_middle, parse_model, prompt_of_messages
from lmroute.service.openai_front import _EventStream
from lmroute.service.upstream_client import usage_of
from lmroute.service.upstreams import load_upstreams, models_of, parse_upstreams
from lmroute.v1 import router_pb2

ROUTERS = ("random", "mf", "sw_ranking", "bert-tiny")


@pytest.mark.parametrize(
    ("name", "ask"),
    [
        ("router-mf-0.11593", ModelAsk("mf", threshold=0.11593)),  # RouteLLM's form
        ("router-sw_ranking-0", ModelAsk("sw_ranking", threshold=0.0)),
        ("router-bert-tiny-1", ModelAsk("bert-tiny", threshold=1.0)),  # a router name with a dash
        ("router-mf-1e-3", ModelAsk("mf", threshold=0.001)),  # a threshold with a dash (str(0.00001): 1e-05)
        ("router-bert-tiny-1E-05", ModelAsk("bert-tiny", threshold=1e-05)),
        ("router-mf-.5", ModelAsk("mf", threshold=0.5)),
        ("router-mf@0.3", ModelAsk("mf", share=0.3)),
        ("router-mf", ModelAsk("mf")),  # the tenant's live target
    ],
)
def test_model_names(name: str, ask: ModelAsk) -> None:
    assert parse_model(name, ROUTERS) == ask


@pytest.mark.parametrize(
    ("name", "ask"),
    [
        ("router-default-0.5", ModelAsk("", threshold=0.5)),  # "": the Route call resolves the default
        ("router-default@0.3", ModelAsk("", share=0.3)),
        ("router-default", ModelAsk("")),
        ("router-mf-0.5", ModelAsk("mf", threshold=0.5)),
    ],
)
def test_the_default_router_by_name(name: str, ask: ModelAsk) -> None:
    assert parse_model(name, ROUTERS, default_router="mf") == ask
    assert parse_model(name, (*ROUTERS, "default"), default_router="mf").router in ("default", "mf")  # a real one wins
    if ask.router == "":
        with pytest.raises(InvalidArgument) as err:
            parse_model(name, ROUTERS)  # the bundle names no default router
        assert str(err.value) == f"model: {name!r} asks for the default router; the serving bundle names none"
        assert http_status(err.value)[0] == 400


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("gpt-4o", ["'gpt-4o' is not a router model", "router-<router>-<threshold>"]),
        ("router-nope-0.5", ["unknown router 'nope'", "(loaded: random, mf, sw_ranking, bert-tiny)"]),
        ("router-mf-high", ["threshold 'high'", "not a number"]),
        ("router-mf@1.5", ["strong share", "must be in [0, 1]", "1.5"]),
        ("router-mf-nan", ["not a number"]),
        ("router-mf-٠.٥", ["not a number"]),
        ("", ["model: required"]),
        (7, ["model: required, a string", "(got int '7')"]),
        (["router-mf-0.5"], ["model: required, a string", "(got list"]),
        ("router-mf--0.1", ["threshold in 'router-mf--0.1' must be in [0, 1] (got -0.1)"]),
        ("router-mf--1e-3", ["threshold in 'router-mf--1e-3' must be in [0, 1] (got -1e-3)"]),
        ("router-mf-0.5-extra", ["threshold '0.5-extra' in 'router-mf-0.5-extra' is not a number"]),
        ("router-nope-1e-3", ["unknown router 'nope-1e'"]),
        ("router-mf-1.0000001", ["threshold in 'router-mf-1.0000001' must be in [0, 1] (got 1.0000001)"]),
        ("router-mf@-0.5", ["strong share in 'router-mf@-0.5' must be in [0, 1] (got -0.5)"]),
        ("router-mf@1e999", ["strong share in 'router-mf@1e999' must be in [0, 1] (got 1e999)"]),
    ],
)
def test_bad_model_names_are_400_naming_the_model(name: object, words: list[str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_model(name, ROUTERS)
    assert str(err.value).startswith("model: ")
    for w in words:
        assert w in str(err.value)
    assert http_status(err.value)[0] == 400


def test_messages_become_a_conversation_scored_on_the_last_user_turn() -> None:
    msgs = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]},
        {"role": "tool", "content": "42", "tool_call_id": "t"},
        {"role": "user", "content": "and now?"},
    ]
    prompt = prompt_of_messages(msgs, max_turns=8)
    turns = [(m.role, m.content) for m in prompt.conversation.messages]
    assert turns == [("system", "be brief"), ("user", "look"), ("assistant", ""), ("user", "and now?")]
    assert prompt.turn_selection == router_pb2.TURN_SELECTION_UNSPECIFIED  # the last user turn


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        (None, "messages: required"),
        ([], "messages: required"),
        ([{"role": "user", "content": "x"}] * 9, "messages: 9 messages (limit 8)"),
        (["hi"], "messages[0]: must be an object"),
        ([{"role": "user", "content": "x"}, {"role": "wizard", "content": "y"}], "messages[1].role: unknown role"),
        ([{"content": "x"}], "messages[0].role: missing (expected one of system,"),
        ([{"role": ["user"], "content": "x"}], "messages[0].role: must be a string (got list)"),
        ([{"role": {}, "content": "x"}], "messages[0].role: must be a string (got dict)"),
        ([{"role": "user", "content": 5}], "messages[0].content: must be a string or a list"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content[0].text"),
        ([{"role": "system", "content": "x"}], "messages: no user message"),
        (
            [{"role": "user", "content": "x"}, {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[1].content: no text to route on (the router reads text parts; images, audio and files",
        ),
        ([{"role": "user", "content": " \n "}, {"role": "assistant", "content": "y"}], "messages[0].content: no text"),
    ],
)
def test_bad_messages_name_the_message(messages: object, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        prompt_of_messages(messages, max_turns=8)
    assert words in str(err.value)


def test_a_last_user_turn_over_the_limit_is_routed_on_its_head_and_tail() -> None:
    long = "".join(f"{i:05d} " for i in range(5000))  # 30,000 characters
    msgs = [{"role": "user", "content": "earlier " * 5000}, {"role": "user", "content": long}]
    prompt = prompt_of_messages(msgs, max_turns=8, max_chars=101)
    first, routed = (m.content for m in prompt.conversation.messages)
    assert first == "earlier " * 5000  # not routed on: as it was
    assert routed == long[:50] + "\n" + long[-50:] and len(routed) == 101
    assert cut_middle("short", 5) == "short" and cut_middle("abcdefgh", 5) == "ab\ngh"
    assert prompt_of_messages(msgs, max_turns=8).conversation.messages[1].content == long  # no limit: whole


def _side(**kw: object) -> dict[str, object]:
    return {"model": "m", "base_url": "http://127.0.0.1:9/v1", **kw}


def test_upstreams_file_reads_keys_from_the_environment(tmp_path: Path) -> None:
    doc = {
        "strong": _side(model="gpt-4o", api_key_env="K", timeout_s=30),
        "weak": _side(max_concurrency=2, fallback=True, fallback_for_s=5),
    }
    ups = parse_upstreams(doc, {"K": "sk-secret"})
    assert ups["strong"].api_key == "sk-secret" and ups["strong"].timeout_s == 30.0
    assert ups["weak"].api_key == "" and ups["weak"].max_concurrency == 2
    assert ups["weak"].fallback and not ups["strong"].fallback  # off unless asked for
    assert (ups["weak"].fallback_after, ups["weak"].fallback_for_s) == (3, 5.0)
    assert ups["strong"].completions_url == "http://127.0.0.1:9/v1/chat/completions"
    assert "sk-secret" not in ups["strong"].describe()
    path = tmp_path / "up.json"
    path.write_text(json.dumps(doc))
    assert load_upstreams(path, {"K": "sk"})["strong"].model == "gpt-4o"


def test_upstreams_file_reads_a_key_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "strong.key"
    key.write_text("  sk-from-a-file\n")
    ups = parse_upstreams({"strong": _side(api_key_file=str(key)), "weak": _side()}, {})
    assert ups["strong"].api_key == "sk-from-a-file" and ups["strong"].api_key_file == str(key)
    for text, words in [
        ("", "holds no key"),
        ("sk one", "a key is one line of printable characters without spaces"),
        ("sk\nmore", "a key is one line of printable characters without spaces"),
    ]:
        key.write_text(text)
        with pytest.raises(ValueError, match=f"strong.api_key_file: {re.escape(str(key))}: {words}"):
            parse_upstreams({"strong": _side(api_key_file=str(key)), "weak": _side()}, {})
    with pytest.raises(ValueError, match=r"strong.api_key_file: .*missing.key: cannot be read \(No such file"):
        parse_upstreams({"strong": _side(api_key_file=str(tmp_path / "missing.key")), "weak": _side()}, {})
    with pytest.raises(ValueError, match="strong: api_key_env or api_key_file, not both"):
        parse_upstreams({"strong": _side(api_key_file=str(key), api_key_env="K"), "weak": _side()}, {"K": "x"})


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"strong": _side()}, "weak: required"),
        ({"strong": _side(), "weak": _side(), "medium": _side()}, "unknown key 'medium'"),
        ({"strong": _side(modle="x"), "weak": _side()}, "strong: unknown key 'modle'"),
        ({"strong": _side(base_url="api.openai.com"), "weak": _side()}, "strong.base_url: must be an http(s) URL"),
        ({"strong": _side(api_key_env="NOT_SET_HERE"), "weak": _side()}, "NOT_SET_HERE is not set"),
        ({"strong": _side(timeout_s=0), "weak": _side()}, "strong.timeout_s: must be a positive number"),
        ({"strong": _side(), "weak": _side(max_concurrency=0)}, "weak.max_concurrency"),
        ({"strong": _side(model=""), "weak": _side()}, "strong.model: required"),
        ({"strong": _side(), "weak": _side(fallback="yes")}, "weak.fallback: must be true or false"),
        ({"strong": _side(fallback=1), "weak": _side()}, "strong.fallback: must be true or false"),
        ({"strong": _side(usage_in_streams="on"), "weak": _side()}, "strong.usage_in_streams: must be true or false"),
        ({"strong": _side(fallback=True, fallback_after=0), "weak": _side()}, "strong.fallback_after: must be"),
        ({"strong": _side(fallback=True, fallback_for_s=-1), "weak": _side()}, "strong.fallback_for_s: must be"),
        ({"strong": _side(fallback_after=2), "weak": _side()}, "only with fallback: true"),
        ({"strong": _side(), "models": {"a": _side(), "b": _side()}}, "weak: required"),
        ({}, "strong: required (or models)"),
        ({"models": {"a": _side()}}, "models: must be an object naming at least two models"),
        ({"models": {"a": _side(), "strong": _side()}}, "models: 'strong' cannot name a model"),
        ({"models": {"a": _side(), "b": _side(fallback_for_s=3)}}, "models.b.fallback_after, fallback_for_s: only"),
        ({"models": {"a": _side(), "b": _side(base_url="x")}}, "models.b.base_url: must be an http(s) URL"),
    ],
)
def test_bad_upstreams_name_the_key(doc: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_upstreams(doc, {})
    assert words in str(err.value)


def test_upstreams_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    path.write_text('{\n  "strong": ,\n}')
    with pytest.raises(ValueError, match=r"up.json:2: not valid JSON"):
        load_upstreams(path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_upstreams(tmp_path / "missing.json")


def test_config_needs_an_upstreams_file_with_the_http_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="upstreams_file: needed with http_port"):
        ServiceConfig(bundle_path=Path("b"), http_port=0)
    bad = tmp_path / "up.json"
    bad.write_text(json.dumps({"strong": _side()}))
    with pytest.raises(ConfigError, match="upstreams_file: .*weak: required"):
        ServiceConfig(bundle_path=Path("b"), http_port=0, upstreams_file=str(bad))
    with pytest.raises(ConfigError, match=r"http_port: must be in \[-1, 65535\]"):
        ServiceConfig(bundle_path=Path("b"), http_port=70000)


def test_an_upstream_that_falls_back_must_time_out_within_the_exchanges_time(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    path.write_text(json.dumps({"strong": {**_side(), "fallback": True}, "weak": _side()}))  # timeout_s 120
    ServiceConfig(bundle_path=Path("b"), http_port=0, upstreams_file=str(path))  # under the default 600 s
    with pytest.raises(ConfigError, match=r"strong.timeout_s \(120 s\) must be under upstream_max_s \(60 s\)"):
        ServiceConfig(bundle_path=Path("b"), http_port=0, upstreams_file=str(path), upstream_max_s=60)
    path.write_text(json.dumps({"models": {"m1": {**_side(), "fallback": True, "timeout_s": 90}, "m2": _side()}}))
    with pytest.raises(ConfigError, match=r"models.m1.timeout_s \(90 s\) must be under"):
        ServiceConfig(bundle_path=Path("b"), http_port=0, upstreams_file=str(path), upstream_max_s=90)
    path.write_text(json.dumps({"strong": _side(), "weak": _side()}))  # no fallback: its timeout may be longer
    ServiceConfig(bundle_path=Path("b"), http_port=0, upstreams_file=str(path), upstream_max_s=60)


def test_http_statuses() -> None:
    assert http_status(UpstreamFailed("x"))[0] == 502
    assert http_status(UpstreamTimeout("x"))[0] == 504
    assert http_status(NotFound("x"))[0] == 404
    status, info = http_status(QueueFull("full"))
    assert status == 429 and info.retry_after_ms == 50
    status, info = http_status(ScorerFailed("secret detail"))
    assert status == 500 and info.message == "internal error"
    assert http_status(RuntimeError("boom"))[1].message == "internal error"


def test_upstreams_file_may_name_models_to_route_among() -> None:
    doc = {"models": {"gpt-4": _side(model="gpt-4o", fallback=True), "mixtral": _side(max_concurrency=3)}}
    ups = parse_upstreams(doc, {})
    assert ups["gpt-4"].fallback and not ups["mixtral"].fallback  # to the runner-up
    assert models_of(ups) == ("gpt-4", "mixtral") and ups["gpt-4"].model == "gpt-4o"
    assert ups["mixtral"].max_concurrency == 3 and ups["mixtral"].label == "upstream mixtral ('m')"
    both = parse_upstreams({"strong": _side(), "weak": _side(), **doc}, {})
    assert set(both) == {"strong", "weak", "gpt-4", "mixtral"} and models_of(both) == ("gpt-4", "mixtral")
    assert models_of(parse_upstreams({"strong": _side(), "weak": _side()}, {})) == ()


@pytest.mark.parametrize(
    ("name", "rule", "value"),
    [
        ("models", "", 0.0),
        ("models-cost-0", "cost_weight", 0.0),
        ("models-cost-12.5", "cost_weight", 12.5),
        ("models-margin-.05", "quality_margin", 0.05),
        ("models-floor-1", "quality_floor", 1.0),
    ],
)
def test_models_names_ask_for_a_rule(name: str, rule: str, value: float) -> None:
    assert is_models_name(name)
    ask = parse_models_name(name)
    assert (ask.rule, ask.value) == (rule, value)
    req = ask.request(router_pb2.Prompt(text="hi"), ["a", "b"])
    assert [c.model for c in req.candidates] == ["a", "b"] and req.router == ""
    assert req.WhichOneof("policy") == ("model_policy" if rule else None)
    if rule:
        assert getattr(req.model_policy, rule) == value


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("models-", "unknown rule ''"),
        ("models-fast-1", "unknown rule 'fast'"),
        ("models-cost--1", "cost in 'models-cost--1' must be >= 0 and finite (got -1)"),
        ("models-cost-inf", "is not a number"),
        ("models-cost-1e999", "cost in 'models-cost-1e999' must be >= 0 and finite (got 1e999)"),
        ("models-margin-1.5", "margin in 'models-margin-1.5' must be in [0, 1]"),
        ("models-margin-1.000001", "margin in 'models-margin-1.000001' must be in [0, 1] (got 1.000001)"),
        ("models-floor-1e400", "must be in [0, 1] (got 1e400)"),
        ("models-floor-" + "9" * 40, "must be in [0, 1] (got '9999999999"),
    ],
)
def test_bad_models_names_say_what_is_wrong(name: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_models_name(name)
    assert words in err.value.message


def test_only_models_names_are_models_names() -> None:
    assert not any(is_models_name(n) for n in ("router-mf-0.5", "modelsx", "gpt-4", None, 3))


def test_the_usage_an_answer_reports() -> None:
    answer = {
        "choices": [{"message": {"content": 'a text quoting "usage": {"prompt_tokens": 9} as words'}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    assert usage_of(json.dumps(answer).encode()) == (3, 4)
    assert usage_of(json.dumps({"usage": answer["usage"], **answer}).encode()) == (3, 4)  # not last
    chunk = b'{"id": "c", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 0}}'
    assert usage_of(chunk) == (12, 0)
    for bad in (
        b'{"usage": null}',
        b'{"choices": []}',
        b'{"usage": {"prompt_tokens": 1, "completion_tokens": -1}}',
        b'{"usage": {"prompt_tokens": true, "completion_tokens": 1}}',
        b'{"usage": {"prompt_tokens": 1.5, "completion_tokens": 1}}',
        b'{"usage": {"prompt_tokens": 1}}',
        b'{"usage": ',
    ):
        assert usage_of(bad) is None, bad


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_a_stream_loses_only_its_usage_chunk_when_the_caller_did_not_ask(end: bytes) -> None:
    """With drop_usage, the event carrying the usage and no choices is counted and left out, whatever
    ends the events and however the bytes are cut; every other event passes as it came."""
    events = [
        b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}',
        b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
        b"data: [DONE]",
    ]
    raw = b"".join(e + end for e in events)
    for cut in range(1, len(raw)):
        kept = _EventStream(b"", drop_usage=True)
        out = kept.passed(raw[:cut]) + kept.passed(raw[cut:]) + kept.rest()
        assert out == raw.replace(events[2] + end, b"") and kept.usage == (3, 1) and kept.finished
    passed = _EventStream(b"")
    assert passed.passed(raw) + passed.rest() == raw and passed.usage == (3, 1)
