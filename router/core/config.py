"""Settings: defaults, then ``config.toml`` (``VISION_ROUTER_CONFIG`` or
``~/.config/vision-router/config.toml``), then command-line flags.

Example ``config.toml``::

    model = "qwen3-vision"
    max_rounds = 2
    fallback = ["ocr", "detect"]     # experts to run when images are attached but nobody asked
    expert_timeout = 60
    cache_dir = "~/.cache/vision-router"   # "" keeps the cache in memory only
    keywords_file = "my-keywords.toml"
    exemplars_file = "my-exemplars.toml"    # the semantic router's sentences; semantic = false turns it off

    [experts.ocr]
    engine = "onnx"
    timeout = 30                      # seconds, this expert only

    [experts.caption]
    url = "http://127.0.0.1:8601"     # a `vision-router expert serve caption` service

    [serve]                           # `vision-router serve` defaults
    port = 11435
    route = ["qwen3*"]                # only these models get vision (default: every model without it)
    max_body_mib = 64

Every mistake in the file is reported at start as one line naming the key and what was expected
(``config.toml: experts.detect.url: expected an http(s) URL string, got 5``); unknown keys and
unknown ``[experts.NAME]`` sections are errors, not silently ignored.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs this one for TypedDicts before Python 3.12

from experts.errors import VisionRouterError
from experts.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, read_text_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "qwen3-vision"
BASE_MODEL = "qwen3:4b-instruct-2507-q4_K_M"
MAX_TOML_BYTES = 4 * 1024 * 1024  # a config or keyword table is a few KiB; nothing needs megabytes


class ConfigError(VisionRouterError):
    """The configuration, or a file it names, cannot be used: one line naming the file and the key."""


def _url(value: Any) -> Any:
    if isinstance(value, str):
        parts = urlsplit(value.strip())
        if parts.scheme in ("http", "https") and parts.netloc and not any(c.isspace() for c in value.strip()):
            return value.strip()
    raise PydanticCustomError("url", "expected an http(s) URL string")


Url = Annotated[str, BeforeValidator(_url)]
# strict: TOML's `true` is not 1 second.
Seconds = Annotated[float, Field(gt=0, strict=True)]


@with_config(ConfigDict(extra="allow", allow_inf_nan=False))
class ExpertTable(TypedDict, total=False):
    """One ``[experts.NAME]`` table. The keys every expert shares are checked here; the rest is the
    expert's own configuration (checked against its ``config_keys`` when it declares them)."""

    url: Url  # a `vision-router expert serve NAME` service
    timeout: Seconds  # the router's per-expert run timeout
    connect_timeout: Seconds  # for `url`
    engine: str
    token: str  # bearer token of the `url` service (expert serve --token)
    num_cpus: Annotated[float, Field(ge=0)]  # Ray: CPUs per actor of this expert (batch/index --ray)
    num_gpus: Annotated[float, Field(ge=0)]  # Ray: GPUs per actor
    replicas: Annotated[int, Field(ge=1, strict=True)]  # Ray: actors in this expert's pool


# Keys any expert table may hold whatever the expert declares: the router's and the remote client's.
ROUTER_EXPERT_KEYS = ("url", "timeout", "connect_timeout", "token")
# Where and how many: read by the Ray pipelines (router/apps/scale.py), never handed to the expert.
PLACEMENT_KEYS = ("num_cpus", "num_gpus", "replicas")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "vision-router")


def default_config_path() -> Path:
    env = os.environ.get("VISION_ROUTER_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vision-router" / "config.toml"


class ServeSettings(BaseModel):
    """`vision-router serve` defaults (the ``[serve]`` table); command-line flags win."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # 1e400 is inf in TOML: not "no limit"

    port: int = Field(11435, ge=0, le=65535, description="0 picks a free port (the one bound is printed)")
    route: list[str] = Field(default_factory=list, description="model globs to route; [] = every model without vision")
    skip: list[str] = Field(default_factory=list, description="model globs never routed")
    token: str | None = Field(None, description="require `Authorization: Bearer <token>`")
    max_body_mib: int = Field(64, ge=1, le=4096)
    upstream_timeout: float = Field(600.0, gt=0, description="seconds Ollama may stay silent mid-request")
    max_concurrent: int = Field(512, ge=1, description="requests in flight; more get Ollama's 503 'server busy'")
    max_connections: int = Field(1024, ge=1, description="open client connections")
    header_timeout: float = Field(10.0, gt=0, description="seconds a request's headers may take (slow clients)")
    body_timeout: float = Field(120.0, gt=0, description="seconds a request's body may take")
    progress: bool = Field(
        False,
        description="show streaming clients which experts are looking, in Ollama's `thinking` field "
        "(not to clients that sent think: false)",
    )
    findings: bool = Field(False, description="end each routed answer with a line of what the experts found")
    answer_filter: bool = Field(
        True,
        description="take the router's own scaffolding (echoed prompts, notes, context blocks, loops) out of "
        "answers, on every route; false passes the model's text whole",
    )


class Settings(BaseModel):
    """Everything the router can be told. Field docs double as docs/config.md's table."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # 1e400 is inf in TOML: not "no limit"

    model: str = Field(DEFAULT_MODEL, description="Ollama model that answers")
    ollama_host: str | None = Field(None, description="Ollama address; default OLLAMA_HOST, else 127.0.0.1:11434")
    max_rounds: int = Field(2, ge=0, le=8, description="expert rounds per message (LLM turns <= rounds + 1)")
    max_tags_per_reply: int = Field(8, ge=1, description="expert requests (tags, tool calls) run per model reply")
    max_expert_runs: int = Field(8, ge=1, description="expert runs per message; the rest are skipped and reported")
    fallback: list[str] = Field(
        default_factory=lambda: ["ocr", "detect"],
        description="experts run when images are attached but neither keywords nor the model asked; [] = none",
    )
    expert_timeout: float = Field(60.0, gt=0, description="seconds per expert run (per-expert `timeout` wins)")
    max_image_bytes: int = Field(DEFAULT_MAX_BYTES, gt=0)
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    keywords_file: str | None = Field(None, description="keyword table TOML; default: the built-in table")
    semantic: bool = Field(True, description="route by meaning (multilingual exemplars) when no keyword matches")
    semantic_min_confidence: float = Field(
        0.5, ge=0, le=1, description="calibrated probability the semantic route must reach to be acted on"
    )
    exemplars_file: str | None = Field(None, description="semantic router exemplars TOML; default: the built-in")
    cache_dir: str | None = Field(None, description="on-disk result cache; default ~/.cache/vision-router, '' = off")
    cache_items: int = Field(1024, ge=0, description="in-memory LRU size")
    inject_protocol: Literal["auto", "always", "never"] = Field(
        "auto", description="send the tag protocol as a system message (auto: unless the model's SYSTEM has it)"
    )
    protocol: Literal["tags", "tools", "auto"] = Field("tags", description="how the model asks for experts")
    experts: dict[str, ExpertTable] = Field(default_factory=dict, description="per-expert settings")
    serve: ServeSettings = Field(default_factory=ServeSettings, description="proxy defaults")

    _source: str = PrivateAttr("settings")  # the file the values came from, for error lines

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Defaults < config file < overrides (None values in overrides are ignored).

        Raises :class:`ConfigError` (one line: the file, every bad key, what was expected) for a file
        that cannot be read or does not fit the schema, and for a ``cache_dir`` or ``keywords_file``
        that cannot be what it says."""
        data: dict[str, Any] = {}
        p = Path(path).expanduser() if path else default_config_path()
        if path or p.exists():
            data = read_toml(p, "config file")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            settings = cls.model_validate(data)
        except ValidationError as exc:
            problems = [_problem(e) for e in exc.errors()]
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ConfigError(f"{p}: {'; '.join(problems[:3])}{more}") from None
        settings._source = str(p)
        settings._check_files()
        return settings

    def _check_files(self) -> None:
        if self.cache_dir:
            d = Path(self.cache_dir).expanduser()
            existing = next((q for q in (d, *d.parents) if q.exists()), None)
            if existing is not None and not existing.is_dir():
                raise ConfigError(f"{self._source}: cache_dir: expected a folder, got a file: {existing}")
        for key, what in (("keywords_file", "keyword table"), ("exemplars_file", "exemplar file")):
            path = getattr(self, key)
            if path:
                try:
                    read_toml(Path(path).expanduser(), what)
                except ConfigError as exc:
                    raise ConfigError(f"{self._source}: {key}: {exc}") from None

    def check_experts(self, registry: Any) -> None:
        """Every ``[experts.NAME]`` table names an installed expert (by name or alias), and holds only
        the expert's ``config_keys`` (plus :data:`ROUTER_EXPERT_KEYS`) when the expert declares them."""
        for name, table in self.experts.items():
            canonical = registry.resolve(name)
            if canonical is None:
                if _left_out_here(registry, name):
                    continue
                installed = ", ".join(registry.names()) or "none"
                raise ConfigError(f"{self._source}: experts.{name}: no expert named {name!r} (installed: {installed})")
            known = getattr(registry.expert_class(canonical), "config_keys", None)
            if known is None:
                continue
            allowed = sorted({*known, *ROUTER_EXPERT_KEYS})
            for key in table:
                if key not in allowed:
                    raise ConfigError(f"{self._source}: experts.{name}.{key}: {_unknown_key(key, allowed)}")

    def resolved_cache_dir(self) -> str | None:
        if self.cache_dir is None:
            return os.environ.get("VISION_ROUTER_CACHE", default_cache_dir()) or None
        return self.cache_dir or None

    def expert_timeouts(self) -> dict[str, float]:
        return {name: float(cfg["timeout"]) for name, cfg in self.experts.items() if "timeout" in cfg}

    def expert_configs(self) -> dict[str, dict[str, Any]]:
        """Per-expert constructor config (everything but the router's own `timeout` and the Ray placement)."""
        drop = ("timeout", *PLACEMENT_KEYS)
        return {n: {k: v for k, v in c.items() if k not in drop} for n, c in self.experts.items()}

    def configure(self, registry: Any) -> Any:
        """Apply the per-expert settings to an :class:`experts.registry.Registry`; returns it.
        Raises :class:`ConfigError` for a table naming no installed expert (see :meth:`check_experts`)."""
        self.check_experts(registry)
        for name, cfg in self.expert_configs().items():
            if cfg:
                registry.configure(name, **cfg)
        return registry

    def image_limits(self) -> dict[str, int]:
        return {"max_bytes": self.max_image_bytes, "max_pixels": self.max_image_pixels}


# --- reading files and describing problems ------------------------------------------------------
def data_table(path: str | Path | None, shipped: str, what: str) -> tuple[dict[str, Any], str]:
    """A data table the user may replace (keywords, exemplars): ``path`` read with :func:`read_toml`'s checks,
    or for ``None`` the shipped ``router/data/<shipped>``; and a name for error lines."""
    if path is None:
        from importlib import resources

        text = resources.files("router").joinpath(f"data/{shipped}").read_text("utf-8")
        return tomllib.loads(text), f"built-in {shipped}"
    return read_toml(Path(path).expanduser(), what), str(path)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as data. Every problem (missing, a folder, a FIFO or device, over
    :data:`MAX_TOML_BYTES`, not UTF-8, UTF-16, invalid or absurdly nested TOML) is one :class:`ConfigError`
    line starting with ``what`` and the path. Checked before reading, like images: a FIFO cannot hang
    it and ``/dev/zero`` is not read."""
    text = read_text(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(f"{what} {path}: invalid TOML: arrays or tables nested too deeply") from None


def read_text(path: Path, what: str, max_bytes: int = MAX_TOML_BYTES, kind: str = "TOML") -> str:
    """The UTF-8 text of a file the user named (a config file, keyword table, preset, eval suite), with
    :func:`read_toml`'s checks: any problem is one :class:`ConfigError` line naming ``what`` and the path."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a file")
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{what} not found: {path}")
    return read_text_file(path, max_bytes, lambda reason: ConfigError(f"{what} {path}: {reason}"), kind)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "url": "an http(s) URL string",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _problem(err: Any) -> str:
    """One pydantic error as ``key: expected X, got Y``."""
    loc = tuple(str(x) for x in err["loc"])
    where = ".".join(loc)
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{where}: {_unknown_key(loc[-1], _known_keys(loc[:-1]))}"
    if kind in _BOUNDS:
        bound = ctx.get(_BOUNDS[kind][0])
        what = f"a number {_BOUNDS[kind][1]} {bound:g}" if isinstance(bound, (int, float)) else None
    elif kind == "literal_error":
        what = "one of " + str(ctx.get("expected", "")).replace(" or ", ", ")
    else:
        what = _EXPECTED.get(kind)
    if what is None:
        return f"{where}: {err['msg']}, got {_show(err.get('input'))}"
    return f"{where}: expected {what}, got {_show(err.get('input'))}"


def _known_keys(table: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = ServeSettings if table == ("serve",) else Settings
    return sorted(model.model_fields)


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown key ({hint}known: {', '.join(known)})"


def _show(value: Any) -> str:
    """A value as it would look in TOML, cut short."""
    if isinstance(value, dict):
        return "a table"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _left_out_here(registry: Any, name: str) -> bool:
    """An expert that is installed but not loaded in this process (a plugin that failed to load, or
    one left out by VISION_ROUTER_EXPERTS): its table is kept for when it is, not an error."""
    if name.lower() in {n.lower() for n in getattr(registry, "load_errors", {})}:
        return True
    if not os.environ.get("VISION_ROUTER_EXPERTS"):
        return False
    from importlib.metadata import entry_points

    from experts.registry import ENTRY_POINT_GROUP

    return any(ep.name.lower() == name.lower() for ep in entry_points(group=ENTRY_POINT_GROUP))
