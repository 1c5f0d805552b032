"""Request bodies at the proxy's boundary: JSON parsed once, keys matched the way Ollama matches them,
shapes checked into typed models.

Ollama is written in Go, whose ``encoding/json`` matches an object's keys to struct fields
case-insensitively (``"IMAGES"`` and ``"\\u0069mages"`` both fill ``images``). Whether a request carries
images is therefore decided on the parsed document with the same folding, never by looking for bytes:
a key the proxy missed would hand image bytes to the text model.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from experts.errors import VisionRouterError


class BadRequest(VisionRouterError):
    """A request body the proxy refuses: 400 in the route's own error shape."""

    status = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def may_hold(word: str) -> re.Pattern[bytes]:
    """A cheap, sound pre-check: a JSON document can only have a key that folds to ``word`` if its
    bytes hold ``word`` (any case) or a ``\\u`` escape. Bodies without either need no parsing."""
    return re.compile(re.escape(word.encode()) + rb"|\\u", re.IGNORECASE)


def load_json(body: bytes) -> Any:
    """The parsed body; invalid or absurdly nested JSON is a :class:`BadRequest`."""
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequest("invalid JSON body: nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError
        raise BadRequest(f"invalid JSON body: {exc}") from None


_FOLDS: dict[type, dict[str, str]] = {}


class GoStruct(BaseModel):
    """A JSON object decoded like Go's ``encoding/json`` into a struct: keys match fields
    case-insensitively; two keys for one field are refused rather than guessed at."""

    model_config = ConfigDict(strict=True, extra="allow")

    @classmethod
    def _folds(cls) -> dict[str, str]:
        folds = _FOLDS.get(cls)
        if folds is None:
            folds = _FOLDS[cls] = {name.casefold(): name for name in cls.model_fields}
        return folds

    @model_validator(mode="before")
    @classmethod
    def _canonical_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        folds = cls._folds()
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = key if key in cls.model_fields else folds.get(key.casefold(), key)
            if len(name) != len(key):  # casefold expanded a ligature: Go would not match it
                name = key
            if name in out:
                raise ValueError(f"two keys for the field {name!r}")
            out[name] = value
        return out


def validate(model: type[GoStruct], data: Any) -> Any:
    """``model`` from a parsed body, or a :class:`BadRequest` naming the first wrong field."""
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _bad_request(exc) from None


def _bad_request(exc: ValidationError) -> BadRequest:
    errors = exc.errors(include_url=False)
    where = _path(errors[0]["loc"])
    wants = []
    for e in errors:
        if _path(e["loc"]) == where:
            msg = str(e["msg"])
            wants.append(msg.removeprefix("Input should be ").removeprefix("Value error, "))
    subject = where or "the request body"
    if len(wants) > 1 or errors[0]["msg"].startswith("Input should be"):
        return BadRequest(f"invalid request: {subject} should be {' or '.join(dict.fromkeys(wants))}", where or None)
    return BadRequest(f"invalid request: {subject}: {wants[0]}", where or None)


_TAG = re.compile(r"[\[\-]|^(str|int|float|bool|list|dict|none|function|json|model)$|^[A-Z]")


def _path(loc: tuple[Any, ...]) -> str:
    """``messages[0].content`` from pydantic's location, without its union-member tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TAG.search(str(part)):
            out += f".{part}" if out else str(part)
    return out


# --- Ollama's native requests (api/types.go) ---------------------------------------------------------
class ToolFunctionCall(GoStruct):
    name: str = ""
    arguments: dict[str, Any] | None = None


class ToolCall(GoStruct):
    function: ToolFunctionCall


class NativeMessage(GoStruct):
    """One chat message; ``images`` are checked one by one when decoded (each error names its image)."""

    role: str = ""
    content: str | None = None
    images: list[Any] | None = None
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message as Ollama JSON, keys canonical, without ``images``."""
        out = self.model_dump(exclude_none=True, exclude={"images"})
        out["role"] = (self.role or "user").lower()
        out["content"] = self.content or ""
        return out


class NativeRequest(GoStruct):
    """``/api/chat`` or ``/api/generate`` (the fields the proxy reads; others ride along)."""

    model: str | None = None
    messages: list[NativeMessage] | None = None
    prompt: str | None = None
    system: str | None = None
    images: list[Any] | None = None
    stream: bool | None = None
    options: dict[str, Any] | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: str | float | int | None = None
    think: bool | str | None = None
    tools: list[dict[str, Any]] | None = None

    def image_count(self) -> int:
        return len(self.images or ()) + sum(len(m.images or ()) for m in self.messages or ())

    def without_images(self) -> dict[str, Any]:
        """The request as Ollama JSON with every image taken out (for a load request)."""
        out = self.model_dump(exclude_none=True, exclude={"images", "messages"})
        if self.messages is not None:
            out["messages"] = [m.as_dict() for m in self.messages]
        return out


__all__ = ["BadRequest", "GoStruct", "NativeMessage", "NativeRequest", "load_json", "may_hold", "validate"]
