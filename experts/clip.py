"""The ``clip`` expert: style matching against a style library, zero-shot ranking of the user's own
candidates, and common objects, with open_clip.

Tags::

    [VISION: clip]                       top styles of the shipped library (with Chinese names)
    [VISION: clip "monet, cyberpunk"]    rank these candidates (also "莫奈、赛博朋克")

Every call also fills ``objects`` with common objects (``experts/data/objects.toml``) whose zero-shot
probability passes ``object_threshold``.

Configuration (``registry.configure("clip", ...)`` or the router's config file):

- ``model``: an open_clip architecture, default ``ViT-B-32`` (or ``hf-hub:org/repo``).
- ``pretrained``: an open_clip pretrained tag, default ``laion2b_s34b_b79k``; or the path of a local
  checkpoint file; or ``none`` for random weights (tests only: the scores mean nothing).
- ``model_config``: path of an open_clip model-config JSON to register first (custom architectures).
- ``weights_dir``: where open_clip keeps downloaded weights (default: the Hugging Face cache).
- ``device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
- ``precision``: ``auto`` (fp16 on GPU, fp32 on CPU), ``fp32``, ``fp16``, ``bf16``.
- ``style_library``: path (or list of paths) of your own style library (TOML or JSON, the shape of
  ``experts/data/styles.toml``); added to the shipped one, equal ids replace. ``builtin_styles=false``
  uses yours alone.
- ``cache_dir``: where text embeddings are cached, keyed by model, weights, library version and a
  digest of every prompt; default ``$VISION_ROUTER_CACHE/clip`` or ``~/.cache/vision-router/clip``.
- ``object_threshold`` (default 0.15) and ``max_objects`` (default 5).

Weights: on a user's machine open_clip fetches ``laion2b_s34b_b79k`` from the Hugging Face hub into
its cache on first load (about 600 MB). Offline (``HF_HUB_OFFLINE=1``, or no network) the expert
fails with one line saying how to get them; fetch them once with::

    python -c "import open_clip; open_clip.create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')"

or point ``pretrained`` at a checkpoint file you copied over. The tests run this module's real code
path with a tiny architecture registered through ``model_config`` and a random checkpoint: switching
to real weights is only the ``model``/``pretrained`` settings.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from experts.base import Expert, ExpertArgs
from experts.errors import EngineMissing, ExpertError
from experts.hub import cached_file, offline, pick_device
from experts.images import DecodedImage
from experts.install import install_hint
from experts.schema import ExpertResult, Style
from experts.styles import StyleLibrary, load_style_library, parse_candidates
from experts.vocabulary import ObjectVocabulary, common_objects

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
# Prompt ensembles for candidates that are neither a library style nor a known object.
CANDIDATE_TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture in the style of {}")
OBJECT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a picture containing a {}.")
_RANDOM = {"none", "random", ""}
_TEXT_BATCH = 64
# open_clip.constants HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME (named here: importing open_clip costs seconds).
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipArgs(ExpertArgs):
    query: str | None = Field(
        None,
        description="Candidates to rank, separated by commas (e.g. 'monet, cyberpunk' or '莫奈、赛博朋克'). "
        "Leave out to get the image's top styles from the style library.",
    )
    top_k: int = Field(5, ge=1, le=20, description="How many styles or candidates to return.")


@dataclass
class _TextBank:
    """Labels with their L2-normalised text embeddings (one row per label)."""

    ids: list[str]
    emb: np.ndarray


class ClipExpert(Expert):
    name = "clip"
    aliases = ("style", "styles", "zero-shot", "zeroshot")
    description = (
        "Art/photo style of the image (impressionism, cyberpunk, minimalism, ...), or which of the given "
        "candidate labels fits the image best; also lists common objects."
    )
    Args = ClipArgs
    positional = "query"
    extra = "clip"
    # The model sees 224-448 px: a 1024 px view moves its input by ~0.3% and spares resizing 50 MP on every call.
    max_side = 1024

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        self._device = "cpu"
        self._dtype: Any = None
        self._logit_scale = 100.0
        self.library: StyleLibrary | None = None
        self.vocabulary: ObjectVocabulary | None = None
        self._styles: _TextBank | None = None
        self._objects: _TextBank | None = None
        self._candidate_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._candidate_lock = threading.Lock()
        self.cache_hit: bool | None = None  # whether the last load found its text embeddings on disk

    # --- configuration ------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return str(self.config.get("model") or DEFAULT_MODEL)

    @property
    def pretrained(self) -> str | None:
        p = self.config.get("pretrained", DEFAULT_PRETRAINED)
        return None if p is None or str(p).strip().lower() in _RANDOM else str(p)

    def _cache_dir(self) -> Path:
        configured = self.config.get("cache_dir")
        if configured:
            return Path(configured).expanduser()
        base = os.environ.get("VISION_ROUTER_CACHE") or "~/.cache/vision-router"
        return Path(base).expanduser() / "clip"

    def _precision(self, device: str) -> str:
        p = str(self.config.get("precision") or "auto")
        if p == "auto":
            return "fp16" if device.startswith("cuda") else "fp32"
        return p

    def status(self) -> dict[str, Any]:
        ok = find_spec("open_clip") is not None and find_spec("torch") is not None
        out: dict[str, Any] = {
            "ok": ok,
            "engine": "open_clip",
            "model": self.model_name,
            "pretrained": self.pretrained or "random",
            "device": self._device if self.loaded else self.config.get("device", "auto"),
            "loaded": self.loaded,
        }
        if not ok:
            out["error"] = f"open_clip/torch not installed: {install_hint('clip')}"
            return out
        present, detail = self.weights_status()
        out["weights"] = detail
        if not present:
            out["ok"] = False
        return out

    def _fetch_hint(self) -> str:
        return (
            f'fetch once: python -c "import open_clip; open_clip.create_model_and_transforms('
            f"'{self.model_name}', pretrained='{self.pretrained}')\" (or set pretrained to a checkpoint file)"
        )

    def weights_status(self) -> tuple[bool, str]:
        """Are the configured weights on this machine (without downloading anything)?"""
        pre = self.pretrained
        if pre is None:
            return False, "random weights (pretrained=none): the scores mean nothing"
        if Path(pre).expanduser().is_file():
            return True, f"local checkpoint {pre}"
        if "/" in pre or "\\" in pre or pre.endswith((".pt", ".pth", ".bin", ".safetensors")):
            return False, f"checkpoint {pre}: no such file"
        get = self._fetch_hint()
        cfg = pretrained_cfg(self.model_name, pre)
        hub = str(cfg.get("hf_hub") or "").strip("/")
        if hub:
            for filename in HF_WEIGHT_FILES:
                path = cached_file(hub, filename, self.config.get("weights_dir"))
                if path:
                    return True, f"present ({path})"
            return False, f"not downloaded ({hub}); {get}"
        if cfg.get("url"):
            root = Path(self.config.get("weights_dir") or Path.home() / ".cache" / "clip").expanduser()
            name = str(cfg["url"]).rsplit("/", 1)[-1]
            if (root / name).is_file():
                return True, f"present ({root / name})"
            return False, f"not downloaded ({name}); {get}"
        return False, f"unknown pretrained tag {pre!r} for {self.model_name}"

    # --- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            import open_clip
            import torch
        except ImportError as exc:
            raise EngineMissing(
                f"clip: {exc.name or 'open_clip'} is not installed; install the [clip] extra: " + install_hint("clip")
            ) from None
        self._torch = torch
        self.library = self._load_library()
        self.vocabulary = common_objects()

        model_config = self.config.get("model_config")
        if model_config:
            if not Path(model_config).expanduser().exists():
                raise ExpertError(f"clip: model_config {model_config}: no such file")
            open_clip.add_model_config(str(Path(model_config).expanduser()))
        device = pick_device(self.config.get("device"), torch)
        precision = self._precision(device)
        pretrained = self.pretrained
        if pretrained is None:
            log.warning("clip: model %s has RANDOM weights (pretrained=none): scores mean nothing", self.model_name)
        elif offline():
            present, detail = self.weights_status()
            if not present:  # say so in one line instead of letting open_clip try and log a download error
                raise EngineMissing(f"clip: weights {self.model_name}/{pretrained} {detail} (HF_HUB_OFFLINE is set)")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name,
                pretrained=pretrained,
                device=device,
                precision=precision,
                cache_dir=self.config.get("weights_dir"),
            )
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as exc:
            raise self._load_error(exc) from None
        model.eval()
        self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer
        self._device = device
        # open_clip keeps some parameters in fp32 under fp16/bf16: ask it what images must be.
        self._dtype = open_clip.get_input_dtype(precision) or torch.float32
        scale = self.config.get("logit_scale")
        self._logit_scale = float(scale) if scale else float(model.logit_scale.exp().item())
        self._styles, self._objects = self._library_embeddings()

    def _load_library(self) -> StyleLibrary:
        paths = self.config.get("style_library") or []
        if isinstance(paths, (str, Path)):
            paths = [paths]
        builtin = self.config.get("builtin_styles", True)
        libs = [load_style_library(p) for p in paths]
        if not builtin and not libs:
            raise ExpertError("clip: builtin_styles=false but no style_library is configured")
        lib = load_style_library() if builtin else libs.pop(0)
        for extra in libs:
            lib = lib.extended(extra)
        return lib

    def _load_error(self, exc: Exception) -> ExpertError:
        msg = " ".join(str(exc).split())
        pretrained = self.pretrained
        if pretrained and os.path.sep in pretrained and not Path(pretrained).expanduser().exists():
            return EngineMissing(f"clip: checkpoint {pretrained}: no such file")
        if re.search(r"download|hub|connection|internet|offline|cache", msg, re.I):
            note = " (HF_HUB_OFFLINE is set)" if offline() else ""
            return EngineMissing(
                f"clip: weights {self.model_name}/{pretrained} are not in the local cache{note}; {self._fetch_hint()}"
            )
        return ExpertError(f"clip: could not load {self.model_name}/{pretrained}: {msg[:300]}")

    # --- text embeddings, cached on disk ------------------------------------------------------
    def _weights_identity(self) -> str:
        p = self.pretrained or "random"
        path = Path(p).expanduser()
        if path.is_file():
            st = path.stat()
            return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        return p

    def _cache_path(self, lib: StyleLibrary, vocab: ObjectVocabulary) -> Path:
        content = json.dumps(
            {
                "model": self.model_name,
                "weights": self._weights_identity(),
                "styles": [[s.id, list(s.prompts)] for s in lib.styles],
                "objects": [o.en for o in vocab.labels],
                "object_templates": OBJECT_TEMPLATES,
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        stem = f"{self.model_name}__{self.pretrained or 'random'}__{lib.label}__objects-v{vocab.version}"
        stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem)[:150]
        return self._cache_dir() / f"{stem}__{digest}.npz"

    def _library_embeddings(self) -> tuple[_TextBank, _TextBank]:
        assert self.library is not None and self.vocabulary is not None
        lib, vocab = self.library, self.vocabulary
        style_ids = [s.id for s in lib.styles]
        object_ids = [o.en for o in vocab.labels]
        # Random weights differ per process: caching them would poison the cache.
        path = self._cache_path(lib, vocab) if self.pretrained else None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    styles, objects = data["styles"], data["objects"]
                if styles.shape[0] == len(style_ids) and objects.shape[0] == len(object_ids):
                    self.cache_hit = True
                    return _TextBank(style_ids, styles), _TextBank(object_ids, objects)
            except Exception as exc:  # a truncated or foreign file: recompute and overwrite
                log.warning("clip: ignoring unreadable embedding cache %s: %s", path, exc)
        self.cache_hit = False
        styles = self._embed_ensembles([list(s.prompts) for s in lib.styles])
        objects = self._embed_ensembles([[t.format(o) for t in OBJECT_TEMPLATES] for o in object_ids])
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as fh:
                    np.savez(fh, styles=styles, objects=objects)
                os.replace(tmp, path)
            except OSError as exc:
                log.warning("clip: could not write embedding cache %s: %s", path, exc)
        return _TextBank(style_ids, styles), _TextBank(object_ids, objects)

    def _embed_ensembles(self, groups: list[list[str]]) -> np.ndarray:
        """One row per group of prompts: the normalised mean of the prompts' normalised embeddings."""
        flat = [p for g in groups for p in g]
        emb = self._encode_texts(flat) if flat else np.zeros((0, 1), np.float32)
        rows, i = [], 0
        for g in groups:
            rows.append(_normalise(emb[i : i + len(g)].mean(axis=0)))
            i += len(g)
        return np.stack(rows).astype(np.float32)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings, one row per text."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), _TEXT_BATCH):
                tokens = self._tokenizer(texts[i : i + _TEXT_BATCH]).to(self._device)
                out.append(self._model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _encode_image(self, image: DecodedImage) -> np.ndarray:
        """L2-normalised float32 image embedding (1-D)."""
        torch = self._torch
        pixels = self._preprocess(image.image).unsqueeze(0).to(self._device, dtype=self._dtype)
        with torch.inference_mode():
            emb = self._model.encode_image(pixels, normalize=True)
        return emb.float().cpu().numpy()[0].astype(np.float32)

    def _candidate_embeddings(self, candidates: list[str]) -> tuple[list[str], list[str | None], np.ndarray]:
        """Display names, Chinese names and embeddings for a user's candidates. A candidate naming a
        library style or a known object borrows its curated prompts."""
        assert self.library is not None and self.vocabulary is not None and self._styles is not None
        names: list[str] = []
        zh: list[str | None] = []
        rows: list[np.ndarray] = []
        for cand in candidates:
            style = self.library.match(cand)
            if style is not None:
                names.append(style.en)
                zh.append(style.zh)
                rows.append(self._styles.emb[self._styles.ids.index(style.id)])
                continue
            obj = self.vocabulary.lookup(cand)
            if obj is not None and self._objects is not None:
                names.append(obj.en)
                zh.append(obj.zh)
                rows.append(self._objects.emb[self._objects.ids.index(obj.en)])
                continue
            names.append(cand)
            zh.append(None)
            rows.append(self._free_text_embedding(cand))
        return names, zh, np.stack(rows)

    def _free_text_embedding(self, text: str) -> np.ndarray:
        with self._candidate_lock:
            hit = self._candidate_cache.get(text)
            if hit is not None:
                self._candidate_cache.move_to_end(text)
                return hit
        emb = self._embed_ensembles([[t.format(text) for t in CANDIDATE_TEMPLATES]])[0]
        with self._candidate_lock:
            self._candidate_cache[text] = emb
            while len(self._candidate_cache) > 512:
                self._candidate_cache.popitem(last=False)
        return emb

    # --- embeddings for other users (image search) ---------------------------------------------
    @property
    def embedding_id(self) -> str:
        """Names the embedding space: vectors with different ids must not be compared."""
        return f"clip:{self.model_name}:{self.pretrained or 'random'}"

    def embed_image(self, image: DecodedImage) -> np.ndarray:
        """The image's L2-normalised CLIP embedding (1-D float32)."""
        self.load()
        return self._encode_image(image)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised CLIP embeddings of texts as given (no prompt templates), one row each."""
        self.load()
        return self._encode_texts(list(texts))

    # --- analysis -----------------------------------------------------------------------------
    def _probabilities(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        logits = self._logit_scale * (text_emb @ image_emb)
        logits = logits - logits.max()
        p = np.exp(logits)
        return p / p.sum()

    def _analyze(self, image: DecodedImage, args: ClipArgs) -> ExpertResult:
        assert self._styles is not None and self._objects is not None and self.library is not None
        img = self._encode_image(image)
        result = self.new_result(image)
        candidates = parse_candidates(args.query) if args.query else []
        if candidates:
            names, zh, emb = self._candidate_embeddings(candidates)
            if len(set(names)) == 1:
                # One candidate alone would always score 1.0: rank it among the library's styles.
                result = self._rank_one(result, img, names[0], zh[0], emb[0], args.top_k)
            else:
                probs = self._probabilities(img, emb)
                order = np.argsort(-probs, kind="stable")[: args.top_k]
                result.styles = [Style(name=names[i], name_zh=zh[i], score=round(float(probs[i]), 4)) for i in order]
                result.attributes["best_match"] = result.styles[0].name
        else:
            probs = self._probabilities(img, self._styles.emb)
            order = np.argsort(-probs, kind="stable")[: args.top_k]
            by_id = {s.id: s for s in self.library.styles}
            result.styles = [
                Style(
                    name=by_id[self._styles.ids[i]].en,
                    name_zh=by_id[self._styles.ids[i]].zh,
                    score=round(float(probs[i]), 4),
                )
                for i in order
            ]
            result.attributes["style"] = result.styles[0].name
        self._fill_objects(result, img)
        return result

    def _rank_one(
        self, result: ExpertResult, img: np.ndarray, name: str, zh: str | None, emb: np.ndarray, top_k: int
    ) -> ExpertResult:
        assert self._styles is not None and self.library is not None
        by_id = {s.id: s for s in self.library.styles}
        others = [
            (by_id[i].en, by_id[i].zh, e)
            for i, e in zip(self._styles.ids, self._styles.emb, strict=True)
            if by_id[i].en != name
        ]
        labels = [(name, zh), *((n, z) for n, z, _ in others)]
        probs = self._probabilities(img, np.stack([emb, *(e for _, _, e in others)]))
        order = list(np.argsort(-probs, kind="stable"))
        rank = order.index(0) + 1
        keep = order[:top_k] if 0 in order[:top_k] else [*order[: top_k - 1], 0]
        result.styles = [Style(name=labels[i][0], name_zh=labels[i][1], score=round(float(probs[i]), 4)) for i in keep]
        result.attributes["best_match"] = result.styles[0].name
        result.attributes["candidate_rank"] = f"{name}: {rank} of {len(labels)} (ranked among library styles)"
        return result

    def _fill_objects(self, result: ExpertResult, img: np.ndarray) -> None:
        assert self._objects is not None
        threshold = float(self.config.get("object_threshold", 0.15))
        limit = int(self.config.get("max_objects", 5))
        probs = self._probabilities(img, self._objects.emb)
        order = np.argsort(-probs, kind="stable")
        picked = [(self._objects.ids[i], float(probs[i])) for i in order[:limit] if probs[i] >= threshold]
        result.objects = [label for label, _ in picked]
        if picked:
            result.attributes["object_scores"] = {label: round(p, 4) for label, p in picked}


def pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained entry (``hf_hub``, ``url``...) for ``model``/``tag``, or ``{}``.

    Read from open_clip's ``pretrained.py`` as data (its ``_PRETRAINED`` table of ``dict(tag=_pcfg(...))``)
    so that ``status()`` never imports open_clip: importing it pulls in torch and torchvision (5 s).
    Falls back to open_clip's own ``get_pretrained_cfg`` if the file's layout ever changes.
    """
    table = _pretrained_table()
    if table is None:
        try:
            from open_clip.pretrained import get_pretrained_cfg

            return dict(get_pretrained_cfg(model, tag) or {})
        except Exception:
            return {}
    return dict(table.get(model, {}).get(tag.lower().replace("-", "_"), {}))


@functools.lru_cache(maxsize=1)
def _pretrained_table() -> dict[str, dict[str, dict[str, Any]]] | None:
    spec = find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        return None
    try:
        tree = ast.parse((Path(locations[0]) / "pretrained.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if name == "_PRETRAINED" and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    tags = groups.get(value.id) if isinstance(value, ast.Name) else _tag_dict(value)
                    table[key.value] = tags or {}
        else:
            tags = _tag_dict(node.value)
            if tags is not None:
                groups[name] = tags
    if not table:
        return None
    # open_clip adds "<model>-quickgelu" for every tag marked quick_gelu (same weights).
    for model, tags in list(table.items()):
        quick = {t: c for t, c in tags.items() if c.get("quick_gelu")}
        if quick:
            table[f"{model}-quickgelu"] = quick
    return table


def _tag_dict(node: ast.expr) -> dict[str, dict[str, Any]] | None:
    """``dict(tag=_pcfg(hf_hub=..., url=...), ...)`` as ``{tag: {hf_hub: ..., url: ...}}``; None otherwise."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"):
        return None
    out: dict[str, dict[str, Any]] = {}
    for kw in node.keywords:
        if kw.arg and isinstance(kw.value, ast.Call):
            out[kw.arg] = {
                k.arg: k.value.value for k in kw.value.keywords if k.arg and isinstance(k.value, ast.Constant)
            }
    return out


def _normalise(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
