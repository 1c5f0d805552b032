"""Reading order of hard layouts from text boxes: tables row by row, a floated sidebar as its own block, CJK
columns one after the other (the boxes are the engine's; the real pages are in tests/test_real_ocr.py)."""

from __future__ import annotations

import numpy as np

from experts.schema import TextLine
from experts.text_layout import Segment, group_lines
from router.core.context import text_items


def _seg(x1: float, y1: float, x2: float, y2: float, text: str) -> Segment:
    return Segment(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], float), text, 0.9)


def _column(x1: float, x2: float, y: float, texts: list[str], pitch: float = 18, h: float = 16) -> list[Segment]:
    return [_seg(x1, y + pitch * i, x2, y + pitch * i + h, t) for i, t in enumerate(texts)]


def test_table_rows_are_read_cell_by_cell_and_a_wrapped_cell_whole():
    rows = [("Question", ["Answer"]), ("X.500 naming context", ["dc=falcot,dc=com"])]
    rows += [("Bind credentials", ["the administrative", "password"]), ("Create DUAConfigProfile", ["no"])]
    segs, y = [], 0.0
    for left, right in rows:
        segs.append(_seg(10, y, 10 + 9 * len(left), y + 16, left))
        segs += _column(300, 300 + 9 * max(map(len, right)), y, right)
        y += 18 * len(right) + 8  # cell padding between rows
    lines = group_lines(segs[::-1])  # the engine's order does not matter
    assert [ln.text for ln in lines] == [t for left, right in rows for t in (left, *right)]
    assert [ln.cell for ln in lines[:6]] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1)]
    assert lines[6].cell == (0, 2, 1) and lines[7].cell == (0, 3, 0)


def test_table_cells_stay_left_to_right_when_a_paragraph_joins_the_table():
    """The issue's case: the code font's taller box sat higher than its row's label, and the whole table
    was one block with the paragraph under it: 'dc=falcot,dc=com' was read before 'X.500 naming context'."""
    segs = []
    for i, (label, value) in enumerate([("Question", "Answer"), ("X.500 naming context", "dc=falcot,dc=com")]):
        y = 22 * i
        segs += [_seg(10, y + 1, 160, y + 17, label), _seg(300, y - 1, 450, y + 18, value)]
    segs.append(_seg(5, 52, 600, 68, "You might notice that we extend the PERL5LIB variable."))
    texts = [ln.text for ln in group_lines(segs)]
    assert texts == ["Question", "Answer", "X.500 naming context", "dc=falcot,dc=com", segs[-1].text]


def test_floated_sidebar_is_its_own_block_after_the_column_beside_it():
    column = _column(10, 420, 0, [f"column line {i}" for i in range(8)])
    sidebar = _column(460, 700, 4, [f"sidebar line {i}" for i in range(6)], pitch=16, h=14)
    below = _column(10, 700, 8 * 18 + 12, ["a paragraph across the page", "and its second line"])
    lines = group_lines(below + sidebar + column)
    texts = [ln.text for ln in lines]
    assert texts == [s.text for s in column + sidebar + below]
    assert len({ln.block for ln in lines[8:14]}) == 1 and lines[8].block not in {ln.block for ln in lines[:8]}
    assert all(ln.cell is None for ln in lines)


def test_cjk_columns_are_read_one_after_the_other():
    """Two columns of Chinese prose on one line grid (a CSS multi-column page): every line has a partner on
    its row, yet it is no table."""
    left = _column(10, 380, 0, [f"第{i}行左栏的中文段落文字内容" for i in range(10)])
    right = _column(420, 790, 0, [f"第{i}行右栏的中文段落文字内容" for i in range(10)])
    texts = [ln.text for ln in group_lines(right + left)]
    assert texts == [s.text for s in left + right]


def test_context_shows_a_table_row_as_cells():
    lines = [
        TextLine(text="Table 11.1", score=0.9),
        TextLine(text="Question", score=0.9, cell=[0, 0, 0]),
        TextLine(text="Answer", score=0.9, cell=[0, 0, 1]),
        TextLine(text="Bind credentials", score=0.9, cell=[0, 1, 0]),
        TextLine(text="the administrative", score=0.9, cell=[0, 1, 1]),
        TextLine(text="password", score=0.9, cell=[0, 1, 1]),
        TextLine(text="After the table.", score=0.9),
    ]
    assert text_items(lines) == [
        "Table 11.1",
        "Question | Answer",
        "Bind credentials | the administrative password",
        "After the table.",
    ]


# --- drawn boxes (issue 25) ------------------------------------------------------------------------------------
def test_drawn_boxes_are_found_and_an_open_one_is_not():
    import cv2

    from experts.text_layout import find_frames

    page = np.full((400, 600), 255, np.uint8)
    cv2.rectangle(page, (50, 40), (300, 200), 170, 2)  # a sidebar's grey border
    cv2.rectangle(page, (350, 40), (550, 420), 0, 1)  # cut off by the page's bottom edge: not closed
    cv2.line(page, (50, 300), (300, 300), 0, 1)  # a rule under a heading: no box
    frames = find_frames(page, line_height=16)
    assert len(frames) == 1
    x1, y1, x2, y2 = frames[0]
    assert 50 <= x1 <= 56 and 40 <= y1 <= 46 and 294 <= x2 <= 300 and 194 <= y2 <= 200


def test_a_boxed_note_inside_a_column_is_its_own_block_in_the_flow():
    """A note framed inside a column, text above and below it: without its frame it was one block with the
    column (its lines taken as the column's); with it, the note is a block of its own, read where it stands."""
    above = _column(10, 400, 0, ["first line of the column", "second line of the column"])
    note = _column(30, 380, 44, ["NOTE a boxed remark", "that sits inside the column"])
    below = _column(10, 400, 88, ["the column goes on", "under the box"])
    segs = above + note + below
    frame = (20.0, 38.0, 390.0, 82.0)
    plain = group_lines([Segment(s.box.copy(), s.text, s.score) for s in segs])
    assert len({ln.block for ln in plain}) == 1
    lines = group_lines(segs, frames=[frame])
    assert [ln.text for ln in lines] == [s.text for s in segs]
    blocks = [ln.block for ln in lines]
    assert blocks[2] == blocks[3] and len({blocks[0], blocks[2], blocks[4]}) == 3


def test_a_table_with_borders_is_read_cell_by_cell_with_wrapped_cells_whole():
    """Cells of two lines (a value and its second line) sit beside one-line cells: row by row, each cell whole."""
    rows = [["dpkg", "V:919,|I:999", "5989", "low-level package manager"]]
    rows += [["unattended-|upgrades", "V:297,|I:462", "301", "installs security updates"]]
    rows += [["apt", "V:874,|I:999", "4211", "command line front end"]]
    lefts, widths = [10, 200, 300, 380], [150, 70, 50, 300]
    segs, frames, y = [], [], 0.0
    for row in rows:
        for x, w, cell in zip(lefts, widths, row, strict=True):
            parts = cell.split("|")
            frames.append((x - 4.0, y, x + w + 4.0, y + 48.0))
            top = y + (48 - 18 * len(parts)) / 2
            segs += _column(x, x + 9 * max(map(len, parts)), top, parts)
        y += 52
    lines = group_lines(segs[::-1], frames=frames)
    assert [ln.text for ln in lines] == [part for row in rows for cell in row for part in cell.split("|")]
    cells = {ln.text: ln.cell for ln in lines}
    assert cells["unattended-"] == cells["upgrades"] == (0, 1, 0) and cells["I:462"] == (0, 1, 1)
