"""Agency and place gazetteers: formal, informal, abbreviated and misspelt names -> ids, spans in raw text."""

from __future__ import annotations

import pytest

from config.agencies import AGENCY_IDS, load_agencies
from nlu.entities import place_gazetteer
from nlu.gazetteer import Gazetteer, agency_gazetteer, topic_gazetteer
from nlu.normalize import FoldedText


def _keys(gazetteer: Gazetteer, text: str) -> list[str]:
    return [m.key for m in gazetteer.find(FoldedText.of(text))]


def test_catalog_has_exactly_the_22_agencies_with_aliases() -> None:
    agencies = load_agencies()
    assert [a.id for a in agencies] == list(AGENCY_IDS) and len(AGENCY_IDS) == 22
    for agency in agencies:
        assert len(agency.aliases) >= 10, agency.id
        assert any(a.isascii() for a in agency.aliases) and any(not a.isascii() for a in agency.aliases)


def test_no_alias_names_two_agencies() -> None:
    assert agency_gazetteer().conflicts == []
    assert topic_gazetteer().conflicts == []
    assert place_gazetteer().conflicts == []


@pytest.mark.parametrize(
    ("text", "agency"),
    [
        # formal
        ("أرفع شكوى إلى هيئة الكهرباء والماء بخصوص الفاتورة", "ewa"),
        ("Ministry of Housing and Urban Planning", "housing"),
        ("الهيئة العامة للتأمين الاجتماعي", "sio"),
        # informal, with Arabic clitics glued on
        ("كلمت الكهربا من امس", "ewa"),
        ("اتصلت بالبلدية", "municipalities"),
        ("راجعت المرور", "traffic"),
        ("للاسكان", "housing"),
        ("وهيئة تنظيم سوق العمل ما ردت", "lmra"),
        # abbreviations
        ("EWA never answers", "ewa"),
        ("my LMRA permit", "lmra"),
        ("sio pension", "sio"),
        ("N.H.R.A licence", "nhra"),
        # misspelt
        ("the municipalty did nothing", "municipalities"),
        ("Minstry of helth", "health"),
        ("ministry of educaton", "education"),
        # Arabizi
        ("el baladiya ma sawat shay", "municipalities"),
        ("kalamt el kahraba", "ewa"),
        ("wizarat el iskan", "housing"),
    ],
)
def test_agency_mentions(text: str, agency: str) -> None:
    assert _keys(agency_gazetteer(), text) == [agency]


def test_no_false_mentions_in_everyday_words() -> None:
    for text in ("I work in a bank", "العمل متعب", "ابي اشتغل", "hello", "the health of my father"):
        assert _keys(agency_gazetteer(), text) == [], text


def test_longest_match_wins_and_spans_index_raw_text() -> None:
    text = "راجعت هيئة تنظيم سوق العمل ثم وزارة العمل"
    matches = agency_gazetteer().find(FoldedText.of(text))
    assert [m.key for m in matches] == ["lmra", "labour"]
    assert [text[m.start : m.end] for m in matches] == ["هيئة تنظيم سوق العمل", "وزارة العمل"]


def test_short_typos_are_not_matched() -> None:
    # one edit away from "ewa" / "tra": short words have too many neighbours
    assert _keys(agency_gazetteer(), "ewe tri") == []


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ("الماي مقطوع في سترة", "Sitra"),
        ("ساكن بالمحرق", "Muharraq"),
        ("in Hamad Town near the roundabout", "Hamad Town"),
        ("madinat 7amad", "Hamad Town"),
        ("Isa town", "Isa Town"),
        ("مدينة عيسى", "Isa Town"),
        ("jidhafs", "Jidhafs"),
        ("Busaiten", "Busaiteen"),  # misspelt
        ("في عالي", "Aali"),  # ambiguous word with a cue
    ],
)
def test_places(text: str, place: str) -> None:
    assert _keys(place_gazetteer(), text) == [place]


def test_ambiguous_place_needs_a_cue() -> None:
    assert _keys(place_gazetteer(), "الصوت عالي وايد") == []  # "loud", not A'ali
    assert _keys(place_gazetteer(), "الجو حار") == []  # "the weather", not Jaw
