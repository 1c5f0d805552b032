"""The style library the ``clip`` expert matches images against.

A library is a TOML (or JSON) file: ``name``, ``version`` and a list of ``[[style]]`` entries, each
with an ``id``, English ``en`` and Chinese ``zh`` names, ``aliases`` and a ``prompts`` ensemble (see
``experts/data/styles.toml``, the shipped one). Users add their own with the expert's
``style_library`` setting; entries with an existing ``id`` replace the shipped ones.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from experts.errors import ExpertError
from experts.images import read_text_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_LIBRARY_BYTES = 4 * 1024 * 1024  # thousands of styles are a few hundred KiB


class StyleEntry(BaseModel):
    """One style: names for people, aliases users type, prompts CLIP reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    en: str = Field(min_length=1)
    zh: str | None = None
    aliases: tuple[str, ...] = ()
    prompts: tuple[str, ...] = Field(min_length=1)


class StyleLibrary(BaseModel):
    """A named, versioned list of styles."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = "custom"
    version: int | str = 1
    styles: list[StyleEntry] = Field(default_factory=list, alias="style")
    _index: dict[str, StyleEntry] | None = PrivateAttr(None)

    @property
    def label(self) -> str:
        """``name-vVERSION``: part of the text-embedding cache key."""
        return f"{self.name}-v{self.version}"

    def extended(self, other: StyleLibrary) -> StyleLibrary:
        """This library plus ``other``'s styles; ``other`` wins on equal ids."""
        by_id = {s.id: s for s in self.styles}
        by_id.update({s.id: s for s in other.styles})
        return StyleLibrary(
            name=f"{self.name}+{other.name}", version=f"{self.version}+{other.version}", styles=list(by_id.values())
        )

    def match(self, text: str) -> StyleEntry | None:
        """The style a user's word names (id, English or Chinese name, or alias; case-insensitive)."""
        if self._index is None:
            index: dict[str, StyleEntry] = {}
            for s in self.styles:
                for word in (s.id, s.en, s.zh or "", *s.aliases):
                    index.setdefault(_norm(word), s)
            index.pop("", None)
            self._index = index
        return self._index.get(_norm(text))


def load_style_library(path: str | Path | None = None) -> StyleLibrary:
    """Read a library file (TOML or JSON), or the shipped library when ``path`` is None.

    Raises :class:`ExpertError` with one line naming the file on any problem."""
    try:
        if path is None:
            text = resources.files("experts").joinpath("data/styles.toml").read_text("utf-8")
            raw = tomllib.loads(text)
            where = "built-in style library"
        else:
            p = Path(path).expanduser()
            where = str(p)
            is_json = p.suffix.lower() == ".json"
            # A config file's checks: a folder, a FIFO, a device or a huge file is one line, never a hang.
            text = read_text_file(p, MAX_LIBRARY_BYTES, _reading_error(where), "JSON" if is_json else "TOML")
            raw = json.loads(text) if is_json else tomllib.loads(text)
        lib = StyleLibrary.model_validate(raw)
    except FileNotFoundError:
        raise ExpertError(f"clip: style library {where}: no such file") from None
    except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise ExpertError(f"clip: style library {where}: {loc}: {first.get('msg')}") from None
        raise ExpertError(f"clip: style library {where}: {exc}") from None
    if not lib.styles:
        raise ExpertError(f"clip: style library {where} has no [[style]] entries")
    ids = [s.id for s in lib.styles]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ExpertError(f"clip: style library {where}: duplicate style id(s) {', '.join(dup)}")
    return lib


def _reading_error(where: str) -> Callable[[str], ExpertError]:
    return lambda reason: ExpertError(f"clip: style library {where}: {reason}")


# Separators users type between candidates: ASCII and full-width commas, the ideographic comma,
# semicolons, vertical bars and newlines.
_SPLIT = re.compile(r"[,，、;；|｜\n]+")
_QUOTES = "\"'“”‘’「」『』`"


def parse_candidates(query: str) -> list[str]:
    """Split a user's candidate list (``"monet, cyberpunk"``, ``"莫奈、赛博朋克"``) into unique,
    trimmed labels in the order given."""
    out: list[str] = []
    seen: set[str] = set()
    for part in _SPLIT.split(query):
        label = part.strip().strip(_QUOTES).strip()
        key = _norm(label)
        if label and key not in seen:
            seen.add(key)
            out.append(label)
    return out


def _norm(s: str) -> str:
    return " ".join(s.lower().replace("_", " ").replace("-", " ").split())
