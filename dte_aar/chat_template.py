"""The chat template: how chat messages become the transcript the small model knows.

The model never saw chat markup, only the seed's dialogues rendered by
:func:`dte_aar.arena.render_chat`: one line per message, ``Role: content``, with the
assistant speaking under the identity's name. A conversation is rendered the same way and
ends with the persona's name and a colon, where the reply starts::

    System: You are Deep Tree Echo, a self-reflective cognitive architecture.
    User: What is a reservoir?
    Deep Tree Echo: A fixed, random recurrent network whose echoes I read out.
    User: And the readout?
    Deep Tree Echo:

The reply is the continuation up to end-of-text or the next turn (``\\nUser:`` or
``\\nSystem:``, the default stop strings), with surrounding whitespace stripped.
``developer`` messages count as ``system`` (OpenAI's newer name for it). A generator that
brings a style example puts it first, separated by a blank line (:func:`format_prompt`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PERSONA = "Deep Tree Echo"
USER = "User"
SYSTEM = "System"
ROLES = ("system", "developer", "user", "assistant")


def stop_sequences() -> tuple[str, ...]:
    """Where a reply ends: the next user or system turn."""
    return (f"\n{USER}:", f"\n{SYSTEM}:")


def message_text(content: Any) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ValueError("content must be a string or a list of text parts")


def render_messages(messages: Sequence[Mapping[str, Any]], speaker: str = PERSONA) -> str:
    """The transcript of ``messages``, ending with ``"\\n<speaker>:"`` for the reply."""
    names = {"system": SYSTEM, "developer": SYSTEM, "user": USER, "assistant": speaker}
    lines = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in names:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        lines.append(f"{names[role]}: {message_text(message.get('content')).strip()}")
    lines.append(f"{speaker}:")
    return "\n".join(lines)


def format_prompt(prompt: str, style_example: str | None = None, speaker: str = PERSONA) -> str:
    """One user turn framed for the reply, after a style example when one rides along."""
    turn = f"{USER}: {prompt.strip()}\n{speaker}:"
    return f"{style_example.strip()}\n\n{turn}" if style_example else turn


def reply_only(text: str) -> str:
    """Cut a continuation where the model starts writing the next turn."""
    cuts = [i for stop in stop_sequences() if (i := text.find(stop)) >= 0]
    return (text[: min(cuts)] if cuts else text).strip()
