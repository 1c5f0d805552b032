"""The expert interface: a name, aliases, typed arguments (whose JSON schema is also the tool
definition), a lazy thread-safe engine load, and ``analyze(image, args) -> ExpertResult``.

Experts that do not need full resolution declare ``max_side``: they are handed a downscaled view of
big images (see :meth:`experts.images.DecodedImage.view`) and their boxes are mapped back to the
original image's pixels."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from experts.cancel import check_cancelled
from experts.errors import ExpertError
from experts.images import DecodedImage
from experts.schema import ExpertResult

ARG_MAX_CHARS = 2000
"""Longest string any expert argument accepts: a query, a question or a label list, never a document."""


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:  # the distribution's version: the result cache notices an upgrade
        return version("ollama-vision-router")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "0.0.0"


PACKAGE_VERSION = _package_version()


class ExpertArgs(BaseModel):
    """Base for an expert's arguments. Unknown keys are refused so typos surface as errors; strings are
    bounded (:data:`ARG_MAX_CHARS`) so a runaway argument is a short error, not work or an echo."""

    model_config = ConfigDict(extra="forbid", str_max_length=ARG_MAX_CHARS)


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
    # Longest image side the expert needs; bigger images arrive downscaled (None: full resolution).
    # Experts whose results carry pixel measures beyond boxes override rescale_result.
    max_side: ClassVar[int | None] = None
    #: Bump when a change makes old results wrong: cached results of another version are not used.
    version: ClassVar[str] = "1"
    #: Arguments that only filter or format a result (ocr's ``query``): the engine pass does not depend on
    #: them, so callers run one pass per image and the other arguments (:meth:`pass_args`), share it, and
    #: apply these afterwards with :meth:`refine`. :meth:`_analyze` must ignore them.
    filter_args: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **config: Any) -> None:
        self.config: dict[str, Any] = dict(config)
        self._load_lock = threading.Lock()
        self._loaded = False

    def cache_tag(self) -> str:
        """What besides the image and arguments decides a result: the package and expert versions and
        this instance's configuration (an engine or model setting). Part of every result-cache key, so
        an upgrade or a config change never serves results made by other code or settings."""
        tag = self.__dict__.get("_cache_tag")
        if tag is None:  # once per instance: a new configuration makes a new instance (Registry.configure)
            import hashlib
            import json

            conf = json.dumps(self.config, sort_keys=True, default=str).encode()
            tag = self._cache_tag = f"{PACKAGE_VERSION}.{self.version}.{hashlib.sha256(conf).hexdigest()[:10]}"
        return tag

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
            if len(loc) > 60:  # an unknown key is named back: never echo a huge one
                loc = loc[:57] + "..."
            allowed = ", ".join(self.Args.model_fields) or "none"
            raise ExpertError(f"{self.name}: bad argument {loc!r}: {first.get('msg')} (arguments: {allowed})") from None

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
    def pass_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments that shape the engine pass: ``args`` (canonical, validated) without :attr:`filter_args`."""
        return {k: v for k, v in args.items() if k not in self.filter_args}

    def refine(self, result: ExpertResult, args: ExpertArgs) -> ExpertResult:
        """Apply the :attr:`filter_args` in ``args`` to a pass result that the caller owns (may modify it in
        place). Cheap and engine-free: it runs once per caller on a shared pass. Default: as it is."""
        return result

    def analyze(self, image: DecodedImage, args: dict[str, Any] | None = None) -> ExpertResult:
        """Run the expert on one decoded image: the engine pass, then :meth:`refine`. Errors propagate;
        the dispatcher turns them into error lines."""
        parsed = self.parse_args(args)
        self.load()
        check_cancelled()  # given up on while the engine loaded
        t0 = time.perf_counter()
        view = image.view(self.working_side(parsed))
        check_cancelled()
        result = self._analyze(view, parsed)
        if view is not image:
            self.rescale_result(result, view.scale)
        result = self.refine(result, parsed)
        result.timing_ms = (time.perf_counter() - t0) * 1000.0
        result.image_id = image.image_id
        result.expert = self.name
        result.args = parsed.model_dump(exclude_defaults=True)
        return result

    def _analyze(self, image: DecodedImage, args: Any) -> ExpertResult:
        raise NotImplementedError

    def working_side(self, args: Any) -> int | None:
        """The longest image side this run works on (None: full resolution); bigger images arrive as a
        downscaled view and the result is mapped back (:meth:`rescale_result`). :attr:`max_side` unless an
        expert knows better per call (an OCR engine that downscales anyway)."""
        return self.max_side

    def rescale_result(self, result: ExpertResult, scale: tuple[float, float]) -> None:
        """Map a result found on a downscaled view (``scale`` = view size / original size per axis) back
        to original pixels: boxes and text boxes. Override to also rescale expert-specific measures."""
        fx, fy = 1.0 / scale[0], 1.0 / scale[1]
        for b in result.bbox:
            b.x1, b.x2, b.y1, b.y2 = b.x1 * fx, b.x2 * fx, b.y1 * fy, b.y2 * fy
        for line in result.text:
            line.box = [[x * fx, y * fy] for x, y in line.box]
            if len(line.bbox) == 4:
                x1, y1, x2, y2 = line.bbox
                line.bbox = [x1 * fx, y1 * fy, x2 * fx, y2 * fy]

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
            if out.get("maxLength") == ARG_MAX_CHARS:  # the blanket cap: noise in every tool definition
                out.pop("maxLength")
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
