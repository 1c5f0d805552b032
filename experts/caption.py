"""The ``caption`` expert: a caption, or an answer to a question about the image, with BLIP-2
through transformers.

Tags::

    [VISION: caption]                              one-sentence caption
    [VISION: caption "what colour is the car?"]    visual question answering

BLIP-2's language models (OPT, Flan-T5) read and write English; questions in other languages get
poor answers, so the router's model should ask in English.

The result has ``caption`` (the caption, or the answer for a question), ``attributes["answer"]`` and
``attributes["question"]`` for questions, ``objects`` (common objects the text names, from
``experts/data/objects.toml``; plain word matching, no parser) and ``attributes["colors"]`` (colour
words the text names).

Configuration (``registry.configure("caption", ...)`` or the router's config file):

- ``model``: a Hugging Face repo id or a local directory holding a BLIP-2 model and its processor;
  default ``Salesforce/blip2-opt-2.7b`` (also ``Salesforce/blip2-flan-t5-xl``, ...).
- ``device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
- ``dtype``: ``auto`` (fp16 on GPU, fp32 on CPU), ``float32``, ``float16``, ``bfloat16``.
- ``load_in_8bit``: 8-bit weights on GPU (needs ``bitsandbytes`` and ``accelerate``); default false.
- ``local_files_only``: never touch the network (default: true when ``HF_HUB_OFFLINE`` is set).
- ``cache_dir``, ``revision``: passed to ``from_pretrained``.
- ``max_new_tokens`` (default 30), ``num_beams`` (default 1), ``repetition_penalty``, and
  ``generate_kwargs`` (a dict passed to ``generate`` as is).

Weights: on a user's machine transformers fetches the model into the Hugging Face cache on first
load (blip2-opt-2.7b is about 15 GB in fp32 shards). Offline, the expert fails with one line saying
how to get them (``hf download Salesforce/blip2-opt-2.7b``: huggingface_hub 1.0 and later ship only the
``hf`` command) or to set ``model`` to a local directory. The tests build a tiny random BLIP-2 with its
processor, save it to a directory and load it through this same code path: real weights are only the
``model`` setting away.
"""

from __future__ import annotations

import logging
import os
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pydantic import Field

from experts.base import Expert, ExpertArgs
from experts.errors import EngineMissing, ExpertError
from experts.hub import cached_file, offline, pick_device
from experts.images import DecodedImage
from experts.install import install_hint
from experts.schema import ExpertResult
from experts.vocabulary import common_objects

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Salesforce/blip2-opt-2.7b"
QUESTION_PROMPT = "Question: {} Answer:"
COLOURS = (
    "black",
    "white",
    "grey",
    "gray",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "beige",
    "gold",
    "silver",
    "teal",
    "cyan",
    "magenta",
)
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.I)
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class CaptionArgs(ExpertArgs):
    query: str | None = Field(
        None,
        description="A question about the image, in English (e.g. 'what colour is the car?'). Leave out for a caption.",
    )


class CaptionExpert(Expert):
    name = "caption"
    aliases = ("describe", "description", "vqa", "blip", "blip2")
    description = (
        "Describe the image in one sentence, or answer a short question about it "
        "(what is shown, colours, counts, actions)."
    )
    Args = CaptionArgs
    positional = "query"
    extra = "caption"
    # The model sees 224-448 px: a 1024 px view moves its input by ~0.3% and spares resizing 50 MP on every call.
    max_side = 1024

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._model: Any = None
        self._processor: Any = None
        self._torch: Any = None
        self._device = "cpu"
        self._dtype: Any = None
        self._encoder_decoder = False

    @property
    def model_name(self) -> str:
        return str(self.config.get("model") or DEFAULT_MODEL)

    def _local_files_only(self) -> bool:
        if "local_files_only" in self.config:
            return bool(self.config["local_files_only"])
        return offline()

    def status(self) -> dict[str, Any]:
        ok = find_spec("transformers") is not None and find_spec("torch") is not None
        out: dict[str, Any] = {
            "ok": ok,
            "engine": "transformers BLIP-2",
            "model": self.model_name,
            "device": self._device if self.loaded else self.config.get("device", "auto"),
            "loaded": self.loaded,
        }
        if self.loaded:
            out["dtype"] = str(self._dtype).replace("torch.", "")
        if not ok:
            out["error"] = f"transformers/torch not installed: {install_hint('caption')}"
            return out
        present, detail = self.weights_status()
        out["weights"] = detail
        if not present:
            out["ok"] = False
        return out

    def _local_dir(self) -> Path | None:
        """The model as a local directory, or None for a hub id ("org/model"): absolute, ~ and ./
        paths, or an existing directory, are local."""
        name = self.model_name
        if os.path.isabs(name) or name.startswith(("~", ".")) or Path(name).is_dir():
            return Path(name).expanduser()
        return None

    def _fetch_hint(self) -> str:
        return f"fetch once: hf download {self.model_name} (or set model to a local directory)"

    def weights_status(self) -> tuple[bool, str]:
        """Are the model's files on this machine (without downloading anything)?"""
        local = self._local_dir()
        if local is not None:
            if (local / "config.json").is_file():
                return True, f"local directory {local}"
            return False, f"{local} has no config.json: not a saved BLIP-2 model"
        path = cached_file(self.model_name, "config.json", self.config.get("cache_dir"))
        if path:
            return True, f"present in the Hugging Face cache ({Path(path).parent})"
        return False, f"not downloaded; {self._fetch_hint()}"

    # --- loading ------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            import torch
            from transformers import Blip2ForConditionalGeneration, Blip2Processor
        except ImportError as exc:
            raise EngineMissing(
                f"caption: {exc.name or 'transformers'} is not installed; install the [caption] extra: "
                + install_hint("caption")
            ) from None
        self._torch = torch
        device = pick_device(self.config.get("device"), torch)
        dtype = self._resolve_dtype(torch, device)
        name = self.model_name
        local = self._local_dir()
        source = str(local) if local else name
        if local and not local.is_dir():
            raise EngineMissing(f"caption: model directory {name}: no such directory")
        common: dict[str, Any] = {"local_files_only": self._local_files_only()}
        for key in ("cache_dir", "revision"):
            if self.config.get(key):
                common[key] = self.config[key]
        model_kwargs: dict[str, Any] = {"dtype": dtype}
        eight_bit = bool(self.config.get("load_in_8bit")) and device.startswith("cuda")
        if self.config.get("load_in_8bit") and not eight_bit:
            log.warning("caption: load_in_8bit needs a GPU; loading %s on the CPU", dtype)
        if eight_bit:
            from transformers import BitsAndBytesConfig

            model_kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
            model_kwargs["device_map"] = {"": device}
        try:
            processor = Blip2Processor.from_pretrained(source, **common)
            model = Blip2ForConditionalGeneration.from_pretrained(source, **common, **model_kwargs)
        except Exception as exc:
            raise self._load_error(exc) from None
        if not eight_bit:
            model = model.to(device)
        model.eval()
        self._model, self._processor = model, processor
        # Not next(parameters()).dtype: BLIP-2 keeps some modules in fp32 under fp16.
        self._device, self._dtype = device, dtype
        self._encoder_decoder = bool(getattr(model.config.text_config, "is_encoder_decoder", False))

    def _resolve_dtype(self, torch: Any, device: str) -> Any:
        want = str(self.config.get("dtype") or "auto").lower()
        if want == "auto":
            return torch.float16 if device.startswith("cuda") else torch.float32
        if want not in _DTYPES:
            raise ExpertError(f"caption: unknown dtype {want!r} (float32, float16, bfloat16)")
        return getattr(torch, _DTYPES[want])

    def _load_error(self, exc: Exception) -> ExpertError:
        msg = " ".join(str(exc).split())
        name = self.model_name
        if isinstance(exc, OSError) or re.search(r"connect|offline|cache|does not appear|not found", msg, re.I):
            note = " (offline: HF_HUB_OFFLINE/local_files_only)" if self._local_files_only() else ""
            return EngineMissing(f"caption: weights for {name} are not available locally{note}; {self._fetch_hint()}")
        if "bitsandbytes" in msg or "accelerate" in msg:
            return EngineMissing(f"caption: load_in_8bit needs bitsandbytes and accelerate: {msg[:200]}")
        return ExpertError(f"caption: could not load {name}: {msg[:300]}")

    # --- analysis -----------------------------------------------------------------------------
    def _generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": int(self.config.get("max_new_tokens", 30)),
            "num_beams": int(self.config.get("num_beams", 1)),
            "do_sample": False,
        }
        if self.config.get("repetition_penalty"):
            kw["repetition_penalty"] = float(self.config["repetition_penalty"])
        kw.update(self.config.get("generate_kwargs") or {})
        return kw

    def generate(self, image: DecodedImage, prompt: str | None) -> str:
        """Run BLIP-2 on one image with an optional text prompt; returns the new text only."""
        torch = self._torch
        inputs = self._processor(images=image.image, text=prompt, return_tensors="pt").to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        with torch.inference_mode():
            out = self._model.generate(**inputs, **self._generate_kwargs())
        ids = out[0]
        prompt_ids = inputs.get("input_ids")
        # Decoder-only models (OPT) echo the prompt (image tokens included) before the new tokens.
        if prompt_ids is not None and not self._encoder_decoder:
            n = prompt_ids.shape[1]
            if ids.shape[0] >= n and torch.equal(ids[:n].cpu(), prompt_ids[0].cpu()):
                ids = ids[n:]
        text = self._processor.tokenizer.decode(ids, skip_special_tokens=True)
        return " ".join(text.split())

    def _analyze(self, image: DecodedImage, args: CaptionArgs) -> ExpertResult:
        question = (args.query or "").strip()
        prompt = QUESTION_PROMPT.format(question) if question else None
        text = self.generate(image, prompt)
        result = self.new_result(image, caption=text or None)
        if question:
            result.attributes["question"] = question
            result.attributes["answer"] = text
        result.objects = common_objects().in_text(text)
        colours = list(dict.fromkeys(c.lower().replace("gray", "grey") for c in _COLOUR_RE.findall(text)))
        if colours:
            result.attributes["colors"] = colours
        return result
