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


@pytest.mark.parametrize(
    ("text", "language"),
    [
        # Network generations are neither English content nor Arabizi digit-letters.
        ("الانترنت 5g عندي بطيء", Language.AR),
        ("شبكة 4g ضعيفة", Language.AR),
        ("تغطية 4G في سترة ضعيفة", Language.AR),
        ("el 5g 3indi ma yishtaghil", Language.ARABIZI),
        ("stc 5g 3indi ma yishtaghil", Language.ARABIZI),
        ("my 5g is very slow since yesterday", Language.EN),
        ("5G wifi keeps dropping", Language.EN),
        ("5ghz wifi", Language.EN),
        ("only 3g in my area, no 4g at all", Language.EN),
        # Telecom brands do not make a message Arabizi on their own.
        ("zain network is down", Language.EN),
        ("my zain bill is wrong this month", Language.EN),
        ("zain 4g coverage in sitra is very weak", Language.EN),
        ("Batelco fiber is slow in my area", Language.EN),
        ("STC charged me twice", Language.EN),
        ("شبكة zain ضعيفة", Language.AR),
        ("فاتورة batelco غلط و stc ما يردون", Language.AR),
        # ... but "zain" (= good) next to other Arabizi is still Arabizi, and alone it is a reply.
        ("el network ma3 zain wayed slow", Language.ARABIZI),
        ("zain bill ghalat", Language.ARABIZI),
        ("zain", Language.ARABIZI),
        ("zain kitha", Language.ARABIZI),
        # regressions
        ("el mai ma9goo3 3indina min ams", Language.ARABIZI),
        ("batelco 3indi ma yishtaghil", Language.ARABIZI),
        ("the street light near my house has been off for a week", Language.EN),
        ("please fix the pothole on the highway", Language.EN),
    ],
)
def test_network_terms_and_brands(text: str, language: Language) -> None:
    assert _lang(text) is language


@pytest.mark.parametrize(
    ("text", "language"),
    [
        # 8 = ق for some writers
        ("kam rusoom tasjeel sha88a jideed?", Language.ARABIZI),
        ("a8tari7 ysawoon tajdeed el jawaaz online", Language.ARABIZI),
        # English chat spellings with digits stay English
        ("thanks gr8 service", Language.EN),
        ("ok see you l8r", Language.EN),
        ("can you call me 2day", Language.EN),
    ],
)
def test_digit_letters(text: str, language: Language) -> None:
    assert _lang(text) is language
