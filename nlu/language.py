"""Language of a message: ``ar``, ``en``, ``arabizi`` or ``mixed`` (replies come in the citizen's language).

Hand-written: offline language identifiers (langid, fastText lid, cld3) have no notion of Arabizi (Arabic in
Latin letters with digits for missing sounds: 3=ع, 7=ح, 5=خ, 2=ء, 6=ط, 9=ص) and are unreliable on short
Gulf chat messages, so this uses the script ratio of the words plus Arabizi cues (digit-letters inside Latin
words, a small lexicon of frequent Gulf Arabizi words).
"""

from __future__ import annotations

import re
from functools import lru_cache

from nlu.types import Language

_ARABIC_WORD_RE = re.compile(r"[\u0621-\u064a]")
_LATIN_WORD_RE = re.compile(r"[a-z]")
# A Latin word carrying an Arabizi digit-letter between or after letters: "3ndi", "ma7al", "sa2al", "6ayeb",
# "wa8t" (8 = ق for some writers).
_ARABIZI_DIGIT_RE = re.compile(r"^(?=.*[a-z])[a-z']*[2356789][a-z2356789']*$")
# Latin words with digits that are English, not Arabizi.
_ENGLISH_DIGIT_RE = re.compile(
    r"^\d+(?:st|nd|rd|th|g|am|pm|k|km|h|hr|hrs|min|mins|bd|bhd|kg|mb|gb|gbps|mbps|x|s|yrs|days?)$"
    r"|^(?:covid19|mp3|mp4|4g|5g|3g|a4|b2b|h1n1|c19|x3)$"
    # English chat spellings with digits ("gr8", "l8r", "2day").
    r"|^(?:gr8|l8|l8r|m8|w8|h8|str8|2day|2moro|2morrow|2nite|2night|me2|u2)$"
)
# Frequent Gulf Arabizi words that are not English words (short ambiguous ones such as "la", "ma", "ya",
# "el" are left out: they also occur in English text and names).
_ARABIZI_WORDS = frozenset(
    """
    shlon shlonak shlonich shlonkom shno shnu shnoo shino shfeeh shfee shsalfa shsar shnsawi
    wayed wayid wayd waaayed mafi mafee mafe mako maku mub msh mish ya3ni y3ni yani
    yalla yallah inshallah insha2allah inshalla mashallah mashalla wallah walla wallahi
    habibi 7abibi akhoy akhooy ukhti ana ani ahna e7na i7na ihna intaw ento entu inta enta inti
    enti abi aby ibi abgha abgh abee abeek bghait baghe wain wein ween waen lesh laish leish
    leesh lish lein alhin al7in alhen elhin il7in il7een el7in hal7in ba3d ba3ad bas
    zen zein 6ayeb tayeb tayyeb 3afya el3afya mashkoor mashkoorin mashkoreen shukran
    shokran masalama ma3a ma3 salam assalam alsalam hala halla marhaba ahlan ahla sabah
    msa2 emis ams amis bachir bukra bokra baachir 3la 3ala ala 3shan 3ashan 3ashaan 3sha
    lina lena ly hatha hadha hathi hadhi hathy kitha kitheh chitha chithi kidha hni hini hnak hnaak mata chem
    cham kam shgad
    shkthr leh esh shu 3ad khalas 5alas akeed la2 aywa eeh ee na3am iyeh ma3leh
    ma3lesh ma32ool mo3gool mushkila mushkla moshkela moshkila shakwa shakwati
    talab talabi tawasul wazara wezara wizara wizarat wezarat hay2a hay2at el7en 3indi 3ndi
    3ndna 3indna 3nd 3ndy 3ndk 3ndkum ma7ad 7ad 7ag 7aq 7ata 7atta ta3ban t3ban
    ga3d gaa3d ga3da ga3deen yabi yabgha ybi ybgha tabi tabgha nabi nabgha sawaw sawo
    sawwo sawi sawoo yesawon yesawoon yseer ysir ysawon yrd yrid ryal dinar fulus floos
    beit bait baity baiti sayara sayyara sayarti maktab markaz mustashfa mostashfa
    madrasa madrast kahraba kahraba2 mai maay shari3 share3 sharea tareeg
    tareeq tari8 7ufra 7ofra 7afra jiran jeeran baladiya mroor iskan
    kil gabil gabl yareit shirka sharika ygool ygooloon ysawoon
    se7a sa7 sa7i7 ghalat ghalta 3yal 3eyal 3ayal wilid wildi bnti binti umi ummi abuy abooy
    masa masaa khair kheir khayr 5air 5eir el5air il5air sba7 saba7 saba7o tislam tislamoon teslam
    ya3tik ya3teek ya3tikum allah alla jazak jazakum mabrook wayid7 shloon shlonik ashkurkum
    """.split()  # noqa: SIM905 - a word list reads best as text
)


# Latin tokens that do not make Arabic text "mixed": acronyms, brands and our placeholders.
_NEUTRAL_LATIN = frozenset(
    """
    ok okay cpr id tws twsref ewa lmra nhra sio iga tra npra slrb moh moe moi mol bd bhd sms otp app pdf
    whatsapp wifi gps atm batelco stc zain viva beyon ekey egov bh www com online email
    """.split()  # noqa: SIM905 - a word list reads best as text
)
# Network generations and radio terms ("5g", "4g", "3g", "lte", "5ghz"): the digit is not an Arabizi
# letter and the token is no more English than Arabic ("الانترنت 5g بطيء" is Arabic).
_TECH_TOKEN_RE = re.compile(r"^(?:[1-6]g|lte|volte|\d*(?:ghz|mhz))$")
# Arabizi words that are also Bahraini telecom brands ("zain" = "good", and the operator Zain): on their own
# they must not turn an English message ("zain network is down") into Arabizi.
_WEAK_ARABIZI_WORDS = frozenset({"zain"})
_PLACEHOLDER_RE = re.compile(r"^num\d$")


@lru_cache(maxsize=16384)
def _token_kind(tok: str) -> tuple[int, int, int, int, int]:
    """(arabic, latin, latin content word, arabizi cue, weak arabizi cue) flags of one token (cached)."""
    if _ARABIC_WORD_RE.search(tok):
        return 1, 0, 0, 0, 0
    if _LATIN_WORD_RE.search(tok) and not _PLACEHOLDER_RE.match(tok):
        if _TECH_TOKEN_RE.match(tok):
            return 0, 1, 0, 0, 0  # "5g", "lte", "5ghz": neither English words nor Arabizi digit-letters
        if tok in _WEAK_ARABIZI_WORDS:
            return 0, 1, 0, 0, 1
        content = int(tok not in _NEUTRAL_LATIN)
        cue = int(
            tok in _ARABIZI_WORDS or bool(_ARABIZI_DIGIT_RE.match(tok) and not _ENGLISH_DIGIT_RE.match(tok))
        )
        return 0, 1, content, cue, 0
    return 0, 0, 0, 0, 0


def detect_language(tokens: list[str]) -> Language:
    """Language of normalised, space-split model tokens (lower case, numbers already placeholders)."""
    arabic = latin = content = cues = weak = 0
    for a, la, c, q, w in map(_token_kind, tokens):
        arabic += a
        latin += la
        content += c
        cues += q
        weak += w
    if arabic == 0:
        if latin == 0:
            return Language.AR  # nothing to go by (emoji, digits): the service's default language
        # A weak cue ("zain": "good" in Gulf Arabic, also a telecom brand) counts only next to a real cue, or
        # alone ("zain" / "zain ok" as a reply): "zain network is down" stays English.
        if weak and (cues or not content):
            cues += weak
        # The ratio is over content words: acronyms, brands and "5g" say nothing about the language.
        arabizi = cues >= 2 or (cues >= 1 and cues * 4 >= max(content, 1))
        return Language.ARABIZI if arabizi else Language.EN
    # Arabic script with Latin words other than acronyms is code-switching, unless it is a single loanword
    # in a longer Arabic message ("يطلع لي error", "لمبات LED").
    return Language.MIXED if content >= 2 or (content and content * 3 >= arabic) else Language.AR
