"""The Python clients refuse what gRPC would take badly, naming the argument, before any call: a client
certificate without its key (gRPC's C core aborts the process), mTLS files without a CA (a plaintext
channel), metadata gRPC cannot send, one string where a sequence of prompts or routers is meant (each
character taken as one), two rules that share one oneof on the wire (the last would win silently), a
prompt, threshold, share, rule, router or timeout of another type (True is no threshold), and an asyncio
client made or used outside its event loop. A closed client says so (a real server answers it first)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from lmroute.service.client import AsyncRouterClient, RetryPolicy, RouterClient, paired_outcome, single_outcome
from lmroute.service.testing import ServerThread

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
        ({"timeout_s": 0}, ValueError, "timeout_s: expected seconds in (0, 1e+09] or None, got 0"),
        ({"retry": 3}, TypeError, "retry: expected a RetryPolicy or None, got int"),
        ({"timeout_s": 1e10}, ValueError, "timeout_s: expected seconds in (0, 1e+09] or None, got 10000000000.0"),
        ({"tenant": 5}, TypeError, "tenant: expected a name (str) or None, got int"),
        ({"max_message_bytes": True}, TypeError, "max_message_bytes: expected an int, got bool"),
        ({"max_message_bytes": 2**40}, ValueError, "max_message_bytes: must be in [1024, 2147483647]"),
    ],
)
def test_a_bad_constructor_argument_is_named(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        RouterClient(NOWHERE, **kwargs)
    assert message in str(info.value)


def test_a_token_sent_in_plain_text_off_this_host_is_warned_of(recwarn: pytest.WarningsRecorder) -> None:
    """A token to another host without tls_ca goes in plain text (gRPC's call credentials refuse that):
    warned of, naming the target and never the token; to loopback or a socket file it is not."""
    token = "secret-token-0123456789"
    for local in (
        "127.0.0.1:1",
        "localhost:1",
        "[::1]:1",
        "unix:/tmp/lmroute.sock",
        "ipv4:127.0.0.1:1",
        "dns:localhost:1",
    ):
        RouterClient(local, token=token).close()
    RouterClient("10.0.0.1:50051", token="").close()  # no token to send
    assert not recwarn.list
    with pytest.warns(UserWarning, match=r"token: sent in plain text to 10\.0\.0\.1:50051 \(no tls_ca\)") as said:
        RouterClient("10.0.0.1:50051", token=token).close()
    assert token not in str(said[0].message) and said[0].filename == __file__  # the caller's line
    with pytest.warns(UserWarning, match="router.example:443"):
        RouterClient("router.example:443", token=token).close()


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


CALLS_WITH_A_BAD_ARGUMENT: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("route", {"threshold": "0.5"}, TypeError, "threshold: expected a number, got str ('0.5')"),
    ("route", {"threshold": True}, TypeError, "threshold: expected a number, got bool (True)"),
    ("route", {"strong_share": "0.3"}, TypeError, "strong_share: expected a number, got str"),
    ("route", {"router": 5}, TypeError, "router: expected a router's name (str), got int"),
    (
        "route",
        {"threshold": 0.5, "timeout_s": "5"},
        ValueError,
        "timeout_s: expected seconds in (0, 1e+09] or None, got '5'",
    ),
    (
        "route",
        {"threshold": 0.5, "timeout_s": 0},
        ValueError,
        "timeout_s: expected seconds in (0, 1e+09] or None, got 0",
    ),
    ("route_among", {"cost_weight": "1"}, TypeError, "cost_weight: expected a number, got str"),
    ("score", {"routers": None}, TypeError, "routers: expected a sequence, got NoneType"),
    ("score", {"routers": ["mf", 1]}, TypeError, "routers[1]: expected a name (str), got int"),
    ("score", {"prompts": None}, TypeError, "prompts: expected a sequence, got NoneType"),
    ("health", {"timeout_s": "5"}, ValueError, "timeout_s: expected seconds in (0, 1e+09] or None, got '5'"),
    ("health", {"timeout_s": 1e10}, ValueError, "timeout_s: expected seconds in (0, 1e+09] or None, got 10000000000.0"),
    ("set_targets", {"shares": {"batch": True}}, TypeError, "shares['batch']: expected a number, got bool (True)"),
    ("set_targets", {"spends": {"batch": "3"}}, TypeError, "spends['batch']: expected a number, got str"),
    ("set_targets", {"shares": [("t", 0.3)]}, TypeError, "shares: expected a mapping of tenant -> target"),
    ("set_targets", {"shares": {5: 0.3}}, TypeError, "shares: a tenant is a name (str), got int (5)"),
    ("decisions_to_judge", {"budget": 2, "callers": "team-a"}, TypeError, "callers: expected a sequence, got one str"),
    ("route", {"threshold": 10**400}, ValueError, "threshold: 1000000000"),
    ("route", {"router": "m\ud800", "threshold": 0.5}, ValueError, "router: holds a lone surrogate"),
    ("score", {"routers": ["mf", "m\ud800"]}, ValueError, "routers[1]: holds a lone surrogate"),
    ("route_among", {"candidates": [1, 2]}, TypeError, "candidates[0]: expected a model's name (str) or a Candidate"),
    ("get_router", {"name": 5}, TypeError, "router: expected a router's name (str), got int"),
    ("feedback", {"outcomes": single_outcome("d", 1.0)}, TypeError, "outcomes: expected a sequence of OutcomeReport"),
    ("feedback", {"outcomes": ["d"]}, TypeError, "outcomes[0]: expected an OutcomeReport, got str"),
]


def _call_of(client: Any, method: str, kwargs: dict[str, Any]) -> Callable[[], Any]:
    """`client.method` with `kwargs` and, where it takes them, a prompt (and candidates)."""
    if method == "route":
        return lambda: client.route("hi", **kwargs)
    if method == "route_among":
        return lambda: client.route_among("hi", **{"candidates": ["a", "b"], **kwargs})
    if method == "score":
        return lambda: client.score(**{"prompts": ["hi"], **kwargs})
    return lambda: getattr(client, method)(**kwargs)


@pytest.mark.parametrize(("method", "kwargs", "error", "message"), CALLS_WITH_A_BAD_ARGUMENT)
def test_a_bad_call_argument_is_named(
    method: str, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with RouterClient(NOWHERE, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(error) as info:
            _call_of(client, method, kwargs)()
        assert message in str(info.value)

    async def on_the_asyncio_client() -> None:
        async with AsyncRouterClient(NOWHERE, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(error) as info:
                await _call_of(client, method, kwargs)()
            assert message in str(info.value)

    if hasattr(AsyncRouterClient, method):  # the AdminService calls are RouterClient's
        asyncio.run(on_the_asyncio_client())


def test_an_outcome_that_is_not_a_number_is_named() -> None:
    with pytest.raises(TypeError, match=r"quality: expected a number, got bool \(True\)"):
        single_outcome("d1", True)
    with pytest.raises(TypeError, match="weak: expected a number, got str"):
        paired_outcome("d1", 1.0, "0")  # type: ignore[arg-type]


def test_numbers_of_numpy_types_are_numbers(fake_servers: Callable[..., ServerThread]) -> None:
    import numpy as np

    with RouterClient(fake_servers().target) as client:
        assert client.route("hi", router="mf", threshold=np.float32(0.25)).threshold == 0.25
        assert client.route("hi", router="mf", threshold=np.int64(1)).threshold == 1.0


def test_a_closed_client_says_so(fake_servers: Callable[..., ServerThread]) -> None:
    srv = fake_servers()
    client = RouterClient(srv.target)
    assert client.health() == "SERVING" and not client.closed
    client.close()
    assert client.closed
    for call in (lambda: client.route("hi", router="mf", threshold=0.5), client.health, client.list_routers):
        with pytest.raises(ValueError, match=r"RouterClient: closed \(close\(\) was called\); make a new client"):
            call()
    client.close()  # again: nothing

    async def use_after_close() -> None:
        async with AsyncRouterClient(srv.target) as aclient:
            assert (await aclient.route("hi", router="mf", threshold=0.5)).router == "mf"
        assert aclient.closed
        with pytest.raises(ValueError, match=r"AsyncRouterClient: closed \(close\(\) was called\)"):
            await aclient.route("hi", router="mf", threshold=0.5)
        with pytest.raises(ValueError, match=r"AsyncRouterClient: closed"):
            await aclient.health()
        await aclient.close()  # again: nothing

    asyncio.run(use_after_close())


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
