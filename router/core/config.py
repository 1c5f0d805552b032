"""Settings: defaults, then ``config.toml`` (``VISION_ROUTER_CONFIG`` or
``~/.config/vision-router/config.toml``), then command-line flags.

Example ``config.toml``::

    model = "qwen3-vision"
    max_rounds = 2
    fallback = ["ocr", "detect"]     # experts to run when images are attached but nobody asked
    expert_timeout = 60
    cache_dir = "~/.cache/vision-router"   # "" keeps the cache in memory only
    keywords_file = "my-keywords.toml"

    [experts.ocr]
    engine = "onnx"
    timeout = 30                      # seconds, this expert only

    [experts.caption]
    url = "http://127.0.0.1:8601"     # a `vision-router expert serve caption` service

    [serve]                           # `vision-router serve` defaults
    port = 11435
    route = ["qwen3*"]                # only these models get vision (default: every model without it)
    max_body_mib = 64
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from experts.errors import VisionRouterError
from experts.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "qwen3-vision"
BASE_MODEL = "qwen3:4b-instruct-2507-q4_K_M"


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

    model_config = {"extra": "forbid"}

    port: int = Field(11435, ge=1, le=65535)
    route: list[str] = Field(default_factory=list, description="model globs to route; [] = every model without vision")
    skip: list[str] = Field(default_factory=list, description="model globs never routed")
    token: str | None = Field(None, description="require `Authorization: Bearer <token>`")
    max_body_mib: int = Field(64, ge=1, le=4096)
    upstream_timeout: float = Field(600.0, gt=0, description="seconds Ollama may stay silent mid-request")


class Settings(BaseModel):
    """Everything the router can be told. Field docs double as the README's configuration table."""

    model_config = {"extra": "forbid"}

    model: str = Field(DEFAULT_MODEL, description="Ollama model that answers")
    ollama_host: str | None = Field(None, description="Ollama address; default OLLAMA_HOST, else 127.0.0.1:11434")
    max_rounds: int = Field(2, ge=0, le=8, description="expert rounds per message (LLM turns <= rounds + 1)")
    fallback: list[str] = Field(
        default_factory=lambda: ["ocr", "detect"],
        description="experts run when images are attached but neither keywords nor the model asked; [] = none",
    )
    expert_timeout: float = Field(60.0, gt=0, description="seconds per expert run (per-expert `timeout` wins)")
    max_image_bytes: int = Field(DEFAULT_MAX_BYTES, gt=0)
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    keywords_file: str | None = Field(None, description="keyword table TOML; default: the built-in table")
    cache_dir: str | None = Field(None, description="on-disk result cache; default ~/.cache/vision-router, '' = off")
    cache_items: int = Field(1024, ge=0, description="in-memory LRU size")
    inject_protocol: Literal["auto", "always", "never"] = Field(
        "auto", description="send the tag protocol as a system message (auto: unless the model's SYSTEM has it)"
    )
    protocol: Literal["tags", "tools", "auto"] = Field("tags", description="how the model asks for experts")
    experts: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-expert settings")
    serve: ServeSettings = Field(default_factory=ServeSettings, description="proxy defaults")

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> Settings:
        """Defaults < config file < overrides (None values in overrides are ignored)."""
        data: dict[str, Any] = {}
        p = Path(path).expanduser() if path else default_config_path()
        if path or p.exists():
            try:
                data = tomllib.loads(p.read_text("utf-8"))
            except FileNotFoundError:
                raise VisionRouterError(f"config file not found: {p}") from None
            except tomllib.TOMLDecodeError as exc:
                raise VisionRouterError(f"config file {p}: invalid TOML: {exc}") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise VisionRouterError(f"config {p}: {loc}: {first['msg']}") from None

    def resolved_cache_dir(self) -> str | None:
        if self.cache_dir is None:
            return os.environ.get("VISION_ROUTER_CACHE", default_cache_dir()) or None
        return self.cache_dir or None

    def expert_timeouts(self) -> dict[str, float]:
        return {name: float(cfg["timeout"]) for name, cfg in self.experts.items() if "timeout" in cfg}

    def expert_configs(self) -> dict[str, dict[str, Any]]:
        """Per-expert constructor config (everything but the router's own `timeout`)."""
        return {n: {k: v for k, v in c.items() if k != "timeout"} for n, c in self.experts.items()}

    def configure(self, registry: Any) -> Any:
        """Apply the per-expert settings to an :class:`experts.registry.Registry`; returns it."""
        for name, cfg in self.expert_configs().items():
            if cfg:
                registry.configure(name, **cfg)
        return registry

    def image_limits(self) -> dict[str, int]:
        return {"max_bytes": self.max_image_bytes, "max_pixels": self.max_image_pixels}
