"""Rebuild the font subsets the test scenes draw with (tests/scenes.py), so tests never depend on the
fonts a machine happens to have.

Needs fontTools (``pip install fonttools``) and the source fonts: Debian ``fonts-noto-cjk`` (Noto Sans
CJK SC, SIL OFL 1.1) and ``fonts-dejavu-core`` (DejaVu, Bitstream Vera licence + public domain).
Run it after adding a character the subsets lack (``tests/scenes.py`` names the character); the source fonts
are found through fontconfig (``fc-match``), or given by path:

    .venv/bin/python tests/data/fonts/make_fonts.py [--noto NotoSansCJK-Regular.ttc] [--dejavu DIR]

Each subset keeps printable ASCII, Latin-1, common punctuation and every non-ASCII character found in
``tests/*.py``; ``coverage.json`` records what each file covers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import unicodedata
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection, TTFont

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
NOTO_SC_INDEX = 2  # in NotoSansCJK-Regular.ttc: JP, KR, SC, TC, HK, then the Mono faces
DEJAVU_FILES = {
    "DejaVuSans-subset.ttf": "DejaVuSans.ttf",
    "DejaVuSans-Bold-subset.ttf": "DejaVuSans-Bold.ttf",
    "DejaVuSansCondensed-subset.ttf": "DejaVuSansCondensed.ttf",
    "DejaVuSerif-subset.ttf": "DejaVuSerif.ttf",
    "DejaVuSansMono-subset.ttf": "DejaVuSansMono.ttf",
}


def fc_file(pattern: str) -> str | None:
    """The font file fontconfig picks for ``pattern``, when that is the family asked for."""
    try:
        out = subprocess.run(["fc-match", "-f", "%{family}|%{file}", pattern], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    family, _, file = out.stdout.partition("|")
    return file if out.returncode == 0 and pattern.split(":")[0].lower() in family.lower() else None


def sources(noto: str | None, dejavu: str | None) -> dict[str, tuple[str, int | None]]:
    """Output file -> (source font file, index in a collection)."""
    noto = noto or fc_file("Noto Sans CJK SC")
    dejavu_dir = Path(dejavu) if dejavu else Path(fc_file("DejaVu Sans") or ".").parent
    missing = [n for n in [noto] if not n or not Path(n).is_file()]
    missing += [str(dejavu_dir / f) for f in DEJAVU_FILES.values() if not (dejavu_dir / f).is_file()]
    if missing:
        raise SystemExit(
            "source fonts not found: "
            + ", ".join(m or "Noto Sans CJK" for m in missing)
            + " (Debian: apt-get install fonts-noto-cjk fonts-dejavu-core, or give --noto / --dejavu)"
        )
    found: dict[str, tuple[str, int | None]] = {"NotoSansCJKsc-Regular-subset.otf": (noto, NOTO_SC_INDEX)}
    found.update({out: (str(dejavu_dir / f), None) for out, f in DEJAVU_FILES.items()})
    return found


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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noto", help="NotoSansCJK-Regular.ttc (default: fontconfig's Noto Sans CJK SC)")
    ap.add_argument("--dejavu", help="folder with the DejaVu TTFs (default: fontconfig's DejaVu Sans folder)")
    args = ap.parse_args()
    found = sources(args.noto, args.dejavu)
    chars = wanted_characters()
    coverage = {name: build(name, src, idx, chars) for name, (src, idx) in found.items()}
    (HERE / "coverage.json").write_text(
        json.dumps(coverage, ensure_ascii=False, indent=0, sort_keys=True) + "\n", encoding="utf-8"
    )
    for name in found:
        print(f"{name}: {len(coverage[name])} characters, {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
