"""Normalisation: the Arabic folds, what camel-tools misses, and offsets back into the raw text."""

from __future__ import annotations

import pytest

from nlu.normalize import CASE_REF_TOKEN, FoldedText, fold, gazetteer_key, normalize


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("أمس", "امس"),  # hamza on alef
        ("إسكان", "اسكان"),
        ("آخر", "اخر"),
        ("مسؤول", "مسوول"),  # hamza on waw
        ("مسئول", "مسيول"),  # hamza on yeh
        ("الكهرباء مقطوعة", "الكهرباء مقطوعه"),  # teh marbuta / heh
        ("مستشفى", "مستشفي"),  # alef maksura / yeh
        ("مقطـــــوع", "مقطوع"),  # tatweel
        ("مَقْطُوعٌ", "مقطوع"),  # diacritics
        ("EWA", "ewa"),
    ],
)
def test_variants_normalise_alike(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


def test_letter_repeats_collapse() -> None:
    assert normalize("وايييييد") == "وايد"
    assert normalize("ليييش") == "ليش"
    assert normalize("pleaseeeee") == "pleasee"  # Latin keeps a double: "good", "meet"
    assert normalize("good") == "good"


def test_arabic_indic_digits_become_number_tokens() -> None:
    assert normalize("من ٣ ايام") == normalize("من 3 ايام") == "من num1 ايام"
    assert fold("٣٦١٢٣٤٥٦") == "36123456"
    assert fold("۳") == "3"  # Eastern Arabic-Indic (Persian) digits too


def test_urls_mentions_hashtags() -> None:
    text = "شوفوا https://www.ewa.bh/outages?id=3 و @EWA_bh #الكهرباء_مقطوعة"
    out = normalize(text).split()
    assert "http" not in " ".join(out) and "www" not in out
    assert out.count("ewa") == 2 and "bh" in out
    assert "الكهرباء" in out and "مقطوعه" in out  # hashtag split into its words
    assert "@" not in normalize("@someone hi") and "#" not in normalize("#tag")
    assert normalize("mail me at someone@example.com").split() == ["mail", "me", "at"]


def test_case_reference_becomes_placeholder() -> None:
    assert CASE_REF_TOKEN in normalize("وين وصل TWS-2026-000123؟").split()


def test_emoji_kept_once_and_punctuation_dropped() -> None:
    assert normalize("شكرا 🙏🙏🙏") == "شكرا 🙏"
    assert normalize("ليش؟؟؟") == "ليش ?"
    assert normalize("...,,,;;") == ""


def test_control_and_format_characters_removed() -> None:
    assert normalize("\u200fمرحبا\u200d\x00\x07 hi\ufeff") == "مرحبا hi"


def test_truncation() -> None:
    assert normalize("a" * 10 + " " + "b" * 10, max_chars=10) == "aa"


def test_raw_spans_survive_folding() -> None:
    raw = "أنا ﷲ في سترة"  # U+FDF2 folds to several characters
    folded = FoldedText.of(raw)
    start = folded.folded.index("سترة".replace("ة", "ه"))
    s, e = folded.raw_span(start, start + 4)
    assert raw[s:e] == "سترة"


def test_gazetteer_key_folds_like_messages() -> None:
    assert gazetteer_key("هيئة الكهرباء") == gazetteer_key("هيئه الكهرباء") == ("هييه", "الكهرباء")
    assert gazetteer_key("Ministry  of   Health!") == ("ministry", "of", "health")
