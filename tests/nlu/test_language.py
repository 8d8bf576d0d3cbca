"""Language of a message: ar, en, arabizi, mixed (replies follow it)."""

from __future__ import annotations

import pytest

from nlu.language import detect_language
from nlu.normalize import normalize
from nlu.types import Language


def _lang(text: str) -> Language:
    return detect_language(normalize(text).split())


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("الماي مقطوع عندنا من امس", Language.AR),
        ("يرجى التكرم بالنظر في طلبي الإسكاني", Language.AR),
        ("شكرا ok", Language.AR),  # an acronym / filler does not make code-switching
        ("EWA ما ردوا علي", Language.AR),
        ("my water is cut since yesterday", Language.EN),
        ("hi", Language.EN),
        ("pls help me the road infront my house have big hole", Language.EN),
        ("el mai maqtoo3 3indna fi sitra min ams", Language.ARABIZI),
        ("shukran", Language.ARABIZI),
        ("la2", Language.ARABIZI),
        ("masa el khair", Language.ARABIZI),
        ("الاسكان rejected my appeal بدون أي explanation", Language.MIXED),
        ("ابي اسوي renew للـ passport", Language.MIXED),
        ("الموقع كل ما ادخل فيه يطلع لي error وما اقدر اكمل الطلب", Language.AR),  # one loanword
        ("sorry بس", Language.MIXED),
    ],
)
def test_languages(text: str, language: Language) -> None:
    assert _lang(text) is language


def test_nothing_to_go_by_is_arabic() -> None:
    # emoji / digits only: the service's default language (Arabic)
    assert _lang("😡😡") is Language.AR
    assert _lang("") is Language.AR
    assert _lang("٣٣٣") is Language.AR
