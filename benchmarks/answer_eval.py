"""Answer-level eval: does what the USER reads contain the answer that is in the image?

Every case of ``answer_eval_cases.toml`` (beside this file: >= 30 real images, questions in English and
Chinese whose answers are in the image: text to read, counts, sizes; a source note for each) goes through
the real router loop (:class:`router.core.orchestrator.Orchestrator`, the library's public API) against
an Ollama host and model given on the command line. Per case it scores

- answer: the expected value is in the model's answer text (``Final.answer``; not the experts' findings
  line a router may print after it, and not the router's own "no answer" fallback, which counts as a miss),
- findings: the expected value is in what the experts found (the ``[IMAGE CONTEXT]`` rendering of
  ``Final.analyses``), so an expert miss can be told from a model miss,
- clean: the same, once the answer's scaffolding lines are taken out (a size read off an echoed
  ``[image 1 attached: 451x300 ...]`` note is not an answer),
- scaffolding: the answer shows protocol text meant for the model (role prefixes such as ``User:``,
  ``[image N attached`` notes, ``[IMAGE CONTEXT]`` blocks, ``[VISION: ...]`` tags, lines of the protocol),
- LLM calls and seconds per case.

Matching is case-, width- and space-insensitive (NFKC; typographic quotes and dashes as ASCII); a numeric
expected value must not be part of a longer number.

    python -m tests.real_ollama --port 11435            # a real small model, offline (see that file)
    python benchmarks/answer_eval.py --model smollm2:135m --ollama-host http://127.0.0.1:11435 [--json]

It is the harness a real target model (e.g. Qwen3-4B) goes through on a machine that can run it.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CASES = HERE / "answer_eval_cases.toml"
REAL = ROOT / "tests" / "data" / "real"

# Text the router writes for the model, never for the user. The protocol's own lines are added at run
# time from router.core.protocol (whatever its current wording).
SCAFFOLD_PATTERNS = {
    "role prefix": re.compile(r"(?im)^\s*(?:user|assistant|system|用户|助手)\s*[:：]"),
    "image note": re.compile(r"(?i)\[images?\s+\d+(?:\s*-\s*\d+)?\s+attached"),
    "image context": re.compile(r"(?i)\[\s*/?\s*image context\s*\]"),
    "vision tag": re.compile(r"(?i)\[\s*vision\s*:"),
    "context echo": re.compile(r"(?im)^\s*(?:image \d+ \(\d+x\d+, id |- (?:experts|text \(\d+ lines|boxes \(x1))"),
    "chat template": re.compile(r"<\|im_(?:start|end)\|>"),
}
_PROTOCOL_TEXTS = ("PROTOCOL_PROMPT", "FOLLOW_UP", "LAST_ROUND", "NO_MORE_EXPERTS", "NO_IMAGES")
_TRANSLATE = str.maketrans({"’": "'", "‘": "'", "”": '"', "“": '"', "—": "-", "–": "-", "×": "x"})


# --- cases ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    question: str
    lang: str
    kind: str
    source: str  # "ocr/<file>" under tests/data/real, or "skimage:<name>"
    expect: tuple[str, ...] = ()
    expect_all: tuple[str, ...] = ()
    size: tuple[int, int] | None = None

    def image_bytes(self) -> bytes:
        """The image as its file's bytes (what a user attaches), or a skimage photo as PNG."""
        if self.source.startswith("skimage:"):
            import skimage.data
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(getattr(skimage.data, self.source.split(":", 1)[1])()).save(buf, "PNG")
            return buf.getvalue()
        return (REAL / self.source).read_bytes()


def load_cases(path: Path = CASES) -> list[Case]:
    """The case list; a malformed case is one clear error naming it."""
    data = tomllib.loads(path.read_text("utf-8"))
    cases = []
    for raw in data.get("case", []):
        cid = raw.get("id", "?")
        source = f"skimage:{raw['skimage']}" if raw.get("skimage") else raw.get("image")
        if not source or not raw.get("question") or not (raw.get("expect") or raw.get("expect_all")):
            raise SystemExit(f"error: {path.name}: case {cid}: needs image|skimage, question and expect|expect_all")
        size = tuple(raw["size"]) if raw.get("size") else None
        cases.append(
            Case(
                id=cid,
                question=raw["question"],
                lang=raw.get("lang", "en"),
                kind=raw.get("kind", "text"),
                source=source,
                expect=tuple(raw.get("expect", ())),
                expect_all=tuple(raw.get("expect_all", ())),
                size=size,  # type: ignore[arg-type]
            )
        )
    return cases


# --- scoring -------------------------------------------------------------------------------------------
def norm(text: str) -> str:
    """Lower case, NFKC, ASCII quotes and dashes, no whitespace."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).translate(_TRANSLATE).lower())


def contains(text: str, value: str) -> bool:
    """``value`` appears in ``text`` (normalised); a number must stand alone, not inside a longer one."""
    t, v = norm(text), norm(value)
    if not v:
        return False
    if v.isdigit():
        return re.search(rf"(?<!\d){re.escape(v)}(?!\d)", t) is not None
    return v in t


def expected_in(text: str, case: Case) -> bool:
    any_ok = any(contains(text, e) for e in case.expect) if case.expect else True
    return any_ok and all(contains(text, e) for e in case.expect_all)


def protocol_lines() -> list[str]:
    """Distinctive lines of the protocol text the router sends the model (the current wording)."""
    try:
        from router.core import protocol
    except ImportError:  # pragma: no cover
        return []
    out = []
    for name in _PROTOCOL_TEXTS:
        for line in str(getattr(protocol, name, "") or "").splitlines():
            line = line.strip()
            if len(line) >= 24 and not line.startswith(("User:", "Assistant:", "[VISION")):
                out.append(line[:40])
    return out


def scaffolding(answer: str, lines: list[str]) -> list[str]:
    """Which kinds of scaffolding the answer shows (empty: none)."""
    found = [name for name, rx in SCAFFOLD_PATTERNS.items() if rx.search(answer)]
    if any(line in answer for line in lines):
        found.append("protocol line")
    return found


def without_scaffolding(answer: str, lines: list[str]) -> str:
    """The answer less every line that shows scaffolding: an expected value found only in an echoed
    ``[image 1 attached: 451x300 ...]`` note is not an answer."""
    kept = [ln for ln in answer.splitlines() if not scaffolding(ln, lines)]
    return "\n".join(kept)


def answer_text(final: Any) -> str:
    """The model's own answer: empty when the router had to say there was none; without a findings line
    the router may have appended (a ``findings`` attribute, when the Final has one)."""
    if not getattr(final, "answered", True):
        return ""
    text = final.answer
    findings = getattr(final, "findings", None)
    if isinstance(findings, str) and findings.strip() and text.rstrip().endswith(findings.strip()):
        text = text.rstrip()[: -len(findings.strip())]
    return text


@dataclass
class Result:
    id: str
    lang: str
    kind: str
    question: str
    expect: list[str]
    answer: str = ""
    answered: bool = False
    answer_ok: bool = False
    clean_ok: bool = False  # still there once the scaffolding lines are taken out
    findings_ok: bool = False
    scaffolding: list[str] = field(default_factory=list)
    llm_calls: int = 0
    experts: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def run_case(orch: Any, case: Case, options: dict[str, Any] | None, lines: list[str]) -> Result:
    from router.core.context import render_context

    r = Result(case.id, case.lang, case.kind, case.question, list(case.expect or case.expect_all))
    data = case.image_bytes()
    t0 = time.perf_counter()
    try:
        final = orch.ask(case.question, [data], options=options)
    except Exception as exc:  # one case failing must not hide the others' figures
        r.error = f"{type(exc).__name__}: {exc}"
        r.seconds = round(time.perf_counter() - t0, 2)
        return r
    r.seconds = round(time.perf_counter() - t0, 2)
    r.answer = answer_text(final)
    r.answered = bool(getattr(final, "answered", True))
    r.answer_ok = expected_in(r.answer, case)
    r.clean_ok = expected_in(without_scaffolding(r.answer, lines), case)
    r.findings_ok = expected_in(render_context(final.analyses), case)
    r.scaffolding = scaffolding(final.answer, lines)
    r.llm_calls = len(final.trace.llm_calls)
    r.experts = [e.expert for e in final.trace.experts]
    r.keywords = [k["expert"] for k in final.trace.keywords]
    return r


def check_sizes(cases: list[Case]) -> None:
    """A size case's stated size must be the image's own (the truth is not typed by hand wrongly)."""
    from PIL import Image

    for c in cases:
        if c.size:
            got = Image.open(io.BytesIO(c.image_bytes())).size
            if tuple(got) != tuple(c.size):
                raise SystemExit(f"error: case {c.id}: size {list(c.size)} in the case list, the image is {list(got)}")


# --- report --------------------------------------------------------------------------------------------
def totals(results: list[Result]) -> dict[str, Any]:
    n = len(results)
    ran = [r for r in results if r.error is None]

    def count(pred: Any, rs: list[Result] = ran) -> int:
        return sum(1 for r in rs if pred(r))

    by_lang = {
        lang: {
            "cases": len(rs),
            "answer_ok": count(lambda r: r.answer_ok, rs),
            "clean_ok": count(lambda r: r.clean_ok, rs),
            "findings_ok": count(lambda r: r.findings_ok, rs),
            "scaffolding": count(lambda r: bool(r.scaffolding), rs),
        }
        for lang in sorted({r.lang for r in ran})
        for rs in [[r for r in ran if r.lang == lang]]
    }
    return {
        "cases": n,
        "errors": n - len(ran),
        "answer_ok": count(lambda r: r.answer_ok),
        "clean_ok": count(lambda r: r.clean_ok),
        "findings_ok": count(lambda r: r.findings_ok),
        "model_miss": count(lambda r: r.findings_ok and not r.clean_ok),  # the experts had it, the answer not
        "expert_miss": count(lambda r: not r.findings_ok),
        "no_answer": count(lambda r: not r.answered),
        "scaffolding": count(lambda r: bool(r.scaffolding)),
        "llm_calls": sum(r.llm_calls for r in ran),
        "llm_calls_per_case": round(sum(r.llm_calls for r in ran) / max(1, len(ran)), 2),
        "seconds": round(sum(r.seconds for r in results), 1),
        "seconds_per_case": round(sum(r.seconds for r in results) / max(1, n), 2),
        "by_lang": by_lang,
    }


def render(results: list[Result], tot: dict[str, Any], head: str) -> str:
    rows = [("case", "lang", "kind", "answer", "findings", "scaffolding", "calls", "s", "experts")]
    for r in results:
        rows.append(
            (
                r.id,
                r.lang,
                r.kind,
                "error" if r.error else ("yes" if r.answer_ok else ("no answer" if not r.answered else "no")),
                "yes" if r.findings_ok else "no",
                ", ".join(r.scaffolding) or "-",
                str(r.llm_calls),
                f"{r.seconds:.1f}",
                ",".join(dict.fromkeys(r.experts)) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    n = tot["cases"]
    lines += [
        "",
        f"answer contains the expected value: {tot['answer_ok']}/{n}"
        + "".join(f"  ({lang} {v['answer_ok']}/{v['cases']})" for lang, v in tot["by_lang"].items()),
        f"... outside scaffolding lines:      {tot['clean_ok']}/{n}"
        + "".join(f"  ({lang} {v['clean_ok']}/{v['cases']})" for lang, v in tot["by_lang"].items()),
        f"experts' findings contain it:       {tot['findings_ok']}/{n}"
        f"  (model misses: {tot['model_miss']}, expert misses: {tot['expert_miss']})",
        f"answers with scaffolding:           {tot['scaffolding']}/{n}",
        f"no answer (router fallback):        {tot['no_answer']}/{n}",
        f"LLM calls: {tot['llm_calls']} ({tot['llm_calls_per_case']} per case); "
        f"{tot['seconds']} s ({tot['seconds_per_case']} s per case); errors: {tot['errors']}",
    ]
    for r in results:
        if r.error:
            lines.append(f"error in {r.id}: {r.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="the Ollama model to answer")
    ap.add_argument("--ollama-host", required=True, help="the Ollama address, e.g. http://127.0.0.1:11435")
    ap.add_argument("--cases", type=Path, default=CASES, help="the case list (TOML)")
    ap.add_argument("--only", help="comma-separated case ids, or a prefix such as zh- or en-coins")
    ap.add_argument("--num-predict", type=int, help="cap each reply at N tokens (options.num_predict)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (totals and every case)")
    ap.add_argument("--progress", action="store_true", help="each case's result as a JSON line on stderr")
    args = ap.parse_args(argv)

    from experts.errors import VisionRouterError
    from experts.registry import default_registry
    from router.core.config import Settings
    from router.core.dispatch import run_coroutine
    from router.core.orchestrator import Orchestrator

    cases = load_cases(args.cases)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        cases = [c for c in cases if any(c.id == w or c.id.startswith(w) for w in wanted)]
        if not cases:
            raise SystemExit(f"error: no case matches --only {args.only}")
    check_sizes(cases)
    # No disk cache: every run starts cold and the figures do not depend on an earlier run.
    settings = Settings.load(None, model=args.model, ollama_host=args.ollama_host, cache_dir="")
    orch = Orchestrator(settings, registry=settings.configure(default_registry()))
    try:  # one clear line for a wrong host or model, before 38 cases fail the same way
        run_coroutine(orch.show(args.model))
    except VisionRouterError as exc:
        raise SystemExit(f"error: {exc}") from None
    options = {"num_predict": args.num_predict} if args.num_predict else None
    lines = protocol_lines()
    results = []
    for i, case in enumerate(cases, 1):
        r = run_case(orch, case, options, lines)
        results.append(r)
        if args.progress:  # one JSON line per case as it ends: an interrupted run still has its figures
            print(json.dumps(asdict(r), ensure_ascii=False), file=sys.stderr, flush=True)
        elif not args.json:
            print(f"\r{i}/{len(cases)} {case.id:<28} {r.seconds:6.1f} s", end="", file=sys.stderr, flush=True)
    if not args.json and not args.progress:
        print(file=sys.stderr)
    tot = totals(results)
    if args.json:
        meta = {"model": args.model, "ollama_host": args.ollama_host, "num_predict": args.num_predict}
        print(json.dumps({**meta, "totals": tot, "cases": [asdict(r) for r in results]}, ensure_ascii=False, indent=2))
    else:
        cap = f", num_predict {args.num_predict}" if args.num_predict else ""
        print(render(results, tot, f"answer eval: {args.model} at {args.ollama_host}{cap}, {len(cases)} cases"))
    return 1 if tot["errors"] == len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
