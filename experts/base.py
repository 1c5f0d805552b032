"""The expert interface: a name, aliases, typed arguments (whose JSON schema is also the tool
definition), a lazy thread-safe engine load, and ``analyze(image, args) -> ExpertResult``."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from experts.errors import ExpertError
from experts.images import DecodedImage
from experts.schema import ExpertResult


class ExpertArgs(BaseModel):
    """Base for an expert's arguments. Unknown keys are refused so typos surface as errors."""

    model_config = ConfigDict(extra="forbid")


class Expert:
    """Base class for experts.

    Subclasses set ``name``, ``description``, ``Args`` (a pydantic model) and ``positional``
    (the argument that a tag's free text, ``[VISION: name "free text"]``, fills), and implement
    :meth:`_analyze`. Heavy engines load in :meth:`_load`, called once per instance on first use.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    Args: ClassVar[type[ExpertArgs]] = ExpertArgs
    positional: ClassVar[str | None] = None
    # Extra(s) that bring the engine: shown by `doctor` and in "not installed" errors.
    extra: ClassVar[str | None] = None

    def __init__(self, **config: Any) -> None:
        self.config: dict[str, Any] = dict(config)
        self._load_lock = threading.Lock()
        self._loaded = False

    # --- schema -------------------------------------------------------------------------------
    @classmethod
    def args_schema(cls) -> dict[str, Any]:
        """JSON schema of the arguments, inlined and without pydantic titles: usable as a tool's
        ``parameters`` as it is."""
        schema = cls.Args.model_json_schema()
        return _clean_schema(schema)

    def parse_args(self, args: dict[str, Any] | None) -> ExpertArgs:
        """Validate arguments; raises :class:`ExpertError` with one line naming the bad field."""
        try:
            return self.Args.model_validate(args or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "args"
            allowed = ", ".join(self.Args.model_fields) or "none"
            raise ExpertError(
                f"{self.name}: bad argument {loc!r}: {first.get('msg')} (arguments: {allowed})"
            ) from None

    # --- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the engine once per instance; safe to call from many threads."""
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _load(self) -> None:
        """Load models. Override in experts with heavy engines."""

    def status(self) -> dict[str, Any]:
        """What `doctor` shows: is the engine importable, are weights present, which engine serves."""
        return {"ok": True, "engine": "built-in"}

    def info(self) -> dict[str, Any]:
        """Name, aliases, description and args schema (also served by expert services)."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "description": self.description,
            "args_schema": self.args_schema(),
            "positional": self.positional,
        }

    # --- work ---------------------------------------------------------------------------------
    def analyze(self, image: DecodedImage, args: dict[str, Any] | None = None) -> ExpertResult:
        """Run the expert on one decoded image. Errors propagate; the dispatcher turns them into
        error lines."""
        parsed = self.parse_args(args)
        self.load()
        t0 = time.perf_counter()
        result = self._analyze(image, parsed)
        result.timing_ms = (time.perf_counter() - t0) * 1000.0
        result.image_id = image.image_id
        result.expert = self.name
        result.args = parsed.model_dump(exclude_defaults=True)
        return result

    def _analyze(self, image: DecodedImage, args: Any) -> ExpertResult:
        raise NotImplementedError

    def new_result(self, image: DecodedImage, **fields: Any) -> ExpertResult:
        """Convenience for subclasses."""
        return ExpertResult(image_id=image.image_id, expert=self.name, **fields)


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return walk(dict(defs[node["$ref"].split("/")[-1]]))
            out = {k: walk(v) for k, v in node.items() if k != "title"}
            # Optional[X] appears as anyOf [X, null]: tools and small models want the plain type.
            any_of = out.get("anyOf")
            if isinstance(any_of, list):
                non_null = [s for s in any_of if s.get("type") != "null"]
                if len(non_null) == 1 and len(any_of) == 2:
                    out.pop("anyOf")
                    out.update(non_null[0])
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    cleaned = walk(schema)
    cleaned.setdefault("type", "object")
    cleaned.setdefault("properties", {})
    cleaned.pop("additionalProperties", None)
    return cleaned
