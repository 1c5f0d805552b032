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
    # The engine read the line turned over (a page photographed upside down): see :func:`turned_over`.
    upside_down: bool = False

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
    """Segments that share a visual line within one column or block, left to right; ``block`` numbers the
    block (a paragraph, a column's run of lines, a table column, a sidebar) the line belongs to; ``cell`` is
    (table, row, column) for a line in a table cell, all numbered from 0 in reading order."""

    segments: list[Segment] = field(default_factory=list)
    block: int = 0
    cell: tuple[int, int, int] | None = None
    # The drawn boxes (see :func:`find_frames`) the line is inside, by index, and the smallest of them.
    frames: frozenset[int] = frozenset()
    frame_box: tuple[float, float, float, float] | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)

    @property
    def score(self) -> float:
        # Weighted by length so one short low-confidence fragment does not sink a long line.
        n = sum(max(len(s.text), 1) for s in self.segments)
        return sum(s.score * max(len(s.text), 1) for s in self.segments) / max(n, 1)

    @property
    def height(self) -> float:
        return float(np.median([_box_height(s.box) for s in self.segments]))

    @property
    def cy(self) -> float:
        return float(np.mean([s.box[:, 1].mean() for s in self.segments]))

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


def turned_over(segments: list[Segment], width: float, height: float) -> None:
    """Turn the segments' boxes by 180 degrees within a ``width`` x ``height`` image, in place: an upside-down
    page is laid out as its reader sees it (turned back), and its boxes then turned again, into the image's own
    pixels."""
    for seg in segments:
        seg.box = order_quad(np.column_stack([width - seg.box[:, 0], height - seg.box[:, 1]]))


# Boxes on one row are one line when the blank between them is at most this many line heights and not a
# column gutter (upscaled small images get one box per word from the detector; table cells touch).
JOIN_GAP = 0.6
# How far above and below a blank to look for the rows that make it a gutter, in line heights.
GUTTER_ROWS = 3.0
# Lines one above the other with at most this many line heights of blank between them, and overlapping
# horizontally, are one block (a paragraph, a list, a table column).
BLOCK_GAP = 1.0
# Lines of two side-by-side blocks are rows of one table when their centres agree to this fraction of a
# line height, for most of the lines.
ROW_ALIGN = 0.25
ROW_SHARE = 0.6
# Side-by-side groups all at least this many line heights wide are columns of prose, never a table (every
# table of the real set has a column at most 11.6 line heights wide; prose columns of the layout pages: 20+).
PROSE_WIDTH = 15.0
# A blank of more than this many line heights between two lines of a block is a paragraph break.
PARA_GAP = 0.5


def find_frames(gray: np.ndarray, line_height: float) -> list[tuple[float, float, float, float]]:
    """The insides of the closed boxes drawn on a page (a sidebar's border, a note's frame, a table's cells), as
    (x1, y1, x2, y2): holes in the mask of the straight rules (see below). A box cut off by the
    image's edge is no hole and is not found."""
    if gray.size == 0 or line_height <= 0:
        return []
    light = float(np.median(gray)) >= 128
    # Rules are darker than the paper (lighter on a dark page); a sidebar's tinted background is not.
    ink = ((gray < 215) if light else (gray > 40)).astype(np.uint8) * 255
    # Across: 1.5 line heights (no glyph stroke is that long); down: one line height (a one-line table cell's
    # side; a glyph's strokes stay within its ink, shorter than the detector's box).
    across, down = max(int(1.5 * line_height), 12), max(int(line_height), 8)
    rules = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (across, 1)))
    rules |= cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, down)))
    # Closed across the pixel or two a corner or a double border leaves open.
    rules = cv2.dilate(rules, np.ones((5, 5), np.uint8))
    contours, hierarchy = cv2.findContours(rules, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    out = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0], strict=True):
        x, y, w, h = cv2.boundingRect(contour)
        if parent >= 0 and w >= line_height and h >= line_height:
            out.append((float(x), float(y), float(x + w), float(y + h)))
    return out


def _inside_frames(line: Line, frames: list[tuple[float, float, float, float]]) -> frozenset[int]:
    x1, y1, x2, y2 = line.bbox()
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return frozenset(k for k, (fx1, fy1, fx2, fy2) in enumerate(frames) if fx1 <= cx <= fx2 and fy1 <= cy <= fy2)


def group_lines(
    segments: list[Segment],
    overlap: float = 0.5,
    join_gap: float | None = JOIN_GAP,
    frames: list[tuple[float, float, float, float]] | None = None,
) -> list[Line]:
    """Put the engine's text boxes in reading order as lines, and group the lines into blocks.

    Each box is one line: the detector already cuts lines at columns, table cells, sidebars and price tags,
    and joining its boxes, even touching ones, lost on the real set (benchmarks/real_images.py, onnx: CER
    0.105 kept apart, 0.119 joined across blanks under 0.3 line heights, 0.159 under 1 line height: table cells'
    boxes touch). ``join_gap`` joins boxes of one row (vertical extents overlapping by ``overlap`` of the
    smaller, not stacked) whose blank is at most that many line heights, for engines that cut lines at spaces.

    Blocks: lines stacked at most BLOCK_GAP line heights apart and overlapping horizontally (a paragraph, a
    list, a table column, a sidebar). Reading order: an X-Y cut on the blocks, columns left to right, each
    top to bottom; side-by-side blocks whose lines sit on common rows are a table, read row by row."""
    if not segments:
        return []
    if join_gap is None:
        lines = [Line([seg]) for seg in segments]
    else:
        lines = [piece for row in _rows(segments, overlap) for piece in _split_row(row, join_gap, segments)]
    for line in lines:
        line.frames = _inside_frames(line, frames or [])
        if line.frames:
            line.frame_box = min((frames[k] for k in line.frames), key=lambda f: (f[2] - f[0]) * (f[3] - f[1]))
    blocks = _blocks(lines)
    for k, block in enumerate(blocks):
        for line in block:
            line.block = k
    ordered = _order(blocks)
    # Number blocks, tables and their rows in reading order.
    renumber: dict[int, int] = {}
    tables: dict[int, int] = {}
    rows: dict[tuple[int, int], int] = {}
    for line in ordered:
        line.block = renumber.setdefault(line.block, len(renumber))
        if line.cell is not None:
            table, row, col = line.cell
            t = tables.setdefault(table, len(tables))
            line.cell = (t, rows.setdefault((table, row), sum(k[0] == table for k in rows)), col)
    return ordered


def _rows(items: list, overlap: float) -> list[list]:
    """Items (segments or lines) grouped by vertical overlap, top to bottom."""
    spans = []
    for it in items:
        box = it.box if isinstance(it, Segment) else None
        if box is not None:
            h, cy = _box_height(box), float(box[:, 1].mean())
        else:
            h, cy = it.height, it.cy
        spans.append((cy - h / 2, cy + h / 2))
    order = sorted(range(len(items)), key=lambda i: (spans[i][0] + spans[i][1]) / 2)
    rows: list[tuple[float, float, list[int]]] = []
    for i in order:
        top, bottom = spans[i]
        for k, (lt, lb, members) in enumerate(rows):
            inter = min(bottom, lb) - max(top, lt)
            smaller = min(bottom - top, lb - lt)
            if smaller > 0 and inter >= overlap * smaller and not any(_stacked(items[i], items[j]) for j in members):
                # Keep the row's extent from growing too much: use the mean of its members.
                members.append(i)
                rows[k] = (
                    min(lt, top) if len(members) < 2 else (lt + top) / 2,
                    max(lb, bottom) if len(members) < 2 else (lb + bottom) / 2,
                    members,
                )
                break
        else:
            rows.append((top, bottom, [i]))
    rows.sort(key=lambda t: (t[0] + t[1]) / 2)
    return [[items[i] for i in members] for _, _, members in rows]


def _stacked(a: Segment | Line, b: Segment | Line) -> bool:
    """Two boxes that share most of their horizontal extent are one above the other, never on one line
    (tightly set lines of a narrow table column overlap vertically)."""
    ax1, ax2 = (a.x1, a.x2) if isinstance(a, Segment) else a.bbox()[::2]
    bx1, bx2 = (b.x1, b.x2) if isinstance(b, Segment) else b.bbox()[::2]
    return min(ax2, bx2) - max(ax1, bx1) > 0.5 * min(ax2 - ax1, bx2 - bx1)


def _split_row(row: list[Segment], gap: float, everything: list[Segment]) -> list[Line]:
    """One row of boxes, left to right, joined where the blank between two boxes is at most ``gap`` heights
    and is not a column gutter (see :func:`_gutter`)."""
    row = sorted(row, key=lambda s: s.x1)
    height = float(np.median([_box_height(s.box) for s in row]))
    cy = float(np.mean([s.box[:, 1].mean() for s in row]))
    lines = [Line([row[0]])]
    right = row[0].x2
    for seg in row[1:]:
        if seg.x1 - right > gap * height or _gutter(right, seg.x1, cy, height, everything):
            lines.append(Line([seg]))
        else:
            lines[-1].segments.append(seg)
        right = max(right, seg.x2)
    return lines


def _gutter(left: float, right: float, cy: float, height: float, everything: list[Segment]) -> bool:
    """Whether the blank between ``left`` and ``right`` on the row at ``cy`` runs on through the rows around
    it (a table's or a page's column gutter: the boxes of the rows near it stop at it too) rather than being
    a word space the detector cut at (the rows around it run across it, or there are none)."""
    mid = (left + right) / 2
    near = [
        s
        for s in everything
        if height * 0.5 < abs(float(s.box[:, 1].mean()) - cy) <= GUTTER_ROWS * height
        and s.x1 < right + 2 * height
        and s.x2 > left - 2 * height
    ]
    if not near:
        return False
    # Running across: well past both sides (the detector's boxes reach a little beyond the ink).
    crossing = sum(s.x1 < mid - 0.5 * height and s.x2 > mid + 0.5 * height for s in near)
    return crossing < 0.5 * len(near)


def _blocks(lines: list[Line]) -> list[list[Line]]:
    """Lines joined into blocks: one above the other, at most BLOCK_GAP line heights apart, overlapping in x."""
    boxes = [ln.bbox() for ln in lines]
    heights = [ln.height for ln in lines]
    parent = list(range(len(lines)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(lines)), key=lambda i: boxes[i][1])
    for a, i in enumerate(order):
        for j in order[a + 1 :]:
            h = max(heights[i], heights[j])
            if boxes[j][1] - boxes[i][3] > BLOCK_GAP * h:
                if boxes[j][1] - boxes[i][3] > 4 * h:  # sorted by top: nothing further down can join i
                    break
                continue
            if boxes[j][1] - boxes[i][3] < -0.5 * h:  # the same row (different cells): not stacked
                continue
            # A drawn box's border separates what is inside it from what is outside (a note inside a column).
            if min(boxes[i][2], boxes[j][2]) > max(boxes[i][0], boxes[j][0]) and lines[i].frames == lines[j].frames:
                parent[find(j)] = find(i)
    groups: dict[int, list[Line]] = {}
    for i in order:
        groups.setdefault(find(i), []).append(lines[i])
    return list(groups.values())


def _extent(block: list[Line], frame: bool = True) -> list[float]:
    """The box around a block's lines; for a block inside a drawn box of its own, that box too (``frame``: a
    table's cells in one row share their top and bottom, a sidebar's frame reaches past its text)."""
    boxes = [ln.bbox() for ln in block]
    if frame and _framed(block):
        boxes.append(list(block[0].frame_box))
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _cut(blocks: list[list[Line]], axis: int) -> list[list[list[Line]]]:
    """Blocks split into groups at blank bands across the whole region (axis 0: columns, 1: bands)."""
    ext = sorted(((_extent(b), b) for b in blocks), key=lambda t: t[0][axis])
    groups: list[list[list[Line]]] = []
    end = -np.inf
    for e, b in ext:
        if e[axis] >= end:
            groups.append([])
        groups[-1].append(b)
        end = max(end, e[axis + 2])
    return groups


def _order(blocks: list[list[Line]]) -> list[Line]:
    """Reading order of a region's lines (a recursive X-Y cut, columns first)."""
    if len(blocks) == 1:
        return _read_rows(blocks[0])
    if all(_framed(b) for b in blocks):
        cells = _read_cells(blocks)
        if cells is not None:
            return cells
    columns = _cut(blocks, 0)
    if len(columns) > 1:
        if _table_rows(columns):
            return _read_rows([ln for b in blocks for ln in b], in_table=True)
        return [ln for col in columns for ln in _order(col)]
    bands = _cut(blocks, 1)
    if len(bands) > 1:
        return [ln for band in bands for ln in _order(band)]
    merged = _merge_nested_cells(blocks)
    if merged is not None:
        return _order(merged)
    merged = _merge_nested_cells(blocks)
    if merged is not None:
        return _order(merged)
    split = _split_below_boxes(blocks)
    if split is not None:
        return _order(split)
    # Overlapping blocks with no clean cut: a table when its blocks sit on common rows (a cell box that the
    # detector ran across a column boundary leaves no clean cut), else by their tops, then left to right.
    if _table_rows([[b] for b in blocks]):
        return _read_rows([ln for b in blocks for ln in b], in_table=True)
    return [ln for b in sorted(blocks, key=lambda b: (_extent(b)[1], _extent(b)[0])) for ln in _order([b])]


def _framed(block: list[Line]) -> bool:
    """Whether the block's lines are all inside one drawn box of their own (a table cell, a framed note)."""
    return block[0].frame_box is not None and all(ln.frame_box == block[0].frame_box for ln in block)


def _read_cells(blocks: list[list[Line]]) -> list[Line] | None:
    """Blocks each in its own drawn box, set out as a grid (a table with borders): row by row, each row's cells
    left to right, each cell whole, a cell that wraps onto more lines included; the lines get their ``cell``.
    None when the boxes are not in rows of two or more side by side."""
    bands = _cut(blocks, 1)
    rows = [sorted(_cut(band, 0), key=lambda col: _extent([ln for b in col for ln in b])[0]) for band in bands]
    if sum(len(row) > 1 for row in rows) < max(2, len(rows) // 2):
        return None
    table = id(blocks[0][0])
    out: list[Line] = []
    for r, row in enumerate(rows):
        for c, col in enumerate(row):
            for ln in _order(col):
                ln.cell = (table, r, c) if len(row) > 1 else ln.cell
                out.append(ln)
    return out


def _read_rows(lines: list[Line], in_table: bool = False) -> list[Line]:
    """Lines by visual rows, top to bottom, each left to right. Rows with lines side by side are table rows
    (``in_table``: the region is a table; else where at least two such rows follow each other), and their
    lines get a ``cell``, the column being the position in the row. In a table, a row close under the one
    above with nothing under its first cell continues it (cells wrapping onto more lines): its lines join the cell
    they sit under, and each cell is read whole before the next one."""
    if in_table and 2 * sum(ln.frame_box is not None for ln in lines) >= len(lines):
        return _read_framed_rows(lines)
    rows = [sorted(row, key=lambda ln: ln.bbox()[0]) for row in _rows(lines, 0.5)]
    if all(len(row) == 1 for row in rows):
        return [row[0] for row in rows]
    wide = [len(row) > 1 for row in rows]
    groups: list[list[int]] = []
    for i, row in enumerate(rows):
        head = rows[groups[-1][0]] if groups else None
        close = (
            i > 0 and min(ln.bbox()[1] for ln in row) - max(ln.bbox()[3] for ln in rows[i - 1]) < 0.5 * row[0].height
        )
        if in_table and head and len(head) > 1 and close and row[0].bbox()[0] >= head[0].bbox()[2]:
            groups[-1].append(i)
        else:
            groups.append([i])

    def tabular(group: list[int]) -> bool:
        i = group[0]  # outside a known table, two rows of side-by-side lines in a row make one
        return wide[i] and (in_table or (i > 0 and wide[i - 1]) or (i + 1 < len(rows) and wide[i + 1]))

    table = id(rows[0][0])
    out: list[Line] = []
    for r, group in enumerate(groups):
        if not tabular(group):
            out.extend(ln for i in group for ln in rows[i])
            continue
        head = rows[group[0]]
        cells = sorted((_under(ln, head), i, k) for i in group for k, ln in enumerate(rows[i]))
        for col, i, k in cells:
            rows[i][k].cell = (table, r, col)
            out.append(rows[i][k])
    return out


def _read_framed_rows(lines: list[Line]) -> list[Line]:
    """A table whose cells have borders: the lines of one cell's box are one unit; units whose boxes share a
    row (the middle of one inside the other's top and bottom) are read left to right, each cell top to bottom."""
    units: dict[object, list[Line]] = {}
    for ln in lines:
        units.setdefault(ln.frame_box or id(ln), []).append(ln)
    boxes = {k: list(k) if isinstance(k, tuple) else _extent(v, frame=False) for k, v in units.items()}
    rows: list[list[object]] = []
    for k in sorted(units, key=lambda k: boxes[k][1]):
        mid = (boxes[k][1] + boxes[k][3]) / 2
        if rows and boxes[rows[-1][0]][1] <= mid <= boxes[rows[-1][0]][3]:
            rows[-1].append(k)
        else:
            rows.append([k])
    table = id(lines[0])
    out: list[Line] = []
    for r, row in enumerate(rows):
        for c, k in enumerate(sorted(row, key=lambda k: boxes[k][0])):
            for ln in sorted(units[k], key=lambda ln: (ln.bbox()[1], ln.bbox()[0])):
                ln.cell = (table, r, c) if len(row) > 1 else None
                out.append(ln)
    return out


def _under(line: Line, head: list[Line]) -> int:
    """Which of a table row's first-line cells ``line`` sits under: the last one starting left of it."""
    x = line.bbox()[0]
    return max((k for k, h in enumerate(head) if h.bbox()[0] <= x + 0.5 * line.height), default=0)


def _merge_nested_cells(blocks: list[list[Line]]) -> list[list[Line]] | None:
    """Blocks with no clean cut where one lies inside another's extent and its lines sit on the other's rows
    (ROW_ALIGN, for ROW_SHARE of them): cells of one table that the blank between two rows split off, merged
    back. A box floated beside text is not merged: its lines keep a pitch of their own. None when none is."""
    for a in blocks:
        ea = _extent(a)
        for b in blocks:
            eb = _extent(b)
            h = float(np.median([ln.height for ln in b]))
            inside = eb[0] >= ea[0] - h and eb[2] <= ea[2] + h and eb[1] >= ea[1] - h and eb[3] <= ea[3] + h
            if b is a or not inside or len(b) < 2:
                continue
            on_rows = sum(any(abs(ln.cy - o.cy) <= ROW_ALIGN * min(ln.height, o.height) for o in a) for ln in b)
            if on_rows >= ROW_SHARE * len(b):
                return [a + b if blk is a else blk for blk in blocks if blk is not b]
    return None


def _merge_nested_cells(blocks: list[list[Line]]) -> list[list[Line]] | None:
    """Blocks with no clean cut where one lies inside another's extent and no drawn box holds it apart: cells of
    one table that a blank between rows split off, merged back (a sidebar's frame holds its lines apart from the
    text around it). None when there is no such pair."""
    for a in blocks:
        ea = _extent(a)
        for b in blocks:
            if b is a:
                continue
            eb = _extent(b)
            h = float(np.median([ln.height for ln in b]))
            inside = eb[0] >= ea[0] - h and eb[2] <= ea[2] + h and eb[1] >= ea[1] - h and eb[3] <= ea[3] + h
            boxed = frozenset.intersection(*(ln.frames for ln in b)) - frozenset().union(*(ln.frames for ln in a))
            if inside and not boxed and any(ln.frames for ln in b):
                return [a + b if blk is a else blk for blk in blocks if blk is not b]
    return None


def _split_below_boxes(blocks: list[list[Line]]) -> list[list[Line]] | None:
    """Blocks with no clean cut because one runs on under a box beside it (a column under a floated sidebar,
    then a paragraph across the page): the block split at its first paragraph gap below the box's bottom,
    so the column beside the box and what follows it become separate bands. None when there is no such gap."""
    for k, a in enumerate(blocks):
        ea = _extent(a)
        for b in blocks:
            eb = _extent(b)
            if b is a or eb[1] < ea[1] or eb[3] >= ea[3] or not (ea[0] <= eb[2] and eb[0] <= ea[2]):
                continue
            lines = sorted(a, key=lambda ln: ln.bbox()[1])
            for i in range(1, len(lines)):
                top, prev = lines[i].bbox()[1], lines[i - 1].bbox()[3]
                # The first paragraph below the box: starting under its drawn frame, or, without one, after a line
                # that reaches down to its text's last line.
                below = top >= eb[3] if _framed(b) else prev >= eb[3] - 0.5 * lines[i].height
                if below and top - prev > PARA_GAP * lines[i].height:
                    return blocks[:k] + [lines[:i], lines[i:]] + blocks[k + 1 :]
    return None


def _table_rows(columns: list[list[list[Line]]]) -> bool:
    """Side-by-side groups are a table when most of their lines have a partner on the same row next door,
    unless every group is as wide as a column of prose (PROSE_WIDTH line heights): columns set on one line
    grid (CSS columns, CJK text of one size) have partners on every row too."""
    lines = [[ln for b in col for ln in b] for col in columns]
    if sum(len(c) > 1 for c in lines) < 2:
        return False
    h = float(np.median([ln.height for c in lines for ln in c]))
    widths = [_extent([ln for b in col for ln in b])[2] - _extent([ln for b in col for ln in b])[0] for col in columns]
    if min(widths) >= PROSE_WIDTH * h:
        return False
    aligned = 0
    for k, col in enumerate(lines):
        others = [ln for j, c in enumerate(lines) if j != k for ln in c]
        for ln in col:
            if any(abs(ln.cy - o.cy) <= ROW_ALIGN * min(ln.height, o.height) for o in others):
                aligned += 1
    return aligned >= ROW_SHARE * sum(map(len, lines))


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


def _restore_by_chunks(text: str, gaps: list[tuple[float, float, float]], span: tuple[float, float] | None) -> str:
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
    bounds = [span[0]] + [x for g in cuts for x in g] + [span[1]]
    chunk_w = [max(bounds[2 * j + 1] - bounds[2 * j], 1e-6) for j in range(len(cuts) + 1)]
    if len(chunk_w) > len(chars):
        return text
    est = [w for c, w in zip(text, _glyph_widths(text), strict=True) if not c.isspace()]
    starts_ends = _fit_runs(chars, positions, est, chunk_w)
    if starts_ends is None:
        return text
    cut_after = {positions[e - 1] for _, e in starts_ends[:-1]}  # last char index of each run but the final one
    out = []
    for idx, c in enumerate(text):
        out.append(c)
        if idx in cut_after and idx + 1 < len(text) and not text[idx + 1].isspace():
            if is_latin_word_char(c) and is_latin_word_char(text[idx + 1]):
                out.append(" ")
    return "".join(out)


def _fit_runs(
    chars: list[str], positions: list[int], est: list[float], chunk_w: list[float]
) -> list[tuple[int, int]] | None:
    """Split ``chars`` into ``len(chunk_w)`` runs whose estimated widths best match the chunks: (start, end)
    of each run, left to right, or None when no split fits (a run 40% off its chunk's width)."""
    n, m = len(chars), len(chunk_w)
    has_space_after = [positions[k + 1] > positions[k] + 1 for k in range(n - 1)]
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
            if (i < n and j < m and not _cut_allowed(chars, i)) or (j == m and i != n):
                continue
            for k in range(j - 1, i):
                # A space the engine read inside a run means the runs are wrong.
                if best[j - 1][k] == inf or any(has_space_after[t] for t in range(k, i - 1)):
                    continue
                err = (prefix[i] - prefix[k]) / total_e - chunk_w[j - 1] / total_w
                cost = best[j - 1][k] + err * err
                if cost < best[j][i]:
                    best[j][i], back[j][i] = cost, k
    if best[m][n] == inf:
        return None
    runs, i = [], n
    for j in range(m, 0, -1):
        runs.append((back[j][i], i))
        i = back[j][i]
    runs.reverse()
    for (k, e), w in zip(runs, chunk_w, strict=True):
        share = w / total_w
        if abs((prefix[e] - prefix[k]) / total_e - share) > MAX_CHUNK_MISFIT * share:
            return None
    return runs


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
    if any(script_of(c) in _CJK_SCRIPTS for c in seg.text):
        # Glyph widths mislead in mixed lines (a Latin word between Han characters was split on the real set).
        return seg.text
    crop = rectified_crop(gray, seg.box)
    if crop.size == 0:
        return seg.text
    return restore_spaces(seg.text, seg.char_x, ink_gaps(crop), ink_span(crop))


_CJK_SCRIPTS = ("han", "kana", "hangul")


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
