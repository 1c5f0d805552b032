"""From an OCR engine's text boxes to what a reader sees: lines in reading order, words separated,
and which script the text is in. Engine-agnostic: the OCR engines only supply boxes, text and scores.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass
class Segment:
    """One text box from an engine: 4 points clockwise from top-left, its text and score.

    ``char_x`` optionally gives, for each non-space character of ``text`` in order, its centre along
    the box's reading direction, as a fraction 0..1 of the box width (from the recogniser's CTC
    columns). It lets :func:`restore_spaces` put a space found in the image between the right pair."""

    box: np.ndarray
    text: str
    score: float
    char_x: list[float] | None = None

    @property
    def x1(self) -> float:
        return float(self.box[:, 0].min())

    @property
    def x2(self) -> float:
        return float(self.box[:, 0].max())

    @property
    def y1(self) -> float:
        return float(self.box[:, 1].min())

    @property
    def y2(self) -> float:
        return float(self.box[:, 1].max())


@dataclass
class Line:
    """Segments that share a visual line, left to right."""

    segments: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)

    @property
    def score(self) -> float:
        # Weighted by length so one short low-confidence fragment does not sink a long line.
        n = sum(max(len(s.text), 1) for s in self.segments)
        return sum(s.score * max(len(s.text), 1) for s in self.segments) / max(n, 1)

    def quad(self) -> list[list[float]]:
        """The line's quadrilateral: the segment box itself, or the rotated rectangle around all of them."""
        if len(self.segments) == 1:
            return self.segments[0].box.astype(float).tolist()
        pts = np.concatenate([s.box for s in self.segments]).astype(np.float32)
        quad = cv2.boxPoints(cv2.minAreaRect(pts))
        return order_quad(quad).tolist()

    def bbox(self) -> list[float]:
        return [
            min(s.x1 for s in self.segments),
            min(s.y1 for s in self.segments),
            max(s.x2 for s in self.segments),
            max(s.y2 for s in self.segments),
        ]


def order_quad(pts: np.ndarray) -> np.ndarray:
    """Order 4 points clockwise from the top-left (smallest x+y), as PP-OCR boxes are."""
    pts = np.asarray(pts, dtype=np.float64).reshape(4, 2)
    centre = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(angles)]  # clockwise in image coordinates (y down)
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def group_lines(segments: list[Segment], overlap: float = 0.5) -> list[Line]:
    """Group boxes into visual lines and put everything in reading order.

    Two boxes share a line when their vertical extents overlap by at least ``overlap`` of the smaller
    box's height (the centre line of a tilted box is used, so a few degrees of rotation is fine).
    Lines come top to bottom, segments within a line left to right."""
    if not segments:
        return []
    # Vertical extent of each box at its own centre: robust to small rotations of long lines.
    spans = []
    for s in segments:
        h = _box_height(s.box)
        cy = float(s.box[:, 1].mean())
        spans.append((cy - h / 2, cy + h / 2))
    order = sorted(range(len(segments)), key=lambda i: (spans[i][0] + spans[i][1]) / 2)
    lines: list[tuple[float, float, list[int]]] = []
    for i in order:
        top, bottom = spans[i]
        placed = False
        for k, (lt, lb, members) in enumerate(lines):
            inter = min(bottom, lb) - max(top, lt)
            smaller = min(bottom - top, lb - lt)
            if smaller > 0 and inter >= overlap * smaller:
                # Keep the line's extent from growing too much: use the mean of its members.
                members.append(i)
                lines[k] = (
                    min(lt, top) if len(members) < 2 else (lt + top) / 2,
                    max(lb, bottom) if len(members) < 2 else (lb + bottom) / 2,
                    members,
                )
                placed = True
                break
        if not placed:
            lines.append((top, bottom, [i]))
    lines.sort(key=lambda t: (t[0] + t[1]) / 2)
    return [Line(sorted((segments[i] for i in members), key=lambda s: s.x1)) for _, _, members in lines]


def _box_height(box: np.ndarray) -> float:
    return float((np.linalg.norm(box[3] - box[0]) + np.linalg.norm(box[2] - box[1])) / 2)


# --- word spacing --------------------------------------------------------------------------------
def is_latin_word_char(ch: str) -> bool:
    """Letters and digits of alphabetic scripts (not CJK): the ones that need spaces between words."""
    if ch.isdigit():
        return ch.isascii()
    if not ch.isalpha():
        return False
    return script_of(ch) in ("latin", "greek", "cyrillic")


def ink_gaps(crop_gray: np.ndarray) -> list[tuple[float, float, float]]:
    """Blank column runs inside a rectified text-line crop, between the first and last inked column.

    Each gap is ``(start, end, width)``: start and end as fractions of the crop width, and the width
    relative to the height of the ink (cap/ascender to descender), so it compares across font sizes."""
    profile = _ink_columns(crop_gray)
    if profile is None:
        return []
    cols, ink_h, first, last = profile
    w = len(cols)
    gaps: list[tuple[float, float, float]] = []
    start = None
    for x in range(first, last + 1):
        if not cols[x]:
            if start is None:
                start = x
        elif start is not None:
            gaps.append((start / w, x / w, (x - start) / ink_h))
            start = None
    return gaps


def ink_span(crop_gray: np.ndarray) -> tuple[float, float] | None:
    """First and last inked column of a text-line crop, as fractions of its width."""
    profile = _ink_columns(crop_gray)
    if profile is None:
        return None
    cols, _, first, last = profile
    return first / len(cols), (last + 1) / len(cols)


def _ink_columns(crop_gray: np.ndarray) -> tuple[np.ndarray, float, int, int] | None:
    h, w = crop_gray.shape[:2]
    if h < 4 or w < 4:
        return None
    _, ink = cv2.threshold(crop_gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ink = ink > 0
    if ink.mean() > 0.5:  # text is the minority colour: dark text on light, or light on dark
        ink = ~ink
    rows = np.flatnonzero(ink.sum(axis=1) >= max(1, int(0.01 * w)))
    # A column is inked when enough of it is: stray noise pixels must not split or fill a gap.
    cols = ink.sum(axis=0) >= max(1, int(round(0.03 * h)))
    inked = np.flatnonzero(cols)
    if inked.size == 0 or rows.size == 0:
        return None
    return cols, float(rows[-1] - rows[0] + 1), int(inked[0]), int(inked[-1])


# A word space is 0.28-0.75 of the ink height in the fonts we tested (sans to monospace); gaps inside
# words stay under 0.3 (0.29 for "fr" in a monospace font, 0.25 for "15" in a serif one).
MIN_SPACE_GAP = 0.3
MIN_SPACE_GAP_UNCALIBRATED = 0.38
KNOWN_SPACE_FRACTION = 0.75
MAX_CHUNK_MISFIT = 0.4


def restore_spaces(
    text: str,
    char_x: list[float] | None,
    gaps: list[tuple[float, float, float]],
    span: tuple[float, float] | None = None,
) -> str:
    """Insert the spaces the recogniser dropped between words of alphabetic script.

    ``char_x`` are the centres of the non-space characters (fractions of the line width) and ``gaps``
    the blank runs found in the image (:func:`ink_gaps`). A gap between two adjacent Latin
    letters/digits with no space between them becomes a space when it is as wide as a word space: at
    least 3/4 of the median gap at the spaces the recogniser did read on that line (and 0.3 ink
    heights), or 0.38 ink heights when the line has no space to calibrate on. Without character
    positions, they are estimated from typical glyph widths."""
    chars = [c for c in text if not c.isspace()]
    if len(chars) < 2 or not gaps:
        return text
    if char_x is None or len(char_x) != len(chars):
        return _restore_by_chunks(text, gaps, span)
    positions = [i for i, c in enumerate(text) if not c.isspace()]
    known: list[float] = []
    candidates: list[tuple[int, float]] = []
    for g0, g1, width in gaps:
        mid = (g0 + g1) / 2
        for k in range(len(chars) - 1):
            if char_x[k] < mid < char_x[k + 1]:
                a, b = positions[k], positions[k + 1]
                if b > a + 1:
                    known.append(width)
                elif is_latin_word_char(text[a]) and is_latin_word_char(text[b]):
                    candidates.append((a, width))
                break
    if known:
        threshold = max(KNOWN_SPACE_FRACTION * float(np.median(known)), MIN_SPACE_GAP)
    else:
        threshold = MIN_SPACE_GAP_UNCALIBRATED
    insert_after = {a for a, width in candidates if width >= threshold}
    if not insert_after:
        return text
    return "".join(c + (" " if i in insert_after else "") for i, c in enumerate(text))


def _restore_by_chunks(
    text: str, gaps: list[tuple[float, float, float]], span: tuple[float, float] | None
) -> str:
    """Word spacing when the engine gives no character positions.

    Word-sized gaps cut the inked line into chunks; the characters are split into as many runs, in
    order, so that each run's typical glyph width matches its chunk's width best (a small dynamic
    programme). Spaces the engine read must fall on a cut; a space is inserted at a cut between two
    Latin letters/digits. Lines where that does not fit are left as read."""
    if span is None:
        return text
    cuts = [(g0, g1) for g0, g1, width in gaps if width >= MIN_SPACE_GAP_UNCALIBRATED]
    if not cuts:
        return text
    chars = [c for c in text if not c.isspace()]
    positions = [i for i, c in enumerate(text) if not c.isspace()]
    has_space_after = [positions[k + 1] > positions[k] + 1 for k in range(len(chars) - 1)]
    bounds = [span[0]] + [x for g in cuts for x in g] + [span[1]]
    chunk_w = [max(bounds[2 * j + 1] - bounds[2 * j], 1e-6) for j in range(len(cuts) + 1)]
    n, m = len(chars), len(chunk_w)
    if m > n:
        return text
    est = [w for c, w in zip(text, _glyph_widths(text), strict=True) if not c.isspace()]
    total_w, total_e = sum(chunk_w), sum(est)
    prefix = [0.0]
    for e in est:
        prefix.append(prefix[-1] + e)
    inf = float("inf")
    # best[j][i]: cost of putting chars[:i] into the first j chunks.
    best = [[inf] * (n + 1) for _ in range(m + 1)]
    back = [[0] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0.0
    for j in range(1, m + 1):
        for i in range(j, n - (m - j) + 1):
            if i < n and j < m and not _cut_allowed(chars, i):
                continue
            if j == m and i != n:
                continue
            for k in range(j - 1, i):
                if best[j - 1][k] == inf:
                    continue
                # A space the engine read inside a run means the runs are wrong.
                if any(has_space_after[t] for t in range(k, i - 1)):
                    continue
                err = (prefix[i] - prefix[k]) / total_e - chunk_w[j - 1] / total_w
                cost = best[j - 1][k] + err * err
                if cost < best[j][i]:
                    best[j][i], back[j][i] = cost, k
    if best[m][n] == inf:
        return text
    ends, i = [], n
    for j in range(m, 0, -1):
        ends.append(i)
        i = back[j][i]
    # A poor fit (a run 40% off its chunk's width) means the chunks are not words: leave the line alone.
    starts = [back[j][e] for j, e in zip(range(m, 0, -1), ends, strict=True)]
    for j, (k, e) in enumerate(zip(reversed(starts), reversed(ends), strict=True)):
        share = chunk_w[j] / total_w
        if abs((prefix[e] - prefix[k]) / total_e - share) > MAX_CHUNK_MISFIT * share:
            return text
    cut_after = {positions[e - 1] for e in ends[1:]}  # last char index of each run but the final one
    out = []
    for idx, c in enumerate(text):
        out.append(c)
        if idx in cut_after and idx + 1 < len(text) and not text[idx + 1].isspace():
            if is_latin_word_char(c) and is_latin_word_char(text[idx + 1]):
                out.append(" ")
    return "".join(out)


def _cut_allowed(chars: list[str], i: int) -> bool:
    """Runs may split between any two characters except inside a number like 12.50 or 10:30."""
    a, b = chars[i - 1], chars[i]
    return not (a in ".,:" and b.isdigit()) and not (a.isdigit() and b in ".,:")


_NARROW = set("iljtfrI!|.,:;'`\"()[]")  # digits are tabular (about 0.6 em) in most fonts
_WIDE = set("mwMW@%")


def _glyph_widths(text: str) -> list[float]:
    """Typical advance widths in em of each character (spaces included)."""
    widths = []
    for c in text:
        if c.isspace():
            widths.append(0.3)
        elif unicodedata.east_asian_width(c) in ("W", "F"):
            widths.append(1.0)
        elif c in _NARROW:
            widths.append(0.3)
        elif c in _WIDE:
            widths.append(0.85)
        elif c.isupper():
            widths.append(0.68)
        elif c.isdigit():
            widths.append(0.6)
        else:
            widths.append(0.55)
    return widths


def rectified_crop(gray: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The text line under ``box`` (4 points clockwise from top-left), warped upright."""
    box = box.astype(np.float32)
    w = int(round(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3]))))
    h = int(round(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2]))))
    if w < 2 or h < 2:
        return np.zeros((0, 0), np.uint8)
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    m = cv2.getPerspectiveTransform(box, dst)
    return cv2.warpPerspective(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def fix_word_spacing(gray: np.ndarray, seg: Segment) -> str:
    """:func:`restore_spaces` for one segment, reading the gaps from the image under its box."""
    if not any(is_latin_word_char(c) for c in seg.text):
        return seg.text
    crop = rectified_crop(gray, seg.box)
    if crop.size == 0:
        return seg.text
    return restore_spaces(seg.text, seg.char_x, ink_gaps(crop), ink_span(crop))


# --- script --------------------------------------------------------------------------------------
def script_of(ch: str) -> str | None:
    """Coarse script of one character: latin, han, kana, hangul, cyrillic, greek, arabic, ... or None
    for digits, punctuation and spaces."""
    if not ch.isalpha():
        return None
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    for key, script in (
        ("CJK", "han"),
        ("HIRAGANA", "kana"),
        ("KATAKANA", "kana"),
        ("HANGUL", "hangul"),
        ("LATIN", "latin"),
        ("CYRILLIC", "cyrillic"),
        ("GREEK", "greek"),
        ("ARABIC", "arabic"),
        ("HEBREW", "hebrew"),
        ("DEVANAGARI", "devanagari"),
        ("THAI", "thai"),
    ):
        if name.startswith(key) or f" {key} " in f" {name} ":
            return script
    return "other"


def detect_script(text: str) -> tuple[str, dict[str, int]]:
    """The text's script: one name when it holds at least 90% of the letters, else ``mixed``;
    ``none`` when there are no letters. Returns it with the per-script letter counts."""
    counts: dict[str, int] = {}
    for ch in text:
        s = script_of(ch)
        if s:
            counts[s] = counts.get(s, 0) + 1
    total = sum(counts.values())
    if not total:
        return "none", counts
    top, n = max(counts.items(), key=lambda kv: kv[1])
    return (top if n >= 0.9 * total else "mixed"), counts


SCRIPT_LANG = {"latin": "en", "han": "zh", "kana": "ja", "hangul": "ko", "cyrillic": "ru"}
