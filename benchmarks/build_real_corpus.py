"""Build the real-image OCR corpus in ``tests/data/real/ocr/`` from real documents in Debian packages.

Real means made by a real renderer from real documents, never drawn by this project's code:

- PDF pages of the Debian Reference (en, zh-cn) and the Debian New Maintainers' Guide (en, zh-cn), rendered by
  poppler's ``pdftoppm`` at 72-150 dpi and cropped (full width, cut in the blank between two lines). Truth:
  poppler's ``pdftotext -bbox-layout`` words inside the crop, by block and row, split where two words are more
  than 2 line heights apart (a table cell or column boundary: ``pdftotext -layout`` prints such gaps as a run
  of spaces).
- HTML pages (Python 3.11 docs with their sidebar, Debian Reference chapters with tables, en and zh-cn)
  screenshot by headless Chromium at a few window sizes. Truth: the page's own text nodes, laid out by
  Chromium: a script added to a copy of the page measures every character's box, and characters of one block
  element on one visual line make a truth line. Lines cut by the window's bottom edge are cropped away.
- A photographed look (perspective, blur, uneven light, noise, JPEG) on some of those renders; same truth.
- Layouts that are hard to read in order (``--layouts``, added to an existing corpus): HTML tables, a boxed
  sidebar floated beside a narrow column, two-column pages, en and zh-CN, from the Debian Administrator's
  Handbook (``debian-handbook``) in Chromium. The float and the columns are one CSS rule added to the page's own
  stylesheet (named in each image's ``page``). Each image also gets ``reading_orders``: the line indices in the
  order a reader takes them (the DOM's order: tables row by row, cells left to right; for a floated sidebar
  also with the sidebar just before or just after the column text beside it), scored by the benchmark's
  order-aware CER.

The skimage ``page`` scan is not stored: tests and the benchmark load it from scikit-image, truth typed by hand
(see ``SKIMAGE_PAGE`` in benchmarks/real_images.py).

Needs (only to rebuild, never at test time): poppler-utils, chromium, and the .deb files of
maint-guide, maint-guide-zh-cn, debian-reference-{common,en,zh-cn}, python3.11-doc, debian-handbook
(``apt-get download ...``; unpacked with ``dpkg -x``, nothing installed), and a CJK font for Chromium
(``fonts-noto-cjk``)::

    python benchmarks/build_real_corpus.py --debs /tmp/debs [--out tests/data/real/ocr] [--layouts]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "real" / "ocr"

LICENCES = {
    "debian-reference": "GPL-2+ (debian-reference-common copyright file)",
    "maint-guide": "GPL-2.0+ (maint-guide copyright file)",
    "python3.11-doc": "PSF-2.0 (python3.11-doc copyright file)",
    "debian-handbook": "GPL-2.0+ or CC-BY-SA-3.0 (debian-handbook copyright file)",
}

# (package, pdf path under the unpacked root, lang, [(page, dpi, start as a fraction of page height)])
PDFS = [
    (
        "debian-reference-en",
        "usr/share/debian-reference/debian-reference.en.pdf",
        "en",
        [
            (32, 100, 0.10),
            (45, 72, 0.30),
            (61, 150, 0.10),
            (88, 100, 0.50),
            (144, 100, 0.15),
            (179, 120, 0.30),
            (204, 120, 0.40),
            (221, 90, 0.20),
        ],
    ),
    (
        "debian-reference-zh-cn",
        "usr/share/debian-reference/debian-reference.zh-cn.pdf",
        "zh",
        [
            (46, 100, 0.10),
            (40, 120, 0.35),
            (60, 100, 0.10),
            (85, 150, 0.45),
            (144, 100, 0.20),
            (190, 72, 0.10),
            (221, 110, 0.30),
        ],
    ),
    (
        "maint-guide",
        "usr/share/doc/maint-guide/maint-guide.en.pdf",
        "en",
        [(8, 100, 0.10), (22, 120, 0.40), (40, 72, 0.20), (30, 100, 0.50)],
    ),
    (
        "maint-guide-zh-cn",
        "usr/share/doc/maint-guide-zh-cn/maint-guide.zh-cn.pdf",
        "zh",
        [(8, 100, 0.10), (22, 120, 0.40), (40, 90, 0.20), (50, 150, 0.30)],
    ),
]

# (package, html path under the unpacked root, lang, window width, height, CSS selector to scroll to or "")
HTMLS = [
    ("python3.11-doc", "usr/share/doc/python3.11/html/library/json.html", "en", 1280, 800, ""),
    ("python3.11-doc", "usr/share/doc/python3.11/html/library/pathlib.html", "en", 1024, 768, "dl"),
    ("python3.11-doc", "usr/share/doc/python3.11/html/tutorial/introduction.html", "en", 1366, 768, ""),
    ("python3.11-doc", "usr/share/doc/python3.11/html/library/datetime.html", "en", 1280, 720, "table"),
    ("debian-reference-en", "usr/share/debian-reference/ch09.en.html", "en", 1280, 800, "div.table"),
    ("debian-reference-en", "usr/share/debian-reference/ch03.en.html", "en", 1024, 768, ""),
    ("debian-reference-zh-cn", "usr/share/debian-reference/ch01.zh-cn.html", "zh", 1280, 800, ""),
    ("debian-reference-zh-cn", "usr/share/debian-reference/ch02.zh-cn.html", "zh", 1024, 768, "div.table"),
    ("debian-reference-zh-cn", "usr/share/debian-reference/ch05.zh-cn.html", "zh", 1366, 768, "div.table"),
    ("debian-reference-zh-cn", "usr/share/debian-reference/ch12.zh-cn.html", "zh", 800, 600, "p"),
    ("maint-guide-zh-cn", "usr/share/doc/maint-guide-zh-cn/html/first.zh-cn.html", "zh", 1024, 700, ""),
]

HANDBOOK = "usr/share/doc/debian-handbook/html"
FLOAT_SIDEBAR = "div.sidebar{float:right;width:38%;margin:0 0 10px 20px}"
TWO_COLUMNS = "body{column-count:2;column-gap:40px}"
# (name, html path under the unpacked root, lang, window width, height, selector to scroll to, CSS rule added)
LAYOUTS = [
    ("debian-handbook-en-table-1024", f"{HANDBOOK}/en-US/sect.ldap-directory.html", "en", 1024, 600, "div.table", ""),
    (
        "debian-handbook-zh-cn-table-1024",
        f"{HANDBOOK}/zh-CN/sect.ldap-directory.html",
        "zh",
        1024,
        600,
        "div.table",
        "",
    ),
    (
        "debian-handbook-en-sidebar-1024",
        f"{HANDBOOK}/en-US/sect.http-web-server.html",
        "en",
        1024,
        280,
        "div.sidebar",
        FLOAT_SIDEBAR,
    ),
    (
        "debian-handbook-zh-cn-sidebar-1024",
        f"{HANDBOOK}/zh-CN/sect.http-web-server.html",
        "zh",
        1024,
        280,
        "div.sidebar",
        FLOAT_SIDEBAR,
    ),
    (
        "debian-handbook-en-2col-1024",
        f"{HANDBOOK}/en-US/sect.ldap-directory.html",
        "en",
        1024,
        700,
        "div.para",
        TWO_COLUMNS,
    ),
    (
        "debian-handbook-zh-cn-2col-1024",
        f"{HANDBOOK}/zh-CN/sect.ldap-directory.html",
        "zh",
        1024,
        700,
        "div.para",
        TWO_COLUMNS,
    ),
]

# Pages added for issue 25 (other chapters of the same books, zh-TW too; boxes inside columns, text wrapping around
# a float, several floats, boxes in both columns, three columns, tables), each in a split: "tuning" pages were
# looked at while the layout code was changed; "heldout" pages were scored only at the end and never tuned on.
NO_PICTURES = "div.mediaobject img,div.figure img{visibility:hidden}"
# The page's navigation links kept below the floats (a float hanging off a page's end would overlap them).
NAV_BELOW = "ul.docnav{clear:both}"
FLOAT_SOME = "div.sidebar:nth-of-type(2n){float:right;width:38%;margin:0 0 10px 20px}" + NAV_BELOW
FLOAT_LEFT = "div.sidebar{float:left;width:32%;margin:0 20px 10px 0}" + NAV_BELOW
FLOATS = FLOAT_SIDEBAR + NAV_BELOW
THREE_COLUMNS = "body{column-count:3;column-gap:32px}"
REF = "usr/share/debian-reference"
# (name, html path under the unpacked root, lang, window width, height, selector[@n] to scroll to, CSS, split)
ADDED_HTML = [
    (
        "debian-handbook-zh-cn-floats-1024",
        f"{HANDBOOK}/zh-CN/sect.installation-steps.html",
        "zh",
        1024,
        640,
        "div.sidebar@2",
        FLOATS,
        "tuning",
    ),
    (
        "debian-handbook-en-floats-1024",
        f"{HANDBOOK}/en-US/sect.installation-steps.html",
        "en",
        1024,
        640,
        "div.sidebar@2",
        FLOATS,
        "tuning",
    ),
    (
        "debian-handbook-zh-tw-2col-1280",
        f"{HANDBOOK}/zh-TW/network-infrastructure.html",
        "zh",
        1280,
        760,
        "div.sidebar@1",
        TWO_COLUMNS,
        "tuning",
    ),
    (
        "debian-handbook-zh-cn-floats-release-1024",
        f"{HANDBOOK}/zh-CN/sect.release-lifecycle.html",
        "zh",
        1024,
        640,
        "div.sidebar@1",
        FLOATS,
        "tuning",
    ),
    (
        "debian-handbook-zh-tw-floats-1024",
        f"{HANDBOOK}/zh-TW/sect.quotas.html",
        "zh",
        1024,
        640,
        "div.sidebar@0",
        FLOATS,
        "tuning",
    ),
    (
        "debian-handbook-zh-cn-somefloat-1024",
        f"{HANDBOOK}/zh-CN/network-services.html",
        "zh",
        1024,
        720,
        "div.sidebar@3",
        FLOAT_SOME,
        "tuning",
    ),
    (
        "debian-handbook-zh-cn-floatleft-1280",
        f"{HANDBOOK}/zh-CN/sect.common-procedures.html",
        "zh",
        1280,
        620,
        "div.sidebar@1",
        FLOAT_LEFT,
        "tuning",
    ),
    (
        "debian-handbook-en-2col-boxes-1024",
        f"{HANDBOOK}/en-US/network-services.html",
        "en",
        1024,
        800,
        "div.sidebar@2",
        TWO_COLUMNS,
        "tuning",
    ),
    ("debian-reference-zh-tw-ch02-1024", f"{REF}/ch02.zh-tw.html", "zh", 1024, 768, "div.table", "", "tuning"),
    # held out
    (
        "debian-handbook-zh-cn-floats-1280",
        f"{HANDBOOK}/zh-CN/sect.virtualization.html",
        "zh",
        1280,
        600,
        "div.sidebar@3",
        FLOATS,
        "heldout",
    ),
    (
        "debian-handbook-zh-tw-floats-basic-1024",
        f"{HANDBOOK}/zh-TW/basic-configuration.html",
        "zh",
        1024,
        640,
        "div.sidebar@1",
        FLOATS,
        "heldout",
    ),
    (
        "debian-handbook-zh-cn-somefloat-solving-1024",
        f"{HANDBOOK}/zh-CN/solving-problems.html",
        "zh",
        1024,
        720,
        "div.sidebar@1",
        FLOAT_SOME,
        "heldout",
    ),
    (
        "debian-handbook-zh-cn-floatleft-1024",
        f"{HANDBOOK}/zh-CN/sect.hostname-name-service.html",
        "zh",
        1024,
        640,
        "div.sidebar@0",
        FLOAT_LEFT,
        "heldout",
    ),
    (
        "debian-handbook-zh-cn-2col-boxes-1280",
        f"{HANDBOOK}/zh-CN/sect.foundation-documents.html",
        "zh",
        1280,
        760,
        "div.sidebar@1",
        TWO_COLUMNS,
        "heldout",
    ),
    (
        "debian-handbook-zh-cn-2col-boxes-1024",
        f"{HANDBOOK}/zh-CN/sect.package-meta-information.html",
        "zh",
        1024,
        800,
        "div.sidebar@2",
        TWO_COLUMNS,
        "heldout",
    ),
    (
        "debian-handbook-en-2col-boxes-1280",
        f"{HANDBOOK}/en-US/sect.supervision.html",
        "en",
        1280,
        760,
        "div.sidebar@1",
        TWO_COLUMNS,
        "heldout",
    ),
    (
        "debian-handbook-zh-tw-somefloat-1024",
        f"{HANDBOOK}/zh-TW/sect.remote-login.html",
        "zh",
        1024,
        720,
        "div.sidebar@2",
        FLOAT_SOME,
        "heldout",
    ),
    (
        "debian-handbook-en-floatleft-1024",
        f"{HANDBOOK}/en-US/sect.kernel-compilation.html",
        "en",
        1024,
        600,
        "div.sidebar@1",
        FLOAT_LEFT,
        "heldout",
    ),
    (
        "debian-handbook-zh-tw-floatleft-1366",
        f"{HANDBOOK}/zh-TW/sect.administration-interfaces.html",
        "zh",
        1366,
        640,
        "div.sidebar@0",
        FLOAT_LEFT,
        "heldout",
    ),
    (
        "debian-handbook-zh-cn-3col-1366",
        f"{HANDBOOK}/zh-CN/sect.apt-get.html",
        "zh",
        1366,
        700,
        "div.sidebar@1",
        THREE_COLUMNS,
        "heldout",
    ),
    (
        "debian-handbook-zh-tw-2col-1024",
        f"{HANDBOOK}/zh-TW/sect.why-gnu-linux.html",
        "zh",
        1024,
        720,
        "div.sidebar@0",
        TWO_COLUMNS,
        "heldout",
    ),
    (
        "debian-handbook-en-table-selinux-1024",
        f"{HANDBOOK}/en-US/sect.selinux.html",
        "en",
        1024,
        600,
        "div.table",
        "",
        "heldout",
    ),
    ("debian-reference-zh-tw-ch09-1280", f"{REF}/ch09.zh-tw.html", "zh", 1280, 800, "div.table", "", "heldout"),
    ("debian-reference-zh-tw-ch01-1280", f"{REF}/ch01.zh-tw.html", "zh", 1280, 800, "", "", "heldout"),
    ("debian-reference-en-ch06-1024", f"{REF}/ch06.en.html", "en", 1024, 768, "div.table", "", "heldout"),
    ("python3.11-doc-os-1280", "usr/share/doc/python3.11/html/library/os.html", "en", 1280, 800, "dl", "", "heldout"),
    (
        "python3.11-doc-controlflow-1024",
        "usr/share/doc/python3.11/html/tutorial/controlflow.html",
        "en",
        1024,
        768,
        "",
        "",
        "heldout",
    ),
]
# (package, pdf path under the unpacked root, lang, page, dpi, start as a fraction of page height): held out.
ADDED_PDF = [
    ("debian-reference-zh-tw", f"{REF}/debian-reference.zh-tw.pdf", "zh", 50, 100, 0.15),
    ("debian-reference-zh-tw", f"{REF}/debian-reference.zh-tw.pdf", "zh", 120, 120, 0.30),
    ("debian-reference-zh-tw", f"{REF}/debian-reference.zh-tw.pdf", "zh", 200, 90, 0.20),
    ("debian-reference-en", f"{REF}/debian-reference.en.pdf", "en", 100, 100, 0.20),
    ("debian-reference-en", f"{REF}/debian-reference.en.pdf", "en", 250, 120, 0.40),
    ("debian-reference-zh-cn", f"{REF}/debian-reference.zh-cn.pdf", "zh", 120, 100, 0.30),
    ("maint-guide", "usr/share/doc/maint-guide/maint-guide.en.pdf", "en", 15, 110, 0.25),
]

# Photographed look on these renders (by name), each with its own seed.
PHOTO_OF = [
    "debian-reference-en-p32",
    "debian-reference-zh-cn-p46",
    "maint-guide-zh-cn-p22",
    "python3.11-doc-json-1280",
    "debian-reference-zh-cn-ch01-1280",
    "maint-guide-p8",
]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--virtual-time-budget=3000",
]

# Runs in the copy of the page: every visible character's box, grouped into runs on one visual line of one
# block element; written to an attribute of <html> (attributes do not change the layout).
TRUTH_JS = r"""
<script>
window.addEventListener('load', () => {
  // An ordered list's numbers are drawn by CSS, not text nodes: written into the first text of each item (both
  // the screenshot and the truth are made from the page as this script leaves it).
  for (const ol of document.querySelectorAll('ol')) {
    let n = ol.start || 1;
    for (const li of ol.children) {
      if (li.tagName !== 'LI') continue;
      const tw = document.createTreeWalker(li, NodeFilter.SHOW_TEXT, {acceptNode: t => t.textContent.trim() ?
        NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP});
      const first = tw.nextNode();
      if (first) first.parentNode.insertBefore(document.createTextNode(n + '. '), first);
      n++;
    }
    ol.style.listStyle = 'none';
  }
  const spec = %s; const [sel, nth] = spec.split('@');
  const el = sel ? document.querySelectorAll(sel)[Number(nth || 0)] || null : null;
  const box = el ? el.getBoundingClientRect() : null;
  document.documentElement.setAttribute('data-top', box ? box.top : 0);
  if (box) document.documentElement.setAttribute('data-rect',
    JSON.stringify([box.left, box.top, box.right, box.bottom]));
  const floats = [];
  for (const f of document.querySelectorAll('body *')) {
    if (getComputedStyle(f).cssFloat === 'none') continue;
    const q = f.getBoundingClientRect(); if (q.width && q.height) floats.push([q.left, q.top, q.right, q.bottom]);
  }
  document.documentElement.setAttribute('data-floats', JSON.stringify(floats));
  const blockOf = n => { let e = n.parentElement;
    while (e && getComputedStyle(e).display.startsWith('inline')) e = e.parentElement; return e; };
  const ids = new Map(); const out = []; const r = document.createRange();
  const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let n;
  while ((n = w.nextNode())) {
    const t = n.textContent;
    const st = getComputedStyle(n.parentElement);
    if (st.visibility !== 'visible' || st.opacity === '0') continue;
    const b = blockOf(n); if (!ids.has(b)) ids.set(b, ids.size);
    let cur = null;
    for (let i = 0; i < t.length; i++) {
      r.setStart(n, i); r.setEnd(n, i + 1); const rs = r.getClientRects();
      if (!rs.length || rs[0].width === 0) { if (cur) cur.t += ' '; continue; }
      const q = rs[0];
      if (cur && Math.abs(q.top - cur.y1) < q.height / 2 && q.left >= cur.x2 - 2) {
        cur.t += t[i]; cur.x2 = Math.max(cur.x2, q.right); cur.y2 = Math.max(cur.y2, q.bottom);
      } else {
        if (cur) out.push(cur);
        cur = {b: ids.get(b), t: t[i], x1: q.left, y1: q.top, x2: q.right, y2: q.bottom};
      }
    }
    if (cur) out.push(cur);
  }
  document.documentElement.setAttribute('data-truth', JSON.stringify(out));
});
</script>
"""


@dataclass
class Item:
    file: str
    source: str
    page: str
    lang: str
    licence: str
    truth_method: str
    lines: list[dict]
    width: int = 0
    height: int = 0
    reading_orders: list[list[int]] | None = None
    split: str | None = None

    def record(self) -> dict:
        extra = {"reading_orders": self.reading_orders} if self.reading_orders else {}
        if self.split:
            extra["split"] = self.split
        return {
            "file": self.file,
            "source": self.source,
            "page": self.page,
            "lang": self.lang,
            "licence": self.licence,
            "truth": self.truth_method,
            "width": self.width,
            "height": self.height,
            "lines": [{k: v for k, v in t.items() if k != "seq"} for t in self.lines],
        } | extra


def _licence(package: str) -> str:
    return next(v for k, v in LICENCES.items() if package.startswith(k))


def _clean(text: str) -> str:
    return " ".join(text.split())


# --- PDF pages -----------------------------------------------------------------------------------------------
def pdf_lines(pdf: Path, page: int) -> list[tuple[int, str, list[float]]]:
    """(block, text, [x1, y1, x2, y2] in points) for each visual line of one page, split at wide gaps.

    Poppler's own lines are re-formed from the words of each block (it cuts a line where CJK punctuation
    makes two words overlap); words on one row more than 2 line heights apart are separate lines."""
    xml = subprocess.run(
        ["pdftotext", "-f", str(page), "-l", str(page), "-bbox-layout", str(pdf), "-"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    xml = re.sub(r"<!DOCTYPE[^>]*>", "", xml).replace('xmlns="http://www.w3.org/1999/xhtml"', "")
    root = ET.fromstring(xml)
    out = []
    for b, block in enumerate(root.iter("block")):
        words = sorted(
            (
                (float(w.get("xMin")), float(w.get("yMin")), float(w.get("xMax")), float(w.get("yMax")), w.text or "")
                for w in block.iter("word")
            ),
            key=lambda w: (w[1] + w[3]) / 2,
        )
        rows: list[list] = []
        for w in words:
            r = rows[-1] if rows else None
            if r and min(r[0][3], w[3]) - max(r[0][1], w[1]) >= 0.5 * min(r[0][3] - r[0][1], w[3] - w[1]):
                r.append(w)
            else:
                rows.append([w])
        for row in rows:
            row.sort()
            height = max(w[3] - w[1] for w in row)
            run: list = []
            for w in row:
                if run and w[0] - max(x[2] for x in run) > 2 * height:
                    out.append(_run_line(b, run))
                    run = []
                run.append(w)
            out.append(_run_line(b, run))
    return out


def _run_line(block: int, words: list) -> tuple[int, str, list[float]]:
    box = [min(w[0] for w in words), min(w[1] for w in words), max(w[2] for w in words), max(w[3] for w in words)]
    return block, _clean(" ".join(w[4] for w in words)), box


def render_pdf(pdf: Path, page: int, dpi: int, start: float, tmp: Path) -> tuple[np.ndarray, list[dict]]:
    """A full-width crop of about 45% of the page from ``start``, cut in blank space, and its truth lines."""
    lines = pdf_lines(pdf, page)
    png = tmp / "page"
    subprocess.run(
        [
            "pdftoppm",
            "-f",
            str(page),
            "-l",
            str(page),
            "-r",
            str(dpi),
            "-gray",
            "-png",
            "-singlefile",
            str(pdf),
            str(png),
        ],
        check=True,
    )
    img = cv2.imread(str(png) + ".png", cv2.IMREAD_GRAYSCALE)
    s = dpi / 72.0
    boxes = [[v * s for v in box] for _, _, box in lines]
    y0 = start * img.shape[0]
    y1 = y0 + 0.45 * img.shape[0]
    # Move each cut into the blank between lines: never through a line.
    y0, y1 = _snap(boxes, y0, -1), _snap(boxes, y1, +1)
    y0, y1 = max(int(y0), 0), min(int(y1), img.shape[0])
    crop = img[y0:y1]
    truth = [
        {"text": text, "block": block, "bbox": [round(v, 1) for v in (b[0], b[1] - y0, b[2], b[3] - y0)]}
        for (block, text, _), b in zip(lines, boxes, strict=True)
        if b[1] >= y0 and b[3] <= y1 and text
    ]
    return crop, truth


# --- HTML screenshots ----------------------------------------------------------------------------------------
def chromium(url: str, width: int, height: int, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *extra, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def render_html(
    page: Path, width: int, height: int, scroll_to: str, tmp: Path, css: str = ""
) -> tuple[np.ndarray, list[dict], list[float] | None, list[list[float]]]:
    """A ``width`` x ``height`` view of ``page`` from the top, or from the element ``scroll_to`` selects
    (``selector@n``: the n-th match, from 0), the lines Chromium laid out in it, the box of that element in the
    view (None without ``scroll_to``), and the boxes of the floated elements in the view.

    The page is laid out in a window tall enough to hold the view (same width, so the same line breaks) and
    cropped, with both cuts moved into the blank between lines; a copy of the page sits next to it so its
    CSS loads. ``css`` is a rule added after the page's own stylesheets."""
    copy = page.with_name("_truth_" + page.name)
    html = page.read_text(encoding="utf-8")
    if css:
        html = html.replace("</head>", f"<style>{css}</style></head>", 1)
    script = TRUTH_JS % json.dumps(scroll_to)
    copy.write_text(
        html.replace("</body>", script + "</body>") if "</body>" in html else html + script, encoding="utf-8"
    )
    tall = 12000 if scroll_to else height
    try:
        url = copy.as_uri()
        shot = tmp / "shot.png"
        chromium(url, width, tall, tmp / "profile1", f"--screenshot={shot}")
        dom = chromium(url, width, tall, tmp / "profile2", "--dump-dom").stdout
    finally:
        copy.unlink()
    truth = re.search(r'data-truth="([^"]*)"', dom)
    top = re.search(r'data-top="([^"]*)"', dom)
    if not truth or not top:
        raise RuntimeError(f"no truth from {page}")
    import html as html_mod

    runs = json.loads(html_mod.unescape(truth.group(1)))
    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    boxes = [[r["x1"], r["y1"], r["x2"], r["y2"]] for r in runs]
    y0 = max(_snap(boxes, float(top.group(1)) - 8, -1), 0.0) if scroll_to else 0.0
    y1 = _snap(boxes, min(y0 + height, img.shape[0]), -1)
    y0, y1 = max(int(y0), 0), int(y1)
    img = img[y0:y1]
    kept = [
        dict(r, y1=r["y1"] - y0, y2=r["y2"] - y0, s=k)
        for k, r in enumerate(runs)
        # The 1 px the cut may pass through a glyph's box (see _snap) does not take the line out of the truth.
        if r["y1"] + 1 >= y0 and r["y2"] - 1 <= y1 and r["x1"] >= 0 and r["x2"] <= width
    ]
    rect = re.search(r'data-rect="([^"]*)"', dom)
    box = None
    if rect:
        left, top_, right, bottom = json.loads(html_mod.unescape(rect.group(1)))
        box = [left, top_ - y0, right, bottom - y0]
    floats = json.loads(html_mod.unescape(re.search(r'data-floats="([^"]*)"', dom).group(1)))
    floats = [[x1, t - y0, x2, b - y0] for x1, t, x2, b in floats if b - y0 > 0 and t - y0 < img.shape[0]]
    return img, merge_runs(kept), box, floats


def reading_orders(lines: list[dict], floats: list[list[float]] | None = None) -> list[list[int]]:
    """The orders a reader may take ``lines`` in (indices): the DOM's (the text in document order: a table row by
    row, cells left to right, a CSS column's text before the next column's) and, for each floated box, also with
    the box's lines just before the column text beside it or just after it (every combination, for pages with
    several floats)."""
    dom = sorted(
        range(len(lines)),
        key=lambda i: (lines[i]["seq"],) if "seq" in lines[i] else (lines[i]["block"], *lines[i]["bbox"][1::-1]),
    )
    orders = [dom]
    boxes = [f for f in floats or () if any(_within(lines[i]["bbox"], f) for i in dom)]
    if not boxes:
        return orders
    inside = [[i for i in dom if _within(lines[i]["bbox"], f)] for f in boxes]
    taken = {i for group in inside for i in group}
    rest = [i for i in dom if i not in taken]
    # After the column text beside it: before the first block that starts below the box (a paragraph that
    # wraps on under the box is read to its end first). Where the DOM has it: before the first line after it.
    starts: dict[int, float] = {}
    for i in rest:
        starts[lines[i]["block"]] = min(starts.get(lines[i]["block"], 1e9), lines[i]["bbox"][1])
    places = []
    for f, group in zip(boxes, inside, strict=True):
        below = next((k for k, i in enumerate(rest) if starts[lines[i]["block"]] >= f[3]), len(rest))
        beside = next((k for k, i in enumerate(rest) if lines[i]["bbox"][3] > f[1]), len(rest))
        where = next((k for k, i in enumerate(rest) if dom.index(i) > dom.index(group[0])), len(rest))
        places.append(sorted({beside, below, where}))
    # Floats put at one place are read top to bottom, or left to right (floats side by side).
    for choice, axis in itertools.product(itertools.product(*places), (1, 0)):
        order = []
        for k, i in enumerate(rest + [None]):
            for _, group in sorted((boxes[n][axis], inside[n]) for n, at in enumerate(choice) if at == k):
                order += group
            if i is not None:
                order.append(i)
        if order not in orders:
            orders.append(order)
    return orders


def _within(bbox: list[float], box: list[float]) -> bool:
    return bbox[0] >= box[0] - 1 and bbox[1] >= box[1] - 1 and bbox[2] <= box[2] + 1 and bbox[3] <= box[3] + 1


def _snap(boxes: list[list[float]], y: float, direction: int) -> float:
    """``y`` moved (up for -1, down for +1) until it crosses no box: a cut through blank space."""
    for _ in range(100):
        # Boxes shrunk by a pixel: the boxes of CJK glyphs from one line to the next may touch.
        hit = [b for b in boxes if b[1] + 1 < y < b[3] - 1]
        if not hit:
            break
        y = min(b[1] for b in hit) - 3 if direction < 0 else max(b[3] for b in hit) + 3
    return y


def merge_runs(runs: list[dict]) -> list[dict]:
    """Runs of one block element that share a visual line make one truth line, left to right."""
    groups: list[list[dict]] = []
    for r in sorted(runs, key=lambda r: (r["b"], r["y1"], r["x1"])):
        g = groups[-1] if groups else None
        same_row = g and min(g[0]["y2"], r["y2"]) - max(g[0]["y1"], r["y1"]) > 0.5 * (r["y2"] - r["y1"])
        if g and same_row and g[0]["b"] == r["b"]:
            g.append(r)
        else:
            groups.append([r])
    out = []
    for g in groups:
        g.sort(key=lambda r: r["x1"])
        text = _clean("".join(r["t"] for r in g))
        if not text:
            continue
        box = [min(r["x1"] for r in g), min(r["y1"] for r in g), max(r["x2"] for r in g), max(r["y2"] for r in g)]
        # seq: where the line's text starts in the document (the DOM's reading order; dropped before saving).
        out.append(
            {"text": text, "block": g[0]["b"], "bbox": [round(v, 1) for v in box], "seq": min(r["s"] for r in g)}
        )
    out.sort(key=lambda t: (t["bbox"][1], t["bbox"][0]))
    return out


# --- photographed look ---------------------------------------------------------------------------------------
def photographed(img: np.ndarray, seed: int) -> np.ndarray:
    """Perspective tilt, slight blur, uneven light, sensor noise; the caller saves it as JPEG."""
    rng = np.random.default_rng(seed)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    d = 0.04 * min(h, w)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-d, d, (4, 2)).astype(np.float32)
    dst -= dst.min(axis=0)
    out_w, out_h = int(dst[:, 0].max()), int(dst[:, 1].max())
    warped = cv2.warpPerspective(
        img,
        cv2.getPerspectiveTransform(src, dst),
        (out_w, out_h),
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(200, 200, 200),
    )
    warped = cv2.GaussianBlur(warped, (0, 0), 0.8)
    yy, xx = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
    cx, cy = rng.uniform(0, out_w), rng.uniform(0, out_h)
    light = 1.0 - 0.35 * np.sqrt(((xx - cx) / out_w) ** 2 + ((yy - cy) / out_h) ** 2)
    tint = np.array([0.95, 1.0, 1.05], np.float32)  # warm indoor light
    noisy = warped.astype(np.float32) * light[..., None] * tint + rng.normal(0, 4, warped.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# --- main ----------------------------------------------------------------------------------------------------
def _pdf_path(debs: Path, rel: str, tmp: Path) -> Path:
    path = debs / "root" / rel
    if path.suffix == ".gz":
        plain = tmp / path.stem
        with gzip.open(path) as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return plain
    return path


def build(debs: Path, out: Path) -> list[Item]:
    """Render everything into ``out`` and return the items (truth.json is written by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []
    images: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for package, rel, lang, pages in PDFS:
            pdf = _pdf_path(debs, rel, tmp)
            for page, dpi, start in pages:
                img, lines = render_pdf(pdf, page, dpi, start, tmp)
                name = f"{package}-p{page}"
                cv2.imwrite(str(out / f"{name}.png"), img)
                images[name] = img
                items.append(
                    Item(
                        f"{name}.png",
                        package,
                        f"{Path(rel).name} page {page} at {dpi} dpi",
                        lang,
                        _licence(package),
                        "pdftotext -bbox-layout words in the crop, by block and row, split at gaps > 2 line heights",
                        lines,
                        img.shape[1],
                        img.shape[0],
                    )
                )
        for package, rel, lang, width, height, scroll in HTMLS:
            img, lines, _, _ = render_html(debs / "root" / rel, width, height, scroll, tmp)
            name = f"{package}-{Path(rel).name.split('.')[0]}-{width}"
            cv2.imwrite(str(out / f"{name}.png"), img)
            images[name] = img
            items.append(
                Item(
                    f"{name}.png",
                    package,
                    f"{rel} in headless Chromium, window {width}x{height}"
                    + (f", scrolled to {scroll}" if scroll else ""),
                    lang,
                    _licence(package),
                    "Chromium's layout of the page's text nodes (one line = one visual line of one block element)",
                    lines,
                    img.shape[1],
                    img.shape[0],
                )
            )
        by_name = {it.file.rsplit(".", 1)[0]: it for it in items}
        for seed, name in enumerate(PHOTO_OF):
            base = by_name[name]
            photo = photographed(images[name], seed)
            file = f"{name}-photo.jpg"
            cv2.imwrite(str(out / file), photo, [cv2.IMWRITE_JPEG_QUALITY, 70])
            items.append(
                Item(
                    file,
                    base.source,
                    base.page + "; photographed look (perspective, blur, light, noise, JPEG 70)",
                    base.lang,
                    base.licence,
                    base.truth_method + " (of the render; boxes not kept)",
                    [{"text": t["text"], "block": t["block"]} for t in base.lines],
                    photo.shape[1],
                    photo.shape[0],
                )
            )
    return items


def build_layouts(debs: Path, out: Path) -> list[Item]:
    """Render the :data:`LAYOUTS` pages into ``out`` (PNG, 256-colour palette) and return their items."""
    from PIL import Image

    items = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for name, rel, lang, width, height, scroll, css in LAYOUTS:
            img, lines, box = render_html(debs / "root" / rel, width, height, scroll, Path(tmp_name), css)
            rgb = Image.fromarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            rgb.quantize(256).save(out / f"{name}.png", optimize=True)  # a render's few colours: a third the size
            items.append(
                Item(
                    f"{name}.png",
                    "debian-handbook",
                    f"{rel} in headless Chromium, window {width}x{height}"
                    + (f", scrolled to {scroll}" if scroll else "")
                    + (f"; CSS added: {css}" if css else ""),
                    lang,
                    _licence("debian-handbook"),
                    "Chromium's layout of the page's text nodes (one line = one visual line of one block element); "
                    "reading orders from the DOM",
                    lines,
                    img.shape[1],
                    img.shape[0],
                    reading_orders(lines, box if "float" in css else None),
                )
            )
    return items


def _lang_of(lines: list[dict]) -> str:
    """zh when the text is mostly Chinese (a Han character counted as a 3-letter word), else en: some zh-CN and
    zh-TW pages of the handbook keep untranslated English sections."""
    text = "".join(t["text"] for t in lines)
    han = sum("\u3400" <= c <= "\u9fff" for c in text)
    latin = sum(c.isascii() and c.isalpha() for c in text)
    return "zh" if 3 * han >= latin else "en"


def build_added(debs: Path, out: Path, names: set[str] | None = None) -> list[Item]:
    """Render the :data:`ADDED_HTML` and :data:`ADDED_PDF` pages (only ``names`` when given) into ``out`` (PNG,
    256-colour palette for the colour renders) and return their items, each with its split."""
    from PIL import Image

    items = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, rel, lang, width, height, scroll, css, split in ADDED_HTML:
            if names and name not in names:
                continue
            # Pictures hidden: the text inside a screenshot in the page is not among its text nodes (the truth).
            img, lines, _, floats = render_html(debs / "root" / rel, width, height, scroll, tmp, css + NO_PICTURES)
            rgb = Image.fromarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            rgb.quantize(256).save(out / f"{name}.png", optimize=True)
            package = "debian-handbook" if HANDBOOK in rel else "debian-reference" if REF in rel else "python3.11-doc"
            items.append(
                Item(
                    f"{name}.png",
                    name.split("-ch")[0] if package == "debian-reference" else package,
                    f"{rel} in headless Chromium, window {width}x{height}"
                    + (f", scrolled to {scroll}" if scroll else "")
                    + f"; CSS added: {css + NO_PICTURES}"
                    + ("" if _lang_of(lines) == lang else f"; a {lang} page whose text here is mostly untranslated"),
                    _lang_of(lines),
                    _licence(package),
                    "Chromium's layout of the page's text nodes (one line = one visual line of one block element); "
                    "reading orders from the DOM, with each floated box also before or after the text beside it",
                    lines,
                    img.shape[1],
                    img.shape[0],
                    reading_orders(lines, floats),
                    split,
                )
            )
        for package, rel, lang, page, dpi, start in ADDED_PDF:
            name = f"{package}-p{page}"
            if names and name not in names:
                continue
            img, lines = render_pdf(_pdf_path(debs, rel, tmp), page, dpi, start, tmp)
            cv2.imwrite(str(out / f"{name}.png"), img)
            items.append(
                Item(
                    f"{name}.png",
                    package,
                    f"{Path(rel).name} page {page} at {dpi} dpi",
                    lang,
                    _licence(package),
                    "pdftotext -bbox-layout words in the crop, by block and row, split at gaps > 2 line heights",
                    lines,
                    img.shape[1],
                    img.shape[0],
                    split="heldout",
                )
            )
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debs", type=Path, required=True, help="folder with the .debs unpacked under root/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--layouts", action="store_true", help="only (re)build the LAYOUTS pages, keep the others")
    parser.add_argument(
        "--added",
        nargs="?",
        const="",
        help="only (re)build the pages added in issue 25 (ADDED_HTML, ADDED_PDF), or those named (comma-separated)",
    )
    args = parser.parse_args(argv)
    if args.layouts or args.added is not None:
        if args.added is not None:
            new = build_added(args.debs, args.out, set(filter(None, args.added.split(","))) or None)
        else:
            new = build_layouts(args.debs, args.out)
        names = {it.file for it in new}
        old = json.loads((args.out / "truth.json").read_text(encoding="utf-8"))["images"]
        records = [r for r in old if r["file"] not in names] + [it.record() for it in new]
    else:
        records = [it.record() for it in build(args.debs, args.out)]
    (args.out / "truth.json").write_text(
        json.dumps({"images": records}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    zh = sum(r["lang"] == "zh" for r in records)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"{len(records)} images ({zh} Chinese), {size / 1e6:.1f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
