"""The OCR engines behind the ``ocr`` expert, each turning a BGR image into text boxes.

- ``onnx``: rapidocr 3.x with the PP-OCRv6 small det/rec/cls ONNX models inside its wheel (extra
  ``[onnx]``); works offline out of the box.
- ``paddle``: PaddleOCR 3.x on PaddlePaddle (extra ``[ocr]``); PP-OCRv5 by default (PaddleOCR fetches
  the models itself on first use), or any PP-OCR model dirs given in the configuration, for offline
  installs.

:func:`choose_engine` implements ``auto``: paddle when it is installed and its models are present,
else onnx. Engines are built once per process by the expert and are safe to call from many threads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from experts.cancel import check_cancelled
from experts.errors import EngineMissing, ExpertError
from experts.install import install_hint
from experts.text_layout import Segment, order_quad

log = logging.getLogger(__name__)

ENGINES = ("onnx", "paddle")
ONNX_HINT = install_hint("onnx")
PADDLE_HINT = install_hint("ocr")

# Languages the onnx engine's bundled model reads (PP-OCRv6 "ch" reads Chinese and English).
ONNX_LANGS = {"ch", "zh", "chinese", "en", "english", "ch_en"}


def onnx_installed() -> bool:
    """rapidocr and a runtime for its ONNX models (OpenVINO or ONNX Runtime) are importable."""
    return _has("rapidocr") and (_has("openvino") or _has("onnxruntime"))


# The runtimes that run rapidocr's ONNX models, fastest first. OpenVINO runs the same models in 0.5x ONNX Runtime's
# time on these CPUs, mostly in the recogniser (benchmarks/real_images.py, issue 25); ONNX Runtime is the fallback.
ONNX_RUNTIMES = ("openvino", "onnxruntime")


# Longest side the onnx engine works at on OpenVINO (rapidocr's own is 2000): OpenVINO's buffers for a 2000 px
# detector input took a 49 MP photo's peak to 1.08 GB, at 1800 px 0.95 GB (benchmarks/big_image_memory.py). No
# page of the real set is that big (the largest side is 1366 px).
OPENVINO_MAX_SIDE = 1800


def onnx_runtime(requested: str | None = None) -> str:
    """The runtime the onnx engine uses: ``requested`` (openvino, onnxruntime) or, for None/auto, the fastest one
    installed."""
    if requested and requested != "auto":
        if requested not in ONNX_RUNTIMES:
            raise ExpertError(f"ocr: unknown runtime {requested!r} (runtimes: auto, {', '.join(ONNX_RUNTIMES)})")
        if not _has(requested):
            raise EngineMissing(f"ocr: runtime {requested} is not installed; run {ONNX_HINT}")
        return requested
    return next((r for r in ONNX_RUNTIMES if _has(r)), "onnxruntime")


def paddle_installed() -> bool:
    """paddleocr and paddlepaddle are importable."""
    return _has("paddleocr") and _has("paddle")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def paddle_model_cache() -> Path:
    """Where PaddleOCR keeps the models it fetched (PaddleX's cache)."""
    home = os.environ.get("PADDLE_PDX_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".paddlex")
    return Path(home) / "official_models"


PADDLE_DEFAULT_DET = "PP-OCRv5_mobile_det"
# Longest side the paddle engine works at: the onnx engine's (rapidocr's 2000 px). PaddleX's detector would go up
# to its max_side_limit (4000 px): a 49 MP photo peaked at 5.9 GB handed whole, 5.9 GB at 4000 px, 2.4 GB at
# 2000 px (1.1 GB of it the loaded engine). No page of the real set is that big.
PADDLE_MAX_SIDE = 2000
PADDLE_DEFAULT_REC = "PP-OCRv5_mobile_rec"


def paddle_models_present(config: dict[str, Any]) -> tuple[bool, str]:
    """Whether the paddle engine has its models without a download, and where they are."""
    det, rec = config.get("text_detection_model_dir"), config.get("text_recognition_model_dir")
    if det or rec:
        missing = [d for d in (det, rec) if not d or not (Path(d) / "inference.yml").is_file()]
        if missing:
            return False, f"configured model dir(s) without inference.yml: {', '.join(map(str, missing))}"
        return True, f"configured model dirs {det}, {rec}"
    cache = paddle_model_cache()
    det_name = config.get("text_detection_model_name") or PADDLE_DEFAULT_DET
    rec_name = config.get("text_recognition_model_name") or PADDLE_DEFAULT_REC
    if (cache / det_name).is_dir() and (cache / rec_name).is_dir():
        return True, f"PaddleOCR's cached models in {cache}"
    return False, f"no PaddleOCR models in {cache} (PaddleOCR would download {det_name}, {rec_name})"


def choose_engine(requested: str, config: dict[str, Any]) -> tuple[str | None, str]:
    """Which engine serves a request for ``requested`` (auto, paddle, onnx), and why.

    Returns ``(None, reason)`` when none can."""
    if requested == "paddle":
        if not paddle_installed():
            return (
                None,
                f"paddle engine requested but paddleocr/paddlepaddle are not installed ({PADDLE_HINT})",
            )
        ok, where = paddle_models_present(config)
        return "paddle", f"requested; {where}" + ("" if ok else " (will try to download)")
    if requested == "onnx":
        if not onnx_installed():
            return None, f"onnx engine requested but rapidocr/openvino/onnxruntime are not installed ({ONNX_HINT})"
        return "onnx", f"requested; PP-OCRv6 small models inside the rapidocr wheel, on {onnx_runtime()}"
    if requested != "auto":
        raise ExpertError(f"ocr: unknown engine {requested!r} (engines: auto, {', '.join(ENGINES)})")
    if paddle_installed():
        ok, where = paddle_models_present(config)
        if ok:
            return "paddle", f"auto: PaddleOCR installed and {where}"
        if onnx_installed():
            return "onnx", f"auto: PaddleOCR installed but {where}; using the bundled ONNX models"
        return "paddle", f"auto: only PaddleOCR is installed; {where}"
    if onnx_installed():
        return "onnx", "auto: PaddleOCR not installed; PP-OCRv6 small ONNX models inside the rapidocr wheel"
    return None, f"no OCR engine installed: {ONNX_HINT} (or {PADDLE_HINT} for PaddleOCR)"


class OcrEngine:
    """An OCR engine: ``run(bgr)`` returns text boxes with text and scores (no layout)."""

    name = ""
    # Whether the layout step should put back word spaces the recogniser dropped, from the gaps in the image
    # (text_layout.fix_word_spacing). Measured per engine on the real set (benchmarks/real_images.py).
    restore_spaces = False
    # Longest image side the engine works on anyway (it downscales bigger images itself); the expert hands
    # it a view of that size, so a 49 MP photo is never copied whole into the engine. None: full resolution.
    max_side: int | None = None

    def run(self, bgr: np.ndarray) -> list[Segment]:
        raise NotImplementedError

    def raw(self, bgr: np.ndarray) -> Any:
        """The bare engine call, for benchmarks of the expert's own overhead."""
        raise NotImplementedError


class RapidOcrEngine(OcrEngine):
    """rapidocr 3.x with the PP-OCRv6 small models shipped in its wheel, on OpenVINO or ONNX Runtime."""

    name = "onnx"
    # PP-OCRv6 at rapidocr's own detector size reads word spaces: the restoration step added spaces inside
    # words on 26 lines of the real set and fixed none (benchmarks/real_images.py).
    restore_spaces = False

    def __init__(
        self,
        lang: str | None = None,
        det_limit_side_len: int | None = None,
        det_limit_type: str | None = None,
        text_score: float = 0.5,
        threads: int | None = None,
        runtime: str | None = None,
        max_side: int | None = None,
        line_orientation: str = "page",
        **_: Any,
    ) -> None:
        if lang and lang.lower() not in ONNX_LANGS:
            raise ExpertError(
                f"ocr: the onnx engine reads Chinese and English only (lang {lang!r} needs the paddle "
                f"engine: {PADDLE_HINT})"
            )
        if line_orientation not in ("page", "line"):
            raise ExpertError(f"ocr: line_orientation must be page or line, not {line_orientation!r}")
        try:
            from rapidocr import EngineType, RapidOCR
        except ImportError as exc:
            raise EngineMissing(f"ocr: the onnx engine is not installed ({exc}); run {ONNX_HINT}") from None
        self.runtime = onnx_runtime(runtime)
        # rapidocr logs every call at INFO, and "no text found" as a warning: neither is news to a user.
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.text_score": text_score,
        }
        if self.runtime == "openvino":
            # The same ONNX files from the wheel, compiled by OpenVINO (nothing is fetched: rapidocr finds them
            # in its models folder by name).
            for step in ("Det", "Cls", "Rec"):
                params[f"{step}.engine_type"] = EngineType.OPENVINO
            # One request at a time, as fast as it can: 0.60x ONNX Runtime's time with the hint, 0.70x without
            # (the 47 real images, alternating; docs/figures.md).
            params["EngineConfig.openvino.performance_hint"] = "LATENCY"
        # The detector's input size stays rapidocr's own (shortest side brought up to 736 px): small
        # screenshots and scans need that upscaling to be read at all. A smaller setting (64, "min") was
        # faster on generated scenes and lost whole lines of real scans (benchmarks/real_images.py).
        if self.runtime == "openvino" and not max_side:
            max_side = OPENVINO_MAX_SIDE
        if max_side:
            params["Global.max_side_len"] = max_side
        if det_limit_side_len:
            params["Det.limit_side_len"] = det_limit_side_len
        if det_limit_type:
            params["Det.limit_type"] = det_limit_type
        if threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
            params["EngineConfig.openvino.inference_num_threads"] = threads
        self._ocr = RapidOCR(params=params)
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self._page_orientation = line_orientation == "page"
        # rapidocr brings every image down to Global.max_side_len (2000) before detection and crops the lines
        # from that copy: the expert gives it an image of that size to begin with.
        preprocess = getattr(getattr(getattr(self._ocr, "cfg", None), "Global", None), "use_preprocess_img", False)
        side = getattr(self._ocr, "max_side_len", None)
        self.max_side = int(side) if preprocess and side else None
        # rapidocr keeps per-call settings on the instance; one call at a time is also what its
        # sessions (already using every core) want.
        self._lock = threading.Lock()

    def raw(self, bgr: np.ndarray) -> Any:
        with self._lock:
            check_cancelled()  # a run given up on while it queued for the engine does not start it
            if self._page_orientation:
                return self._read_page(bgr)
            return self._ocr(bgr)

    def _read_page(self, bgr: np.ndarray) -> Any:
        """rapidocr's own steps (detect, classify each line's angle, recognise), with one change: the angle is
        decided for the page, not line by line. Most lines labelled upside down: the page is, and every line is
        turned; otherwise none is. On the real set the classifier labels 0-40 % of an upright page's lines upside
        down (turning them made CER 0.087 where 0.04 was there to read) and 57-100 % of the same pages turned
        over (tests/test_ocr.py). The result's ``upside_down`` says which it was."""
        from rapidocr.main import RapidOCRError
        from rapidocr.utils.output import RapidOCROutput

        ocr = self._ocr
        image = ocr.load_img(bgr)
        img, record = ocr.preprocess_img(image)
        try:
            crops, det = ocr.detect_and_crop(img, record)
            _, cls = ocr.cls_and_rotate(crops)
            upside_down = 2 * sum("180" in label for label, _ in cls.cls_res) > len(crops)
            rec = ocr.recognize_txt([cv2.rotate(c, cv2.ROTATE_180) for c in crops] if upside_down else crops)
        except RapidOCRError:
            return RapidOCROutput()
        out = ocr.build_final_output(image, det, cls, rec, crops, record)
        out.upside_down = upside_down
        return out

    def run(self, bgr: np.ndarray) -> list[Segment]:
        out = self.raw(bgr)
        if out.txts is None or out.boxes is None or len(out.txts) == 0:
            return []
        segments = [
            Segment(order_quad(np.asarray(box, dtype=np.float64)), text, float(score))
            for box, text, score in zip(out.boxes, out.txts, out.scores, strict=False)
        ]
        if getattr(out, "upside_down", False):
            for seg in segments:
                seg.upside_down = True
        return segments


class PaddleOcrEngine(OcrEngine):
    """PaddleOCR 3.x (PaddleX pipeline) on PaddlePaddle, CPU."""

    name = "paddle"
    # PP-OCRv4 drops most word spaces ("Invoice2024-0317 dueon 15April"); it gives no character positions, so
    # the spaces are put back by glyph widths (text_layout._restore_by_chunks), in lines without CJK characters
    # only: on the real set that gives CER 0.088 = raw (zh 0.065 vs raw 0.067); restoring mixed zh lines too split
    # their Latin words (0.089, zh 0.068).
    restore_spaces = True

    def __init__(
        self,
        lang: str | None = None,
        max_side: int | None = None,
        text_detection_model_dir: str | None = None,
        text_detection_model_name: str | None = None,
        text_recognition_model_dir: str | None = None,
        text_recognition_model_name: str | None = None,
        device: str = "cpu",
        enable_mkldnn: bool = False,
        cpu_threads: int | None = None,
        **_: Any,
    ) -> None:
        det_dir, rec_dir = text_detection_model_dir, text_recognition_model_dir
        if det_dir or rec_dir:
            # Models given: do not let PaddleX probe model hosters (30 s of timeouts offline).
            os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
        try:
            from paddleocr import PaddleOCR
        except ImportError as exc:
            raise EngineMissing(f"ocr: the paddle engine is not installed ({exc}); run {PADDLE_HINT}") from None
        for name in ("paddlex", "paddleocr", "ppocr"):
            logging.getLogger(name).setLevel(logging.WARNING)
        kwargs: dict[str, Any] = {
            "use_doc_orientation_classify": False,
            "use_doc_unwarping": False,
            "use_textline_orientation": False,
            "device": device,
            # On CPU, Paddle 3's oneDNN path crashes in predict() with
            # "ConvertPirAttribute2RuntimeAttribute not support"; plain CPU kernels work.
            "enable_mkldnn": enable_mkldnn,
        }
        if cpu_threads:
            kwargs["cpu_threads"] = cpu_threads
        if det_dir:
            kwargs["text_detection_model_dir"] = str(det_dir)
            kwargs["text_detection_model_name"] = text_detection_model_name or _model_name(det_dir)
        elif text_detection_model_name:
            kwargs["text_detection_model_name"] = text_detection_model_name
        if rec_dir:
            kwargs["text_recognition_model_dir"] = str(rec_dir)
            kwargs["text_recognition_model_name"] = text_recognition_model_name or _model_name(rec_dir)
        elif text_recognition_model_name:
            kwargs["text_recognition_model_name"] = text_recognition_model_name
        if lang and not rec_dir and not text_recognition_model_name:
            kwargs["lang"] = "ch" if lang.lower() in ("zh", "chinese") else lang
        try:
            self._ocr = PaddleOCR(**kwargs)
        except Exception as exc:  # PaddleX raises many types (download, model, dependency errors)
            raise EngineMissing(f"ocr: PaddleOCR could not load its models: {type(exc).__name__}: {exc}") from None
        # The expert hands PaddleOCR a view of this size, as it does the onnx engine (issue 26): handed whole, a
        # 49 MP photo was copied into the pipeline and detected at 4000 px.
        self.max_side = int(max_side or PADDLE_MAX_SIDE)
        self._lock = threading.Lock()

    def raw(self, bgr: np.ndarray) -> Any:
        with self._lock:
            check_cancelled()  # a run given up on while it queued for the engine does not start it
            return self._ocr.predict(np.ascontiguousarray(bgr))

    def run(self, bgr: np.ndarray) -> list[Segment]:
        segments = []
        for res in self.raw(bgr):
            texts, scores, polys = res["rec_texts"], res["rec_scores"], res["rec_polys"]
            for text, score, poly in zip(texts, scores, polys, strict=False):
                if not str(text).strip():
                    continue
                segments.append(Segment(order_quad(np.asarray(poly, dtype=np.float64)), str(text), float(score)))
        return segments


def _model_name(model_dir: str | os.PathLike[str]) -> str | None:
    """``Global.model_name`` from a PaddleX model dir's inference.yml."""
    path = Path(model_dir) / "inference.yml"
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("model_name:"):
                return stripped.split(":", 1)[1].strip().strip("'\"") or None
    except OSError:
        return None
    return None


def build_engine(name: str, config: dict[str, Any], lang: str | None = None) -> OcrEngine:
    """Build the named engine from the expert's configuration."""
    kwargs = {k: v for k, v in config.items() if k not in ("engine",)}
    if lang:
        kwargs["lang"] = lang
    if name == "onnx":
        return RapidOcrEngine(**kwargs)
    if name == "paddle":
        return PaddleOcrEngine(**kwargs)
    raise ExpertError(f"ocr: unknown engine {name!r} (engines: auto, {', '.join(ENGINES)})")
