"""`doctor` tells whether real CLIP and BLIP-2 weights are on this machine, and how to get them."""

from __future__ import annotations

import pytest


def fake_hf_cache(root, repo: str, filename: str) -> None:
    """The Hugging Face cache layout for one file of one repo (what a finished download leaves)."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    snap = base / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(b"weights")


def test_clip_weights_missing_then_present(tmp_path):
    pytest.importorskip("open_clip", reason="needs the [clip] extra")
    from experts.clip import ClipExpert

    expert = ClipExpert(weights_dir=str(tmp_path))
    st = expert.status()
    assert st["ok"] is False
    assert "not downloaded (laion/CLIP-ViT-B-32-laion2B-s34B-b79K)" in st["weights"]
    assert "create_model_and_transforms('ViT-B-32', pretrained='laion2b_s34b_b79k')" in st["weights"]
    fake_hf_cache(tmp_path, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
    st = ClipExpert(weights_dir=str(tmp_path)).status()
    assert st["ok"] is True and st["weights"].startswith("present (")
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"x")
    assert ClipExpert(pretrained=str(ckpt)).weights_status() == (True, f"local checkpoint {ckpt}")
    assert ClipExpert(pretrained="none").weights_status()[0] is False


def test_caption_weights_missing_then_present(tmp_path):
    pytest.importorskip("transformers", reason="needs the [caption] extra")
    from experts.caption import CaptionExpert

    st = CaptionExpert(cache_dir=str(tmp_path)).status()
    assert st["ok"] is False
    assert "huggingface-cli download Salesforce/blip2-opt-2.7b" in st["weights"]
    fake_hf_cache(tmp_path, "Salesforce/blip2-opt-2.7b", "config.json")
    assert CaptionExpert(cache_dir=str(tmp_path)).status()["ok"] is True
    empty = tmp_path / "empty"
    empty.mkdir()
    present, detail = CaptionExpert(model=str(empty)).weights_status()
    assert not present and "no config.json" in detail
