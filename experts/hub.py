"""What the torch experts share about weights and devices: offline mode, the Hugging Face cache
(looked at, never downloaded from), and the ``device = auto`` choice."""

from __future__ import annotations

import os
from typing import Any

_TRUE = {"1", "true", "yes", "on"}


def offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set: never touch the network."""
    return any((os.environ.get(v) or "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_file(repo: str, filename: str, cache_dir: str | None = None) -> str | None:
    """Path of ``filename`` from ``repo`` in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return path if isinstance(path, str) else None


def pick_device(configured: Any, torch: Any) -> str:
    """``auto`` (or nothing) means CUDA when present, else the CPU; anything else as given."""
    dev = str(configured or "auto")
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return dev
