"""The keyword router: the user's words decide some experts before the model says anything.

The table lives in TOML (``router/data/keywords.toml`` by default, configurable) and every decision
records which keyword matched, so the trace can explain it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experts.errors import VisionRouterError
from router.core.config import data_table


@dataclass(frozen=True)
class KeywordMatch:
    """An expert chosen by the keyword router, with the keyword that chose it."""

    expert: str
    keyword: str
    args: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.expert, tuple(sorted(self.args.items())))


@dataclass
class _Rule:
    expert: str
    args: dict[str, Any]
    latin: re.Pattern[str] | None  # every Latin keyword of the rule in one alternation
    latin_names: dict[str, str]  # normalised match -> keyword as written in the table
    cjk: list[str]  # matched as substrings
    order: list[str]  # all keywords in table order (the first that matches explains the rule)


class KeywordRouter:
    """Match user text against a keyword table. English keywords match whole words
    (case-insensitive); CJK keywords match as substrings."""

    def __init__(self, rules: list[dict[str, Any]]) -> None:
        self._rules: list[_Rule] = []
        for i, rule in enumerate(rules):
            expert = rule.get("expert")
            keywords = rule.get("keywords")
            if not isinstance(expert, str) or not isinstance(keywords, list) or not keywords:
                raise VisionRouterError(f"keyword rule {i + 1}: needs `expert` and a non-empty `keywords` list")
            args = dict(rule.get("args") or {})
            latin: dict[str, str] = {}
            cjk: list[str] = []
            order: list[str] = []
            for kw in keywords:
                kw = str(kw).strip()
                if not kw:
                    continue
                order.append(kw)
                if kw.isascii():
                    latin[" ".join(kw.lower().split())] = kw
                else:
                    cjk.append(kw)
            pattern = None
            if latin:
                alts = "|".join(
                    r"\s+".join(re.escape(w) for w in k.split()) for k in sorted(latin, key=len, reverse=True)
                )
                # Latin-letter boundaries only: "这个logo" must match `logo` (CJK counts as \w).
                pattern = re.compile(rf"(?<![A-Za-z0-9_])(?:{alts})(?![A-Za-z0-9_])", re.IGNORECASE)
            self._rules.append(_Rule(expert, args, pattern, latin, cjk, order))

    @classmethod
    def from_toml(cls, path: str | Path | None = None) -> KeywordRouter:
        """Load a table; ``None`` loads the shipped default."""
        # Missing, a folder, binary or UTF-16, invalid TOML: one line each.
        data, src = data_table(path, "keywords.toml", "keyword table")
        rules = data.get("rule")
        if not isinstance(rules, list):
            raise VisionRouterError(f"{src}: no [[rule]] entries")
        return cls(rules)

    @property
    def experts(self) -> list[str]:
        return sorted({r.expert for r in self._rules})

    def route(self, text: str) -> list[KeywordMatch]:
        """Experts the text asks for, one match per (expert, args), in table order."""
        if not text:
            return []
        lowered = text.lower()
        out: list[KeywordMatch] = []
        seen: set[tuple] = set()
        for rule in self._rules:
            hits: set[str] = {kw for kw in rule.cjk if kw.lower() in lowered}
            if rule.latin is not None:
                hits.update(rule.latin_names[" ".join(m.group(0).lower().split())] for m in rule.latin.finditer(text))
            if not hits:
                continue
            keyword = next(kw for kw in rule.order if kw in hits)
            m = KeywordMatch(rule.expert, keyword, dict(rule.args))
            if m.key() not in seen:
                seen.add(m.key())
                out.append(m)
        # "how many people" matches both generic detect and detect(query=person): the specific
        # request answers the question, the generic contour count would only mislead.
        specific = {m.expert for m in out if m.args}
        return [m for m in out if m.args or m.expert not in specific]
