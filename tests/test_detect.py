"""The detect expert on drawn scenes with known truth, codes made in the test, and skimage's photos."""

from __future__ import annotations

import importlib.metadata
import os
import threading

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from experts.detect import DetectExpert, canonical_label, colour_name, nms
from experts.errors import ExpertError
from experts.images import decode_image
from experts.registry import default_registry
from experts.schema import BBox, ExpertResult, ImageAnalysis, TextLine, inside_share
from tests import scenes

SCENE_AREA = 800 * 600


@pytest.fixture(scope="module")
def expert() -> DetectExpert:
    return DetectExpert()


def _decode(img: Image.Image, dpi=None):
    return decode_image(scenes.png_bytes(img, dpi=dpi))


def _iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- OpenCV install ------------------------------------------------------------------------------
def test_one_opencv_build_with_cascades():
    """Every installed cv2 distribution is the build that is imported, and the cascades are there
    (OpenCV 5 or a half-overwritten cv2/ would fail here)."""
    dists = {}
    for name in (
        "opencv-python",
        "opencv-python-headless",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ):
        try:
            dists[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    assert dists, "no OpenCV distribution installed"
    versions = {v.rsplit(".", 1)[0] for v in dists.values()}  # 4.10.0.84 -> 4.10.0
    assert versions == {cv2.__version__}, f"cv2 {cv2.__version__} but installed: {dists}"
    assert cv2.__version__.startswith("4."), "OpenCV 5 has no CascadeClassifier/HOG"
    for f in (
        "haarcascade_frontalface_default.xml",
        "haarcascade_eye.xml",
        "haarcascade_frontalcatface_extended.xml",
        "haarcascade_russian_plate_number.xml",
        "haarcascade_fullbody.xml",
    ):
        assert os.path.isfile(os.path.join(cv2.data.haarcascades, f)), f
    assert DetectExpert().status()["ok"] is True


def test_registry_resolves_detect_and_aliases():
    reg = default_registry()
    for name in ("detect", "measure", "count", "contours", "尺寸"):
        assert reg.resolve(name) == "detect"
    assert isinstance(reg.get("detect"), DetectExpert)
    info = DetectExpert().info()
    assert info["positional"] == "query"
    # Which detector answers each label here: learned where the [people] extra is, else OpenCV's.
    assert set(info["detectors"]) >= {"face", "person", "qr"} and "face" in info["runs"]


# --- contours ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bg,specks", [("white", 0), ("gradient", 0), ("noise", 40)])
def test_standard_scene_counts_sizes_colours(expert, bg, specks):
    scene = scenes.standard_shapes(bg=bg, specks=specks)
    r = expert.analyze(_decode(scene.image), {})
    m = r.measurements
    assert m["count"] == 7, [o["shape"] for o in m["objects"]]
    assert m["counts"] == scene.counts()
    assert sorted(r.objects) == sorted(["3 rectangles", "2 circles", "1 square", "1 triangle"])
    assert len(r.bbox) == 7 and all(b.score is None for b in r.bbox)
    for truth in scene.shapes:
        match = max(m["objects"], key=lambda o: _iou(o["bbox"], truth.box))
        assert _iou(match["bbox"], truth.box) > 0.9, (truth, match)
        assert match["shape"] == truth.kind
        assert match["colour"] == truth.colour_name
        # Pixel areas within 3% of what was drawn: blurred edges and a speck touching an edge are the slack.
        assert match["area"] == pytest.approx(truth.drawn_area(), rel=0.03)
        assert match["share"] == pytest.approx(truth.drawn_area() / SCENE_AREA, rel=0.03)
        assert match["aspect_ratio"] == pytest.approx(truth.width / truth.height, rel=0.06)
        assert match["centre"][0] == pytest.approx(truth.centroid[0], abs=3)
        assert match["centre"][1] == pytest.approx(truth.centroid[1], abs=3)
    # Largest first: the red rectangle, twice the blue one's area, sitting in the top-left third.
    largest = m["objects"][0]
    assert largest["colour"] == "red" and largest["width"] == pytest.approx(240, abs=3)
    ratio = next(x for x in m["ratios"] if x["a"] == 1 and x["b"] == 2)
    assert ratio["area_ratio"] == pytest.approx(2.0, rel=0.04)
    assert ratio["width_ratio"] == pytest.approx(1.5, rel=0.03)
    assert m["subject"]["placement"] == "top left" and m["subject"]["thirds_cell"] == [0, 0]
    assert m["image"]["width"] == 800 and m["image"]["height"] == 600 and m["image"]["aspect"] == "4:3"


@pytest.mark.parametrize("bg", ["white", "gradient", "noise"])
def test_empty_backgrounds_have_no_objects(expert, bg):
    """Uneven light, grain, stains and specks are not objects."""
    scene = scenes.shapes_scene([], bg=bg, specks=30 if bg == "noise" else 0)
    r = expert.analyze(_decode(scene.image), {})
    assert r.measurements["count"] == 0, r.measurements["objects"]
    assert r.objects == [] and r.bbox == []


def test_light_objects_on_dark_background(expert):
    shapes = [
        scenes.Shape("circle", (100, 100, 300, 300), (250, 250, 250), "white"),
        scenes.Shape("rectangle", (400, 150, 700, 300), (235, 200, 40), "yellow"),
    ]
    scene = scenes.shapes_scene(shapes, bg="gradient", bg_colour=(40, 40, 60))
    m = expert.analyze(_decode(scene.image), {}).measurements
    assert m["counts"] == {"circle": 1, "rectangle": 1}
    assert {o["colour"] for o in m["objects"]} == {"white", "yellow"}


def test_min_area_is_relative_to_the_image(expert):
    """A 6x6 dot is noise on an 800x600 image (0.0075% of it) but a 60x60 square is an object."""
    shapes = [
        scenes.Shape("square", (100, 100, 106, 106), (20, 20, 20), "black"),
        scenes.Shape("square", (400, 300, 460, 360), (20, 20, 20), "black"),
    ]
    m = expert.analyze(_decode(scenes.shapes_scene(shapes).image), {}).measurements
    assert m["count"] == 1 and m["objects"][0]["bbox"] == pytest.approx([400, 300, 460, 360], abs=2)


def test_measure_mode_sizes_ratios_and_dpi(expert):
    scene = scenes.standard_shapes()
    img = _decode(scene.image, dpi=(300, 300))
    for query in ("measure", "尺寸", "比例", "像素"):
        r = expert.analyze(img, {"query": query})
        assert r.attributes["mode"] == "measure"
    r = expert.analyze(img, {"mode": "measure"})
    assert r.objects[0].startswith("red rectangle 240x160 px") or r.objects[0].startswith("red rectangle 23")
    assert "% of image" in r.objects[0]
    facts = r.measurements["image"]
    assert facts["dpi"] == pytest.approx([300, 300], abs=0.01)
    assert facts["size_inches"] == pytest.approx([800 / 300, 600 / 300], abs=0.01)
    assert facts["size_mm"][0] == pytest.approx(67.7, abs=0.1)
    assert r.attributes["dpi"] == "300x300"
    # No DPI in the file: said so, not invented.
    r2 = expert.analyze(_decode(scene.image), {"query": "measure"})
    assert r2.measurements["image"]["dpi"] is None and "size_inches" not in r2.measurements["image"]


def test_subject_in_the_centre(expert):
    shapes = [scenes.Shape("circle", (340, 240, 460, 360), (40, 70, 200), "blue")]
    m = expert.analyze(_decode(scenes.shapes_scene(shapes).image), {"query": "measure"}).measurements
    assert m["subject"]["placement"] == "centre"
    assert m["subject"]["offset_from_centre"] == pytest.approx([0, 0], abs=0.01)


def test_max_objects_keeps_largest_and_true_count(expert):
    r = expert.analyze(_decode(scenes.standard_shapes().image), {"max_objects": 2})
    assert r.measurements["count"] == 7 and len(r.measurements["objects"]) == 2
    assert [o["colour"] for o in r.measurements["objects"]] == ["red", "blue"]


# --- labelled detection --------------------------------------------------------------------------
def test_labels_and_synonyms():
    assert canonical_label("faces") == "face" and canonical_label("People") == "person"
    assert canonical_label("QR code") == "qr" and canonical_label("license plates") == "plate"
    assert canonical_label("二维码") == "qr" and canonical_label("cats") == "cat"
    assert canonical_label("giraffe") is None


def test_unknown_label_lists_the_available_ones(expert):
    with pytest.raises(ExpertError) as err:
        expert.analyze(_decode(scenes.standard_shapes().image), {"query": "giraffe"})
    msg = str(err.value)
    for label in ("face", "person", "cat", "qr", "barcode", "plate"):
        assert label in msg


def test_qr_code_decoded(expert):
    payload = "https://example.com/menu?table=12"
    img = scenes.qr_code(payload, canvas=(640, 480), at=(200, 100))
    r = expert.analyze(_decode(img), {"query": "qr"})
    assert r.objects == ["1 QR code"]
    assert [t.text for t in r.text] == [payload] and r.full_text == payload
    b = r.bbox[0]
    side = scenes.qr_code(payload).width  # the pasted QR (with its white border) spans [200, 200 + side)
    assert 200 + 40 - 2 <= b.x1 < b.x2 <= 200 + side - 40 + 2
    assert 100 + 40 - 2 <= b.y1 < b.y2 <= 100 + side - 40 + 2
    assert r.attributes["qr_count"] == 1


def test_barcode_decoded(expert):
    img, code = scenes.ean13_barcode("590123412345", module_px=3)
    r = expert.analyze(_decode(img), {"query": "barcodes"})
    assert r.objects == ["1 barcode"]
    assert r.full_text == code == "5901234123457"


def test_no_codes_in_a_shapes_scene(expert):
    img = _decode(scenes.standard_shapes().image)
    for q in ("qr", "barcode", "face", "person", "plate"):
        r = expert.analyze(img, {"query": q})
        assert r.bbox == [] and r.objects == [] and r.measurements["count"] == 0, q


skimage_data = pytest.importorskip("skimage.data", reason="photos need scikit-image (the [test] extra)")


@pytest.fixture(scope="module")
def astronaut():
    return _decode(Image.fromarray(skimage_data.astronaut()))


def test_face_eyes_smile_on_a_photo(expert, astronaut):
    """skimage's astronaut portrait (NASA, public domain): one frontal face near (177, 67)-(270, 160)."""
    faces = expert.analyze(astronaut, {"query": "faces"})
    assert faces.objects == ["1 face"]
    f = faces.bbox[0]
    assert _iou([f.x1, f.y1, f.x2, f.y2], [177, 67, 270, 160]) > 0.7
    assert 0.5 < f.score <= 1.0
    assert faces.measurements["detections"][0]["share"] == pytest.approx(93 * 93 / 512 / 512, rel=0.2)
    eyes = expert.analyze(astronaut, {"query": "eyes"})
    assert eyes.objects == ["2 eyes"]
    for e in eyes.bbox:  # inside the upper part of the face
        assert f.x1 <= e.x1 and e.x2 <= f.x2 and f.y1 <= e.y1 and e.y2 <= (f.y1 + f.y2) / 2 + 0.2 * (f.y2 - f.y1)
    smile = expert.analyze(astronaut, {"query": "smile"})
    assert smile.objects == ["1 smile"]
    s = smile.bbox[0]
    assert s.y1 >= (f.y1 + f.y2) / 2 and s.y2 <= f.y2 + 1


def test_cat_and_people_paths_run(expert):
    """Honest limits: the cat-face cascade does not fire on skimage's chelsea (a cat seen slightly from
    the side) and no offline photo of a standing person is at hand, so these exercise the cat cascade
    and the HOG people detector for structure and for no false positives on drawn shapes."""
    chelsea = _decode(Image.fromarray(skimage_data.chelsea()))
    r = expert.analyze(chelsea, {"query": "cat"})
    assert r.measurements["count"] == len(r.bbox) and r.attributes["query"] == "cat"
    for q in ("person", "people", "pedestrians"):
        r = expert.analyze(_decode(scenes.standard_shapes(bg="noise").image), {"query": q})
        assert r.bbox == [] and r.measurements["count"] == 0
    # The body cascades are weaker (they fire on drawn shapes); only their path is exercised.
    r = expert.analyze(_decode(scenes.standard_shapes().image), {"query": "upper body"})
    assert all(b.label == "upper body" for b in r.bbox) and r.measurements["count"] == len(r.bbox)


def test_detectors_are_thread_safe(expert, astronaut):
    results: list[int] = []
    errors: list[BaseException] = []

    def work():
        try:
            results.append(len(expert.analyze(astronaut, {"query": "face"}).bbox))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [1, 1, 1, 1]


# --- helpers -------------------------------------------------------------------------------------
def test_nms_keeps_best_of_overlapping_boxes():
    boxes = [
        BBox(label="face", x1=0, y1=0, x2=100, y2=100, score=0.6),
        BBox(label="face", x1=5, y1=5, x2=105, y2=105, score=0.9),
        BBox(label="face", x1=20, y1=20, x2=60, y2=60, score=0.95),  # inside: a nested duplicate
        BBox(label="face", x1=300, y1=0, x2=400, y2=100, score=0.5),
    ]
    kept = nms(boxes, 0.3)
    assert sorted((b.x1, b.score) for b in kept) == [(20, 0.95), (300, 0.5)]


def test_colour_names():
    assert colour_name((215, 40, 40)) == "red"
    assert colour_name((40, 70, 200)) == "blue"
    assert colour_name((40, 160, 60)) == "green"
    assert colour_name((250, 250, 250)) == "white"
    assert colour_name((128, 128, 128)) == "grey"
    assert colour_name((10, 10, 10)) == "black"


def test_result_is_json_round_trippable(expert):
    r = expert.analyze(_decode(scenes.standard_shapes().image), {})
    again = type(r).model_validate_json(r.model_dump_json())
    assert again.measurements["count"] == 7 and np.isclose(again.timing_ms, r.timing_ms)


# --- per-image merge with OCR --------------------------------------------------------------------
@pytest.fixture(scope="module")
def letters_and_a_disc():
    """Big letters "HI" (two contours: a polygon and a rectangle) and a blue disc, on white."""
    img = Image.new("RGB", (800, 400), "white")
    d = ImageDraw.Draw(img)
    font = scenes.font("sans-bold", 160)
    d.text((60, 100), "HI", font=font, fill=(20, 20, 20))
    d.ellipse([520, 120, 680, 280], fill=(40, 70, 200))
    return decode_image(scenes.png_bytes(img)), list(d.textbbox((60, 100), "HI", font=font))


def _ocr(image_id: str, box: list[float]) -> ExpertResult:
    x1, y1, x2, y2 = box
    line = TextLine(text="HI", score=0.99, bbox=box, box=[[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    return ExpertResult(image_id=image_id, expert="ocr", text=[line], full_text="HI")


@pytest.mark.parametrize("mode", ["contours", "measure"])
def test_merge_leaves_out_contours_inside_ocr_text(expert, letters_and_a_disc, mode):
    img, text_box = letters_and_a_disc
    det = expert.analyze(img, {"mode": mode})
    assert det.measurements["count"] == 3  # alone, detect sees the letters as shapes
    ocr = _ocr(img.image_id, text_box)
    for order in ([det, ocr], [ocr, det]):
        merged = ImageAnalysis.merge(img.image_id, 1, order, img.width, img.height)
        m = merged.measurements
        assert m["count"] == 1 and m["counts"] == {"circle": 1} and m["inside_text"] == 2
        assert [o["colour"] for o in m["objects"]] == ["blue"]
        assert [b.label for b in merged.bbox] == ["circle"]
        assert m["ratios"] == [] and m["subject"]["object"] == m["objects"][0]["id"]
        assert merged.attributes["object_count"] == 1 and merged.attributes["subject_placement"] == "right"
        shapes = [o for o in merged.objects if "circle" in o or "polygon" in o or "rectangle" in o]
        assert shapes == (["1 circle"] if mode == "contours" else [shapes[0]])
        assert mode == "contours" or shapes[0].startswith("blue circle 161x161 px")
        assert merged.full_text == "HI"
        # The raw results stay as the experts returned them.
        assert merged.results[order.index(det)].measurements["count"] == 3


def test_merge_keeps_contours_without_ocr_and_labelled_boxes_with_it(expert, letters_and_a_disc):
    img, text_box = letters_and_a_disc
    det = expert.analyze(img, {})
    alone = ImageAnalysis.merge(img.image_id, 1, [det], img.width, img.height)
    assert alone.measurements["count"] == 3 and len(alone.bbox) == 3
    # A labelled detection (here a face box over the text) is not a contour: OCR does not remove it.
    face = ExpertResult(
        image_id=img.image_id,
        expert="detect",
        args={"query": "face"},
        objects=["1 face"],
        bbox=[BBox(label="face", x1=70, y1=140, x2=170, y2=240, score=0.9)],
        attributes={"query": "face", "face_count": 1},
        measurements={"count": 1},
    )
    merged = ImageAnalysis.merge(img.image_id, 1, [face, _ocr(img.image_id, text_box)], img.width, img.height)
    assert [b.label for b in merged.bbox] == ["face"] and merged.objects == ["1 face"]
    # OCR "text" without a word in it covers nothing: PP-OCR reads a row of discs as "● ● ●" and four
    # triangles as "Λ A A V" (real readings, tests/test_rag.py's scenes).
    for reading in ("● ● ●", "Λ A A V", "…"):
        line = TextLine(text=reading, score=0.7, bbox=[0, 0, img.width, img.height])
        shapes = ExpertResult(image_id=img.image_id, expert="ocr", text=[line], full_text=reading)
        merged = ImageAnalysis.merge(img.image_id, 1, [det, shapes], img.width, img.height)
        assert merged.measurements["count"] == 3, reading
    # A failed OCR run has no text boxes to go by.
    failed = ExpertResult.failure(img.image_id, "ocr", {}, "ocr: engine missing")
    merged = ImageAnalysis.merge(img.image_id, 1, [det, failed], img.width, img.height)
    assert merged.measurements["count"] == 3


def test_inside_share_of_a_box_under_text_boxes():
    assert inside_share([0, 0, 10, 10], [[0, 0, 5, 10], [5, 0, 10, 10]]) == 1.0
    assert inside_share([0, 0, 10, 10], [[0, 0, 10, 10], [0, 0, 10, 10]]) == 1.0  # capped
    assert inside_share([0, 0, 10, 10], [[20, 20, 30, 30]]) == 0.0
    assert inside_share([0, 0, 10, 10], [[0, 0, 10, 5]]) == pytest.approx(0.5)


def test_merge_with_the_real_ocr_engine(expert, letters_and_a_disc):
    """With PP-OCR reading "HI", the model hears of one circle, not of a polygon and a rectangle."""
    from experts.ocr import OcrExpert

    ocr = OcrExpert()
    if not ocr.status().get("ok"):
        pytest.skip("ocr engine unavailable: install the [ocr] extra")
    img, _ = letters_and_a_disc
    read = ocr.analyze(img, {})
    assert read.full_text == "HI"
    merged = ImageAnalysis.merge(img.image_id, 1, [read, expert.analyze(img, {})], img.width, img.height)
    assert merged.objects == ["1 circle"] and merged.measurements["inside_text"] == 2


# --- learned detectors (issue 18) -----------------------------------------------------------------
def test_labels_each_have_a_backend_and_learned_ones_come_first():
    from experts.detect import LABELS
    from experts.detect.backends import BACKENDS, candidates

    for label in LABELS:
        assert candidates(label), label
    for label in ("face", "person"):
        assert candidates(label)[0].learned and not candidates(label)[-1].learned
    assert [b.name for b in BACKENDS if not b.learned] == ["haar", "hog", "qr", "barcode"]


@pytest.mark.parametrize("opts_name,boxes", [("FACE_SHORT", 896), ("FACE_FULL", 2304), ("POSE", 2254)])
def test_ssd_anchors_match_the_models(opts_name, boxes):
    """The anchors built from MediaPipe's options are as many as each model's boxes, in cell order."""
    pytest.importorskip("ai_edge_litert", reason="needs the [people] extra")
    import experts.detect.backends.blaze as bl

    opts = getattr(bl, opts_name)
    anchors = bl.ssd_anchors(opts)
    assert len(anchors) == boxes
    assert anchors.min() > 0 and anchors.max() < 1
    backend = bl.BlazeBackend()
    outs = backend._run(opts.file, np.zeros((opts.size, opts.size, 3), np.float32))
    assert sorted(o.shape[0] for o in outs) == [boxes, boxes]


def test_a_damaged_model_file_is_refused(tmp_path, monkeypatch):
    """The shipped models are checked against SHA256SUMS before loading: one clear error, no wrong answers."""
    import shutil

    import experts.detect.backends.blaze as bl

    for f in bl.MODEL_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with open(tmp_path / bl.FACE_SHORT.file, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(bl, "MODEL_DIR", tmp_path)
    assert bl.checked_model(bl.SELFIE).name == bl.SELFIE
    with pytest.raises(ExpertError, match="fails its checksum"):
        bl.checked_model(bl.FACE_SHORT.file)


def test_weighted_nms_averages_a_cluster():
    from experts.detect.backends.blaze import Detection, weighted_nms

    kp = np.zeros((1, 2))
    dets = [
        Detection(np.array([0.0, 0, 10, 10]), 0.9, kp),
        Detection(np.array([2.0, 0, 12, 10]), 0.3, kp),
        Detection(np.array([50.0, 50, 60, 60]), 0.8, kp),
    ]
    out = weighted_nms(dets)
    assert len(out) == 2 and out[0].score == 0.9
    assert out[0].box[0] == pytest.approx((0 * 0.9 + 2 * 0.3) / 1.2)
