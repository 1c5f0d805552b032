"""Rebuild the font subsets the test scenes draw with (tests/scenes.py), so tests never depend on the
fonts a machine happens to have.

Needs fontTools (``pip install fonttools``) and the source fonts: Debian ``fonts-noto-cjk`` (Noto Sans
CJK SC, SIL OFL 1.1) and ``fonts-dejavu-core`` (DejaVu, Bitstream Vera licence + public domain).
Run it after adding a character the subsets lack (``tests/scenes.py`` names the character):

    .venv/bin/python tests/data/fonts/make_fonts.py

Each subset keeps printable ASCII, Latin-1, common punctuation and every non-ASCII character found in
``tests/*.py``; ``coverage.json`` records what each file covers.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection, TTFont

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
NOTO = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
NOTO_SC_INDEX = 2  # JP, KR, SC, TC, HK, then the Mono faces
DEJAVU = "/usr/share/fonts/truetype/dejavu"
SOURCES = {
    "NotoSansCJKsc-Regular-subset.otf": (NOTO, NOTO_SC_INDEX),
    "DejaVuSans-subset.ttf": (f"{DEJAVU}/DejaVuSans.ttf", None),
    "DejaVuSans-Bold-subset.ttf": (f"{DEJAVU}/DejaVuSans-Bold.ttf", None),
    "DejaVuSansCondensed-subset.ttf": (f"{DEJAVU}/DejaVuSansCondensed.ttf", None),
    "DejaVuSerif-subset.ttf": (f"{DEJAVU}/DejaVuSerif.ttf", None),
    "DejaVuSansMono-subset.ttf": (f"{DEJAVU}/DejaVuSansMono.ttf", None),
}


def wanted_characters() -> set[str]:
    """Printable ASCII, Latin-1, common punctuation, and every non-ASCII character in tests/*.py."""
    chars = {chr(c) for c in range(0x20, 0x7F)} | {chr(c) for c in range(0xA0, 0x100)}
    chars |= set("–—‘’“”…•€→←·、。，：；？！（）【】《》「」［］￥")
    for p in sorted(TESTS.glob("*.py")):
        chars |= {c for c in p.read_text(encoding="utf-8") if ord(c) > 0x7F and unicodedata.category(c)[0] != "C"}
    return chars


def build(out_name: str, source: str, index: int | None, chars: set[str]) -> str:
    """Subset one font to the characters it has among ``chars``; returns what it covers."""
    font = TTCollection(source).fonts[index] if index is not None else TTFont(source)
    cmap = font.getBestCmap()
    covered = sorted(c for c in chars if ord(c) in cmap)
    options = subset.Options()
    options.name_IDs = ["*"]  # keep the copyright and licence records
    options.name_languages = ["*"]
    options.notdef_outline = True
    options.legacy_kern = True  # Pillow without raqm kerns from the old kern table
    options.layout_features = ["kern", "liga", "locl", "vert"]
    sub = subset.Subsetter(options)
    sub.populate(unicodes=[ord(c) for c in covered])
    sub.subset(font)
    font.recalcTimestamp = False  # the same input gives the same bytes
    font.save(HERE / out_name)
    return "".join(covered)


def main() -> None:
    chars = wanted_characters()
    coverage = {name: build(name, src, idx, chars) for name, (src, idx) in SOURCES.items()}
    (HERE / "coverage.json").write_text(
        json.dumps(coverage, ensure_ascii=False, indent=0, sort_keys=True) + "\n", encoding="utf-8"
    )
    for name in SOURCES:
        print(f"{name}: {len(coverage[name])} characters, {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
