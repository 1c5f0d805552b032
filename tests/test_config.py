"""config.toml is validated as a whole at start: every mistake is one line naming the key and what
was expected, and the CLI exits 1 without a traceback. Unknown keys and sections are reported."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import router.commands.common as common
import router.core.config as config_mod
from experts.base import Expert
from experts.errors import VisionRouterError
from router.commands import cli
from router.core.config import Settings
from tests.conftest import png_bytes
from tests.router_experts import make_registry


class TunedExpert(Expert):
    """An expert that declares its own configuration keys."""

    name = "tuned"
    description = "declares config_keys"
    config_keys = ("model", "device")

    def _analyze(self, image, args):
        return self.new_result(image)


@pytest.fixture
def registry(monkeypatch):
    reg = make_registry(TunedExpert)
    monkeypatch.setattr(common, "default_registry", lambda: reg)
    return reg


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "poster.png"
    p.write_bytes(png_bytes(60, 40))
    return p


@pytest.fixture
def cfg(tmp_path):
    return tmp_path / "config.toml"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def load_error(path, *fragments: str) -> str:
    with pytest.raises(VisionRouterError) as info:
        Settings.load(path)
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


# --- per-expert tables ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "table,fragments",
    [
        ("url = 5", ("experts.detect.url: expected an http(s) URL string, got 5",)),
        ('url = "ftp://gpu-box:8601"', ("experts.detect.url: expected an http(s) URL string", '"ftp://gpu-box:8601"')),
        ('url = "gpu box"', ("experts.detect.url: expected an http(s) URL string",)),
        ('timeout = "abc"', ('experts.detect.timeout: expected a number, got "abc"',)),
        ("timeout = -1", ("experts.detect.timeout: expected a number > 0, got -1",)),
        ("timeout = true", ("experts.detect.timeout: expected a number, got true",)),
        ("engine = 3", ("experts.detect.engine: expected a string, got 3",)),
        ("[experts.detect.nested]\nx = 1", ()),  # a sub-table is an expert's own business: accepted
    ],
    ids=[
        "url-int",
        "url-ftp",
        "url-words",
        "timeout-str",
        "timeout-negative",
        "timeout-bool",
        "engine-int",
        "nested-ok",
    ],
)
def test_expert_table_types_are_checked_at_start(cfg, registry, image, table, fragments):
    cfg.write_text(f"[experts.detect]\n{table}\n", "utf-8")
    if not fragments:
        assert Settings.load(cfg).experts["detect"]["nested"] == {"x": 1}
        return
    line = one_line_error(run("--config", cfg, "ask", image, "-q", "hi"), str(cfg), *fragments)
    assert line.startswith(f"Error: {cfg}: ")


def test_unknown_expert_section_names_the_installed_experts(cfg, registry, image):
    cfg.write_text('[experts.ocrr]\nengine = "onnx"\n', "utf-8")
    one_line_error(
        run("--config", cfg, "ask", image, "-q", "hi"),
        "experts.ocrr: no expert named 'ocrr'",
        "installed: detect, ocr, tuned",
    )
    one_line_error(run("--config", cfg, "serve"), "experts.ocrr")  # before anything listens
    cfg.write_text('[experts.TEXT]\nengine = "onnx"\n', "utf-8")  # an alias, any case: fine
    assert common.configured_registry(Settings.load(cfg)).get("ocr").config == {"engine": "onnx"}


def test_unknown_keys_are_checked_against_the_experts_own_config_keys(cfg, registry):
    cfg.write_text('[experts.tuned]\nmodle = "big"\ntimeout = 5\n', "utf-8")
    with pytest.raises(VisionRouterError, match=re.escape("experts.tuned.modle: unknown key (did you mean model?")):
        common.configured_registry(Settings.load(cfg))
    cfg.write_text('[experts.tuned]\nmodel = "big"\ntimeout = 5\nurl = "http://127.0.0.1:8601"\n', "utf-8")
    common.configured_registry(Settings.load(cfg))  # its keys plus the router's own (timeout, url): fine
    cfg.write_text('[experts.ocr]\nanything = "goes"\n', "utf-8")  # ocr declares none: accepted
    assert common.configured_registry(Settings.load(cfg)).get("ocr").config == {"anything": "goes"}


# --- top-level keys and [serve] -------------------------------------------------------------------
def test_unknown_top_level_and_serve_keys_are_errors_with_a_suggestion(cfg, registry, image):
    cfg.write_text('modle = "qwen3-vision"\n', "utf-8")
    one_line_error(run("--config", cfg, "ask", image, "-q", "hi"), "modle: unknown key (did you mean model?")
    cfg.write_text("[serve]\nprot = 8080\n", "utf-8")
    load_error(cfg, "serve.prot: unknown key (did you mean port?", "known: ")


def test_several_mistakes_are_all_named_on_one_line(cfg):
    cfg.write_text('max_rounds = "many"\nexpert_timeout = 0\n[serve]\nport = 70000\n', "utf-8")
    msg = load_error(
        cfg,
        'max_rounds: expected an integer, got "many"',
        "expert_timeout: expected a number > 0",
        "serve.port: expected a number <= 65535, got 70000",
    )
    assert msg.count(";") == 2


def test_top_level_type_errors(cfg):
    cfg.write_text('fallback = "ocr"\n', "utf-8")
    load_error(cfg, 'fallback: expected a list, got "ocr"')
    cfg.write_text('inject_protocol = "sometimes"\n', "utf-8")
    load_error(cfg, "inject_protocol: expected one of 'auto', 'always', 'never'", '"sometimes"')
    cfg.write_text("serve = 3\n", "utf-8")
    load_error(cfg, "serve: expected a table, got 3")
    cfg.write_text("experts = 3\n", "utf-8")
    load_error(cfg, "experts: expected a table, got 3")


# --- files: the config itself, and the files it names ---------------------------------------------
def test_utf16_and_binary_config_files_are_one_line(cfg, registry, image):
    cfg.write_text('model = "qwen3-vision"\n', "utf-16")
    one_line_error(run("--config", cfg, "ask", image, "-q", "hi"), str(cfg), "UTF-16", "UTF-8")
    cfg.write_bytes(bytes(range(256)) * 4)
    load_error(cfg, str(cfg), "not UTF-8 text")
    cfg.write_bytes('\ufeffmodel = "m"\n'.encode())  # UTF-8 with a BOM (Notepad): fine
    assert Settings.load(cfg).model == "m"


def test_config_path_that_is_a_folder(tmp_path):
    load_error(tmp_path, str(tmp_path), "a folder")


def test_cache_dir_that_is_a_file(cfg, tmp_path, registry, image):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    cfg.write_text(f'cache_dir = "{blocker}"\n', "utf-8")
    one_line_error(run("--config", cfg, "ask", image, "-q", "hi"), "cache_dir: expected a folder, got a file")
    cfg.write_text(f'cache_dir = "{blocker}/sub"\n', "utf-8")
    load_error(cfg, "cache_dir: expected a folder", str(blocker))
    cfg.write_text(f'cache_dir = "{tmp_path}/not-yet"\n', "utf-8")  # created on first use: fine
    assert Settings.load(cfg).cache_dir == f"{tmp_path}/not-yet"


def test_binary_or_missing_keywords_file(cfg, tmp_path, registry, image):
    table = tmp_path / "kw.toml"
    table.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    cfg.write_text(f'keywords_file = "{table}"\n', "utf-8")
    one_line_error(run("--config", cfg, "ask", image, "-q", "hi"), "keywords_file", str(table), "not UTF-8 text")
    cfg.write_text(f'keywords_file = "{tmp_path / "nope.toml"}"\n', "utf-8")
    load_error(cfg, "keywords_file", "not found")
    cfg.write_text(f'keywords_file = "{tmp_path}"\n', "utf-8")
    load_error(cfg, "keywords_file", "a folder")


# --- what keeps working ---------------------------------------------------------------------------
def test_the_documented_example_loads_and_applies(cfg, tmp_path, monkeypatch):
    example = config_mod.__doc__.split("Example ``config.toml``::", 1)[1]
    text = "\n".join(line[4:] for line in example.splitlines() if line.startswith("    "))
    (tmp_path / "my-keywords.toml").write_text('[[rule]]\nexpert = "ocr"\nkeywords = ["read"]\n', "utf-8")
    (tmp_path / "my-exemplars.toml").write_text(
        '[[route]]\nname = "read"\ncalls = [{ expert = "ocr" }]\nexamples = ["read it", "what does it say"]\n', "utf-8"
    )
    monkeypatch.chdir(tmp_path)
    cfg.write_text(text, "utf-8")
    s = Settings.load(cfg)
    assert s.experts["ocr"] == {"engine": "onnx", "timeout": 30}
    assert s.expert_timeouts() == {"ocr": 30.0}
    assert s.expert_configs() == {"ocr": {"engine": "onnx"}, "caption": {"url": "http://127.0.0.1:8601"}}
    assert s.serve.route == ["qwen3*"] and s.max_rounds == 2


def test_settings_in_code_keep_their_shape():
    s = Settings(experts={"hang": {"timeout": 0.3, "model": "x"}})
    assert s.expert_timeouts() == {"hang": 0.3}
    assert s.expert_configs() == {"hang": {"model": "x"}}
    assert isinstance(s.experts["hang"], dict)
    assert Settings.load(None).model == "qwen3-vision"  # no file at the default path: defaults


def test_ray_placement_keys_are_checked_and_never_reach_the_expert(cfg):
    cfg.write_text('[experts.ocr]\nnum_cpus = 1.5\nnum_gpus = 0\nreplicas = 3\nengine = "onnx"\ntoken = "s"\n')
    s = Settings.load(cfg)
    assert s.experts["ocr"]["replicas"] == 3
    assert s.expert_configs()["ocr"] == {"engine": "onnx", "token": "s"}
    cfg.write_text("[experts.ocr]\nnum_cpus = -1\n")
    load_error(cfg, "experts.ocr.num_cpus")
    cfg.write_text("[experts.ocr]\nreplicas = 0\n")
    load_error(cfg, "experts.ocr.replicas")


# --- endless and hostile config files (issue 19) ------------------------------------------------------
def _in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` in a daemon thread; a hang fails the test instead of freezing it."""
    import threading

    out: dict = {}

    def work():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} hung"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _release(fifo) -> None:
    """Unblock a reader stuck opening ``fifo`` (the code before the fix), so no thread stays behind."""
    import os

    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs POSIX FIFOs")
@pytest.mark.parametrize("where", ["config", "keywords_file"])
def test_fifo_config_or_keyword_table_is_one_line_not_a_hang(cfg, tmp_path, where):
    import os

    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    path = fifo
    if where == "keywords_file":
        cfg.write_text(f'keywords_file = "{fifo}"\n', "utf-8")
        path = cfg
    try:
        with pytest.raises(VisionRouterError) as err:
            _in_thread(lambda: Settings.load(path))
    finally:
        _release(fifo)
    assert "FIFO" in str(err.value) and str(fifo) in str(err.value) and "\n" not in str(err.value)
    if where == "keywords_file":
        assert "keywords_file" in str(err.value)


def test_oversized_config_is_refused_from_its_size(cfg):
    with open(cfg, "wb") as fh:  # sparse: 256 MiB on paper, nothing on disk
        fh.truncate(256 * 1024 * 1024)
    load_error(cfg, str(cfg), "over the", "limit")


@pytest.mark.skipif(not __import__("os").path.exists("/dev/zero"), reason="needs /dev/zero")
def test_config_on_dev_zero_is_refused_without_reading():
    """Run where memory is capped: the code before the fix read /dev/zero until the cap stopped it."""
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from router.core.config import Settings, ConfigError\n"
        "try:\n    Settings.load('/dev/zero')\nexcept ConfigError as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert "/dev/zero" in r.stdout and "character device" in r.stdout


@pytest.mark.parametrize("nest", ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 5000 + "1" + "}" * 5000])
def test_deeply_nested_toml_is_one_line(cfg, registry, image, nest):
    cfg.write_text(nest + "\n", "utf-8")
    line = one_line_error(run("--config", cfg, "expert", "list"), str(cfg), "nested too deeply")
    assert len(line) < 300


# --- presets, eval suites and style libraries get the same checks ------------------------------------------
def _read_user_file(kind: str, path, image) -> tuple[int, str]:
    """Hand ``path`` to the reader of ``kind`` as a user does; (exit status, its error line)."""
    if kind == "style library":  # read when clip loads, from its `style_library` setting
        from experts.styles import load_style_library

        try:
            load_style_library(path)
        except VisionRouterError as exc:
            return 1, f"Error: {exc}"
        return 0, ""
    args = {
        "preset": ["ask", image, "--preset", path, "-q", "x", "--ollama-host", "127.0.0.1:9"],
        "eval suite": ["eval", "--suite", path, "--keywords-only"],
    }[kind]
    r = run(*args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.output and len(lines) == 1, r.output
    return r.exit_code, lines[0]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs POSIX FIFOs")
@pytest.mark.parametrize("kind", ["preset", "eval suite", "style library"])
def test_a_fifo_as_preset_suite_or_style_library_is_one_line_not_a_hang(registry, image, tmp_path, kind):
    import os

    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    try:
        status, line = _in_thread(lambda: _read_user_file(kind, fifo, image))
    finally:
        _release(fifo)
    assert status == 1 and line.startswith("Error: ") and "FIFO" in line and str(fifo) in line, line


@pytest.mark.parametrize("kind", ["preset", "eval suite", "style library"])
def test_an_oversized_or_utf16_preset_suite_or_style_library_is_refused_in_one_line(registry, image, tmp_path, kind):
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as fh:  # sparse: 256 MiB on paper, nothing on disk; refused from its size
        fh.truncate(256 * 1024 * 1024)
    status, line = _in_thread(lambda: _read_user_file(kind, huge, image))
    assert status == 1 and "over the" in line and "limit" in line and str(huge) in line, line
    utf16 = tmp_path / "utf16.toml"
    utf16.write_text('name = "x"\n', "utf-16")
    status, line = _read_user_file(kind, utf16, image)
    assert status == 1 and "UTF-16" in line and "UTF-8" in line, line


@pytest.mark.skipif(not __import__("os").path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_preset_suite_or_style_library_is_refused_without_reading():
    """Run where memory is capped: the code before the fix read /dev/zero until the cap stopped it."""
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from experts.errors import VisionRouterError\n"
        "from router.apps.presets import read_preset\n"
        "from router.apps.evaluate import load_suite\n"
        "from experts.styles import load_style_library\n"
        "for read in (read_preset, load_suite, load_style_library):\n"
        "    try:\n        read('/dev/zero')\n    except VisionRouterError as e:\n        print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all("/dev/zero" in x and "character device" in x for x in lines), r.stdout
