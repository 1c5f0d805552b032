"""The routing benchmark: how well do the keyword table and YOUR model ask for the right experts?

A suite (``router/data/eval_suite.toml`` by default) lists prompts with the experts each one needs.
For every prompt the benchmark records

- what the keyword router decides (no LLM involved; the orchestrator runs it only when an image is
  attached, and so does the benchmark),
- what the model asks for in turn 1: one chat call, built by the run loop's own functions
  (:func:`router.core.run.first_turn`: the protocol for the experts that can run here as a system
  message when images are attached, unless the model's own SYSTEM is that prompt; one image note per
  attached image before the user's words) and sent through its gateway (:mod:`router.core.upstream`),
  parsed with the tag parser; with ``protocol="tools"`` the experts that can run are offered as native
  tools and the tool calls count,
- what the router as a whole would run: the keyword decision when there is one (the model's tags are
  then ignored), else the model's, less what the run loop drops (experts that cannot run here or are
  unknown, and any tag on a prompt without an image),
- the LLM calls the run loop makes for that decision: 1 when keywords decided (or no image is
  attached, or nothing runs after turn 1), 2 when experts run after turn 1 (the model's tags, or the
  fallback experts when it asked for none); later rounds are not simulated.

Experts are never run: this measures routing, not vision. Scores are precision and recall per
expert, exact-set accuracy, how often prompts that need no expert got none, malformed tags and
turn-1 latency.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from experts.errors import VisionRouterError
from router.core import protocol, toolspec
from router.core.config import read_text
from router.core.dispatch import run_coroutine
from router.core.errors import ModelNotFound, OllamaUnreachable, UpstreamError
from router.core.keywords import KeywordRouter
from router.core.messages import Message, user, with_image_notes
from router.core.protocols import TAGS, TOOLS, protocol_needed, taught
from router.core.run import first_turn
from router.core.tags import TagParser
from router.core.upstream import Upstream

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The built-in experts, in the order tables list them. Suites may name others the registry knows.
BUILTIN_EXPERTS = ("ocr", "detect", "clip", "caption")
TOOL_PREFIX = toolspec.TOOL_PREFIX
DEFAULT_MAX_TOKENS = 256
MAX_SUITE_BYTES = 16 * 1024 * 1024  # tens of thousands of questions; a suite is text, never megabytes of it
SYSTEMS = ("keywords", "semantic", "model", "router")
SYSTEM_TITLES = {
    "keywords": "keywords",
    "semantic": "semantic",
    "model": "model turn 1",
    "router": "router",
}


# --- the suite ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One labelled prompt."""

    id: str
    prompt: str
    expect: frozenset[str]
    accept: frozenset[str] = frozenset()
    lang: str = "en"
    category: str = ""
    images: int = 1


@dataclass
class Suite:
    """The labelled prompts and the image every prompt is said to have attached."""

    source: str
    cases: list[Case]
    width: int = 960
    height: int = 640
    format: str = "PNG"

    def image_notes(self, count: int) -> list[str]:
        return [protocol.image_note(i + 1, self.width, self.height, self.format) for i in range(count)]


def load_suite(path: str | Path | None = None, experts: Iterable[str] = BUILTIN_EXPERTS) -> Suite:
    """Read a suite (TOML with ``cases = [...]`` or JSONL, one case per line); ``None`` is the
    shipped one. Expected experts must be among ``experts``."""
    if path is None:
        text = resources.files("router").joinpath("data/eval_suite.toml").read_text("utf-8")
        source, is_jsonl = "eval_suite.toml", False
    else:
        p = Path(path).expanduser()
        source, is_jsonl = str(path), p.suffix.lower() in (".jsonl", ".ndjson")
        # The checks config files get: a FIFO, a device or a huge file is one line, never a hang or a read.
        text = read_text(p, "suite", MAX_SUITE_BYTES, "JSONL" if is_jsonl else "TOML")

    header: dict[str, Any] = {}
    if is_jsonl:
        raw_cases = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise VisionRouterError(f"suite {source}, line {n}: invalid JSON: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise VisionRouterError(f"suite {source}, line {n}: expected a JSON object")
            raw_cases.append(obj)
    else:
        try:
            header = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise VisionRouterError(f"suite {source}: invalid TOML: {exc}") from None
        raw_cases = header.get("cases") or header.get("case") or []
        if not isinstance(raw_cases, list):
            raise VisionRouterError(f"suite {source}: `cases` must be a list")

    known = {e.lower() for e in experts}
    cases: list[Case] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_cases, 1):
        case = _case(raw, i, known, source)
        if case.id in seen:
            raise VisionRouterError(f"suite {source}: duplicate case id {case.id!r}")
        seen.add(case.id)
        cases.append(case)
    if not cases:
        raise VisionRouterError(f"suite {source}: no cases")
    image = header.get("image") or {}
    try:
        width, height = int(image.get("width", 960)), int(image.get("height", 640))
    except (TypeError, ValueError):
        raise VisionRouterError(f"suite {source}: image width/height must be integers") from None
    return Suite(source, cases, width, height, str(image.get("format", "PNG")))


def _case(raw: Any, i: int, known: set[str], source: str) -> Case:
    where = f"suite {source}, case {i}"
    if not isinstance(raw, dict):
        raise VisionRouterError(f"{where}: expected a table/object")
    cid = str(raw.get("id") or f"case-{i:03d}")
    where = f"suite {source}, case {cid!r}"
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise VisionRouterError(f"{where}: needs a non-empty `prompt`")
    sets = []
    for key in ("expect", "accept"):
        value = raw.get(key, [])
        if isinstance(value, str):
            value = [value]
        if key == "expect" and "expect" not in raw:
            raise VisionRouterError(f"{where}: needs `expect` (a list of experts; [] when none is needed)")
        if not isinstance(value, list):
            raise VisionRouterError(f"{where}: `{key}` must be a list of expert names")
        names = {str(v).strip().lower() for v in value}
        unknown = sorted(names - known)
        if unknown:
            raise VisionRouterError(
                f"{where}: unknown expert {unknown[0]!r} in `{key}` (known: {', '.join(sorted(known))})"
            )
        sets.append(frozenset(names))
    images = raw.get("images", 1)
    if not isinstance(images, int) or images < 0:
        raise VisionRouterError(f"{where}: `images` must be a whole number >= 0")
    lang = str(raw.get("lang") or ("zh" if any("\u4e00" <= c <= "\u9fff" for c in prompt) else "en"))
    return Case(cid, prompt, sets[0], sets[1] - sets[0], lang, str(raw.get("category", "")), images)


# --- scoring --------------------------------------------------------------------------------------
@dataclass
class ExpertScore:
    """Counts for one expert over a suite; ``support`` is how many prompts needed it."""

    expert: str
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return None if p is None or r is None else 0.0
        return 2 * p * r / (p + r)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "support": self.support,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "f1": _round(self.f1),
        }


@dataclass
class SystemScore:
    """How one decider (keywords, model, router) did on the scored prompts."""

    name: str
    prompts: int = 0
    experts: dict[str, ExpertScore] = field(default_factory=dict)
    overall: ExpertScore = field(default_factory=lambda: ExpertScore("all"))
    exact: int = 0
    none_needed: int = 0  # prompts that need no expert
    none_ok: int = 0  # ... where nothing unneeded was asked
    silent: int = 0  # prompts that need experts where nothing at all was asked

    @property
    def none_wrong(self) -> int:
        return self.none_needed - self.none_ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "experts": {k: v.as_dict() for k, v in self.experts.items()},
            "overall": self.overall.as_dict(),
            "exact": self.exact,
            "exact_rate": _round(_rate(self.exact, self.prompts)),
            "no_expert": {
                "prompts": self.none_needed,
                "ok": self.none_ok,
                "asked_wrongly": self.none_wrong,
                "rate": _round(_rate(self.none_ok, self.none_needed)),
            },
            "silent": self.silent,
        }


def score(name: str, decisions: Iterable[tuple[Case, Collection[str]]], experts: Iterable[str]) -> SystemScore:
    """Score (case, experts asked) pairs. An expert in ``accept`` is neither needed nor wrong; a name
    outside ``experts`` (an unknown tag) counts against precision overall."""
    s = SystemScore(name)
    for e in experts:
        s.experts[e] = ExpertScore(e)
    for case, asked_raw in decisions:
        asked = set(asked_raw)
        s.prompts += 1
        allowed = case.expect | case.accept
        for e in case.expect:
            row = s.experts.setdefault(e, ExpertScore(e))
            if e in asked:
                row.tp += 1
                s.overall.tp += 1
            else:
                row.fn += 1
                s.overall.fn += 1
        for e in asked - allowed:
            if e in s.experts:
                s.experts[e].fp += 1
            s.overall.fp += 1
        if case.expect <= asked <= allowed:
            s.exact += 1
        if not case.expect:
            s.none_needed += 1
            if asked <= allowed:
                s.none_ok += 1
        elif not asked:
            s.silent += 1
    return s


# --- one prompt -----------------------------------------------------------------------------------
@dataclass
class Turn:
    """What the model did in turn 1 for one prompt."""

    reply: str = ""
    tags: list[str] = field(default_factory=list)  # raw tag text
    tool_calls: list[str] = field(default_factory=list)  # tool names
    asked: list[str] = field(default_factory=list)  # canonical expert names, first-asked order
    unknown: list[str] = field(default_factory=list)  # names that are no expert
    malformed: list[str] = field(default_factory=list)
    unclosed: int = 0
    latency_ms: float = 0.0
    first_token_ms: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


@dataclass
class CaseResult:
    case: Case
    keywords: list[str]  # experts the keyword router chose
    keyword_hits: list[str]  # "keyword -> expert"
    semantic: dict[str, Any] | None = None  # the semantic router's decision (Decision.as_trace), when asked
    fallback: list[str] = field(default_factory=list)  # what looks when nobody decides
    turn: Turn | None = None
    dropped: list[str] = field(default_factory=list)  # the model's asks the run loop drops
    llm_calls: int | None = None  # what the run loop spends on this decision
    scored_router: bool = False  # --no-model: the router's own decision is scored without a model turn

    @property
    def semantic_experts(self) -> list[str] | None:
        """The experts the semantic router decided ([] = none needed), or None when it abstained."""
        d = self.semantic
        if not d or not d.get("decided"):
            return None
        return list(dict.fromkeys(c["expert"] for c in d.get("calls", [])))

    @property
    def semantic_none(self) -> bool:
        return self.semantic_experts == []

    @property
    def router(self) -> list[str] | None:
        """What the router would run: the keywords' choice when they chose, else the semantic router's, else
        the fallback experts (when an image is attached) and what the model asks for, less what the run loop
        drops."""
        if self.keywords:
            return self.keywords
        sem = self.semantic_experts
        if sem and self.case.images:
            return sem
        looked = list(self.fallback) if self.case.images and sem is None else []
        if self.turn is None or self.turn.error:
            return looked if self.scored_router else None
        return list(dict.fromkeys(looked + [e for e in self.turn.asked if e not in self.dropped]))

    def as_dict(self) -> dict[str, Any]:
        c = self.case
        out: dict[str, Any] = {
            "id": c.id,
            "lang": c.lang,
            "category": c.category,
            "images": c.images,
            "prompt": c.prompt,
            "expect": sorted(c.expect),
            "accept": sorted(c.accept),
            "keywords": self.keywords,
            "keyword_hits": self.keyword_hits,
        }
        if self.semantic is not None:
            out["semantic"] = self.semantic
        if self.scored_router:
            out["router"] = self.router
        if self.turn is not None:
            out["model"] = asdict(self.turn)
            out["router"] = self.router
            out["dropped"] = self.dropped
            out["llm_calls"] = self.llm_calls
        return out


# --- the run --------------------------------------------------------------------------------------
@dataclass
class Report:
    suite: Suite
    cases: list[CaseResult]
    experts: list[str]
    model: str | None = None
    host: str | None = None
    protocol: str | None = None
    protocol_injected: bool | None = None
    max_tokens: int | None = None
    wall_s: float = 0.0

    @property
    def with_model(self) -> bool:
        return self.model is not None

    @property
    def with_semantic(self) -> bool:
        return any(r.semantic is not None for r in self.cases)

    def scores(self) -> dict[str, SystemScore]:
        out = {"keywords": score("keywords", ((r.case, r.keywords) for r in self.cases), self.experts)}
        if self.with_semantic:
            out["semantic"] = score("semantic", ((r.case, r.semantic_experts or []) for r in self.cases), self.experts)
        if not self.with_model and any(r.scored_router for r in self.cases):
            out["router"] = score("router", ((r.case, r.router or []) for r in self.cases), self.experts)
        if self.with_model:
            ok = [r for r in self.cases if r.turn is not None and not r.turn.error]
            out["model"] = score("model", ((r.case, r.turn.asked) for r in ok), self.experts)  # type: ignore[union-attr]
            out["router"] = score(
                "router", ((r.case, r.router) for r in self.cases if r.router is not None), self.experts
            )
        return out

    def model_stats(self) -> dict[str, Any]:
        turns = [r.turn for r in self.cases if r.turn is not None]
        ok = [t for t in turns if not t.error]
        lat = sorted(t.latency_ms for t in ok)
        first = sorted(t.first_token_ms for t in ok if t.first_token_ms is not None)
        calls = [r.llm_calls for r in self.cases if r.llm_calls is not None]
        return {
            "calls": len(turns),
            "router_llm_calls": {
                "mean": _round(sum(calls) / len(calls), 3) if calls else None,
                **{str(n): calls.count(n) for n in sorted(set(calls))},
            },
            "dropped_asks": sum(len(r.dropped) for r in self.cases),
            "errors": len(turns) - len(ok),
            "tags": sum(len(t.tags) for t in ok),
            "tool_calls": sum(len(t.tool_calls) for t in ok),
            "malformed_tags": sum(len(t.malformed) for t in ok),
            "prompts_with_malformed": sum(1 for t in ok if t.malformed),
            "unclosed_tags": sum(t.unclosed for t in ok),
            "unknown_experts": sum(len(t.unknown) for t in ok),
            "latency_ms": {
                "mean": _round(sum(lat) / len(lat), 1) if lat else None,
                "p50": _round(_percentile(lat, 50), 1),
                "p95": _round(_percentile(lat, 95), 1),
                "max": _round(lat[-1], 1) if lat else None,
            },
            "first_token_ms": {"p50": _round(_percentile(first, 50), 1), "p95": _round(_percentile(first, 95), 1)},
            "prompt_tokens": sum(t.prompt_tokens for t in ok),
            "output_tokens": sum(t.output_tokens for t in ok),
        }

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "suite": self.suite.source,
            "prompts": len(self.cases),
            "languages": _count(r.case.lang for r in self.cases),
            "experts": self.experts,
            "model": self.model,
            "protocol": self.protocol,
            "systems": {k: v.as_dict() for k, v in self.scores().items()},
            "wall_s": round(self.wall_s, 2),
        }
        if self.with_model:
            out["ollama_host"] = self.host
            out["protocol_injected"] = self.protocol_injected
            out["max_tokens"] = self.max_tokens
            out["model_stats"] = self.model_stats()
        out["cases"] = [r.as_dict() for r in self.cases]
        return out


class Evaluator:
    """Runs a suite through the keyword router and, unless ``model`` is None, one model turn each."""

    def __init__(
        self,
        keywords: KeywordRouter,
        *,
        aliases: dict[str, str] | None = None,
        experts: Iterable[str] = BUILTIN_EXPERTS,
        tools: list[dict[str, Any]] | None = None,
        available: dict[str, str] | None = None,
        fallback: Iterable[str] = (),
        semantic: Any = None,
    ) -> None:
        self.keywords = keywords
        self.semantic = semantic  # a router.core.semantic.SemanticRouter, or None
        self.experts = list(experts)
        self.aliases = {e: e for e in self.experts}
        self.aliases.update({k.lower(): v for k, v in (aliases or {}).items()})
        # The experts that can run (name -> description): taught, offered, and kept when the model asks.
        self.available = dict(available) if available is not None else dict.fromkeys(self.experts, "")
        self.fallback = [e for e in fallback if e in self.available]
        offered = [_minimal_tool(e) for e in self.experts if e in self.available]
        self.tools = tools if tools is not None else offered

    def resolve(self, name: str) -> str | None:
        """The canonical expert for a tag name or alias."""
        return self.aliases.get(name.strip().lower())

    def resolve_tool(self, name: str) -> str | None:
        """The canonical expert for a tool call: only ``vision_<expert>`` names are ours."""
        n = name.strip()
        return self.resolve(n[len(TOOL_PREFIX) :]) if n.startswith(TOOL_PREFIX) else None

    def decide(self, case: Case) -> CaseResult:
        """The router's own decision for a case, before any model turn: keywords, then the semantic router
        (asked, like in the run loop, only when an image is attached and no keyword matched). Like the keyword
        column, it is scored as if every expert could run here: routing, not this machine's install."""
        result = CaseResult(case, *self.keyword_decision(case), fallback=list(self.fallback))
        if self.semantic is not None and case.images and not result.keywords:
            result.semantic = self.semantic.route(case.prompt).as_trace()
        return result

    def keyword_decision(self, case: Case) -> tuple[list[str], list[str]]:
        if case.images == 0:  # the orchestrator routes keywords only when an image is attached
            return [], []
        experts: list[str] = []
        hits: list[str] = []
        for m in self.keywords.route(case.prompt):
            canonical = self.resolve(m.expert) or m.expert
            hits.append(f"{m.keyword} -> {canonical}")
            if canonical not in experts:
                experts.append(canonical)
        return experts, hits

    def run(
        self,
        suite: Suite,
        *,
        model: str | None = None,
        host: str | None = None,
        protocol_mode: str = "tags",
        inject_protocol: str = "auto",
        limit: int | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        timeout_s: float = 300.0,
        on_progress: Callable[[int, int, CaseResult], None] | None = None,
    ) -> Report:
        """Score the suite. ``model=None`` scores the router's own decision without an LLM (no Ollama
        needed): the keywords, the semantic router when one is given, and what runs when neither decides."""
        t0 = time.perf_counter()
        cases = suite.cases[:limit] if limit else list(suite.cases)
        report = Report(suite, [], self.experts)
        if model is None:
            for case in cases:
                result = self.decide(case)
                result.scored_router = self.semantic is not None
                self._record(report, result, len(cases), on_progress)
        else:
            if protocol_mode not in ("tags", "tools"):
                raise VisionRouterError(f"unknown protocol {protocol_mode!r} (tags or tools)")
            upstream = Upstream(host, timeout=timeout_s, protocol_model=model)  # the model eval was pointed at
            report.model, report.protocol, report.max_tokens = model, protocol_mode, max_tokens
            report.host = upstream.host
            run_coroutine(self._with_model(report, cases, upstream, inject_protocol, on_progress))
        report.wall_s = time.perf_counter() - t0
        return report

    def _record(
        self, report: Report, result: CaseResult, total: int, on_progress: Callable[[int, int, CaseResult], None] | None
    ) -> None:
        report.cases.append(result)
        if on_progress is not None:
            on_progress(len(report.cases), total, result)

    async def _with_model(
        self,
        report: Report,
        cases: list[Case],
        upstream: Upstream,
        inject_protocol: str,
        on_progress: Callable[[int, int, CaseResult], None] | None,
    ) -> None:
        """Turn 1 of every case, through the run loop's gateway and with its rules."""
        assert report.model is not None and report.protocol is not None
        strategy = TOOLS if report.protocol == "tools" else TAGS
        # Also checks, once, that Ollama is up and the model exists (a 404 or no server ends the run).
        shown = await upstream.show(report.model)
        taught = strategy.prompt_for(self.available)
        report.protocol_injected = protocol_needed(inject_protocol, shown.modelfile, False, taught)
        prompt = taught if report.protocol_injected else None
        tools = self.tools if strategy.offers_tools else None
        for case in cases:
            result = self.decide(case)
            messages = turn1_messages(report.suite, case, prompt)
            result.turn = await self._turn(upstream, report.model, messages, tools, report.max_tokens)
            self._apply_run_rules(result)
            self._record(report, result, len(cases), on_progress)

    def _apply_run_rules(self, result: CaseResult) -> None:
        """What the run loop does with this decision: the model's asks it drops, and the LLM calls it makes."""
        case, turn = result.case, result.turn
        if turn is None or turn.error:
            return
        if any(e in self.available for e in result.keywords) or result.semantic_experts:
            result.llm_calls = 1  # decided by keywords or by meaning: one answer turn, tags in it ignored
            return
        # (keywords that picked only experts that cannot run are still scored as picked; the fallback looks)
        looked = self.fallback if result.semantic_experts is None else []
        result.dropped = [e for e in turn.asked if not case.images or e not in self.available or e in looked]
        if case.images == 0:
            result.llm_calls = 1  # no image: one turn, its tags dropped
            return
        # Nobody decided (the fallback experts looked first) or no expert is needed: the model's turn is the
        # answer, unless it asks for an expert that has not looked yet (a second round only then).
        kept = [e for e in turn.asked if e not in result.dropped]
        result.llm_calls = 2 if kept else 1

    async def _turn(
        self,
        upstream: Upstream,
        model: str,
        messages: list[Message],
        tools: list[dict[str, Any]] | None,
        max_tokens: int | None,
    ) -> Turn:
        turn = Turn()
        parser = TagParser()
        raw: list[str] = []
        names: list[str] = []
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = tools
        if max_tokens:
            kwargs["options"] = {"num_predict": max_tokens}
        t0 = time.perf_counter()
        last = None
        try:
            async for chunk in upstream.chat(model, messages, **kwargs):
                last = chunk
                msg = chunk.message
                if (msg.content or msg.tool_calls) and turn.first_token_ms is None:
                    turn.first_token_ms = round((time.perf_counter() - t0) * 1000, 2)
                if msg.content:
                    raw.append(msg.content)
                    parser.feed(msg.content)
                names += [call.function.name for call in msg.tool_calls or []]
        except (ModelNotFound, OllamaUnreachable):
            raise
        except UpstreamError as exc:  # one failing prompt is reported, not fatal
            turn.error = f"{exc.status}: {exc.detail}"
        parser.close()
        turn.latency_ms = round((time.perf_counter() - t0) * 1000, 2)
        turn.reply = "".join(raw)
        turn.tool_calls = list(names)
        self._score_turn(turn, parser, names)
        if last is not None:
            turn.prompt_tokens = int(getattr(last, "prompt_eval_count", 0) or 0)
            turn.output_tokens = int(getattr(last, "eval_count", 0) or 0)
        return turn

    def _score_turn(self, turn: Turn, parser: TagParser, names: list[str]) -> None:
        """What the turn asked for: canonical experts, unknown names, malformed and unclosed tags."""
        turn.tags = [t.raw for t in parser.tags]
        turn.unclosed = sum(1 for t in parser.tags if t.unclosed)
        turn.malformed = [m.raw for m in parser.malformed]
        asked = [(t.name, self.resolve(t.name)) for t in parser.tags] + [(n, self.resolve_tool(n)) for n in names]
        for n, canonical in asked:
            if canonical is None:
                turn.unknown.append(n)
                canonical = f"?{n.lower()}"  # unknown names still count as asked (and wrong)
            if canonical not in turn.asked:
                turn.asked.append(canonical)


def turn1_messages(suite: Suite, case: Case, prompt: str | None) -> list[Message]:
    """The turn-1 messages, built by the run loop's own functions: image notes before the user's words,
    and the protocol ``prompt`` as a system message, which the run loop sends only with images attached."""
    content = with_image_notes(case.prompt, suite.image_notes(case.images))
    return first_turn([user(content)], prompt if case.images else None)


def _minimal_tool(expert: str) -> dict[str, Any]:
    """A tool definition for an expert that is not installed here (the benchmark still offers it)."""
    return {
        "type": "function",
        "function": {
            "name": f"{TOOL_PREFIX}{expert}",
            "description": f"The {expert} vision expert.",
            "parameters": {
                "type": "object",
                "properties": {
                    toolspec.IMAGE_ARG: {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Which attached image to look at, 1-based (default: the newest).",
                    },
                    "query": {"type": "string", "description": "Optional free text."},
                },
            },
        },
    }


# --- output ---------------------------------------------------------------------------------------
def render_report(report: Report) -> str:
    """The human table: per-expert precision/recall for each decider, then the summary figures."""
    scores = report.scores()
    systems = [s for s in SYSTEMS if s in scores]
    langs = ", ".join(f"{n} {lang}" for lang, n in _count(r.case.lang for r in report.cases).items())
    head = f"vision-router eval: {report.suite.source}, {len(report.cases)} prompts ({langs})"
    if report.with_model:
        inj = "prompt sent as a system message" if report.protocol_injected else "the model's own SYSTEM"
        if report.protocol == "tools":
            inj = "experts offered as native tools; " + inj
        head += f"\nmodel {report.model} at {report.host}, --protocol {report.protocol} ({inj})"
    elif report.with_semantic:
        head += "\nthe router's own decision, no LLM: keywords, then the semantic router, else the fallback experts"
    else:
        head += "\nkeyword router only (no LLM)"
    lines = [head, ""]

    col = 20
    lines.append(f"{'':<19}" + "".join(f"{SYSTEM_TITLES[s]:^{col}}" for s in systems))
    lines.append(f"{'expert':<10}{'needed':>7}  " + "".join(f"{'prec':>6} {'recall':>6} {'F1':>5} " for _ in systems))
    for e in report.experts + ["all"]:
        needed = scores["keywords"].experts[e].support if e != "all" else scores["keywords"].overall.support
        row = f"{e:<10}{needed:>7}  "
        for s in systems:
            sc = scores[s].overall if e == "all" else scores[s].experts[e]
            row += f"{_fmt(sc.precision):>6} {_fmt(sc.recall):>6} {_fmt(sc.f1):>5} "
        lines.append(row)
    lines.append("")

    def summary(label: str, fn: Callable[[SystemScore], str]) -> None:
        lines.append(f"{label:<19}" + "".join(f"{fn(scores[s]):^{col}}" for s in systems))

    summary("exact expert set", lambda s: f"{s.exact}/{s.prompts} {_pct(s.exact, s.prompts)}")
    summary("no expert needed", lambda s: f"{s.none_ok}/{s.none_needed} ok {_pct(s.none_ok, s.none_needed)}")
    summary("  asked wrongly", lambda s: str(s.none_wrong))
    summary("needed, none asked", lambda s: str(s.silent))
    if report.with_semantic:
        decided = [r for r in report.cases if r.semantic is not None]
        n = sum(1 for r in decided if r.semantic_experts is not None)
        ms = sorted(float(r.semantic.get("ms", 0)) for r in decided if r.semantic)
        lines.append(
            f"semantic router: asked on {len(decided)} prompts (image, no keyword), decided {n}, abstained "
            f"{len(decided) - n}; decision p50 {_fmt(_percentile(ms, 50))} ms, p95 {_fmt(_percentile(ms, 95))} ms"
        )
    if report.with_model:
        calls = report.model_stats()["router_llm_calls"]
        spread = ", ".join(f"{v} x {k}" for k, v in calls.items() if k != "mean")
        pad = "".join(f"{'':^{col}}" for _ in systems[:-1])
        lines.append(f"{'LLM calls/request':<19}{pad}{_fmt(calls['mean']):^{col}}")
        lines.append(f"{'':<19}{pad}{spread:^{col}}")

    if report.with_model:
        st = report.model_stats()
        lat, ft = st["latency_ms"], st["first_token_ms"]
        lines.append("")
        lines.append(
            f"model turn 1: {st['calls']} calls, {st['errors']} errors; {st['tags']} tags, "
            f"{st['tool_calls']} tool calls; malformed tags {st['malformed_tags']} "
            f"(in {st['prompts_with_malformed']} prompts), unclosed {st['unclosed_tags']}, "
            f"unknown experts {st['unknown_experts']}"
        )
        lines.append(
            f"latency ms: mean {_ms(lat['mean'])}, p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, "
            f"max {_ms(lat['max'])}; first token p50 {_ms(ft['p50'])}; "
            f"tokens {st['prompt_tokens']} prompt + {st['output_tokens']} output"
        )
        lines.append(
            "router = the keyword decision when keywords matched, else the semantic router's when it decided, else "
            "the fallback experts and the model's turn-1 request, less what the run loop drops "
            f"({st['dropped_asks']} asks: experts that cannot run here or already looked, tags without an image)."
        )
    lines.append(f"({report.wall_s:.1f} s)")
    return "\n".join(ln.rstrip() for ln in lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(a: int, b: int) -> str:
    return f"({100 * a / b:.0f}%)" if b else ""


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _rate(a: int, b: int) -> float | None:
    return a / b if b else None


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


# --- wiring to the registry and the CLI -----------------------------------------------------------
def evaluator_from_registry(
    registry: Any, keywords: KeywordRouter, fallback: Iterable[str] = (), semantic: Any = None
) -> Evaluator:
    """An evaluator that knows the installed experts' aliases, teaches and offers what the orchestrator
    does here (the experts that can run: :func:`router.core.protocols.taught`, router.core.toolspec). The
    built-in four are always scored, installed or not."""
    experts = list(BUILTIN_EXPERTS)
    aliases: dict[str, str] = {}
    for name in registry.names():
        if name not in experts:
            experts.append(name)
        for a in registry.expert_class(name).aliases:
            aliases[a] = name
    return Evaluator(
        keywords,
        aliases=aliases,
        experts=experts,
        tools=toolspec.ollama_tools(registry),
        available=taught(registry),
        fallback=fallback,
        semantic=semantic,
    )
