# ruff: noqa: F811  (pytest fixtures imported from tests.test_proxy_support)
"""The proxy on real sockets: capability rewrite, pass-through, interception of images on the native
routes, the `ollama run` call sequence, routing lists, auth, health and metrics."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from router.commands.serve import serve_command
from router.serve.proxy import ProxyConfig
from tests.fake_ollama import Reply
from tests.test_proxy_support import (
    IMAGE,
    IMAGE_B64,
    MODEL,
    OCR_TEXT,
    TextExpert,
    b64,
    capture_serve,
    free_port,
    fresh,  # noqa: F401  (fixture)
    ndjson,
    no_image_bytes,
    png,
    settings,
    stack,  # noqa: F401  (fixture)
    start_stack,
    stop_stack,
)


def post(url: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30, **kw)


# --- capabilities ---------------------------------------------------------------------------------
def test_show_adds_vision_only_for_routed_models(fresh):
    shown = post(fresh.url, "/api/show", {"model": MODEL}).json()
    assert shown["capabilities"] == ["completion", "tools", "vision"]
    assert "thinking" not in shown["capabilities"]
    assert shown["modelfile"].startswith("FROM")  # the rest of the answer is Ollama's own
    native = post(fresh.url, "/api/show", {"model": "llava:7b"}).json()
    assert native["capabilities"] == ["completion", "vision"]
    embed = post(fresh.url, "/api/show", {"name": "nomic-embed-text"}).json()  # deprecated `name` field
    assert embed["capabilities"] == ["embedding"]


def test_show_unknown_model_keeps_ollamas_404(fresh):
    r = post(fresh.url, "/api/show", {"model": "nope:1b"})
    assert r.status_code == 404
    assert r.json() == {"error": "model 'nope:1b' not found"}


def test_tags_consistent_with_show(fresh):
    models = {m["name"]: m for m in httpx.get(fresh.url + "/api/tags").json()["models"]}
    assert models[f"{MODEL}:latest"]["capabilities"] == ["completion", "tools", "vision"]
    assert models["llava:7b"]["capabilities"] == ["completion", "vision"]
    assert models["nomic-embed-text:latest"]["capabilities"] == ["embedding"]
    assert models[f"{MODEL}:latest"]["size"] == 2_497_293_931


def test_routed_models_are_listed_under_their_own_digest(fresh):
    """llm-ollama caches capabilities by digest: after using the model directly it would keep saying the
    model takes no attachments. Routed models get a stable digest of their own; others keep Ollama's."""
    direct = {m["name"]: m["digest"] for m in httpx.get(fresh.fake.url + "/api/tags").json()["models"]}
    listed = {m["name"]: m["digest"] for m in httpx.get(fresh.url + "/api/tags").json()["models"]}
    again = {m["name"]: m["digest"] for m in httpx.get(fresh.url + "/api/tags").json()["models"]}
    routed = f"{MODEL}:latest"
    assert listed[routed] != direct[routed] and listed[routed] == again[routed]
    assert len(listed[routed]) == len(direct[routed]) and int(listed[routed], 16) >= 0
    assert listed["llava:7b"] == direct["llava:7b"]  # sees on its own: untouched
    assert listed["nomic-embed-text:latest"] == direct["nomic-embed-text:latest"]


def test_route_and_skip_lists():
    s = start_stack(config=ProxyConfig(route=["qwen3*"], skip=["qwen3:4b-*"]))
    try:
        caps = {m["name"]: m["capabilities"] for m in httpx.get(s.url + "/api/tags").json()["models"]}
        assert "vision" in caps[f"{MODEL}:latest"]
        assert "vision" not in caps["qwen3:4b-instruct-2507-q4_K_M"]
        # A skipped model's images go to Ollama untouched, as without the proxy.
        s.fake.script("I see [img-0]")
        body = {
            "model": "qwen3:4b-instruct-2507-q4_K_M",
            "stream": False,
            "messages": [{"role": "user", "content": "hi", "images": [IMAGE_B64]}],
        }
        assert post(s.url, "/api/chat", body).json()["message"]["content"] == "I see [img-0]"
        assert s.fake.calls("/api/chat")[-1]["messages"][0]["images"] == [IMAGE_B64]
    finally:
        stop_stack(s)


# --- pass-through ------------------------------------------------------------------------------------
def test_heartbeat_version_ps_pass_through(fresh):
    head = httpx.head(fresh.url + "/")
    assert head.status_code == 200
    assert httpx.get(fresh.url + "/").text == "Ollama is running"
    assert httpx.get(fresh.url + "/api/version").json() == {"version": "0.13.5"}
    assert httpx.get(fresh.url + "/api/ps").json() == {"models": []}
    assert httpx.get(fresh.url + "/v1/models").json()["data"][0]["owned_by"] == "library"


def test_pull_streams_statuses_through(fresh):
    with httpx.stream("POST", fresh.url + "/api/pull", json={"model": "tinyllama"}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert [x["status"] for x in lines] == ["pulling manifest", "verifying sha256 digest", "success"]
    assert post(fresh.url, "/api/pull", {"model": "tinyllama", "stream": False}).json() == {"status": "success"}


def test_management_routes_pass_through(fresh):
    assert post(fresh.url, "/api/create", {"model": "mine", "from": MODEL, "system": "hi"}).json() == {
        "status": "success"
    }
    assert post(fresh.url, "/api/copy", {"source": "mine", "destination": "mine2"}).status_code == 200
    assert post(fresh.url, "/api/copy", {"source": "ghost", "destination": "x"}).status_code == 404
    r = httpx.request("DELETE", fresh.url + "/api/delete", json={"model": "mine2"})
    assert r.status_code == 200
    r = httpx.request("DELETE", fresh.url + "/api/delete", json={"model": "mine2"})
    assert r.status_code == 404 and r.json() == {"error": "model 'mine2' not found"}
    emb = post(fresh.url, "/api/embed", {"model": "nomic-embed-text", "input": ["a b", "c"]}).json()
    assert len(emb["embeddings"]) == 2
    data = b"blob bytes"
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.head(fresh.url + f"/api/blobs/{digest}").status_code == 404
    assert httpx.post(fresh.url + f"/api/blobs/{digest}", content=data).status_code == 201
    assert httpx.head(fresh.url + f"/api/blobs/{digest}").status_code == 200
    bad = httpx.post(fresh.url + "/api/blobs/sha256:00", content=data)
    assert bad.status_code == 400 and "digest mismatch" in bad.json()["error"]


def test_chat_without_images_is_forwarded_byte_for_byte(fresh):
    fresh.fake.script(Reply("Paris.", chunk_size=2))
    raw = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Capital of France?"}],
            "options": {"temperature": 0},
            "keep_alive": "10m",
            "format": "json",
            "think": False,
        }
    )
    with httpx.stream("POST", fresh.url + "/api/chat", content=raw) as r:
        chunks = ndjson(r.read())
    assert "".join(c["message"]["content"] for c in chunks) == "Paris."
    assert [c["done"] for c in chunks].count(True) == 1
    seen = fresh.fake.calls("/api/chat")[-1]
    assert seen == json.loads(raw)  # nothing added, nothing taken away


def test_unknown_model_chat_passes_404_through(fresh):
    body = {"model": "ghost", "messages": [{"role": "user", "content": "x", "images": [IMAGE_B64]}]}
    r = post(fresh.url, "/api/chat", body)
    assert r.status_code == 404
    assert r.json() == {"error": "model 'ghost' not found"}


def test_vision_model_passes_through_untouched(fresh):
    fresh.fake.script("a red rectangle")
    body = {
        "model": "llava:7b",
        "stream": False,
        "messages": [{"role": "user", "content": "what is this?", "images": [IMAGE_B64]}],
    }
    assert post(fresh.url, "/api/chat", body).json()["message"]["content"] == "a red rectangle"
    assert fresh.fake.calls("/api/chat")[-1] == body


def test_load_and_unload_requests_pass_through(fresh):
    r = post(fresh.url, "/api/generate", {"model": MODEL}).json()
    assert r["done_reason"] == "load"
    r = post(fresh.url, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0}).json()
    assert r["done_reason"] == "unload"
    # A load request carrying an image still never hands the bytes on.
    r = post(fresh.url, "/api/generate", {"model": MODEL, "images": [IMAGE_B64]}).json()
    assert r["done_reason"] == "load"
    no_image_bytes(fresh.fake)


# --- interception ----------------------------------------------------------------------------------
def test_chat_with_image_streams_one_terminal_chunk(fresh):
    fresh.fake.script(Reply(f"It says {OCR_TEXT}.", chunk_size=3))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is written here?", "images": [IMAGE_B64]}],
    }  # no "stream": streaming
    with httpx.stream("POST", fresh.url + "/api/chat", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        chunks = ndjson(r.read())
    assert len(chunks) > 3
    assert [c["done"] for c in chunks].count(True) == 1 and chunks[-1]["done"] is True
    final = chunks[-1]
    assert final["done_reason"] == "stop"
    for f in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert isinstance(final[f], int) and final[f] > 0
    assert "".join(c["message"]["content"] for c in chunks) == f"It says {OCR_TEXT}."
    assert all(c["message"]["role"] == "assistant" for c in chunks)
    # The model read the expert's result; it never saw the image.
    sent = fresh.fake.calls("/api/chat")
    assert len(sent) == 1 and OCR_TEXT in json.dumps(sent[0])
    assert "[IMAGE CONTEXT]" in sent[0]["messages"][-1]["content"]
    no_image_bytes(fresh.fake)


def test_two_turns_sum_stats_and_hide_tags():
    fresh = start_stack(settings(semantic=False, fallback=[]))  # the model decides: a tag turn, then the answer
    try:
        fresh.fake.script(Reply("Let me look. [VISION: ocr]", chunk_size=4), Reply("The text is SALE.", chunk_size=4))
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about it", "images": [IMAGE_B64]}]}
        chunks = ndjson(post(fresh.url, "/api/chat", body).content)
        text = "".join(c["message"]["content"] for c in chunks)
        assert "VISION" not in text and "The text is SALE." in text
        assert [c["done"] for c in chunks].count(True) == 1
        assert len(fresh.fake.calls("/api/chat")) == 2
        assert chunks[-1]["load_duration"] == 2 * 1_000_000  # summed over the hidden turn
        no_image_bytes(fresh.fake)
    finally:
        stop_stack(fresh)


def test_stream_false_returns_one_object_and_options_pass(fresh):
    fresh.fake.script("The sign reads SALE 50% OFF.")
    body = {
        "model": MODEL,
        "stream": False,
        "options": {"temperature": 0, "num_ctx": 4096},
        "keep_alive": "5m",
        "format": {"type": "object", "properties": {"text": {"type": "string"}}},
        "messages": [{"role": "user", "content": "what does the sign say?", "images": [IMAGE_B64]}],
    }
    r = post(fresh.url, "/api/chat", body)
    assert r.headers["content-type"].startswith("application/json")
    obj = r.json()
    assert obj["done"] is True and obj["message"]["content"] == "The sign reads SALE 50% OFF."
    sent = fresh.fake.calls("/api/chat")[-1]
    assert sent["options"] == {"temperature": 0, "num_ctx": 4096}
    assert sent["keep_alive"] == "5m" and sent["format"] == body["format"]
    no_image_bytes(fresh.fake)


def test_think_is_passed_through(fresh):
    # Qwen3-4B-Instruct has no thinking: Ollama's 400 reaches the client with its status.
    body = {"model": MODEL, "think": True, "messages": [{"role": "user", "content": "read it", "images": [IMAGE_B64]}]}
    r = post(fresh.url, "/api/chat", body)
    assert r.status_code == 400
    assert "does not support thinking" in r.json()["error"]


def test_history_with_earlier_image_uses_the_cache(fresh):
    img1, img2 = b64(png((1, 2, 3))), b64(png((10, 200, 10)))
    fresh.fake.script("First answer.", "Second answer.", "Third answer.")
    turn1 = [{"role": "user", "content": "What is written here?", "images": [img1]}]
    first = post(fresh.url, "/api/chat", {"model": MODEL, "stream": False, "messages": turn1}).json()
    assert TextExpert.runs == 1
    history = turn1 + [
        {"role": "assistant", "content": first["message"]["content"]},
        {"role": "user", "content": "And the text on this one?", "images": [img2]},
    ]
    second = post(fresh.url, "/api/chat", {"model": MODEL, "stream": False, "messages": history}).json()
    assert second["message"]["content"] == "Second answer."
    sent = fresh.fake.calls("/api/chat")[-1]["messages"]
    notes = [m["content"] for m in sent if m["role"] == "user"]
    assert "[image 1 attached" in notes[0] and "[image 2 attached" in notes[1]
    assert TextExpert.runs == 2  # only the new image was read
    # The client sends the first turn again (a regenerate): served from the cache.
    post(fresh.url, "/api/chat", {"model": MODEL, "stream": False, "messages": turn1})
    assert TextExpert.runs == 2
    m = httpx.get(fresh.url + "/_vision/metrics").json()
    assert m["cache"]["hits"] >= 1
    for img in (img1, img2):
        no_image_bytes(fresh.fake, image_b64=img)


def test_generate_with_image_answers_in_generate_shape(fresh):
    fresh.fake.script(Reply(f"It reads {OCR_TEXT}", chunk_size=5))
    body = {
        "model": MODEL,
        "prompt": "what is written here?",
        "system": "Be brief.",
        "images": [IMAGE_B64],
        "context": [],
        "options": {"seed": 1},
    }
    chunks = ndjson(post(fresh.url, "/api/generate", body).content)
    assert "".join(c["response"] for c in chunks) == f"It reads {OCR_TEXT}"
    assert [c["done"] for c in chunks].count(True) == 1 and chunks[-1]["eval_count"] > 0
    sent = fresh.fake.calls("/api/chat")[-1]  # answered through the chat loop
    assert sent["messages"][0]["role"] == "system" and "Be brief." in sent["messages"][0]["content"]
    assert sent["options"] == {"seed": 1}
    obj = post(fresh.url, "/api/generate", dict(body, stream=False)).json()
    assert obj["done"] is True and "response" in obj
    no_image_bytes(fresh.fake)


def test_ollama_run_replay(fresh):
    """What `ollama run qwen3-vision` sends (contract B), then `./photo.png what is written here?`."""
    c = httpx.Client(base_url=fresh.url, headers={"User-Agent": "ollama/0.13.5 (amd64 linux) Go/go1.24"})
    assert c.head("/").status_code == 200
    shown = c.post("/api/show", json={"model": MODEL}).json()
    multimodal = "vision" in shown["capabilities"] or "audio" in shown["capabilities"]
    assert multimodal  # so the CLI treats ./photo.png as an image
    assert "thinking" not in shown["capabilities"]  # so it sends no think:true
    c.post("/api/show", json={"model": MODEL})
    load = c.post("/api/generate", json={"model": MODEL}).json()
    assert load["done_reason"] == "load"
    fresh.fake.script(Reply(f"It says {OCR_TEXT}.", chunk_size=4))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": " what is written here?", "images": [IMAGE_B64]}],
        "options": {},
    }
    with c.stream("POST", "/api/chat", json=body, headers={"Accept": "application/x-ndjson"}) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    for line in lines:  # the Go client checks every line for an error key
        assert "error" not in line
    assert "".join(x["message"]["content"] for x in lines) == f"It says {OCR_TEXT}."
    assert lines[-1]["done"] is True
    no_image_bytes(fresh.fake)
    # Non-interactive: one /api/generate with the image.
    fresh.fake.script("SALE.")
    one = c.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "what is written here?", "context": [], "images": [IMAGE_B64], "options": {}},
    )
    assert ndjson(one.content)[-1]["done"] is True
    no_image_bytes(fresh.fake)


def test_bad_images_are_400(fresh):
    cases = [
        ("not base64 at all!!", "illegal base64"),
        (b64(b"hello, not an image"), "not a supported image"),
        ("data:image/png;base64," + IMAGE_B64[:20] + "@@", "illegal base64"),
    ]
    for bad, words in cases:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [bad]}]}
        r = post(fresh.url, "/api/chat", body)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]
    r = post(fresh.url, "/api/chat", {"model": MODEL, "messages": [{"role": "user", "images": [123]}]})
    assert r.status_code == 400 and "expected a base64 string" in r.json()["error"]
    assert fresh.fake.calls("/api/chat") == []


def test_data_url_on_native_route_is_accepted_and_stripped(fresh):
    fresh.fake.script("ok")
    body = {
        "model": MODEL,
        "stream": False,
        "messages": [
            {"role": "user", "content": "what is written here?", "images": ["data:image/png;base64," + IMAGE_B64]}
        ],
    }
    assert post(fresh.url, "/api/chat", body).json()["message"]["content"] == "ok"
    no_image_bytes(fresh.fake)


# --- health, metrics, auth ---------------------------------------------------------------------------
def test_health_and_metrics(fresh):
    fresh.fake.script("SALE")
    post(
        fresh.url,
        "/api/chat",
        {
            "model": MODEL,
            "stream": False,
            "messages": [{"role": "user", "content": "what is written here?", "images": [IMAGE_B64]}],
        },
    )
    health = httpx.get(fresh.url + "/_vision/health").json()
    assert health["status"] == "ok" and health["upstream"]["ok"] is True
    assert "ocr" in health["experts"]
    m = httpx.get(fresh.url + "/_vision/metrics").json()
    assert m["requests"]["chat_routed"] >= 1
    assert m["experts"]["ocr"]["runs"] >= 1 and m["experts"]["ocr"]["mean_ms"] >= 0
    assert {"hits", "misses", "hit_rate"} <= set(m["cache"])
    assert m["recent_traces"][-1]["trace"]["experts"][0]["expert"] == "ocr"
    assert m["inflight"] == 1  # this very request


def test_bearer_token():
    s = start_stack(config=ProxyConfig(token="s3cret"))
    try:
        r = httpx.get(s.url + "/api/tags")
        assert r.status_code == 401 and "error" in r.json()
        ok = httpx.get(s.url + "/api/tags", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(s.url + "/_vision/health").status_code == 200  # probes need no token
    finally:
        stop_stack(s)


def test_serve_refuses_remote_bind_without_flag():
    r = CliRunner().invoke(serve_command, ["--host", "0.0.0.0"], obj={"config": None})
    assert r.exit_code != 0 and "--allow-remote" in r.output


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_image_bytes_stay_out_for_both_native_routes(fresh, path):
    fresh.fake.script("fine")
    if path == "/api/chat":
        body = {
            "model": MODEL,
            "stream": False,
            "messages": [{"role": "user", "content": "read the text", "images": [IMAGE_B64]}],
        }
    else:
        body = {"model": MODEL, "stream": False, "prompt": "read the text", "images": [IMAGE_B64]}
    assert post(fresh.url, path, body).status_code == 200
    no_image_bytes(fresh.fake)
    assert IMAGE not in json.dumps(fresh.fake.calls("/api/chat")).encode()


def test_routed_answer_streams_token_by_token(fresh):
    """The first words reach the client while the model is still writing."""
    import time

    fresh.fake.script(Reply("a b c d e f", chunk_size=2, chunk_delay_s=0.25))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is written here?", "images": [IMAGE_B64]}]}
    t0 = time.monotonic()
    arrivals = []
    with httpx.stream("POST", fresh.url + "/api/chat", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line:
                arrivals.append(time.monotonic() - t0)
    # six pieces and the terminal chunk; a first word that may start an echoed prompt sentence ("a" of "Add
    # image=N ...") waits for the next piece
    assert len(arrivals) >= 6
    assert arrivals[-1] > 1.0 and arrivals[0] < arrivals[-1] - 0.9


def test_serve_reads_its_defaults_from_config_and_flags_win(tmp_path, monkeypatch):
    seen = capture_serve(monkeypatch)
    port, other = free_port(), free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[serve]\nport = {port}\nroute = ["qwen3*"]\nmax_body_mib = 2\nupstream_timeout = 30\n', "utf-8")
    r = CliRunner().invoke(serve_command, ["--upstream", "127.0.0.1:9"], obj={"config": str(cfg)})
    assert r.exit_code == 0, r.output
    proxy = seen["app"].state.proxy
    assert seen["port"] == port and seen["host"] == "127.0.0.1"
    assert proxy.cfg.route == ["qwen3*"] and proxy.cfg.max_body_bytes == 2 * 1024 * 1024
    assert proxy.cfg.upstream_timeout_s == 30
    r = CliRunner().invoke(
        serve_command, ["--port", str(other), "--route", "llama*", "--max-body-mib", "8"], obj={"config": str(cfg)}
    )
    assert r.exit_code == 0, r.output
    proxy = seen["app"].state.proxy
    assert seen["port"] == other and proxy.cfg.route == ["llama*"] and proxy.cfg.max_body_bytes == 8 * 1024 * 1024


def test_serve_limits_for_slow_clients_come_from_config_and_reach_uvicorn(tmp_path, monkeypatch):
    seen = capture_serve(monkeypatch)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        "[serve]\nmax_concurrent = 7\nmax_connections = 9\nheader_timeout = 2.5\nbody_timeout = 30\nport = 0\n",
        "utf-8",
    )
    r = CliRunner().invoke(serve_command, ["--upstream", "127.0.0.1:9"], obj={"config": str(cfg)})
    assert r.exit_code == 0, r.output
    pc = seen["app"].state.proxy.cfg
    assert (pc.max_concurrent, pc.max_connections, pc.header_timeout_s, pc.body_timeout_s) == (7, 9, 2.5, 30)
    r = CliRunner().invoke(
        serve_command, ["--upstream", "127.0.0.1:9", "--max-concurrent", "3"], obj={"config": str(cfg)}
    )
    assert r.exit_code == 0 and seen["app"].state.proxy.cfg.max_concurrent == 3  # the flag wins
    cfg.write_text("[serve]\nheader_timeout = 0\n", "utf-8")
    r = CliRunner().invoke(serve_command, ["--upstream", "127.0.0.1:9"], obj={"config": str(cfg)})
    assert r.exit_code == 1 and "serve.header_timeout: expected a number > 0" in str(r.exception)


# --- never an empty bubble ---------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_a_model_that_only_repeats_tags_still_gets_the_client_an_answer(fresh, stream):
    """Small models repeat tags: the client sees a clear no-answer message with what the experts found,
    never `content: ""` with done_reason stop (an empty bubble in Open WebUI)."""
    fresh.fake.responder = lambda path, body: Reply("[VISION: ocr]")
    body = {
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "Tell me about it", "images": [IMAGE_B64]}],
    }
    r = post(fresh.url, "/api/chat", body)
    chunks = ndjson(r.content) if stream else [r.json()]
    text = "".join(c["message"]["content"] for c in chunks)
    assert text.startswith("The model gave no answer") and OCR_TEXT in text and "[VISION" not in text
    assert [c["done"] for c in chunks].count(True) == 1


def test_decoded_images_are_freed_when_the_answer_is_complete(fresh):
    """The pixel budget bounds decoding; the proxy also lets go of the pixels once a request is answered
    instead of waiting for the garbage collector (memory stays bounded under big images)."""
    TextExpert.seen.clear()
    fresh.fake.script("The sign reads SALE.")
    unseen = b64(png(size=(97, 61)))  # new to this module's cache: the expert really runs
    body = {
        "model": MODEL,
        "stream": False,
        "messages": [{"role": "user", "content": "read it", "images": [unseen]}],
    }
    r = post(fresh.url, "/api/chat", body)
    assert r.json()["message"]["content"] == "The sign reads SALE.", r.text
    (image,) = TextExpert.seen
    with pytest.raises(Exception, match="closed|freed"):
        image.bgr()
