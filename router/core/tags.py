"""The tag protocol: ``[VISION: name]``, ``[VISION: name "free text"]``, ``[VISION: name key=value]``.

Case-insensitive; full-width brackets and colon (``【VISION：ocr】``, ``［VISION：ocr］``) work too;
several tags per reply. :class:`TagParser` is incremental: fed stream chunks, it releases the text
that is certainly not part of a tag and emits each tag the moment it closes, whatever the chunking.

Only the model's own reply is ever parsed. Text from users or experts is data (see
:func:`neutralize`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OPENERS = "[【［"
CLOSERS = "]】］"
_KEYWORD = "vision"
_COLONS = ":："
# Quotes a small model may use around free text: ASCII, curly and CJK corner brackets.
_QUOTES = {'"': '"', "'": "'", "“": "”", "「": "」", "『": "』", "«": "»"}
MAX_TAG_CHARS = 400
_NAME_RE = re.compile(r"[A-Za-z_][\w.\-]*")


@dataclass(frozen=True)
class Tag:
    """One parsed request for an expert."""

    name: str
    query: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    image: int | None = None
    raw: str = ""
    unclosed: bool = False

    def key(self) -> tuple:
        return (self.name.lower(), self.query, tuple(sorted(self.args.items())), self.image)


@dataclass
class Malformed:
    """Something that opened like a tag but could not be read; reported in the trace."""

    raw: str
    reason: str


class TagParser:
    """Incremental tag parser. Call :meth:`feed` with each chunk, then :meth:`close` once.

    Both return ``(visible_text, tags)``; concatenating the visible texts of all calls gives the
    reply with the tags removed.
    """

    def __init__(self) -> None:
        self._pending = ""
        self.tags: list[Tag] = []
        self.malformed: list[Malformed] = []

    def feed(self, chunk: str) -> tuple[str, list[Tag]]:
        return _split(self.feed_items(chunk))

    def close(self) -> tuple[str, list[Tag]]:
        return _split(self.close_items())

    def feed_items(self, chunk: str) -> list[str | Tag]:
        """Like :meth:`feed`, but text and tags in stream order (text after a tag stays after it)."""
        self._pending += chunk
        return self._drain(final=False)

    def close_items(self) -> list[str | Tag]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[str | Tag]:
        out: list[str | Tag] = []
        s = self._pending
        i = 0
        while True:
            j = _find_opener(s, i)
            if j < 0:
                out.append(s[i:])
                i = len(s)
                break
            out.append(s[i:j])
            status, end, tag = _try_tag(s, j, final)
            if status == "tag":
                assert tag is not None
                out.append(tag)
                self.tags.append(tag)
                i = end
            elif status == "more":
                i = j
                break
            elif status == "malformed":
                self.malformed.append(Malformed(s[j:end], "unreadable tag"))
                out.append(s[j:end])
                i = end
            else:  # not a tag: the opener is ordinary text
                out.append(s[j])
                i = j + 1
        self._pending = s[i:]
        if final and self._pending:
            out.append(self._pending)
            self._pending = ""
        # merge adjacent text pieces, drop empty ones
        merged: list[str | Tag] = []
        for item in out:
            if isinstance(item, str):
                if not item:
                    continue
                if merged and isinstance(merged[-1], str):
                    merged[-1] += item
                    continue
            merged.append(item)
        return merged


def _split(items: list[str | Tag]) -> tuple[str, list[Tag]]:
    return "".join(x for x in items if isinstance(x, str)), [x for x in items if isinstance(x, Tag)]


def parse_tags(text: str) -> tuple[str, list[Tag]]:
    """Parse a complete reply: ``(text without tags, tags)``."""
    p = TagParser()
    a, t1 = p.feed(text)
    b, t2 = p.close()
    return a + b, t1 + t2


def neutralize(text: str) -> str:
    """Make expert or user text inert: a ``[VISION: ...]`` inside OCR'd text must never become a tag,
    even if the model repeats it verbatim."""
    return _NEUTRAL_RE.sub(lambda m: "(" + m.group(1), text)


_NEUTRAL_RE = re.compile(r"[\[【［]\s*(vision\s*[:：])", re.IGNORECASE)


def _find_opener(s: str, start: int) -> int:
    best = -1
    for ch in OPENERS:
        k = s.find(ch, start)
        if k >= 0 and (best < 0 or k < best):
            best = k
    return best


def _try_tag(s: str, j: int, final: bool) -> tuple[str, int, Tag | None]:
    """Classify the text at opener ``s[j]``: ("tag", end, tag) | ("more", j, None) |
    ("text", j+1, None) | ("malformed", end, None)."""
    body_start = _match_header(s, j)
    if body_start is None:
        return "text", j + 1, None
    if body_start < 0:  # the chunk ended inside "[VISION:"
        return ("text", j + 1, None) if final else ("more", j, None)
    return _scan_body(s, j, body_start, final)


def _skip_blanks(s: str, k: int) -> int:
    while k < len(s) and s[k] in " \t":
        k += 1
    return k


def _match_header(s: str, j: int) -> int | None:
    """Match ``VISION:`` after the opener letter by letter, so a partial "[VIS" at a chunk end waits
    for more: the index after the colon, -1 when the text ran out first, None when it is not a tag."""
    n = len(s)
    k = _skip_blanks(s, j + 1)
    for ch in _KEYWORD:
        if k >= n:
            return -1
        if s[k].lower() != ch:
            return None
        k += 1
    k = _skip_blanks(s, k)
    if k >= n:
        return -1
    return k + 1 if s[k] in _COLONS else None


def _scan_body(s: str, j: int, body_start: int, final: bool) -> tuple[str, int, Tag | None]:
    """Find the closer outside quotes; a tag lives on one line and within MAX_TAG_CHARS."""
    n = len(s)
    k = body_start
    quote_end: str | None = None
    while k < n:
        c = s[k]
        if quote_end is not None:
            if c == quote_end:
                quote_end = None
        elif c in _QUOTES:
            quote_end = _QUOTES[c]
        elif c in CLOSERS:
            tag = _parse_body(s[body_start:k], s[j : k + 1])
            return ("malformed", k + 1, None) if tag is None else ("tag", k + 1, tag)
        elif c == "\n":
            break
        k += 1
        if k - j > MAX_TAG_CHARS:
            return "text", j + 1, None
    if k < n or final:
        # A line ended (or the stream ended) before the closer: small models sometimes drop it.
        end = k if k < n else n
        tag = _parse_body(s[body_start:end], s[j:end], unclosed=True)
        return ("text", j + 1, None) if tag is None else ("tag", end, tag)
    return "more", j, None


def _parse_body(body: str, raw: str, unclosed: bool = False) -> Tag | None:
    tokens = _tokenize(body)
    if not tokens or tokens[0][1] or not _NAME_RE.fullmatch(tokens[0][0]):
        return None
    name = tokens[0][0].lower()
    query_parts: list[str] = []
    args: dict[str, str] = {}
    image: int | None = None
    for value, quoted in tokens[1:]:
        if not quoted and "=" in value:
            key, _, val = value.partition("=")
            key = key.strip().lower()
            val = _unquote(val.strip())
            if key in ("image", "img", "图片", "图"):
                try:
                    image = int(val)
                except ValueError:
                    return None
            elif key:
                args[key] = val
            continue
        query_parts.append(value)
    query = " ".join(q for q in query_parts if q) or None
    return Tag(name=name, query=query, args=args, image=image, raw=raw, unclosed=unclosed)


def _tokenize(body: str) -> list[tuple[str, bool]]:
    """Split on whitespace and commas outside quotes. ``key="a b"`` stays one token."""
    tokens: list[tuple[str, bool]] = []
    buf: list[str] = []
    quoted_token = False
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c in _QUOTES:
            close = _QUOTES[c]
            k = body.find(close, i + 1)
            if k < 0:
                k = n
            inner = body[i + 1 : k]
            if buf:  # key="value"
                buf.append(c + inner + close)
            else:
                buf.append(inner)
                quoted_token = True
            i = k + 1
            continue
        if c.isspace() or c in ",，;；":
            if buf:
                tokens.append(("".join(buf), quoted_token))
                buf, quoted_token = [], False
            i += 1
            continue
        buf.append(c)
        i += 1
    if buf:
        tokens.append(("".join(buf), quoted_token))
    return tokens


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] in _QUOTES and v[-1] == _QUOTES[v[0]]:
        return v[1:-1]
    return v
