"""Entities in a message: case reference, CPR number, phone number, Bahraini place, agency mention.

Patterns run on the folded text (Arabic-Indic digits are ASCII there, Latin is lower case) and every span is
mapped back to the raw text, so ``text[start:end]`` is what the citizen typed. Hand-written: the formats are
Bahrain-specific (TWS case references, 9-digit CPR, 8-digit numbers starting 3/6/1/8, +973) and no offline
NER model knows Bahraini villages; the place list lives in ``nlu/places.yml``.

Values are canonical: ``TWS-2026-000123``, the 9 CPR digits, ``+97336123456``, the place's English name
(``Sitra``, ``block 338``, ``road 4521``), the agency id. CPR and phone values are personal data: never log
them (``tawasul.privacy.redact``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from nlu.gazetteer import Gazetteer
from nlu.normalize import FoldedText, word_spans
from nlu.types import Entity

PLACES_FILE = Path(__file__).resolve().parent / "places.yml"

# Words that make an ambiguous place name a place ("في عالي", "منطقة الحد", "in Saar", "near Askar").
CUES: tuple[str, ...] = (
    "في",
    "فى",
    "منطقة",
    "منطقه",
    "بمنطقة",
    "قرية",
    "قريه",
    "بقرية",
    "مدينة",
    "بمدينة",
    "حي",
    "من",
    "عند",
    "جنب",
    "قرب",
    "قريب",
    "ساكن",
    "ساكنين",
    "اهل",
    "سكان",
    "دوار",
    "مجمع",
    "in",
    "at",
    "near",
    "from",
    "area",
    "village",
    "around",
    "behind",
    "fi",
    "fe",
    "min",
    "3ind",
    "jamb",
)

_SEP = r"[\s\-_.–—/]*"
_CASE_REF_RE = re.compile(rf"(?<![a-z0-9])tws{_SEP}(\d{{4}}){_SEP}(\d{{1,7}})(?!\d)")
# Bahraini numbers: optional +973 / 00973, then 8 digits starting 3 or 6 (mobile), 1 (landline) or
# 8 (toll-free).
_PHONE_RE = re.compile(r"(?<![\d+])(?:(?:\+|00)\s?973[\s\-.]?)?([3681]\d{3})[\s\-.]?(\d{4})(?!\d)")
_CPR_RE = re.compile(r"(?<!\d)(\d{9})(?!\d)")
_BLOCK_RE = re.compile(
    r"(?<![^\W\d_])(?:[وفبل]?(?:مجمع|بلوك|بلك)|block|blk|blok|bloc)\s*(?:no\.?|number|رقم|#)?\s*(\d{3,4})(?!\d)"
)
_ROAD_RE = re.compile(
    r"(?<![^\W\d_])(?:[وفبل]?(?:طريق|شارع|رود)|road|rd|street|st|avenue|ave|share3|tareeq|tareeg)\.?\s*"
    r"(?:no\.?|number|رقم|#)?\s*(\d{1,5})(?!\d)"
)
_DIGIT_RE = re.compile(r"\d")
_CLITIC_RE = re.compile(r"[وفبل](?=مجمع|بلوك|بلك|طريق|شارع|رود)")


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    forms: tuple[str, ...]
    cue: bool


def load_places(path: Path = PLACES_FILE) -> tuple[Place, ...]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    places: list[Place] = []
    for item in data.get("places", []):
        forms = (item["name"], *(item.get("ar") or []), *(item.get("en") or []))
        places.append(Place(str(item["name"]), tuple(str(f) for f in forms), bool(item.get("cue", False))))
    return tuple(places)


@lru_cache(maxsize=4)
def place_gazetteer(path: Path = PLACES_FILE) -> Gazetteer:
    places = load_places(path)
    entries = [(form, p.name) for p in places for form in p.forms]
    needs_cue = [form for p in places if p.cue for form in p.forms]
    return Gazetteer(entries, needs_cue=needs_cue, cues=CUES)


def _raw(text: FoldedText, start: int, end: int) -> tuple[int, int]:
    return text.raw_span(start, end)


def _free(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    return all(end <= s or start >= e for s, e in spans)


def pattern_entities(text: FoldedText) -> list[Entity]:
    """Case references, phones, CPRs, blocks and roads (earlier kinds win over overlapping later ones)."""
    folded = text.folded
    found: list[Entity] = []
    taken: list[tuple[int, int]] = []
    if not _DIGIT_RE.search(folded):
        return found  # every pattern entity has digits; most messages have none

    def add(kind: str, value: str, fstart: int, fend: int) -> None:
        if fend <= fstart or not _free(taken, fstart, fend):
            return
        taken.append((fstart, fend))
        start, end = _raw(text, fstart, fend)
        found.append(Entity(kind, value, start, end))

    for m in _CASE_REF_RE.finditer(folded):
        add("case_reference", f"TWS-{m.group(1)}-{int(m.group(2)):06d}", m.start(), m.end())
    for m in _PHONE_RE.finditer(folded):
        add("phone", f"+973{m.group(1)}{m.group(2)}", m.start(), m.end())
    for m in _CPR_RE.finditer(folded):
        add("cpr", m.group(1), m.start(), m.end())
    for regex, label in ((_BLOCK_RE, "block"), (_ROAD_RE, "road")):
        for m in regex.finditer(folded):
            start = m.start()
            if _CLITIC_RE.match(folded, start):
                start += 1
            add("place", f"{label} {int(m.group(1))}", start, m.end())
    return found


def extract_entities(
    text: FoldedText,
    agencies: Gazetteer | None = None,
    places: Gazetteer | None = None,
    spans: list[tuple[str, int, int]] | None = None,
) -> list[Entity]:
    """All entities of a message, ordered by start offset."""
    entities = pattern_entities(text)
    spans = word_spans(text.folded) if spans is None else spans
    if places is not None:
        entities.extend(Entity("place", m.key, m.start, m.end) for m in places.find(text, spans))
    if agencies is not None:
        entities.extend(Entity("agency", m.key, m.start, m.end) for m in agencies.find(text, spans))
    return sorted(entities, key=lambda e: (e.start, e.end, e.entity))


def entities_of(raw: str, agencies: Gazetteer | None = None, with_places: bool = True) -> list[Entity]:
    """Convenience for callers holding only raw text."""
    return extract_entities(FoldedText.of(raw), agencies, place_gazetteer() if with_places else None)


def values(entities: Iterable[Entity], kind: str) -> list[str]:
    return [e.value for e in entities if e.entity == kind]
