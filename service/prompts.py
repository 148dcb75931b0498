"""Turning a wire `Prompt` (text or conversation) into the text a router scores.

Rule: plain text is scored as given; a conversation is scored on its last user turn (what the routers
were trained on), or on all user turns joined by a blank line when asked. Problems come back as an
InvalidArgument naming the field, e.g. `prompts[2].conversation: no user turn`.

`check_limits` runs first, on the whole call: it reads only counts until the turns of every
conversation are known to be within `max_turns`, then sums the characters, so an oversized request is
refused (raised, for the whole call) without per-turn work.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmroute.service.errors import InvalidArgument, echo
from lmroute.v1 import router_pb2

__all__ = ["check_limits", "prompt_text"]

_ROLES = ("system", "user", "assistant")


def check_limits(
    prompts: Sequence[router_pb2.Prompt],
    field: str = "prompts",
    *,
    indexed: bool = True,
    names: Sequence[str] | None = None,
    max_turns: int,
    max_request_chars: int,
) -> None:
    """Raise InvalidArgument when a conversation has more than `max_turns` turns (naming the first such
    one, e.g. `prompts[0].conversation.messages: 500000 turns (limit 256)`), or when the texts and turn
    contents of all `prompts` hold more than `max_request_chars` characters (e.g. `prompts: 1000001
    characters in all (limit 1000000)`). The prompts are `field[i]`, or `field` alone when not `indexed`,
    or `names[i]` when given."""
    for i, prompt in enumerate(prompts):
        if prompt.WhichOneof("input") == "conversation":
            n = len(prompt.conversation.messages)
            if n > max_turns:
                name = names[i] if names is not None else f"{field}[{i}]" if indexed else field
                raise InvalidArgument(
                    f"{name}.conversation.messages: {n} turns (limit {max_turns})", reason="TOO_MANY_TURNS"
                )
    total = 0
    for prompt in prompts:
        if prompt.WhichOneof("input") == "conversation":
            total += sum(len(msg.content) for msg in prompt.conversation.messages)
        else:
            total += len(prompt.text)
    if total > max_request_chars:
        raise InvalidArgument(
            f"{field}: {total} characters in all (limit {max_request_chars})", reason="REQUEST_TOO_LONG"
        )


_TURN_SELECTIONS = frozenset(router_pb2.TurnSelection.values())


def prompt_text(prompt: router_pb2.Prompt, field: str) -> str | InvalidArgument:
    """The text to score for `prompt`, or the InvalidArgument that names what is wrong."""
    which = prompt.WhichOneof("input")
    if which == "text":
        return prompt.text
    if which is None:
        return InvalidArgument(f"{field}: set text or conversation", reason="MISSING_PROMPT")
    users: list[str] = []
    for j, msg in enumerate(prompt.conversation.messages):
        role = msg.role.strip().lower()
        if role not in _ROLES:
            return InvalidArgument(
                f"{field}.conversation.messages[{j}].role: unknown role {echo(msg.role)} "
                f"(expected one of {', '.join(_ROLES)})",
                reason="UNKNOWN_ROLE",
            )
        if role == "user":
            users.append(msg.content)
    if not users:
        return InvalidArgument(f"{field}.conversation: no user turn", reason="NO_USER_TURN")
    if prompt.turn_selection not in _TURN_SELECTIONS:  # an enum value this server does not know
        return InvalidArgument(
            f"{field}.turn_selection: unknown value {prompt.turn_selection} (expected one of "
            f"{', '.join(router_pb2.TurnSelection.Name(v) for v in sorted(_TURN_SELECTIONS))})",
            reason="OUT_OF_RANGE",
        )
    if prompt.turn_selection == router_pb2.TURN_SELECTION_ALL_USER:
        return "\n\n".join(users)
    return users[-1]


def input_text(prompt: router_pb2.Prompt) -> str:
    """All a model is sent of `prompt`: its text, or every turn's content, one per line (what its input
    tokens are counted from for an expected cost, where the router reads one turn)."""
    if prompt.WhichOneof("input") == "conversation":
        return "\n".join(m.content for m in prompt.conversation.messages)
    return prompt.text
