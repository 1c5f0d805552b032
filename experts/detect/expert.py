"""The detect expert: picks contours, measurements or a labelled detector for a query, and says what it found."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Literal

import cv2
from pydantic import Field

from experts.base import Expert, ExpertArgs
from experts.detect.backends import BACKENDS, Backend, candidates, choose
from experts.detect.backends.haar import CASCADE_FILES, cascade_dir, cascades_present
from experts.detect.boxes import nms
from experts.detect.contours import CONTOUR_MAX_SIDE, analyse, to_original
from experts.detect.labels import CONTOUR_WORDS, LABELS, MEASURE_WORDS, canonical_label, plural
from experts.detect.measure import image_facts
from experts.errors import EngineMissing, ExpertError
from experts.images import DecodedImage
from experts.schema import BBox, ExpertResult, TextLine, placement, ratios_between


class DetectArgs(ExpertArgs):
    query: str | None = Field(
        default=None,
        description=(
            "What to find: face, person, cat, eye, smile, plate, qr, barcode (plurals fine); 'measure' for "
            "sizes and ratios; empty for every object's shape, size and colour."
        ),
    )
    mode: Literal["contours", "measure"] = Field(
        default="contours",
        description="contours: objects and counts; measure: sizes, ratios, placement, DPI.",
    )
    max_objects: int = Field(default=50, ge=1, le=500, description="Most objects to report, largest first.")


class DetectExpert(Expert):
    """Count and measure objects, or find faces, people, cats, plates, QR codes and barcodes, with OpenCV."""

    name = "detect"
    aliases = ("measure", "count", "contours", "opencv", "objects", "尺寸", "比例", "像素")
    description = (
        "Find and measure things with OpenCV: with no query, every object's box, size (pixels and share of "
        "the image), aspect ratio, shape and colour, and the count; 'measure' for sizes, ratios, placement "
        "and DPI; or a label (face, person, cat, eye, smile, plate, qr, barcode) for labelled boxes and their "
        "count, with QR/barcode contents decoded. Faces, people and cats come from learned detectors "
        "(MediaPipe, SSD MobileNet COCO) where installed, else from OpenCV's Haar and HOG detectors."
    )
    Args = DetectArgs
    positional = "query"
    # 2: faces and people from learned detectors where installed; 3: touching objects split, people and
    # cats from SSD MobileNet COCO where installed.
    version = "3"

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self._backends: dict[str, Backend] = {}
        self._backend_lock = threading.Lock()
        # Minimum object area as a share of the image (config: min_area_share).
        self.min_area_share = float(config.get("min_area_share", 0.0005))
        # learned = false keeps to OpenCV's detectors even where a learned one is installed.
        self.learned = bool(config.get("learned", True))

    def status(self) -> dict[str, Any]:
        """OpenCV's version, its cascades, and which detector runs for each label here."""
        runs = {label: choose(label, self.learned) for label in LABELS}
        by_engine: dict[str, list[str]] = {}
        for label, b in runs.items():
            by_engine.setdefault(b.engine if b else "nothing", []).append(label)
        out: dict[str, Any] = {
            "ok": all(runs.values()),
            "engine": f"opencv {cv2.__version__}",
            "cascades": f"{len(cascades_present())}/{len(CASCADE_FILES)} in {cascade_dir() or '(none)'}",
            "labels": sorted(LABELS),
            "detectors": {label: b.engine if b else "none" for label, b in runs.items()},
            # One line for `expert list`: which detector answers which labels here.
            "runs": "; ".join(f"{', '.join(labels)}: {engine}" for engine, labels in by_engine.items()),
        }
        idle = [b for b in BACKENDS if b.learned and not b.available()[0]]
        if idle and self.learned:
            out["learned"] = "; ".join(f"{b.engine} not available: {b.available()[1]}" for b in idle)
        if not out["ok"]:
            out["hint"] = "pip install 'opencv-python-headless>=4.9,<5' (OpenCV 5 has no cascades or HOG)"
        return out

    def info(self) -> dict[str, Any]:
        """The base info plus which detector answers each label here (also served by `expert serve`)."""
        st = self.status()
        return {**super().info(), "detectors": st["detectors"], "runs": st["runs"]}

    def cache_tag(self) -> str:
        """The base tag plus which learned detectors run here: installing the ``[people]`` extra changes
        face and person answers without any change of configuration."""
        tag = self.__dict__.get("_detect_tag")
        if tag is None:
            learned = sorted(b.name for b in BACKENDS if b.learned and self.learned and b.available()[0])
            tag = self._detect_tag = f"{super().cache_tag()}.{'+'.join(learned) or 'opencv'}"
        return tag

    def _backend(self, label: str) -> Backend:
        """The backend instance that runs for ``label``, made once per expert (it keeps its engines)."""
        cls = choose(label, self.learned)
        if cls is None:
            reasons = "; ".join(f"{b.name}: {b.available()[1]}" for b in candidates(label)) or "none registered"
            raise EngineMissing(f"detect: no detector for {label!r} can run here ({reasons})")
        inst = self._backends.get(cls.name)
        if inst is None:
            with self._backend_lock:
                inst = self._backends.setdefault(cls.name, cls())
        return inst

    # --- work -----------------------------------------------------------------------------------
    def _analyze(self, image: DecodedImage, args: DetectArgs) -> ExpertResult:
        mode = args.mode
        label = None
        if args.query and args.query.strip():
            q = args.query.strip().lower()
            if q in MEASURE_WORDS:
                mode = "measure"
            elif q in CONTOUR_WORDS:
                mode = "contours"
            else:
                label = canonical_label(q)
                if label is None:
                    raise ExpertError(
                        f"detect: unknown label {args.query!r} (labels: {', '.join(sorted(LABELS))}; "
                        "or 'measure', or no query for contours)"
                    )
        if label is not None:
            return self._labelled(image, label)
        return self._contours(image, mode, args.max_objects)

    # --- contours and measurements --------------------------------------------------------------
    def _contours(self, image: DecodedImage, mode: str, max_objects: int) -> ExpertResult:
        # A bounded working resolution: the analysis holds several float copies of the picture, which for
        # a 49 MP photo peaked at 2.2 GB; objects are at least 0.05% of the image, so 2048 px loses none.
        work = image.view(CONTOUR_MAX_SIDE)
        found = analyse(work.bgr(), self.min_area_share)
        if work is not image:
            to_original(found, image.width / work.width, image.height / work.height)
        w, h = image.width, image.height
        objects = found.objects
        total = len(objects)
        objects = objects[:max_objects]
        counts = Counter(o["shape"] for o in objects)
        bboxes = [
            BBox(label=o["shape"], x1=o["bbox"][0], y1=o["bbox"][1], x2=o["bbox"][2], y2=o["bbox"][3]) for o in objects
        ]
        measurements: dict[str, Any] = {
            "count": total,
            "counts": dict(counts),
            "image": image_facts(image),
            "objects": objects,
            "ratios": ratios_between(objects),
        }
        if objects:
            measurements["subject"] = placement(objects[0], w, h)
        if mode == "measure":
            labels = [
                f"{o['colour']} {o['shape']} {o['width']}x{o['height']} px ({o['share'] * 100:.1f}% of image)"
                for o in objects[:10]
            ]
        else:
            labels = [f"{n} {plural(shape, n)}" for shape, n in counts.most_common()]
        attributes: dict[str, Any] = {
            "object_count": total,
            "image_size": f"{w}x{h}",
            "mode": mode,
        }
        if found.cluttered:
            # No plain backdrop: the objects are the picture's main light/dark regions, said so.
            attributes["background"] = "cluttered"
        if found.marks:
            # Letters and pen strokes are not shapes: said once, as what they look like.
            labels.insert(0, f"{len(found.marks)} text-like marks")
            attributes["content"] = "text-like marks"
            measurements["text_like_marks"] = {"count": len(found.marks), "region": found.marks_box}
        if image.dpi:
            attributes["dpi"] = "x".join(f"{round(d, 1):g}" for d in image.dpi)
        if objects:
            attributes["subject_placement"] = measurements["subject"]["placement"]
        return self.new_result(image, objects=labels, bbox=bboxes, measurements=measurements, attributes=attributes)

    # --- labelled detection ---------------------------------------------------------------------
    def _labelled(self, image: DecodedImage, label: str) -> ExpertResult:
        bgr = image.bgr()
        h, w = bgr.shape[:2]
        texts: list[TextLine] = []
        backend = self._backend(label)
        boxes = backend.detect(bgr, label, texts)
        boxes = nms(boxes, 0.3)
        n = len(boxes)
        objects = [f"{n} {plural(label, n)}"] if n else []
        result = self.new_result(
            image,
            objects=objects,
            bbox=boxes,
            text=texts,
            full_text="\n".join(t.text for t in texts) or None,
            attributes={"query": label, f"{label.replace(' ', '_')}_count": n, "image_size": f"{w}x{h}"},
            measurements={
                "count": n,
                "detections": [
                    {
                        "label": b.label,
                        "bbox": [b.x1, b.y1, b.x2, b.y2],
                        "width": round(b.x2 - b.x1, 1),
                        "height": round(b.y2 - b.y1, 1),
                        "share": round((b.x2 - b.x1) * (b.y2 - b.y1) / float(w * h), 5),
                    }
                    for b in boxes
                ],
            },
        )
        self._note_fallback(result, label, backend)
        return result

    def _note_fallback(self, result: ExpertResult, label: str, backend: Backend) -> None:
        """A label answered by OpenCV's fallback while a learned detector for it is not installed: said in the
        findings (the model can hedge a count) and, for the user, a hint naming what to install."""
        idle = [b for b in candidates(label) if b.learned and not b.available()[0]]
        if backend.learned or not self.learned or not idle:
            return
        many = plural(label, 2)
        result.attributes["detector"] = f"{backend.engine}, a fallback that misses many {many}"
        result.hint = (
            f"detect {label!r} ran on the fallback {backend.engine}, which misses many {many}; "
            f"{idle[0].engine} would find more, but {idle[0].available()[1]}"
        )
