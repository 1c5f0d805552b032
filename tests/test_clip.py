"""The clip expert: the real open_clip code path with a tiny architecture and a random checkpoint,
and deterministic ranking, ensembling, caching and candidate parsing with injected embeddings."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from experts.errors import EngineMissing, ExpertError
from experts.images import decode_image
from experts.styles import load_style_library, parse_candidates

TINY = "tiny-test-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# --- no torch needed ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, expected",
    [
        ("monet, cyberpunk", ["monet", "cyberpunk"]),
        ("莫奈、赛博朋克", ["莫奈", "赛博朋克"]),
        ("莫奈，赛博朋克；极简", ["莫奈", "赛博朋克", "极简"]),
        ("\"pop art\"; 'film noir' | Monet", ["pop art", "film noir", "Monet"]),
        ("  a ,, b , A ,", ["a", "b"]),
        ("single", ["single"]),
        (" , 、 ", []),
    ],
)
def test_parse_candidates(query, expected):
    assert parse_candidates(query) == expected


def test_shipped_style_library():
    lib = load_style_library()
    assert len(lib.styles) >= 30
    assert lib.name == "builtin" and lib.label.startswith("builtin-v")
    for s in lib.styles:
        assert s.en and s.zh and s.prompts, s.id
    for word, sid in [
        ("Monet", "impressionism"),
        ("赛博朋克", "cyberpunk"),
        ("minimalist", "minimalism"),
        ("复古", "vintage"),
        ("北欧风", "scandinavian"),
        ("工业风", "industrial"),
        ("watercolour", "watercolor"),
        ("动漫", "anime"),
        ("film noir", "film_noir"),
        ("pop-art", "pop_art"),
    ]:
        assert lib.match(word) is not None and lib.match(word).id == sid, word
    assert lib.match("no such style") is None


def test_user_style_library(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text(
        'name = "mine"\nversion = 3\n'
        '[[style]]\nid = "cyberpunk"\nen = "My cyberpunk"\nzh = "我的赛博"\nprompts = ["neon"]\n'
        '[[style]]\nid = "brutalism"\nen = "Brutalism"\nzh = "粗野主义"\naliases = ["brutalist"]\n'
        'prompts = ["a brutalist concrete building"]\n',
        encoding="utf-8",
    )
    lib = load_style_library().extended(load_style_library(user))
    assert lib.match("brutalist").en == "Brutalism"
    assert lib.match("cyberpunk").en == "My cyberpunk"
    assert lib.label == "builtin+mine-v1+3"

    bad = tmp_path / "bad.toml"
    bad.write_text('[[style]]\nid = "x"\nen = "X"\n', encoding="utf-8")
    with pytest.raises(ExpertError, match=r"bad.toml: style.0.prompts"):
        load_style_library(bad)
    with pytest.raises(ExpertError, match="no such file"):
        load_style_library(tmp_path / "missing.toml")
    js = tmp_path / "lib.json"
    js.write_text(json.dumps({"name": "j", "style": [{"id": "a", "en": "A", "prompts": ["a"]}]}))
    assert load_style_library(js).styles[0].en == "A"


def test_args_schema_is_a_tool_definition():
    from experts.clip import ClipExpert

    schema = ClipExpert.args_schema()
    assert set(schema["properties"]) == {"query", "top_k"}
    assert schema["properties"]["query"]["type"] == "string"
    assert ClipExpert.positional == "query"


# --- the real open_clip path ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture (config JSON) and a random checkpoint file, as a user's own
    model config and local checkpoint would be given."""
    pytest.importorskip("open_clip", reason="needs the [clip] extra")
    torch = pytest.importorskip("torch", reason="needs the [clip] extra")
    import open_clip

    d = tmp_path_factory.mktemp("tinyclip")
    cfg = d / f"{TINY}.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    ckpt = d / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return {"model": TINY, "model_config": str(cfg), "pretrained": str(ckpt)}


def _expert(tiny_clip, tmp_path, **extra):
    from experts.clip import ClipExpert

    return ClipExpert(**{**tiny_clip, "cache_dir": str(tmp_path / "cache"), **extra})


def test_real_path_styles_and_objects(tiny_clip, tmp_path):
    expert = _expert(tiny_clip, tmp_path, object_threshold=0.0, max_objects=3)
    t0 = time.perf_counter()
    expert.load()
    load_s = time.perf_counter() - t0
    img = decode_image(_png())
    t0 = time.perf_counter()
    res = expert.analyze(img)
    per_image_s = time.perf_counter() - t0
    print(f"tiny clip: load {load_s:.2f} s, per image {per_image_s * 1000:.1f} ms")
    assert res.expert == "clip" and res.image_id == img.image_id and not res.error
    assert len(res.styles) == 5
    assert all(s.name_zh for s in res.styles)
    scores = [s.score for s in res.styles]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert res.attributes["style"] == res.styles[0].name
    assert len(res.objects) == 3 and set(res.attributes["object_scores"]) == set(res.objects)
    assert expert.status()["loaded"] and expert.status()["device"] == "cpu"
    # Embeddings for image search share the space the styles are ranked in.
    img_vec, txt = expert.embed_image(img), expert.embed_texts(["a red square", "a dog"])
    assert img_vec.shape == (32,) and txt.shape == (2, 32)
    assert abs(float(np.linalg.norm(img_vec)) - 1) < 1e-4 and expert.embedding_id.startswith(f"clip:{TINY}:")

    res2 = expert.analyze(img, {"query": "monet, cyberpunk, a red square", "top_k": 2})
    assert [s.name for s in res2.styles] != [] and len(res2.styles) == 2
    assert {s.name for s in res2.styles} <= {"Impressionism (Monet)", "Cyberpunk", "a red square"}
    assert res2.args == {"query": "monet, cyberpunk, a red square", "top_k": 2}


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision(tiny_clip, tmp_path, precision):
    """The GPU default is fp16; half weights need half inputs (open_clip keeps some fp32 parameters)."""
    expert = _expert(tiny_clip, tmp_path, precision=precision)
    res = expert.analyze(decode_image(_png()), {"query": "monet, cyberpunk"})
    assert len(res.styles) == 2 and abs(sum(s.score for s in res.styles) - 1) < 1e-3


def test_text_embedding_cache(tiny_clip, tmp_path, monkeypatch):
    from experts.clip import ClipExpert

    first = _expert(tiny_clip, tmp_path)
    first.load()
    assert first.cache_hit is False
    files = list((tmp_path / "cache").glob("*.npz"))
    assert len(files) == 1 and "builtin-v1" in files[0].name and TINY in files[0].name

    def no_encoding(self, texts):
        raise AssertionError("library embeddings should come from the cache")

    monkeypatch.setattr(ClipExpert, "_encode_texts", no_encoding)
    second = _expert(tiny_clip, tmp_path)
    second.load()
    assert second.cache_hit is True
    np.testing.assert_array_equal(first._styles.emb, second._styles.emb)
    np.testing.assert_array_equal(first._objects.emb, second._objects.emb)
    monkeypatch.undo()

    # A user library changes the key: a second file, computed afresh.
    user = tmp_path / "mine.toml"
    user.write_text('name = "mine"\n[[style]]\nid = "b"\nen = "B"\nzh = "乙"\nprompts = ["b"]\n')
    third = _expert(tiny_clip, tmp_path, style_library=str(user))
    third.load()
    assert third.cache_hit is False and len(third._styles.ids) == len(first._styles.ids) + 1
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2

    # Random weights are never cached (they differ per process).
    rnd = _expert(tiny_clip, tmp_path / "rnd", pretrained="none")
    rnd.load()
    assert not (tmp_path / "rnd" / "cache").exists()


# --- deterministic ranking with injected embeddings -----------------------------------------------
DIM = 8
_AXES = {"cyberpunk": 0, "neon": 0, "monet": 1, "impressionis": 1, "cat": 2, "red square": 3}


def _vec(text: str) -> np.ndarray:
    """A known embedding: texts naming a concept point along its axis, anything else along the
    last axes (seeded by the text, so repeatable)."""
    v = np.zeros(DIM, np.float32)
    low = text.lower()
    hits = [axis for word, axis in _AXES.items() if word in low]
    if hits:
        v[hits[0]] = 1.0
    else:
        rng = np.random.default_rng(sum(map(ord, text)))
        v[5:] = rng.random(3) + 0.1
    return v / np.linalg.norm(v)


@pytest.fixture
def injected(tiny_clip, tmp_path, monkeypatch):
    from experts.clip import ClipExpert

    seen: list[str] = []
    image_vec = {"v": _vec("cyberpunk")}

    def encode_texts(self, texts):
        seen.extend(texts)
        return np.stack([_vec(t) for t in texts])

    monkeypatch.setattr(ClipExpert, "_encode_texts", encode_texts)
    monkeypatch.setattr(ClipExpert, "_encode_image", lambda self, image: image_vec["v"])
    expert = _expert(tiny_clip, tmp_path, pretrained="none", logit_scale=100)
    expert.load()
    return expert, seen, image_vec


def test_ranking_known_embeddings(injected):
    expert, _, image_vec = injected
    img = decode_image(_png())
    res = expert.analyze(img, {"query": "monet, cyberpunk"})
    assert [s.name for s in res.styles] == ["Cyberpunk", "Impressionism (Monet)"]
    assert [s.name_zh for s in res.styles] == ["赛博朋克", "印象派（莫奈）"]
    assert res.styles[0].score > 0.99 and res.attributes["best_match"] == "Cyberpunk"

    image_vec["v"] = _vec("monet")
    res_zh = expert.analyze(img, {"query": "赛博朋克、莫奈"})
    assert [s.name for s in res_zh.styles] == ["Impressionism (Monet)", "Cyberpunk"]

    # No query: the whole library, best first, with Chinese names.
    res_lib = expert.analyze(img, {"top_k": 3})
    assert res_lib.styles[0].name == "Impressionism (Monet)" and res_lib.styles[0].name_zh == "印象派（莫奈）"
    assert len(res_lib.styles) == 3

    # Objects: an image along the "cat" axis finds the cat above the threshold.
    image_vec["v"] = _vec("cat")
    res_obj = expert.analyze(img, {"query": "猫, red square"})
    assert res_obj.objects == ["cat"]
    assert [s.name for s in res_obj.styles] == ["cat", "red square"]
    assert res_obj.styles[0].name_zh == "猫"


def test_single_candidate_is_ranked_among_library(injected):
    expert, _, image_vec = injected
    image_vec["v"] = _vec("monet")
    res = expert.analyze(decode_image(_png()), {"query": "cyberpunk", "top_k": 3})
    assert res.styles[0].name == "Impressionism (Monet)"
    assert "Cyberpunk" in [s.name for s in res.styles] and len(res.styles) == 3
    assert res.attributes["candidate_rank"].startswith("Cyberpunk: ")


def test_prompt_ensembles(injected):
    from experts.clip import CANDIDATE_TEMPLATES

    expert, seen, _ = injected
    lib = load_style_library()
    # Every prompt of every style was encoded once at load.
    for s in lib.styles:
        for p in s.prompts:
            assert p in seen
    # A style's row is the normalised mean of its prompts' normalised embeddings.
    style = lib.match("watercolor")
    expected = np.mean([_vec(p) for p in style.prompts], axis=0)
    expected /= np.linalg.norm(expected)
    row = expert._styles.emb[expert._styles.ids.index("watercolor")]
    np.testing.assert_allclose(row, expected, rtol=1e-6)
    # A free-text candidate is encoded with the candidate templates, once (then from memory).
    seen.clear()
    img = decode_image(_png())
    expert.analyze(img, {"query": "a red square, a blue circle"})
    assert seen == [t.format(c) for c in ("a red square", "a blue circle") for t in CANDIDATE_TEMPLATES]
    seen.clear()
    expert.analyze(img, {"query": "a red square, a blue circle"})
    assert seen == []


def test_bad_args(injected):
    expert, _, _ = injected
    with pytest.raises(ExpertError, match="top_k"):
        expert.analyze(decode_image(_png()), {"top_k": 0})
    with pytest.raises(ExpertError, match="bad argument 'colour'"):
        expert.analyze(decode_image(_png()), {"colour": "red"})


def test_missing_weights_offline(tiny_clip, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from experts.clip import ClipExpert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    expert = ClipExpert(weights_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(EngineMissing) as info:
        expert.load()
    msg = str(info.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "laion2b_s34b_b79k" in msg
    assert "create_model_and_transforms" in msg

    with pytest.raises(EngineMissing, match="no such file"):
        ClipExpert(pretrained="/nonexistent/ckpt.pt").load()
