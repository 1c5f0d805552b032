"""Presets: worked tasks as data files. A preset names the experts a check needs (with their
arguments), the rules to check against, and the prompt that makes the model answer in a fixed
structure, in English and Chinese.

::

    vision-router ask product.png --preset ecommerce-main-image
    vision-router ask product.png --preset ecommerce-main-image -q "这是天猫的主图"
    vision-router preset list
    vision-router preset show ecommerce-main-image > my-check.toml   # copy, edit, then:
    vision-router ask product.png --preset ./my-check.toml

Presets are found, by name, in ``$VISION_ROUTER_PRESETS`` (a folder), then
``~/.config/vision-router/presets/``, then the built-in ``router/data/presets/``; a name that is a
path to a ``.toml`` file is read from there.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from experts.errors import VisionRouterError
from router.core.config import ConfigError, read_toml

log = logging.getLogger(__name__)

LANGS = ("en", "zh")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


class PresetError(VisionRouterError):
    """A preset could not be found or read."""


# --- the file format ----------------------------------------------------------------------------
class PresetExpert(BaseModel):
    model_config = {"extra": "forbid"}

    name: str
    args: dict[str, Any] = Field(default_factory=dict, description="used when the installed expert accepts them")
    fallback_args: dict[str, Any] = Field(default_factory=dict, description="used otherwise")
    optional: bool = Field(False, description="skip quietly when the expert is not installed or not usable")
    why: str = Field("", description="what the check needs it for (shown when it is missing)")


class PresetPrompt(BaseModel):
    model_config = {"extra": "forbid"}

    system_en: str = ""
    system_zh: str = ""
    question_en: str = ""
    question_zh: str = ""


class Preset(BaseModel):
    """One preset file."""

    model_config = {"extra": "forbid"}

    name: str
    title: str = ""
    title_zh: str = ""
    description: str = ""
    experts: list[PresetExpert] = Field(default_factory=list)
    rules: dict[str, list[str]] = Field(default_factory=dict)
    prompt: PresetPrompt = Field(default_factory=PresetPrompt)
    source: str = Field("", exclude=True)

    def system(self, lang: str) -> str | None:
        text = getattr(self.prompt, f"system_{lang}") or self.prompt.system_en
        if not text:
            return None
        rules = self.rules.get(lang) or self.rules.get("en") or []
        return text.replace("{rules}", "\n".join(f"- {r}" for r in rules))

    def question(self, lang: str) -> str:
        return getattr(self.prompt, f"question_{lang}") or self.prompt.question_en or self.title


@dataclass
class Prepared:
    """What ``ask`` needs from a preset: the question, the experts to run first, the system prompt."""

    question: str
    experts: list[tuple[str, dict[str, Any]]]
    system: str | None
    lang: str = "en"
    preset: Preset | None = None
    missing: list[str] = field(default_factory=list)


# --- finding presets ----------------------------------------------------------------------------
def builtin_dir() -> Path:
    return Path(str(resources.files("router").joinpath("data/presets")))


def user_dirs() -> list[Path]:
    """Folders searched before the built-in presets."""
    dirs = []
    env = os.environ.get("VISION_ROUTER_PRESETS")
    if env:
        dirs.append(Path(env).expanduser())
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    dirs.append(Path(base) / "vision-router" / "presets")
    return dirs


def _search_dirs() -> list[Path]:
    return [*user_dirs(), builtin_dir()]


def list_presets() -> list[Preset]:
    """Every preset by name; a user's preset hides a built-in one of the same name."""
    found: dict[str, Preset] = {}
    for d in _search_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml")):
            try:
                p = read_preset(f)
            except PresetError as exc:
                log.warning("%s", exc)
                continue
            found.setdefault(p.name, p)
    return sorted(found.values(), key=lambda p: p.name)


def read_preset(path: str | Path) -> Preset:
    """Read and validate one preset file."""
    p = Path(path).expanduser()
    try:
        # The checks config files get: a FIFO, a device or a huge file is one line, never a hang or a read.
        data = read_toml(p, "preset file")
    except ConfigError as exc:
        raise PresetError(str(exc)) from None
    data.setdefault("name", p.stem)
    try:
        preset = Preset.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise PresetError(f"preset {p}: {loc}: {first['msg']}") from None
    preset.source = str(p)
    return preset


def load_preset(name_or_path: str) -> Preset:
    """A preset by name (user folders, then built-in) or by the path of a TOML file."""
    looks_like_path = name_or_path.endswith(".toml") or os.sep in name_or_path or "/" in name_or_path
    if looks_like_path:
        return read_preset(name_or_path)
    for d in _search_dirs():
        f = d / f"{name_or_path}.toml"
        if f.is_file():
            return read_preset(f)
    # A file whose `name` differs from its file name.
    for p in list_presets():
        if p.name == name_or_path:
            return p
    names = ", ".join(p.name for p in list_presets()) or "none"
    raise PresetError(f"unknown preset {name_or_path!r} (available: {names}; or give the path of a .toml file)")


def detect_lang(text: str | None) -> str:
    """``zh`` when the text has Chinese characters, ``en`` when it has other words; else from LANG."""
    if text and _CJK.search(text):
        return "zh"
    if text and text.strip():
        return "en"
    env = os.environ.get("LC_ALL") or os.environ.get("LC_MESSAGES") or os.environ.get("LANG") or ""
    return "zh" if env.lower().startswith("zh") else "en"


# --- preparing a request ------------------------------------------------------------------------
def prepare(preset_name: str, question: str | None, *, registry: Any = None, lang: str | None = None) -> Prepared:
    """Turn a preset (name or path; ``name:zh`` / ``name:en`` picks the language) and the user's
    optional question into the question, experts and system prompt of one ``ask``.

    Experts that are not installed are left out: optional ones quietly, others with a line in the
    question telling the model what could not be checked. Preset arguments the installed expert does
    not accept fall back to ``fallback_args``.
    """
    name = preset_name
    m = re.fullmatch(r"(.+):(en|zh)", preset_name)
    if m and not Path(preset_name).exists():
        name, lang = m.group(1), m.group(2)
    preset = load_preset(name)
    lang = lang or detect_lang(question)
    if lang not in LANGS:
        raise PresetError(f"preset language {lang!r}: expected one of {', '.join(LANGS)}")
    if registry is None:
        from experts.registry import default_registry

        registry = default_registry()

    experts: list[tuple[str, dict[str, Any]]] = []
    missing: list[str] = []
    for e in preset.experts:
        usable, reason = _usable(registry, e.name)
        if not usable:
            if not e.optional:
                missing.append(f"{e.name} ({e.why or 'needed by this check'}): {reason}")
                log.warning("preset %s: expert %s left out: %s", preset.name, e.name, reason)
            continue
        experts.append((e.name, _args_for(registry, e)))

    q = preset.question(lang)
    if question and question.strip() and question.strip() != q:
        q = f"{q}\n{question.strip()}"
    if missing:
        head = "未能检查（专家未安装）：" if lang == "zh" else "Not checked (expert not installed): "
        q += "\n" + head + "; ".join(missing)
    return Prepared(question=q, experts=experts, system=preset.system(lang), lang=lang, preset=preset, missing=missing)


def _usable(registry: Any, name: str) -> tuple[bool, str]:
    canonical = registry.resolve(name)
    if canonical is None:
        return False, "not installed"
    try:
        status = registry.get(canonical).status()
    except Exception as exc:  # a status bug must not break the preset
        return False, f"{type(exc).__name__}: {exc}"
    if not status.get("ok", True):
        return False, str(status.get("error") or status.get("hint") or status.get("weights") or "engine unavailable")
    return True, ""


def _args_for(registry: Any, e: PresetExpert) -> dict[str, Any]:
    """The preset's args when the installed expert accepts them, else its fallback args."""
    cls = registry.expert_class(e.name)
    for args in (e.args, e.fallback_args):
        try:
            cls.Args.model_validate(args)
            return dict(args)
        except ValidationError:
            continue
    return {}
