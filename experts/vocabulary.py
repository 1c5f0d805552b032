"""The shipped common-object vocabulary (``experts/data/objects.toml``), English labels with
Chinese names, shared by the ``clip`` expert (zero-shot labels) and the ``caption`` expert (objects a
caption names)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Words that are also colours or everyday verbs/adjectives: counting them as objects when they
# appear in a sentence would be wrong more often than right ("an orange cat").
_NOT_FROM_TEXT = frozenset({"orange", "tie", "remote", "light", "text", "water", "food", "sign", "watch"})


@dataclass(frozen=True)
class ObjectLabel:
    en: str
    zh: str
    aliases: tuple[str, ...] = field(default=())

    def words(self) -> tuple[str, ...]:
        return (self.en, *self.aliases)


@dataclass(frozen=True)
class ObjectVocabulary:
    version: int
    labels: tuple[ObjectLabel, ...]

    def lookup(self, word: str) -> ObjectLabel | None:
        """The label a word names: its English label, Chinese name or an alias (case-insensitive)."""
        key = word.strip().lower()
        for label in self.labels:
            if key == label.zh or key in (w.lower() for w in label.words()):
                return label
        return None

    def in_text(self, text: str) -> list[str]:
        """English labels of the objects an English sentence names, in order of first mention.

        Whole-word matches of labels, aliases and simple plurals; deliberately simple (no parser),
        so words that are often not nouns are skipped."""
        found: list[tuple[int, str]] = []
        lowered = text.lower()
        for label in self.labels:
            for word in label.words():
                if word in _NOT_FROM_TEXT:
                    continue
                m = _word_pattern(word).search(lowered)
                if m:
                    found.append((m.start(), label.en))
                    break
        return [en for _, en in sorted(found)]


@lru_cache(maxsize=256)
def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(r"\b" + re.escape(word.lower()) + r"(?:s|es)?\b")


@lru_cache(maxsize=1)
def common_objects() -> ObjectVocabulary:
    """The shipped vocabulary (read once)."""
    raw = tomllib.loads(resources.files("experts").joinpath("data/objects.toml").read_text("utf-8"))
    labels = tuple(ObjectLabel(en=o["en"], zh=o["zh"], aliases=tuple(o.get("aliases", ()))) for o in raw["objects"])
    return ObjectVocabulary(version=int(raw["version"]), labels=labels)
