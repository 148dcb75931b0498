"""What an OpenAI-shaped chat request asks the router, read from its body: the router and policy its
`model` names (RouteLLM's `router-<router>-<threshold>` and `router-<router>@<share>`, or `router-<router>`
for the tenant's share target), the conversation it routes (scored on its last user turn, which is cut to
its head and tail when longer than Route takes) and the characters it sends its model (for the expected
cost). Shared by the OpenAI-compatible front (lmroute.service.openai_front) and RouteLLM's Python API
(lmroute.service.routellm_api); the `models...` names for routing among N models are
lmroute.service.front_models'.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from lmroute.service.errors import InvalidArgument, echo
from lmroute.service.front_models import DECIMAL, read_decimal
from lmroute.v1 import router_pb2

__all__ = [
    "DEFAULT",
    "PREFIX",
    "ModelAsk",
    "cut_middle",
    "parse_model",
    "prompt_of_messages",
    "sent_chars",
]

PREFIX = "router-"
DEFAULT = "default"  # the <router> of a model name that asks for the bundle's default router
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_SKIPPED_ROLES = ("tool", "function")  # tool output is not what the caller asked: not scored


@dataclasses.dataclass(frozen=True)
class ModelAsk:
    """What a request's `model` asks for: a router and at most one of threshold and strong share."""

    router: str
    threshold: float | None = None
    share: float | None = None

    def request(self, prompt: router_pb2.Prompt) -> router_pb2.RouteRequest:
        req = router_pb2.RouteRequest(prompt=prompt, router=self.router)
        if self.threshold is not None:
            req.threshold = self.threshold
        elif self.share is not None:
            req.strong_share = self.share
        return req


def parse_model(name: object, routers: tuple[str, ...], default_router: str = "") -> ModelAsk:
    """The ModelAsk of a request's `model` (`routers`: the loaded routers; `default_router`: the caller's
    default router, "" for none); InvalidArgument naming the model and what is wrong. A name that asks
    for the default router gives the router "" (resolved by the Route call, against the bundle it is
    answered with)."""
    forms = "router-<router>-<threshold>, router-<router>@<strong share> or router-<router>"
    if not isinstance(name, str) or not name:
        got = "" if name is None else f" (got {type(name).__name__} {echo(str(name))})"
        raise InvalidArgument(f"model: required, a string: one of {forms}{got}", reason="BAD_MODEL")
    if not name.startswith(PREFIX):
        raise InvalidArgument(f"model: {echo(name)} is not a router model; expected {forms}", reason="BAD_MODEL")
    names = routers if DEFAULT in routers else (*routers, DEFAULT)
    ask = _parse_router_model(name, name[len(PREFIX) :], names, routers)
    if ask.router != DEFAULT or DEFAULT in routers:
        return ask
    if not default_router:
        raise InvalidArgument(
            f"model: {echo(name)} asks for the default router; the serving bundle names none", reason="MISSING_ROUTER"
        )
    return dataclasses.replace(ask, router="")


def _parse_router_model(name: str, rest: str, names: tuple[str, ...], loaded: tuple[str, ...]) -> ModelAsk:
    """`rest` (the model name after the prefix) as <router>, <router>-<threshold> or <router>@<share>, with
    <router> one of `names`; an unknown one is refused listing the `loaded` routers."""
    if rest in names:
        return ModelAsk(rest)
    router, at, value = rest.rpartition("@")
    kind = "strong share"
    if not at:  # <router>-<threshold>: the longest router name the rest starts with (names may hold a dash,
        kind = "threshold"  # and a threshold may too: 1e-05)
        router = max((n for n in names if rest.startswith(f"{n}-")), key=len, default="")
        value = rest[len(router) + 1 :] if router else ""
        router = router or rest.rpartition("-")[0]
    if not at and value.startswith("-") and DECIMAL.fullmatch(value[1:]):  # router-mf--0.1
        read_decimal(value, kind, name)  # refused, naming the bound, before the router is looked for
    if router not in names:
        shown = router or rest
        raise InvalidArgument(
            f"model: unknown router {echo(shown)} in {echo(name)} (loaded: {', '.join(loaded)})",
            reason="ROUTER_NOT_FOUND",
        )
    number = read_decimal(value, kind, name)
    return ModelAsk(router, threshold=number) if kind == "threshold" else ModelAsk(router, share=number)


def _text_of(content: object, where: str) -> str:
    if content is None:
        return ""  # an assistant turn that only calls tools
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise InvalidArgument(f"{where}[{j}]: must be an object", reason="BAD_MESSAGE")
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidArgument(f"{where}[{j}].text: must be a string", reason="BAD_MESSAGE")
                parts.append(text)
        return "\n".join(parts)  # images, audio, files: not scored
    raise InvalidArgument(f"{where}: must be a string or a list of content parts", reason="BAD_MESSAGE")


def sent_chars(body: Mapping[str, Any]) -> int:
    """The characters of text a request sends its model, for its expected cost: every message's text,
    whole (the last user turn too, though it is routed on its head and tail when long; tool and function
    turns too, though not routed on), one line each as the Route call counts a conversation
    (lmroute.service.prompts.input_text), and the JSON of the messages' tool calls and of the tools and
    functions offered. Images, audio and files are not counted."""
    lines: list[str] = []
    for msg in body.get("messages") or ():
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "\n".join(p for p in parts if isinstance(p, str))
        lines.append(content if isinstance(content, str) else "")
        lines += [json.dumps(msg[k], ensure_ascii=False) for k in ("tool_calls", "function_call") if k in msg]
    offered = sum(len(json.dumps(body[k], ensure_ascii=False)) for k in ("tools", "functions") if k in body)
    return len("\n".join(lines)) + offered


def cut_middle(text: str, max_chars: int) -> str:
    """`text` in at most `max_chars` characters: as it is, or its head and tail around a line break (the
    encoder's own cut reads a prompt's head and tail too)."""
    if len(text) <= max_chars:
        return text
    head = (max_chars - 1) // 2
    return text[:head] + "\n" + text[len(text) - (max_chars - 1 - head) :]


def prompt_of_messages(
    messages: object, max_turns: int, max_chars: int | None = None, max_total: int | None = None
) -> router_pb2.Prompt:
    """The Prompt (a conversation, scored on its last user turn) of a request's `messages`;
    InvalidArgument naming the message that is wrong: one that holds no text to route on included (an
    image alone). With `max_total`, messages holding more characters in all than that are refused
    (REQUEST_TOO_LONG), counted as sent; with `max_chars`, a last user turn longer than that is then cut
    to its head and tail."""
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages: required, a non-empty list", reason="MISSING_PROMPT")
    if len(messages) > max_turns:
        raise InvalidArgument(f"messages: {len(messages)} messages (limit {max_turns})", reason="TOO_MANY_TURNS")
    conv = router_pb2.Conversation()
    last_user = -1  # the index in `messages` of the turn routed on
    for j, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidArgument(f"messages[{j}]: must be an object with role and content", reason="BAD_MESSAGE")
        role = msg.get("role")
        if isinstance(role, str) and role in _SKIPPED_ROLES:
            continue
        if not isinstance(role, str) or role not in _ROLES:
            known = ", ".join([*_ROLES, *_SKIPPED_ROLES])
            what = (
                "missing"
                if role is None
                else f"unknown role {echo(role)}"
                if isinstance(role, str)
                else f"must be a string (got {type(role).__name__})"
            )
            raise InvalidArgument(f"messages[{j}].role: {what} (expected one of {known})", reason="UNKNOWN_ROLE")
        text = _text_of(msg.get("content"), f"messages[{j}].content")
        if role == "user":
            last_user = j
        try:
            conv.messages.add(role=_ROLES[role], content=text)
        except UnicodeEncodeError as exc:  # only the Python API gets here: the front refuses it as JSON
            why = f"messages[{j}].content: an unpaired surrogate ({exc.object[exc.start : exc.end]!a}), not text"
            raise InvalidArgument(why, reason="BAD_MESSAGE") from None
    if last_user < 0:
        raise InvalidArgument("messages: no user message", reason="NO_USER_TURN")
    routed = next(m for m in reversed(conv.messages) if m.role == "user")
    if not routed.content.strip():
        why = f"messages[{last_user}].content: no text to route on"
        if isinstance(messages[last_user].get("content"), list):
            why += " (the router reads text parts; images, audio and files are not read)"
        raise InvalidArgument(why, reason="EMPTY_PROMPT")
    if max_total is not None and (total := sum(len(m.content) for m in conv.messages)) > max_total:
        raise InvalidArgument(f"messages: {total} characters in all (limit {max_total})", reason="REQUEST_TOO_LONG")
    if max_chars is not None:
        routed.content = cut_middle(routed.content, max_chars)
    return router_pb2.Prompt(conversation=conv)
