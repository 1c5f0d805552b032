"""The caption expert: a tiny random BLIP-2 saved with its processor to a directory and loaded
through the expert's own loading, processing and generation code."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from experts.errors import EngineMissing, ExpertError
from experts.images import decode_image

WORDS = [
    "<pad>",
    "</s>",
    "<unk>",
    "<s>",
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "red",
    "blue",
    "question",
    ":",
    "answer",
    "what",
    "is",
    "the",
    "colour",
    "car",
    "?",
    "person",
    "on",
    "sofa",
    "two",
    "dogs",
]
MAX_NEW = 6
# A random model happily emits BOS/pad forever (an empty caption): keep it to real words.
NO_SPECIALS = {"suppress_tokens": [0, 1, 2, 3, len(WORDS)]}


def _png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def build_tiny_blip2(directory, seed: int = 0) -> None:
    """Save a tiny random BLIP-2 (OPT text model) and the processor a real one uses, configured small:
    a WordLevel tokenizer built offline, a 32x32 image processor, 4 query tokens."""
    torch = pytest.importorskip("torch", reason="needs the [caption] extra")
    transformers = pytest.importorskip("transformers", reason="needs the [caption] extra")
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
    processor = transformers.Blip2Processor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        num_query_tokens=4,
    )
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = transformers.Blip2Config(
        vision_config={**small, "image_size": 32, "patch_size": 8},
        qformer_config={**small, "vocab_size": 50, "encoder_hidden_size": 32},
        text_config={
            "model_type": "opt",
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": len(processor.tokenizer),
            "max_position_embeddings": 64,
            "word_embed_proj_dim": 32,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 3,
        },
        num_query_tokens=4,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = transformers.Blip2ForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinyblip2")
    build_tiny_blip2(d)
    return str(d)


def test_args_schema():
    from experts.caption import CaptionExpert

    schema = CaptionExpert.args_schema()
    assert list(schema["properties"]) == ["query"] and schema["properties"]["query"]["type"] == "string"
    assert {"describe", "vqa", "blip"} <= set(CaptionExpert.aliases)


def test_caption_and_vqa_through_the_real_path(tiny_dir):
    from experts.caption import CaptionExpert

    expert = CaptionExpert(model=tiny_dir, max_new_tokens=MAX_NEW, local_files_only=True, generate_kwargs=NO_SPECIALS)
    t0 = time.perf_counter()
    expert.load()
    load_s = time.perf_counter() - t0
    assert expert.status()["device"] == "cpu" and expert.status()["dtype"] == "float32"
    img = decode_image(_png())
    t0 = time.perf_counter()
    res = expert.analyze(img)
    per_image_s = time.perf_counter() - t0
    print(f"tiny blip2: load {load_s:.2f} s, per image {per_image_s * 1000:.1f} ms")
    assert res.expert == "caption" and res.image_id == img.image_id and res.error is None
    assert res.caption and len(res.caption.split()) <= MAX_NEW
    assert "<image>" not in res.caption and "answer" not in res.attributes
    assert set(res.caption.split()) <= set(WORDS)

    q = "what is the colour of the car ?"
    vqa = expert.analyze(img, {"query": q})
    assert vqa.attributes["question"] == q
    answer = vqa.attributes["answer"]
    assert vqa.caption == (answer or None)
    # Only the new tokens: the prompt "Question: ... Answer:" is not echoed back.
    assert len(answer.split()) <= MAX_NEW and not answer.startswith(": what is the colour")
    assert vqa.args == {"query": q}


def test_generation_limits_are_configurable(tiny_dir):
    from experts.caption import CaptionExpert

    expert = CaptionExpert(model=tiny_dir, max_new_tokens=2, generate_kwargs={**NO_SPECIALS, "min_new_tokens": 2})
    res = expert.analyze(decode_image(_png((10, 10, 200))))
    assert res.caption and len(res.caption.split()) == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision(tiny_dir, dtype):
    """fp16 is the GPU default; the image must reach the model in its dtype."""
    from experts.caption import CaptionExpert

    expert = CaptionExpert(model=tiny_dir, dtype=dtype, max_new_tokens=3, generate_kwargs=NO_SPECIALS)
    res = expert.analyze(decode_image(_png()), {"query": "what ?"})
    assert expert.status()["dtype"] == dtype and res.caption


def test_objects_and_colours_from_the_text(tiny_dir, monkeypatch):
    from experts.caption import QUESTION_PROMPT, CaptionExpert

    prompts = []

    def fake_generate(self, image, prompt):
        prompts.append(prompt)
        return "a man and two dogs on a red sofa next to an orange cat" if prompt is None else "blue"

    monkeypatch.setattr(CaptionExpert, "generate", fake_generate)
    expert = CaptionExpert(model=tiny_dir)
    img = decode_image(_png())
    res = expert.analyze(img)
    assert res.objects == ["person", "dog", "couch", "cat"]
    assert res.attributes["colors"] == ["red", "orange"]
    vqa = expert.analyze(img, {"query": "what colour is the car?"})
    assert vqa.attributes["answer"] == "blue" and vqa.attributes["colors"] == ["blue"]
    assert prompts == [None, QUESTION_PROMPT.format("what colour is the car?")]
    assert QUESTION_PROMPT.format("x") == "Question: x Answer:"


def test_missing_weights_are_one_clear_line(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="needs the [caption] extra")
    from experts.caption import CaptionExpert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expert = CaptionExpert(cache_dir=str(tmp_path / "hf"))
    with pytest.raises(EngineMissing) as info:
        expert.load()
    msg = str(info.value)
    assert (
        "\n" not in msg and "Salesforce/blip2-opt-2.7b" in msg and "hf download" in msg and "huggingface-cli" not in msg
    )
    assert "offline" in msg

    with pytest.raises(EngineMissing, match="no such directory"):
        CaptionExpert(model=str(tmp_path / "nope")).load()
    with pytest.raises(ExpertError, match="unknown dtype"):
        CaptionExpert(model=str(tmp_path), dtype="int3").load()
