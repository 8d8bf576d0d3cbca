"""Entities: values are canonical, spans index the raw text (text[start:end] is what the citizen typed)."""

from __future__ import annotations

import pytest

from nlu.entities import entities_of
from nlu.gazetteer import agency_gazetteer
from nlu.types import Entity


def _found(text: str, kind: str) -> list[tuple[str, str]]:
    return [
        (e.value, text[e.start : e.end]) for e in entities_of(text, agency_gazetteer()) if e.entity == kind
    ]


@pytest.mark.parametrize(
    ("text", "surface"),
    [
        ("وين وصلت TWS-2026-000123 ؟", "TWS-2026-000123"),
        ("status of tws-2026-000123 please", "tws-2026-000123"),
        ("رقم الطلب TWS-٢٠٢٦-٠٠٠١٢٣", "TWS-٢٠٢٦-٠٠٠١٢٣"),
        ("TWS 2026 000123", "TWS 2026 000123"),
        ("TWS2026000123", "TWS2026000123"),
        ("tws_2026_123", "tws_2026_123"),
    ],
)
def test_case_reference_variants(text: str, surface: str) -> None:
    assert _found(text, "case_reference") == [("TWS-2026-000123", surface)]


def test_cpr_and_phones() -> None:
    text = "رقمي الشخصي ٨٥٠١١٢٣٤٥ وتلفوني 36123456 او +973 1712-3456 او 0097366001122"
    assert _found(text, "cpr") == [("850112345", "٨٥٠١١٢٣٤٥")]
    assert _found(text, "phone") == [
        ("+97336123456", "36123456"),
        ("+97317123456", "+973 1712-3456"),
        ("+97366001122", "0097366001122"),
    ]


def test_numbers_that_are_not_phones_or_cprs() -> None:
    text = "دفعت 25000000 و 1234567890 و 22334455 في 2026"
    assert _found(text, "phone") == [] and _found(text, "cpr") == []


def test_places_blocks_and_roads() -> None:
    text = "الماي مقطوع في سترة بمجمع ٦٠٧ طريق 4521 من امس"
    assert _found(text, "place") == [("Sitra", "سترة"), ("block 607", "مجمع ٦٠٧"), ("road 4521", "طريق 4521")]
    text = "pothole in Hamad Town, block 1208 road no. 35"
    assert _found(text, "place") == [
        ("Hamad Town", "Hamad Town"),
        ("block 1208", "block 1208"),
        ("road 35", "road no. 35"),
    ]


def test_agency_entity() -> None:
    text = "اشتكيت للبلدية وما ردوا"
    assert _found(text, "agency") == [("municipalities", "للبلدية")]


def test_spans_survive_characters_that_fold_away() -> None:
    text = "\u200fمرحبا\u200f 🙏🏽 سترة TWS-2026-000007"
    entities = entities_of(text)
    assert [(e.entity, text[e.start : e.end]) for e in entities] == [
        ("place", "سترة"),
        ("case_reference", "TWS-2026-000007"),
    ]
    assert all(isinstance(e, Entity) and 0 <= e.start < e.end <= len(text) for e in entities)
