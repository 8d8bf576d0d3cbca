"""Consonant skeletons: one spelling for a word whether written in Arabic script or in Arabizi.

"الماي مقطوع" and "el mai maqtoo3" both become "lm mkt3": Arabic letters and their Arabizi spellings (digits
3=ع 7=ح 5=خ 6=ط 9=ص 8=ق 2=ء, digraphs sh/kh/gh/th/dh) map to one consonant class, vowels (and the letters
that write long vowels, ا و ي) are dropped, and near sounds that citizens interchange (emphatic and plain
s/t/d, q/k/g, h/ḥ) share a class. The skeletons are an extra feature block, so the few Arabizi examples of
an agency share features with the many Arabic-script ones. Hand-written: no library covers Gulf Arabizi.
"""

from __future__ import annotations

import re
from functools import lru_cache

_AR = {
    "ب": "b",
    "ت": "t",
    "ث": "t",
    "ج": "j",
    "ح": "h",
    "خ": "x",
    "د": "d",
    "ذ": "d",
    "ر": "r",
    "ز": "z",
    "س": "s",
    "ش": "S",
    "ص": "s",
    "ض": "d",
    "ط": "t",
    "ظ": "d",
    "ع": "3",
    "غ": "x",
    "ف": "f",
    "ق": "k",
    "ك": "k",
    "ل": "l",
    "م": "m",
    "ن": "n",
    "ه": "h",
    "گ": "k",
    "چ": "S",
    "پ": "b",
    "ڤ": "f",
}
_AR_DROP = frozenset("اويىءةآأإؤئ")
_LATIN_DIGRAPHS = re.compile(r"sh|ch|kh|gh|th|dh")
_DIGRAPH = {"sh": "S", "ch": "S", "kh": "x", "gh": "x", "th": "t", "dh": "d"}
_LATIN = {
    "b": "b",
    "p": "b",
    "t": "t",
    "j": "j",
    "h": "h",
    "d": "d",
    "r": "r",
    "z": "z",
    "s": "s",
    "f": "f",
    "v": "f",
    "q": "k",
    "k": "k",
    "g": "k",
    "c": "k",
    "l": "l",
    "m": "m",
    "n": "n",
    "x": "x",
    "3": "3",
    "7": "h",
    "5": "x",
    "6": "t",
    "9": "s",
    "8": "k",
    "S": "S",
}
_ARABIC_RE = re.compile(r"[\u0621-\u064a]")
_LATIN_RE = re.compile(r"^[a-z0-9']+$")
_REPEAT_RE = re.compile(r"(.)\1+")
# The article and the clitics glued to it (Arabizi writes the article as a separate "el"/"al", dropped as a
# one-letter skeleton); a final ه is almost always a folded ة, which Arabizi writes as a vowel.
_AR_ARTICLE_RE = re.compile(r"^(?:[وفبك]?ال|لل)(?=..)")
_AR_FINAL_RE = re.compile(r"(?<=..)ه$")
_LATIN_FINAL_H_RE = re.compile(r"(?<=[aeiou])h$")


@lru_cache(maxsize=16384)
def skeleton_word(word: str) -> str:
    """The consonant skeleton of one folded, lower-case token ('' when nothing is left)."""
    if _ARABIC_RE.search(word):
        word = _AR_FINAL_RE.sub("", _AR_ARTICLE_RE.sub("", word))
        out = [_AR.get(ch, "") for ch in word if ch not in _AR_DROP]
        return _REPEAT_RE.sub(r"\1", "".join(out))
    if _LATIN_RE.match(word):
        word = _LATIN_FINAL_H_RE.sub("", word)
        word = _LATIN_DIGRAPHS.sub(lambda m: _DIGRAPH[m.group(0)], word)
        return _REPEAT_RE.sub(r"\1", "".join(_LATIN.get(ch, "") for ch in word))
    return ""


def skeleton(tokens: list[str], latin: bool) -> str:
    """Skeletons of the Arabic-script tokens, and of the Latin ones when ``latin`` (an Arabizi message)."""
    out: list[str] = []
    for tok in tokens:
        if not latin and not _ARABIC_RE.search(tok):
            continue
        if tok.startswith("num") and tok[3:].isdigit():
            continue
        sk = skeleton_word(tok)
        if len(sk) >= 2:
            out.append(sk)
    return " ".join(out)


# Light stemming of Arabic-script words, after Larkey et al.'s "light10" (hand-written; camel-tools' stemmers
# need its morphology database): the article with its proclitics, a leading و, and common suffixes, so that
# "فاتورتي" / "الفاتوره" / "وفواتيرهم" share more than character n-grams.
_STEM_PREFIXES = ("وال", "بال", "كال", "فال", "لل", "ال")
_STEM_SUFFIXES = ("هما", "كما", "ها", "ان", "ات", "ون", "ين", "يه", "هم", "كم", "نا", "ه", "ي")


@lru_cache(maxsize=16384)
def stem_word(word: str) -> str:
    """Light stem of one folded Arabic-script word ('' for other words)."""
    if not _ARABIC_RE.search(word):
        return ""
    if len(word) > 3 and word.startswith("و"):
        word = word[1:]
    for prefix in _STEM_PREFIXES:
        if word.startswith(prefix) and len(word) - len(prefix) >= 2:
            word = word[len(prefix) :]
            break
    changed = True
    while changed and len(word) > 3:
        changed = False
        for suffix in _STEM_SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 2:
                word = word[: -len(suffix)]
                changed = True
                break
    return word


def stems(tokens: list[str]) -> list[str]:
    return [st for st in (stem_word(t) for t in tokens) if len(st) >= 2]
