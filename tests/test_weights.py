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
    assert "hf download Salesforce/blip2-opt-2.7b" in st["weights"]
    fake_hf_cache(tmp_path, "Salesforce/blip2-opt-2.7b", "config.json")
    assert CaptionExpert(cache_dir=str(tmp_path)).status()["ok"] is True
    empty = tmp_path / "empty"
    empty.mkdir()
    present, detail = CaptionExpert(model=str(empty)).weights_status()
    assert not present and "no config.json" in detail


def test_status_imports_no_engine():
    """`expert list` and `doctor` report every expert's status without importing torch, open_clip,
    transformers or paddle (each costs seconds); an engine is imported only when it runs."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from experts.registry import default_registry\n"
        "reg = default_registry()\n"
        "for n in reg.names(): reg.get(n).status()\n"
        "heavy = ['torch', 'open_clip', 'transformers', 'paddle', 'paddleocr', 'paddlex', 'onnxruntime',\n"
        "         'rapidocr', 'sentence_transformers']\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_clip_pretrained_table_matches_open_clip():
    """The weights check reads open_clip's pretrained table without importing open_clip: it must agree
    with open_clip's own lookup for every model and tag."""
    pytest.importorskip("open_clip", reason="needs the [clip] extra")
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained

    from experts.clip import pretrained_cfg

    pairs = list_pretrained()
    assert len(pairs) > 50
    for model, tag in pairs:
        want = get_pretrained_cfg(model, tag)
        got = pretrained_cfg(model, tag.upper().replace("_", "-"))  # open_clip normalises case and dashes
        assert (got.get("hf_hub", ""), got.get("url", "")) == (want.get("hf_hub", ""), want.get("url", "")), (
            model,
            tag,
        )
    assert pretrained_cfg("ViT-B-32", "no-such-tag") == {}
