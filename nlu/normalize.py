"""Text normalisation for the NLU: one character-level fold shared by the classifiers and the gazetteers.

camel-tools supplies the Arabic rules (NFKC unicode normalisation, arclean, dediacritisation, alef /
alef-maksura / teh-marbuta folding, word tokenisation). Only ``camel_tools.utils`` and
``camel_tools.tokenizers.word`` are imported: the data-dependent camel-tools modules (morphology, disambig,
dialectid, ner, sentiment) try to download models at import time and there is no internet here.

What camel-tools leaves to us, added by hand:

* the fold runs per character through a cached table, so the folded text maps back to offsets in the raw
  text (entities must point into what the citizen sent), and so it costs one dict lookup per character;
* emoji are kept (arclean drops them, yet 😡 / 👍 / 🙏 carry complaint / affirm / thanks);
* hamza seats (ؤ ئ) folded too, since citizens drop hamza freely; control / format characters removed;
* URLs, e-mails, @mentions and #hashtags rewritten before tokenising; case references and numbers turned
  into placeholder tokens (a CPR or a date says nothing about the topic, only its shape does);
* letter repeats collapsed ("ليييش" -> "ليش", "pleaseeee" -> "pleasee").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

from camel_tools.tokenizers.word import simple_word_tokenize
from camel_tools.utils.charmap import CharMapper
from camel_tools.utils.dediac import dediac_ar
from camel_tools.utils.normalize import (
    normalize_alef_ar,
    normalize_alef_maksura_ar,
    normalize_teh_marbuta_ar,
    normalize_unicode,
)

_ARCLEAN = CharMapper.builtin_mapper("arclean")
# Hamza on waw / yeh: "مسؤول" / "مسئول" / "مسوول" are one word to a citizen.
_HAMZA_SEATS = str.maketrans({"ؤ": "و", "ئ": "ي"})
_EXTRA = {"؟": "?", "،": ",", "؛": ";", "٪": "%"}
# Bound on the per-character cache: binary-looking input may use many distinct code points.
_MAX_CACHE = 50_000


def _fold_char(ch: str) -> str:
    """The full fold of one character (the result may be empty or several characters long)."""
    out: list[str] = []
    for c in normalize_unicode(ch):
        if c in _EXTRA:
            out.append(_EXTRA[c])
            continue
        cat = unicodedata.category(c)
        if cat in ("Cc", "Zs", "Zl", "Zp", "Cs"):
            out.append(" ")
        elif cat in ("Cf", "Co", "Cn", "Mn", "Me", "Sk"):
            # format marks (RLM, ZWJ, soft hyphen), diacritics, variation selectors, skin tones
            continue
        elif cat == "So":
            out.append(c)  # emoji and pictographs
        else:
            cleaned = _ARCLEAN(c)
            cleaned = dediac_ar(cleaned)
            cleaned = normalize_alef_ar(cleaned)
            cleaned = normalize_alef_maksura_ar(cleaned)
            cleaned = normalize_teh_marbuta_ar(cleaned)
            out.append(cleaned.translate(_HAMZA_SEATS).lower())
    return "".join(out)


class _FoldTable(dict[int, str]):
    """``str.translate`` table computed on first use of each code point."""

    def __missing__(self, key: int) -> str:
        value = _fold_char(chr(key))
        if len(value) != 1:
            _IRREGULAR.add(chr(key))
        if len(self) < _MAX_CACHE:
            self[key] = value
        return value


# Characters whose fold is not exactly one character (diacritics, format marks, ligatures): only a text
# containing one needs an offset map to point back into the raw text.
_IRREGULAR: set[str] = set()


_TABLE = _FoldTable()
for _cp in (*range(0x20, 0x7F), *range(0x0600, 0x0700)):
    _TABLE[_cp]


def fold(text: str) -> str:
    """Character-level fold (no offsets)."""
    return text.translate(_TABLE)


@dataclass(slots=True)
class FoldedText:
    """The raw text, its fold, and the way back from folded positions to raw positions."""

    raw: str
    folded: str
    _offsets: list[int] | None = field(default=None)
    _identity: bool | None = field(default=None)

    @classmethod
    def of(cls, raw: str) -> FoldedText:
        return cls(raw, raw.translate(_TABLE))

    def _offset_map(self) -> list[int]:
        """Raw index of every folded character (built on first use: most messages need no span)."""
        if self._offsets is None:
            get = _TABLE.__getitem__
            offsets: list[int] = []
            for i, c in enumerate(self.raw):
                offsets.extend([i] * len(get(ord(c))))
            self._offsets = offsets
            self._identity = len(offsets) == len(self.raw) and all(o == i for i, o in enumerate(offsets))
        return self._offsets

    def raw_span(self, start: int, end: int) -> tuple[int, int]:
        """Raw [start, end) covering the folded [start, end) (end > start)."""
        if self._identity is None and len(self.folded) == len(self.raw) and _IRREGULAR.isdisjoint(self.raw):
            self._identity = True  # every character folded to exactly one: positions are unchanged
        if self._identity:
            return start, end
        offsets = self._offset_map()
        if self._identity:
            return start, end
        return offsets[start], offsets[end - 1] + 1


# --- model normalisation -------------------------------------------------------------------------------

_URL_RE = re.compile(
    r"(?:https?://|www\.)([^\s/?#]+)\S*|\b([a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:bh|com|net|org|gov))\b"
)
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_TAG_RE = re.compile(r"[#@]([^\W_][\w]*)")
_CASE_REF_RE = re.compile(r"\btws[\s_-]*\d{2,4}[\s_-]*\d{1,7}\b")
_NUMBER_RE = re.compile(r"(?<![^\W\d_])\d+(?:[.,]\d+)?(?![^\W\d_])")
_AR_REPEAT_RE = re.compile(r"([\u0621-\u064a])\1{2,}")
_LATIN_REPEAT_RE = re.compile(r"([a-z])\1{2,}")
_PUNCT_REPEAT_RE = re.compile(r"([?!.,])\1+")
_DOMAIN_NOISE = frozenset({"www", "com", "net", "org", "http", "https"})
CASE_REF_TOKEN = "twsref"
_KEEP_PUNCT = frozenset("?!")


def _url_words(match: re.Match[str]) -> str:
    host = match.group(1) or match.group(2) or ""
    return " " + " ".join(p for p in re.split(r"[.-]", host) if p and p not in _DOMAIN_NOISE) + " "


def _number_token(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return f" num{min(digits, 9)} "


_DIGIT_RE = re.compile(r"\d")
_URL_HINTS = ("http", "www", ".bh", ".com", ".net", ".org", ".gov")


@lru_cache(maxsize=8192)
def _pieces(word: str) -> tuple[str, ...]:
    # simple_word_tokenize walks every character with a regex: words recur, so each is split once.
    return tuple(simple_word_tokenize(word))


def normalize_folded(folded: str) -> str:
    """Model text from already-folded text: space-separated tokens."""
    text = folded
    # Each rewrite runs only when its trigger can be present (cheap substring tests first: hot path).
    if "@" in text:
        text = _EMAIL_RE.sub(" ", text)
    if any(hint in text for hint in _URL_HINTS):
        text = _URL_RE.sub(_url_words, text)
    if "#" in text or "@" in text:
        text = _TAG_RE.sub(lambda m: " " + m.group(1).replace("_", " ") + " ", text)
    if _DIGIT_RE.search(text):
        if "tws" in text:
            text = _CASE_REF_RE.sub(f" {CASE_REF_TOKEN} ", text)
        text = _NUMBER_RE.sub(_number_token, text)
    text = _AR_REPEAT_RE.sub(r"\1", text)
    text = _LATIN_REPEAT_RE.sub(r"\1\1", text)
    text = _PUNCT_REPEAT_RE.sub(r"\1", text)
    tokens: list[str] = []
    for word in text.split():
        pieces = (word,) if word.isalnum() else _pieces(word)
        for piece in pieces:
            if piece.isalnum() or piece in _KEEP_PUNCT:
                tokens.append(piece[:40])
            elif piece and unicodedata.category(piece[0]) == "So":
                if not tokens or tokens[-1] != piece:  # a row of the same emoji says it once
                    tokens.append(piece)
            elif "_" in piece:
                tokens.extend(p for p in piece.split("_") if p)
    return " ".join(tokens)


def normalize(text: str, max_chars: int | None = None) -> str:
    """Model text for a raw message (optionally truncated first)."""
    if max_chars is not None:
        text = text[:max_chars]
    return normalize_folded(fold(text))


# --- word tokens with spans (gazetteers) ---------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W_]+")
_AR_TOKEN_REPEAT_RE = re.compile(r"([\u0621-\u064a])\1{2,}")


@lru_cache(maxsize=16384)
def gazetteer_token(word: str) -> str:
    """Token form used by the gazetteers: repeats collapsed (on already-folded text)."""
    word = _AR_TOKEN_REPEAT_RE.sub(r"\1", word)
    return _LATIN_REPEAT_RE.sub(r"\1\1", word)


def word_spans(folded: str) -> list[tuple[str, int, int]]:
    """(token, start, end) over folded text; spans index the folded text."""
    return [(gazetteer_token(m.group(0)), m.start(), m.end()) for m in _WORD_RE.finditer(folded)]


def gazetteer_key(surface: str) -> tuple[str, ...]:
    """How a gazetteer entry (agency alias, place name) is stored: folded word tokens."""
    return tuple(tok for tok, _, _ in word_spans(fold(surface)))
