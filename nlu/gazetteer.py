"""Phrase gazetteer over folded word tokens: agency names/aliases and Bahraini place names.

Hand-written (rather than e.g. flashtext / pyahocorasick) because matching has to understand Arabic
clitics glued to the first word ("للبلدية", "بالكهرباء", "وهيئة ...") and tolerate one-letter misspellings
of Latin-script names ("municipalty", "Minstry of helth"), while reporting offsets into the raw text.

Rules: entries are folded exactly like messages (alef/hamza/ة/ى folding, case-insensitive, letter repeats
collapsed); matching is on whole words; the longest match wins and matches do not overlap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from pathlib import Path

import yaml

from config.agencies import AGENCIES_FILE, Agency, load_agencies
from nlu.normalize import FoldedText, gazetteer_key, word_spans

# Proclitics a citizen glues to the first word: و/ف (and), ب (with/in), ل (to/for), ك (like), ال.
_AR_CONJ = ("و", "ف")
_AR_PREP = ("ب", "ل", "ك")
_MIN_FUZZY_TOKEN = 5
# A single-word match through a typo must be long: short words have too many one-letter neighbours.
_MIN_FUZZY_SINGLE = 7
_MAX_CACHE = 100_000


@dataclass(frozen=True, slots=True)
class Match:
    key: str
    surface: str  # the raw text matched
    start: int  # raw offsets
    end: int
    tokens: int
    fuzzy: bool


def _is_latin(token: str) -> bool:
    return token.isascii()


def _prefix_variants(token: str) -> list[str]:
    """The token and the forms it takes without glued Arabic proclitics."""
    variants = [token]
    if _is_latin(token) or len(token) < 4:
        return variants
    stems = [token]
    if token.startswith(_AR_CONJ):
        stems.append(token[1:])
    for stem in stems:
        if stem.startswith("لل") and len(stem) > 4:
            variants.append("ال" + stem[2:])
        if stem.startswith(_AR_PREP) and len(stem) > 3:
            variants.append(stem[1:])
        if stem is not token:
            variants.append(stem)
    return list(dict.fromkeys(variants))


# The agency, place and topic gazetteers all look up the same new words: their one-deletion forms are made once.
@lru_cache(maxsize=16384)
def _deletes(token: str) -> frozenset[str]:
    """The token and its one-deletion forms."""
    return frozenset({token, *(token[:i] + token[i + 1 :] for i in range(len(token)))})


class Gazetteer:
    """Longest-match phrase lookup. ``entries`` are (surface form, key) pairs."""

    def __init__(
        self,
        entries: Iterable[tuple[str, str]],
        *,
        needs_cue: Iterable[str] = (),
        cues: Iterable[str] = (),
        fuzzy: bool = True,
    ) -> None:
        self._phrases: dict[tuple[str, ...], str] = {}
        self.conflicts: list[tuple[str, str, str]] = []  # (surface, key kept, key dropped)
        for surface, key in entries:
            phrase = gazetteer_key(surface)
            if not phrase:
                continue
            kept = self._phrases.setdefault(phrase, key)
            if kept != key:
                self.conflicts.append((surface, kept, key))
        self._max_len = max((len(p) for p in self._phrases), default=0)
        self._first = {p[0] for p in self._phrases}
        self._needs_cue = {gazetteer_key(s) for s in needs_cue}
        self._cues = {t for c in cues for t in gazetteer_key(c)}
        # One-edit neighbours of the words of the entries, for typo-tolerant matching (SymSpell-style:
        # two strings within one edit share a one-deletion form).
        self._vocab = {t for p in self._phrases for t in p}
        self._cache: dict[str, tuple[tuple[tuple[str, bool], ...], str | None]] = {}
        self._fuzzy_index: dict[str, set[str]] = {}
        if fuzzy:
            for word in self._vocab:
                if len(word) < _MIN_FUZZY_TOKEN:
                    continue
                for form in _deletes(word):
                    self._fuzzy_index.setdefault(form, set()).add(word)

    def __len__(self) -> int:
        return len(self._phrases)

    def _token_info(self, token: str) -> tuple[tuple[tuple[str, bool], ...], str | None]:
        """(phrase-starting forms with their fuzzy flag, typo-corrected form) of a word; cached, since
        words repeat from message to message (the cache is cleared when it grows large)."""
        info = self._cache.get(token)
        if info is None:
            variants = _prefix_variants(token)
            corrected = None
            if self._fuzzy_index and not any(v in self._vocab for v in variants):
                corrected = self._fuzzy(token)
            firsts = tuple((v, False) for v in variants if v in self._first)
            if corrected is not None and corrected in self._first:
                firsts += ((corrected, True),)
            info = (firsts, corrected)
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[token] = info
        return info

    def _fuzzy(self, token: str) -> str | None:
        if len(token) < _MIN_FUZZY_TOKEN or token in self._vocab:
            return None
        found: set[str] = set()
        for form in _deletes(token):
            found |= self._fuzzy_index.get(form, set())
        return next(iter(found)) if len(found) == 1 else None

    def find(
        self,
        text: FoldedText,
        spans: list[tuple[str, int, int]] | None = None,
        tokens: list[str] | None = None,
    ) -> list[Match]:
        """Non-overlapping matches, longest first at each position, left to right. ``spans`` (from
        ``word_spans``) and ``tokens`` (their first items) may be passed in when several gazetteers read
        the same text."""
        if not self._phrases:
            return []
        spans = word_spans(text.folded) if spans is None else spans
        # Per position: the forms that can start a phrase (clitics stripped, or typo-corrected) and the
        # typo-corrected form of the word.
        if tokens is None:
            tokens = [tok for tok, _, _ in spans]
        # cache lookups through map (C speed); a miss (None) is worked out once per new word
        infos = [
            info or self._token_info(tok)
            for info, tok in zip(map(self._cache.get, tokens), tokens, strict=True)
        ]
        if not any(map(itemgetter(0), infos)):
            return []
        corrected = [c for _, c in infos]
        matches: list[Match] = []
        i = 0
        n = len(spans)
        while i < n:
            best: tuple[int, str, bool] | None = None
            for first, first_fuzzy in infos[i][0]:
                for length in range(min(self._max_len, n - i), 0, -1):
                    if best is not None and length <= best[0]:
                        break
                    phrase = [first]
                    fuzzy = first_fuzzy
                    for j in range(i + 1, i + length):
                        tok = spans[j][0]
                        if tok in self._vocab:
                            phrase.append(tok)
                        elif corrected[j] is not None:
                            phrase.append(corrected[j] or "")
                            fuzzy = True
                        else:
                            phrase.append(tok)
                    key_tuple = tuple(phrase)
                    key = self._phrases.get(key_tuple)
                    if key is None:
                        continue
                    if fuzzy and length == 1 and len(spans[i][0]) < _MIN_FUZZY_SINGLE:
                        continue
                    if (
                        fuzzy
                        and length > 1
                        and all(spans[k][0] not in self._vocab for k in range(i, i + length))
                    ):
                        continue  # a phrase needs at least one word spelt right
                    if key_tuple in self._needs_cue and not self._has_cue(spans, i, i + length):
                        continue
                    best = (length, key, fuzzy)
                    break
            if best is None:
                i += 1
                continue
            length, key, fuzzy = best
            start, end = text.raw_span(spans[i][1], spans[i + length - 1][2])
            matches.append(Match(key, text.raw[start:end], start, end, length, fuzzy))
            i += length
        return matches

    def _has_cue(self, spans: list[tuple[str, int, int]], start: int, end: int) -> bool:
        before = spans[start - 1][0] if start > 0 else ""
        after = spans[end][0] if end < len(spans) else ""
        return before in self._cues or after in self._cues


# --- the gazetteers the engine uses ---------------------------------------------------------------------

TOPICS_FILE = Path(__file__).resolve().parent / "topics.yml"


def agency_entries(agencies: Iterable[Agency]) -> list[tuple[str, str]]:
    """(surface, id) of every formal name and alias. Short names are button labels ("Health", "Works") and
    match only when the catalog also lists them as aliases, since alone they are often everyday words."""
    return [(name, a.id) for a in agencies for name in (a.name.ar, a.name.en, *a.aliases)]


@lru_cache(maxsize=4)
def _agency_gazetteer(path: Path, mtime_ns: int) -> Gazetteer:
    return Gazetteer(agency_entries(load_agencies(path)))


def agency_gazetteer(path: Path | None = None) -> Gazetteer:
    """Names and aliases of the 22 agencies (``config/agencies.yml``); rebuilt when the file changes."""
    path = (path or AGENCIES_FILE).resolve()
    return _agency_gazetteer(path, path.stat().st_mtime_ns)


def load_topics(path: Path = TOPICS_FILE) -> dict[str, list[str]]:
    """Agency id -> topic terms (``nlu/topics.yml``); empty when the file does not exist."""
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    topics = data.get("topics") or {}
    return {str(agency): [str(t) for t in terms or []] for agency, terms in topics.items()}


@lru_cache(maxsize=4)
def _topic_gazetteer(path: Path, mtime_ns: int) -> Gazetteer:
    return Gazetteer([(term, agency) for agency, terms in load_topics(path).items() for term in terms])


def topic_gazetteer(path: Path = TOPICS_FILE) -> Gazetteer:
    """Topic terms per agency (what a message is about, not who it names); features for the agency model."""
    path = path.resolve()
    mtime = path.stat().st_mtime_ns if path.exists() else 0
    return _topic_gazetteer(path, mtime)
