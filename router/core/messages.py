"""Chat messages as the run loop holds them: the ``ollama`` package's own types, never raw dicts.

Requests arrive as Ollama JSON (the proxy) or as :class:`ollama.Message` (scripts). At the edge each
message becomes a typed :class:`ollama.Message` without its images: image values are handed back
separately, untouched, because ``ollama.Image`` would read a string naming an existing file (only a
script's own attachments are ever read from disk; strings in messages are image data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ollama
from pydantic import ValidationError

from router.core.errors import InvalidMessage

Message = ollama.Message
ToolCall = ollama.Message.ToolCall

# What Ollama reads from a chat message; anything else a client sends is dropped, as the ollama client does.
_FIELDS = ("role", "content", "thinking", "tool_name", "tool_calls")


def split_images(raw: Any, index: int) -> tuple[Message, list[Any]]:
    """A message of the request as a typed message without images, and its image values as sent."""
    if isinstance(raw, Message):
        images = list(raw.images or [])
        return (raw.model_copy(update={"images": None}) if images else raw), images
    if not isinstance(raw, Mapping):
        raise InvalidMessage(f"message {index}: expected an object, got {type(raw).__name__}")
    try:
        msg = Message.model_validate({k: raw[k] for k in _FIELDS if raw.get(k) is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InvalidMessage(f"message {index}: {where}: {first['msg']}") from None
    return msg, list(raw.get("images") or [])


def with_image_notes(content: str | None, notes: Sequence[str]) -> str:
    """A message's words with one note per attached image before them (what the model sees instead)."""
    head = "\n".join(notes)
    return head + ("\n" + content if content else "") if notes else (content or "")


def user(content: str) -> Message:
    return Message(role="user", content=content)


def system(content: str) -> Message:
    return Message(role="system", content=content)


def assistant(content: str, tool_calls: Sequence[ToolCall] | None = None) -> Message:
    return Message(role="assistant", content=content, tool_calls=list(tool_calls) if tool_calls else None)


def tool_result(name: str, content: str) -> Message:
    return Message(role="tool", tool_name=name, content=content)


def call_name(call: ToolCall) -> str:
    return call.function.name or "?"


def call_json(call: ToolCall) -> dict[str, Any]:
    """A tool call as Ollama's JSON (``{"function": {"name", "arguments"}}``), for the client."""
    return call.model_dump(exclude_none=True)


def echo_call(call: ToolCall) -> ToolCall:
    """A tool call as it goes back into the history (arguments must be an object there)."""
    args = call.function.arguments
    fn = ToolCall.Function(name=call_name(call), arguments=args if isinstance(args, Mapping) else {})
    return ToolCall(function=fn)


class Conversation:
    """The messages the model sees in one request, with the user's question kept track of: context
    goes in front of the question, the protocol into the system message, rounds at the end."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.question = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "user"), None)

    def before_question(self, text: str) -> None:
        """Put ``text`` (expert results, retrieved context) in front of the user's last message."""
        if self.question is None or not text:
            return
        m = self.messages[self.question]
        self.messages[self.question] = m.model_copy(update={"content": f"{text}\n\n{m.content or ''}"})

    def add_system(self, prompt: str) -> None:
        """Join ``prompt`` to the client's system message (it replaces the model's SYSTEM), or send it as one."""
        if self.messages and self.messages[0].role == "system":
            m = self.messages[0]
            self.messages[0] = m.model_copy(update={"content": f"{m.content or ''}\n\n{prompt}"})
            return
        self.messages.insert(0, system(prompt))
        if self.question is not None:
            self.question += 1

    def replace_in_system(self, old: str, new: str) -> None:
        if self.messages and self.messages[0].role == "system" and old in (self.messages[0].content or ""):
            m = self.messages[0]
            self.messages[0] = m.model_copy(update={"content": (m.content or "").replace(old, new)})

    def has_system(self) -> bool:
        return bool(self.messages) and self.messages[0].role == "system"

    def extend(self, messages: Sequence[Message]) -> None:
        self.messages.extend(messages)
