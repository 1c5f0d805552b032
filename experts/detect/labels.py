"""Labels the detect expert answers to, their synonyms (English plurals, Chinese), and the words that ask
for contours or measurements instead."""

from __future__ import annotations

# Canonical labels, in the order `expert list` shows them. Each is served by a backend (see backends/).
LABELS: tuple[str, ...] = (
    "face",
    "eye",
    "smile",
    "cat",
    "person",
    "full body",
    "upper body",
    "lower body",
    "plate",
    "qr",
    "barcode",
)
SYNONYMS: dict[str, str] = {
    "faces": "face",
    "head": "face",
    "heads": "face",
    "人脸": "face",
    "脸": "face",
    "面孔": "face",
    "eyes": "eye",
    "眼睛": "eye",
    "smiles": "smile",
    "smiling": "smile",
    "微笑": "smile",
    "cats": "cat",
    "cat face": "cat",
    "cat faces": "cat",
    "猫": "cat",
    "people": "person",
    "persons": "person",
    "pedestrian": "person",
    "pedestrians": "person",
    "human": "person",
    "humans": "person",
    "man": "person",
    "men": "person",
    "woman": "person",
    "women": "person",
    "body": "person",
    "bodies": "person",
    "人": "person",
    "行人": "person",
    "fullbody": "full body",
    "full bodies": "full body",
    "upperbody": "upper body",
    "upper bodies": "upper body",
    "lowerbody": "lower body",
    "lower bodies": "lower body",
    "plates": "plate",
    "license plate": "plate",
    "licence plate": "plate",
    "license plates": "plate",
    "number plate": "plate",
    "车牌": "plate",
    "qr code": "qr",
    "qrcode": "qr",
    "qr codes": "qr",
    "qrcodes": "qr",
    "二维码": "qr",
    "barcodes": "barcode",
    "bar code": "barcode",
    "ean": "barcode",
    "upc": "barcode",
    "条形码": "barcode",
    "条码": "barcode",
}
MEASURE_WORDS = {
    "measure",
    "measurement",
    "measurements",
    "size",
    "sizes",
    "ratio",
    "ratios",
    "pixels",
    "dimensions",
    "resolution",
    "dpi",
    "尺寸",
    "比例",
    "像素",
    "大小",
    "分辨率",
}
CONTOUR_WORDS = {"contours", "contour", "shapes", "shape", "objects", "count", "轮廓", "形状", "数量"}


def canonical_label(query: str) -> str | None:
    """The detector label for a query word (plural, synonym and Chinese forms accepted), or None."""
    q = " ".join(query.strip().lower().replace("_", " ").replace("-", " ").split())
    if q in LABELS:
        return q
    if q in SYNONYMS:
        return SYNONYMS[q]
    if q.endswith("s") and q[:-1] in LABELS:
        return q[:-1]
    return None


_IRREGULAR = {
    "person": "people",
    "full body": "full bodies",
    "upper body": "upper bodies",
    "lower body": "lower bodies",
    "qr": "QR codes",
    "barcode": "barcodes",
    "polygon": "polygons",
    "ellipse": "ellipses",
}


def plural(word: str, n: int) -> str:
    """``word`` as said of ``n`` things ("1 face", "3 people", "2 QR codes")."""
    if n == 1:
        return "QR code" if word == "qr" else word
    return _IRREGULAR.get(word, word + "s")
