"""Masking of citizens' identifiers and secrets in free text (log lines, staff review items).

Hand-written: the patterns are Bahrain-specific (9-digit CPR, 8-digit local numbers, +973) and must also
catch Arabic-Indic digits, which generic PII scrubbers do not.
"""

from __future__ import annotations

import re

_DIGIT = r"[0-9\u0660-\u0669\u06f0-\u06f9]"
_SEP = r"[ \-.]?"

# Secrets first: a Telegram bot token contains digits that would otherwise look like a phone number.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Telegram bot tokens: 123456789:AA... (also inside api URLs: /bot<token>/sendMessage)
    (re.compile(r"\d{5,12}:[A-Za-z0-9_-]{30,}"), "[TOKEN]"),
    # Authorization headers and token-looking query/JSON fields
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[TOKEN]"),
    (
        re.compile(
            r"(?i)((?:access_token|token|secret|password|app_secret|verify_token|hub\.verify_token)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]{4,}"
        ),
        r"\1[SECRET]",
    ),
    (re.compile(r"(?i)\b(sha256=)[0-9a-f]{16,}"), r"\1[SIG]"),
    # Phone numbers: +973 / 00973 prefixed, or international +XXXXXXXX; 8-digit Bahraini numbers
    (re.compile(rf"(?:\+|00){_DIGIT}{{1,3}}{_SEP}(?:{_DIGIT}{_SEP}?){{6,12}}{_DIGIT}"), "[PHONE]"),
    # CPR: exactly 9 digits not part of a longer number (also Arabic-Indic digits)
    (re.compile(rf"(?<!{_DIGIT})(?:{_DIGIT}{_SEP}?){{8}}{_DIGIT}(?!{_DIGIT})"), "[CPR]"),
    (re.compile(rf"(?<!{_DIGIT})[1367]{_DIGIT}{{3}}{_SEP}?{_DIGIT}{{4}}(?!{_DIGIT})"), "[PHONE]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[EMAIL]"),
)


def redact(text: str) -> str:
    """Replace CPR numbers, phone numbers, e-mail addresses and secrets with placeholders."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_id(value: str) -> str:
    """A stable, non-reversible short label for a channel identity in logs (``tg:…a91f``)."""
    import hashlib

    return "id:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:10]
