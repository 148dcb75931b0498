"""The Python clients refuse what gRPC would take badly, naming the argument, before any call: a client
certificate without its key (gRPC's C core aborts the process), mTLS files without a CA (a plaintext
channel), metadata gRPC cannot send, one string where a sequence of prompts or routers is meant (each
character taken as one), two rules that share one oneof on the wire (the last would win silently), a
prompt of another type, and an asyncio client made or used outside its event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lmroute.service.client import AsyncRouterClient, RetryPolicy, RouterClient

NOWHERE = "127.0.0.1:1"  # nothing is called: each refusal comes before the first call


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tls_ca": "ca.pem", "tls_cert": "c.pem"}, ValueError, "tls_cert and tls_key: give both"),
        ({"tls_ca": "ca.pem", "tls_key": "k.pem"}, ValueError, "tls_cert and tls_key: give both"),
        ({"tls_cert": "c.pem", "tls_key": "k.pem"}, ValueError, "mTLS needs tls_ca too"),
        ({"tenant": "tënant"}, ValueError, "tenant: 'tënant' is not 1-64 of [A-Za-z0-9._-]"),
        ({"tenant_header": "X-Tenant"}, ValueError, "tenant_header: 'X-Tenant' is not a gRPC metadata key"),
        ({"token": "bad\ntoken"}, ValueError, "token: must be printable ASCII"),
        ({"timeout_s": 0}, ValueError, "timeout_s: expected seconds > 0 or None, got 0"),
        ({"retry": 3}, TypeError, "retry: expected a RetryPolicy or None, got int"),
    ],
)
def test_a_bad_constructor_argument_is_named(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        RouterClient(NOWHERE, **kwargs)
    assert message in str(info.value)


def test_a_bad_target_is_named() -> None:
    with pytest.raises(TypeError, match="target: expected 'host:port'"):
        RouterClient(None)  # type: ignore[arg-type]


def test_arguments_that_would_be_misread_on_the_wire_are_refused() -> None:
    with RouterClient(NOWHERE, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(TypeError, match=r"prompts: expected a sequence, got one str \(prompts=\['hello'\]\?\)"):
            client.score("hello")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="routers: expected a sequence, got one str"):
            client.score(["hi"], routers="mf")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="route: give at most one of threshold and strong_share"):
            client.route("hi", threshold=0.5, strong_share=0.3)
        with pytest.raises(ValueError, match=r"route_among: give at most one of .* \(got cost_weight, quality_floor\)"):
            client.route_among("hi", ["a", "b"], cost_weight=0.5, quality_floor=0.7)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (None, "prompt: expected text (str), a list of {'role', 'content'} turns or a Prompt, got NoneType"),
        (5, "got int"),
        (b"hi", "got bytes"),
        (["hi"], "prompt[0]: expected a turn {'role': str, 'content': str}, got str"),
        ([{"content": "hi"}], "prompt[0]['role']: expected a string, got nothing"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "prompt[0]['content']: expected a string, got list",
        ),
    ],
)
def test_a_prompt_of_another_type_is_named(prompt: Any, message: str) -> None:
    with RouterClient(NOWHERE) as client, pytest.raises(TypeError) as info:
        client.route(prompt)
    assert message in str(info.value)


def test_a_prompt_that_is_not_text_is_named() -> None:
    with RouterClient(NOWHERE) as client:
        with pytest.raises(ValueError, match=r"prompts\[1\]: holds an unpaired surrogate \('\\ud800'\), not text"):
            client.score(["ok", "bad \ud800 x"])
        with pytest.raises(ValueError, match=r"prompt: holds an unpaired surrogate"):
            client.route([{"role": "user", "content": "\udfff"}])


def test_the_asyncio_client_belongs_to_the_loop_it_was_made_on() -> None:
    with pytest.raises(RuntimeError, match="make it inside a coroutine on the event loop that will use it"):
        AsyncRouterClient(NOWHERE)

    async def make() -> AsyncRouterClient:
        return AsyncRouterClient(NOWHERE)

    client = asyncio.run(make())

    async def use() -> None:
        await client.route("hi", threshold=0.5)

    with pytest.raises(RuntimeError, match="used on an event loop other than the one it was made on"):
        asyncio.run(use())


def test_the_package_names_its_public_api() -> None:
    import lmroute
    from lmroute.service import client, routellm_api

    assert sorted(lmroute.__all__) == [
        "AsyncRouterClient",
        "Controller",
        "RouterClient",
        "RoutingError",
        "UpstreamError",
    ]
    for name in lmroute.__all__:
        home = routellm_api if name in ("Controller", "RoutingError", "UpstreamError") else client
        assert getattr(lmroute, name) is getattr(home, name)
        assert name in dir(lmroute)
    with pytest.raises(AttributeError, match="module 'lmroute' has no attribute 'Nope'"):
        lmroute.Nope  # noqa: B018
