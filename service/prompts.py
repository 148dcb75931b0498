"""Turning a wire `Prompt` (text or conversation) into the text a router scores.

Rule: plain text is scored as given; a conversation is scored on its last user turn (what the routers
were trained on), or on all user turns joined by a blank line when asked. Problems come back as an
InvalidArgument naming the field, e.g. `prompts[2].conversation: no user turn`.
"""

from __future__ import annotations

from lmroute.service.errors import InvalidArgument
from lmroute.v1 import router_pb2

__all__ = ["prompt_text"]

_ROLES = ("system", "user", "assistant")


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
                f"{field}.conversation.messages[{j}].role: unknown role {msg.role!r} "
                f"(expected one of {', '.join(_ROLES)})",
                reason="UNKNOWN_ROLE",
            )
        if role == "user":
            users.append(msg.content)
    if not users:
        return InvalidArgument(f"{field}.conversation: no user turn", reason="NO_USER_TURN")
    if prompt.turn_selection == router_pb2.TURN_SELECTION_ALL_USER:
        return "\n\n".join(users)
    return users[-1]
