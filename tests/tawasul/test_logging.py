"""No CPR number, phone number or token reaches a log line in clear."""

from __future__ import annotations

import io
import json
import logging

import pytest

from config.settings import LoggingSettings
from tawasul.logging import JsonFormatter, RedactingFormatter, setup_logging
from tawasul.privacy import redact

SECRETS = [
    "850312345",  # CPR
    "٨٥٠٣١٢٣٤٥",  # CPR in Arabic-Indic digits
    "36123456",  # local mobile
    "+973 3612 3456",
    "0097336123456",
    "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",  # Telegram bot token
    "EAAG1234567890abcdefXYZ",  # WhatsApp access token (after "Bearer ")
]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("رقمي الشخصي 850312345 وابي اعرف", "850312345"),
        ("cpr ٨٥٠٣١٢٣٤٥ please", "٨٥٠٣١٢٣٤٥"),
        ("call me on 36123456", "36123456"),
        ("my number +973 3612 3456", "3612 3456"),
        ("0097336123456", "36123456"),
        ("POST https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage", "AAHdq"),
        ("Authorization: Bearer EAAG1234567890abcdefXYZ", "EAAG1234567890"),
        ("access_token=EAAG1234567890abcdefXYZ&x=1", "EAAG1234567890"),
        ("mail ali.hasan@example.com", "ali.hasan@example.com"),
    ],
)
def test_redact_masks(text: str, secret: str) -> None:
    assert secret not in redact(text)


def test_redact_keeps_case_references_and_dates() -> None:
    text = "وين وصلت TWS-2026-000123 من تاريخ 2026-11-24 مبلغ 150 دينار"
    assert redact(text) == text


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    setup_logging(LoggingSettings())
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger("tawasul.test.privacy")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log, stream


@pytest.mark.parametrize("formatter", [RedactingFormatter("%(message)s"), JsonFormatter()])
def test_every_log_line_is_redacted(formatter: logging.Formatter) -> None:
    log, stream = _capture(formatter)
    log.info("citizen wrote: %s", "CPR 850312345 phone 36123456")
    log.info("calling https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe")
    log.warning("send failed", extra={"recipient": "+973 3612 3456"})
    try:
        raise ValueError("bad CPR ٨٥٠٣١٢٣٤٥")
    except ValueError:
        log.exception("parse error Bearer EAAG1234567890abcdefXYZ")
    output = stream.getvalue()
    for secret in SECRETS:
        assert secret not in output
    assert "[CPR]" in output and "[PHONE]" in output and "[TOKEN]" in output
    if isinstance(formatter, JsonFormatter):
        assert all(json.loads(line) for line in output.splitlines() if line.startswith("{"))


def test_third_party_handlers_see_redacted_messages(caplog: pytest.LogCaptureFixture) -> None:
    setup_logging(LoggingSettings())
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("user %s", "850312345")
    assert "850312345" not in caplog.text
    assert "[CPR]" in caplog.text
