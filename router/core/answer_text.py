"""What the user reads of the model's reply: scaffolding it echoes is taken out, degenerate repetition cut.

A small model often echoes what it was given instead of (or after) answering: a role prefix starting the
next turn (``User: ...``), the ``[image 1 attached: ...]`` notes, an ``[IMAGE CONTEXT]`` block, lines of the
protocol prompt, or the same sentence again and again. :class:`AnswerFilter` removes those from one LLM
turn's visible text (tags are already gone: :class:`~router.core.tags.TagParser` runs first) and keeps
streaming: it holds back only what may still turn out to be scaffolding (a line start that could become
``User:``, a bracket that could become a note, a sentence that could repeat an earlier one) and releases
the rest at once. Whatever the chunking, the released text is the same (the tests check this).

Two stages, each incremental and chunk-invariant on its own:

- :class:`_Scaffolding`, line by line: role prefixes at a line start (``User:``/``Human:``/``System:``
  mean the model started writing the next turn: the rest of the turn is dropped; ``Assistant:`` is
  stripped), whole lines of the prompts, bracketed notes and context blocks anywhere.
- :class:`_Repetition`, sentence by sentence: a degenerate loop ends the turn. A sentence may come back as
  often as the findings hold it and :data:`MAX_REPEATS` times more; past that the rest of the turn goes.

Grounded in the findings (:class:`FoundText`: every string the experts found): what the image holds is never
scaffolding. A ``User:`` line that OCR read in a chat screenshot, a receipt line printed three times, a prompt
sentence that happens to be on a poster: the model may write each as often as the findings hold it. What the
filter takes out is listed in :attr:`AnswerFilter.removed` (the trace shows it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from router.core.tags import CLOSERS, OPENERS, parse_tags

# --- what counts as scaffolding ------------------------------------------------------------------------
_NEXT_TURN_ROLES = ("user", "human", "system")  # the model started writing someone else's turn
_OWN_ROLE = "assistant"  # the model labelled its own answer: the label goes, the answer stays
_ROLES = (*_NEXT_TURN_ROLES, _OWN_ROLE)
_COLONS = ":："
_HSPACE = " \t"
MIN_LINE_CHARS = 16  # shorter prompt lines ("Examples:") are too likely in ordinary answers to drop
MAX_BRACKET_CHARS = 300  # a bracket that has not closed by then is ordinary text
# Bracket contents that are scaffolding, once closed (lower case, spaces collapsed, ASCII brackets).
_BRACKET_RE = re.compile(
    r"\[\s*(?:"
    r"(?P<note>images?\s+[\d\s,\-–~&and]+\s*attached\b[^\]\n]*)"  # [image 1 attached: ...], [images 1-2 attached]
    r"|(?P<open>image\s+context)"
    r"|(?P<close>/\s*image\s+context)"
    r"|(?P<tag>vision\s*:[^\]\n]*)"  # what the tag parser gave back as text (unreadable tags)
    r")\s*\]",
    re.IGNORECASE,
)
_BRACKET_STARTS = ("image", "/image", "vision")  # despaced: what an opener must be followed by to be held
_CLOSE_BLOCK_RE = re.compile(r"[\[【［]\s*/\s*image\s+context\s*[\]】］]", re.IGNORECASE)
_BRACKET_MAP = str.maketrans({c: "[" for c in OPENERS} | {c: "]" for c in CLOSERS} | {"：": ":"})
# Whole lines the router itself writes into the context (normalised: lower case, spaces collapsed).
_LINE_RES = (
    re.compile(r"already looked at:.*"),
    re.compile(r"- experts: .*"),
    re.compile(r"image \d+ \([^)]*\bid [0-9a-f]+\):?"),
)
_LINE_PREFIXES = ("already looked at:", "- experts: ")
_IMAGE_HEAD_PARTIAL = re.compile(r"image \d+(?: (?:\([^)]*(?:\):?)?)?)? ?")

# --- repetition ------------------------------------------------------------------------------------------
MIN_REPEAT_BYTES = 10  # "Yes." ten times is not a loop worth cutting; a sentence is
MAX_REPEATS = 3  # a sentence may be written this many times more than the findings hold it; once more is a loop
MAX_ECHOES = 2  # the second echoed prompt sentence ends the turn (the model is reciting its prompt)
# A sentence ends at . ! ? followed by white space, at a CJK full stop, or at the end of a line.
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s)|[。！？]|\n")
_FENCE = "```"
_ENDS = ".!?。！？ "
MIN_ECHO_CHARS = 24  # a prompt sentence (or its start) this long, echoed, is dropped


def _norm(text: str) -> str:
    """Case and white space do not make a line or a sentence different."""
    return " ".join(text.split()).casefold()


def _norm_partial(text: str) -> str:
    """:func:`_norm` of a line still being written: a trailing space is kept (the next word follows it)."""
    n = _norm(text)
    return n + " " if n and text[-1:].isspace() else n


def _key(text: str) -> str:
    """Letters and digits only, case-folded: a table row ``| Cappuccino | 4.50 |`` and the OCR line
    ``1 x Cappuccino 4.50`` share ``cappuccino450``."""
    return "".join(c for c in text.casefold() if c.isalnum())


class FoundText:
    """The text the experts found (OCR lines, captions, labels, decoded codes), for asking whether a piece
    of the model's reply is read off the image rather than echoed scaffolding."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        kept = [t for t in texts if t and t.strip()]
        self._norm = "\n".join(_norm(t) for t in kept)
        self._joined = " ".join(_norm(t) for t in kept)  # a line the model joined from two OCR lines
        self._keys = "\n".join(_key(t) for t in kept)

    def __bool__(self) -> bool:
        return bool(self._norm)

    def holds(self, text: str) -> bool:
        """``text`` (case and white space aside) is in what the experts found."""
        n = _norm(text)
        return bool(n) and bool(self._norm) and (n in self._norm or n in self._joined)

    def may_hold(self, partial: str) -> bool:
        """A line still being written may yet turn out to be in the findings."""
        n = _norm_partial(partial)
        return bool(self._norm) and bool(n) and (n.rstrip() in self._norm or n.rstrip() in self._joined)

    def count(self, text: str) -> int:
        """How often the findings hold ``text``'s letters and digits (a repeated receipt line: 3)."""
        k = _key(text)
        return self._keys.count(k) if k else 0


def found_strings(data: object) -> list[str]:
    """Every string in an expert result's JSON (its text lines, caption, labels, decoded codes)."""
    if isinstance(data, str):
        return [data]
    items = data.values() if isinstance(data, dict) else data if isinstance(data, (list, tuple)) else ()
    return [s for item in items for s in found_strings(item)]


@functools.lru_cache(maxsize=32)
def prompt_lines(*texts: str) -> frozenset[str]:
    """The normalised lines of the prompts, tags removed as the tag parser removes them from a reply.
    ``[VISION: ocr] - read text...`` reaches the filter as ``- read text...``."""
    out: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            n = _norm(parse_tags(line)[0])
            if len(n) >= MIN_LINE_CHARS:
                out.add(n)
    return frozenset(out)


@functools.lru_cache(maxsize=32)
def prompt_sentences(*texts: str) -> frozenset[str]:
    """The normalised sentences of the prompts as the repetition stage sees them (after the tag parser and
    the scaffolding stage): a small model echoes a prompt sentence, or its start, inside its own lines."""
    out: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            stage = _Scaffolding(frozenset())
            shown = stage.feed(parse_tags(line)[0]) + stage.close()
            out.update(n for part in _sentences(shown) if len(n := _norm(part)) >= MIN_ECHO_CHARS)
    return frozenset(out)


@functools.lru_cache(maxsize=1)
def default_prompt_texts() -> tuple[str, ...]:
    """Every prompt text the router sends of its own: the protocol module's strings, the note after
    results the router fetched itself, and the tools prompt."""
    from router.core import protocol, toolspec

    texts = [v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, str)]
    texts += [v for k, v in vars(toolspec).items() if k.isupper() and isinstance(v, str)]
    # Every built-in expert's tag lines, whichever of them a run teaches, and the note after results.
    texts += [protocol.tag_prompt(dict.fromkeys(protocol.BUILTIN_ORDER, "")), protocol.looked_at("")]
    return tuple(texts)


def _sentences(text: str) -> list[str]:
    """``text`` cut where the repetition stage cuts sentences."""
    out, start = [], 0
    for m in _SENTENCE_END_RE.finditer(text):
        end = m.start() if m.group() == "\n" and m.start() > start else m.end()
        out.append(text[start:end])
        start = end
    out.append(text[start:])
    return [p for p in out if p.strip()]


class AnswerFilter:
    """One LLM turn's visible text in, what the user may read out. :meth:`feed` each piece, then
    :meth:`close` once; concatenated, their results are the cleaned turn, however it was chunked."""

    def __init__(
        self,
        prompts: Iterable[str] = (),
        repetition: bool = True,
        found: FoundText | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled  # off: the model's text passes whole (``[serve] answer_filter = false``)
        texts = (*default_prompt_texts(), *prompts)
        found = found or FoundText()
        self.removed: list[tuple[str, str]] = []  # (why, text) of everything taken out, in order
        self._scaffolding = _Scaffolding(prompt_lines(*texts), found, self.removed)
        self._repetition = _Repetition(prompt_sentences(*texts), found, self.removed) if repetition else None
        self.released = False  # set by the caller once it put out words of this turn

    @property
    def trailing(self) -> str:
        """The white space held back at the end of the turn (after :meth:`close`): what would join a
        following turn's words to this one's."""
        if not self.enabled:
            return ""
        sc = self._scaffolding
        return (sc.sep[:2] if sc.collapse else sc.sep) + sc.space

    @property
    def dropping(self) -> bool:
        """True once the rest of the turn is dropped (the model started the next turn, or loops)."""
        return self.enabled and (self._scaffolding.dropped or bool(self._repetition and self._repetition.dropped))

    def feed(self, text: str) -> str:
        if not self.enabled:
            return text
        out = self._scaffolding.feed(text)
        return self._repetition.feed(out) if self._repetition and out else out

    def close(self) -> str:
        if not self.enabled:
            return ""
        out = self._scaffolding.close()
        if self._repetition is None:
            return out
        return self._repetition.feed(out) + self._repetition.close()


def clean_answer(text: str, prompts: Iterable[str] = (), repetition: bool = True, found: Iterable[str] = ()) -> str:
    """A whole reply, cleaned as :class:`AnswerFilter` cleans it streamed; ``found``: the experts' text."""
    f = AnswerFilter(prompts, repetition, FoundText(found))
    return f.feed(text) + f.close()


# --- stage 1: scaffolding, line by line ------------------------------------------------------------------
class _Scaffolding:
    def __init__(
        self, lines: frozenset[str], found: FoundText | None = None, removed: list[tuple[str, str]] | None = None
    ) -> None:
        self.lines = lines
        self.found = found or FoundText()
        self.removed = removed if removed is not None else []
        self.buf = ""  # raw text not decided yet
        self.dropped = False  # the rest of the turn goes
        self.in_block = False  # inside an echoed [IMAGE CONTEXT] block
        self.at_start = True  # the buffer begins a line whose head is not decided yet
        self.role_done = False  # this line's role prefix (or its absence) is decided
        self.skip_space = False  # after a stripped "Assistant:", the spaces that followed it
        self.line_kept = False  # this line has released words
        self.line_cut = False  # something was taken out of this line
        self.space = ""  # white space of this line, released before its next word
        self.sep = ""  # line breaks owed before the next released word
        self.started = False  # anything released this turn (leading blank lines are dropped)
        self.collapse = False  # a dropped line sits in the pending blank lines: at most one blank line

    def feed(self, text: str) -> str:
        self.buf += text
        return self._drain(final=False)

    def close(self) -> str:
        return self._drain(final=True)  # trailing white space and line breaks stay unreleased

    def _drain(self, final: bool) -> str:
        out: list[str] = []
        while self.buf and not self.dropped:
            if self.in_block:
                if not self._leave_block(final):
                    break
            elif self.at_start:
                if not self._head(final):
                    break
            elif not self._body(final, out):
                break
        if self.dropped and self.buf.strip():
            self.removed.append(("the model started another turn", self.buf))
        if self.dropped or final:
            self.buf = ""
        return "".join(out)

    # a block ---------------------------------------------------------------------------------------------
    def _leave_block(self, final: bool) -> bool:
        m = _CLOSE_BLOCK_RE.search(self.buf)
        if m is None:
            # Everything inside goes; keep a tail that may be the start of the closing marker.
            keep = 0 if final else min(len(self.buf), 64)
            self._cut_lines(self.buf[: len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep :]
            return False
        self._cut_lines(self.buf[: m.start()])
        self.buf = self.buf[m.end() :]
        self.in_block = False
        self.line_cut = True
        return True

    def _cut_lines(self, dropped: str) -> None:
        """Line breaks inside a dropped block end lines that were cut (nothing of them is released)."""
        for _ in range(dropped.count("\n")):
            self.line_cut = True
            self._end_line()

    # the head of a line: a role, or a whole scaffolding line ---------------------------------------------
    def _head(self, final: bool) -> bool:
        if not self.role_done:
            role = _role(self.buf)
            if role is None and not final:
                return False  # may still become "User:"
            if role and self.found:
                read = self._read_off_image(final)  # a chat screenshot's "User: ..." line, transcribed
                if read is None:
                    return False
                if read:
                    self.role_done = True
                    self.at_start = False
                    return True
            if role in _NEXT_TURN_ROLES:
                self.dropped = True
                return True
            if role == _OWN_ROLE:
                self.buf = self.buf[self.buf.index(_first_colon(self.buf)) + 1 :]
                self.skip_space = True
                self.line_cut = True
            self.role_done = True  # one role per line: "Assistant: User: x" keeps "User: x"
        nl = self.buf.find("\n")
        line = self.buf if nl < 0 else self.buf[:nl]
        complete = nl >= 0 or final
        if not complete and self._may_be_line(line):
            return False
        if complete and (self._is_line(line) or (nl < 0 and self._cut_short(line))) and not self.found.holds(line):
            self.removed.append(("a line of the router's prompt or context", line))
            self.buf = "" if nl < 0 else self.buf[nl + 1 :]
            self.line_cut = True
            self._end_line()
            return True
        self.at_start = False
        return True

    def _read_off_image(self, final: bool) -> bool | None:
        """Whether the line in the buffer, which starts with a role, is text the experts found (None: it
        may still turn out to be; wait for more of it)."""
        nl = self.buf.find("\n")
        if nl < 0 and not final:
            return None if self.found.may_hold(self.buf) else False
        return self.found.holds(self.buf if nl < 0 else self.buf[:nl])

    def _may_be_line(self, line: str) -> bool:
        n = _norm_partial(line.lstrip())
        if not n:
            return True
        ended = n.rstrip()  # after white space the line may end as well as go on
        if ended.startswith(_LINE_PREFIXES) or any(p.startswith(n) for p in _LINE_PREFIXES):
            return True
        if _image_head_possible(n) or (ended != n and self._is_line(ended)):
            return True
        return any(p.startswith(n) for p in self.lines)

    def _cut_short(self, line: str) -> bool:
        """The turn ended inside an echoed prompt line (the model ran out of tokens while echoing)."""
        n = _norm(line)
        return len(n) >= MIN_LINE_CHARS and any(p.startswith(n) for p in self.lines)

    def _is_line(self, line: str) -> bool:
        n = _norm(line)
        return n in self.lines or any(r.fullmatch(n) for r in _LINE_RES)

    # the rest of a line: words, brackets, the line break -------------------------------------------------
    def _body(self, final: bool, out: list[str]) -> bool:
        buf = self.buf
        if self.skip_space:
            stripped = buf.lstrip(_HSPACE)
            if not stripped:
                self.buf = ""
                return False
            buf = self.buf = stripped
            self.skip_space = False
        i = _next_special(buf)
        if i < 0:
            self._words(buf, out)
            self.buf = ""
            return False
        if i:
            self._words(buf[:i], out)
            self.buf = buf = buf[i:]
        if buf[0] == "\n":
            self._end_line()
            self.buf = buf[1:]
            return True
        return self._bracket(final, out)

    def _bracket(self, final: bool, out: list[str]) -> bool:
        buf = self.buf
        close = _find_closer(buf, 1)
        nl = buf.find("\n", 1)
        if nl >= 0 and (close < 0 or nl < close):
            close = -1  # a bracket does not span lines
        inner = buf[1:close] if close >= 0 else buf[1 : nl if nl >= 0 else len(buf)]
        despaced = "".join(inner.translate(_BRACKET_MAP).split()).lower()
        could = len(inner) < MAX_BRACKET_CHARS and any(
            s.startswith(despaced) or despaced.startswith(s) for s in _BRACKET_STARTS
        )
        if close < 0 and could and nl < 0:
            if final:
                self.buf = ""  # the turn ended inside a note or a marker: it goes too
                self.line_cut = True
                return True
            return False  # may still close as a note or a marker: wait
        m = _BRACKET_RE.fullmatch(("[" + inner + "]").translate(_BRACKET_MAP)) if could and close >= 0 else None
        if m is not None and self.found.holds(buf[: close + 1]):
            m = None  # the image itself says it (a screenshot of a chat with a vision router)
        if m is None:
            self._words(buf[0], out)
            self.buf = buf[1:]
            return True
        self.buf = buf[close + 1 :]
        if m.group("open") and not self.line_kept:
            self.in_block = True  # a block starts a line; mid-sentence ("an [IMAGE CONTEXT] block") it is a word
        why = "an echoed context block" if self.in_block else "an image note or marker"
        self.removed.append((why, buf[: close + 1]))
        self.line_cut = True
        return True

    def _words(self, text: str, out: list[str]) -> None:
        """Release text of the current line; its white space waits for the next word."""
        stripped = text.rstrip()
        if not stripped:
            self.space += text
            return
        if self.sep and self.started:
            out.append(self.sep[:2] if self.collapse else self.sep)
        self.sep = ""
        self.collapse = False
        out.append(self.space + stripped)
        self.space = text[len(stripped) :]
        self.line_kept = True
        self.started = True

    def _end_line(self) -> None:
        if self.line_kept:
            self.sep += self.space + "\n"
        elif self.line_cut:
            self.collapse = True
        else:
            self.sep += "\n"  # a blank line of the answer's own
        self.space = ""
        self.line_kept = self.line_cut = self.role_done = False
        self.at_start = True
        self.skip_space = False


def _role(buf: str) -> str | None:
    """The role a line starts with: a name from :data:`_ROLES`, "" for none, None while undecided."""
    s = buf.lstrip(_HSPACE).lower()
    if not s:
        return None
    for word in _ROLES:
        if word.startswith(s):
            return None  # "Us", "Assis": not decided yet
        if s.startswith(word):
            rest = s[len(word) :].lstrip(_HSPACE)
            if not rest:
                return None
            if rest[0] in _COLONS:
                return word
    return ""


def _first_colon(s: str) -> str:
    found = [c for c in _COLONS if c in s]
    return min(found, key=s.index)


def _image_head_possible(n: str) -> bool:
    return "image ".startswith(n) or bool(_IMAGE_HEAD_PARTIAL.fullmatch(n))


def _next_special(s: str) -> int:
    best = s.find("\n")
    for ch in OPENERS:
        k = s.find(ch)
        if k >= 0 and (best < 0 or k < best):
            best = k
    return best


def _find_closer(s: str, start: int) -> int:
    best = -1
    for ch in CLOSERS:
        k = s.find(ch, start)
        if k >= 0 and (best < 0 or k < best):
            best = k
    return best


# --- stage 2: repetition, sentence by sentence -----------------------------------------------------------
class _Repetition:
    def __init__(
        self,
        echoes: frozenset[str] = frozenset(),
        found: FoundText | None = None,
        removed: list[tuple[str, str]] | None = None,
    ) -> None:
        self.echoes = echoes  # the prompts' sentences: one of them, or its start, is an echo
        self.found = found or FoundText()
        self.removed = removed if removed is not None else []
        self.buf = ""  # the sentence being written (and white space before it)
        self.released = 0  # of buf, already out
        self.space = ""  # blank lines, released before the next sentence that stays
        self.cut = False  # an echo was dropped since the last sentence out: at most one blank line
        self.seen: dict[str, int] = {}  # sentence -> how often it was written
        self.at_limit: set[str] = set()  # sentences one more copy of which is a loop
        self.echoed = 0
        self.dropped = False
        self.in_code = False  # inside a ``` fence: code repeats lines on purpose

    def feed(self, text: str) -> str:
        if self.dropped:
            return ""
        self.buf += text
        out: list[str] = []
        while not self.dropped:
            m = _SENTENCE_END_RE.search(self.buf)
            if m is None:
                break
            # A line break is not part of the sentence it ends: it waits with the white space.
            end = m.start() if m.group() == "\n" and m.start() > 0 else m.end()
            self._sentence(self.buf[:end], out)
            self.buf = self.buf[end:]
            self.released = 0
        # Once part of a sentence is out it cannot become a loop or an echo any more.
        if not self.dropped and (self.released or not self._may_go(self.buf)):
            self._out(self.buf[self.released :], out)
            self.released = len(self.buf)
        return "".join(out)

    def close(self) -> str:
        if self.dropped or not self.buf:
            return ""
        out: list[str] = []
        self._sentence(self.buf, out)
        self.buf = ""
        self.released = 0
        return "".join(out)

    def _sentence(self, s: str, out: list[str]) -> None:
        n = _norm(s)
        if not n and not self.released:
            self.space += s  # a blank line waits for what follows it
            return
        if n.startswith(_FENCE):
            self.in_code = not self.in_code
        elif not self.in_code and _long_enough(n):
            if self._echo(n) and not self.found.holds(n):
                self.removed.append(("an echoed prompt sentence", s.strip()))
                self.echoed += 1
                self.dropped = self.echoed >= MAX_ECHOES  # the model is reciting its prompt
                self.cut = True
                return
            times = self.seen[n] = self.seen.get(n, 0) + 1
            limit = self.found.count(n) + MAX_REPEATS
            if times > limit:
                self.removed.append((f"a loop: the same sentence {times} times", s.strip()))
                self.dropped = True
                return
            if times == limit:
                self.at_limit.add(n)
        self._out(s[self.released :], out)

    def _out(self, text: str, out: list[str]) -> None:
        if not text:
            return
        if self.space:
            out.append(_at_most_one_blank(self.space) if self.cut else self.space)
            self.space = ""
        self.cut = False
        out.append(text)

    def _echo(self, n: str) -> bool:
        key = n.rstrip(_ENDS)
        return len(key) >= MIN_ECHO_CHARS and any(p.startswith(key) for p in self.echoes)

    def _may_go(self, fragment: str) -> bool:
        """Whether a sentence still being written may turn out to be dropped (a loop or an echo)."""
        n = _norm_partial(fragment)
        if not n:
            return True  # white space alone waits: it goes with the sentence it starts, or is dropped at the end
        if self.in_code:
            return False
        key = n.rstrip(_ENDS)  # "...the answer." may still be the start of a longer prompt sentence
        return any(s.startswith(n) for s in self.at_limit) or any(p.startswith(key) for p in self.echoes)


def _long_enough(n: str) -> bool:
    # In bytes: a CJK sentence says as much in a third of the characters.
    return len(n.encode()) >= MIN_REPEAT_BYTES


def _at_most_one_blank(space: str) -> str:
    return "\n\n" if space.count("\n") >= 2 else space
