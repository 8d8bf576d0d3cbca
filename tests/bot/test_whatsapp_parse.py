"""Every recorded WhatsApp webhook body in tests/fixtures/whatsapp translates as expected."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bot.channel import AttachmentKind, IncomingMessage
from bot.whatsapp_parse import MalformedPayload, ParsedWebhook, parse_webhook
from tests.bot.helpers import FIXTURES, load_fixture

PHONE_ID = "109876543210"
SENDER = "97333123456"


def parse(name: str) -> ParsedWebhook:
    return parse_webhook(load_fixture("whatsapp", name), PHONE_ID)


def one(name: str) -> IncomingMessage:
    parsed = parse(name)
    assert parsed.statuses == [] and parsed.skipped == 0
    (message,) = parsed.messages
    assert message.channel == "whatsapp" and message.sender_id == SENDER
    assert message.message_id.startswith("wa:wamid.")
    return message


def test_text() -> None:
    msg = one("text")
    assert msg.text == "الشارع مليء بالحفر قرب دوار سترة"
    assert msg.message_id == "wa:wamid.HBgLOTczMzMxMjM0NTYVAgASGBQzQUE00001RkE3QjdDQUIA"
    assert msg.sender_name == "Fatima Ali"
    assert msg.received_at == dt.datetime.fromtimestamp(1767250800, dt.UTC)


def test_typed_command_becomes_a_command() -> None:
    msg = one("command_text")
    assert msg.command == "status" and msg.text == "TWS-2026-000123"


@pytest.mark.parametrize(
    ("name", "payload", "title"),
    [
        ("interactive_button_reply", "confirm", "تأكيد"),
        ("interactive_list_reply", "ag:works", "وزارة الأشغال"),
        ("template_button", "status:TWS-2026-000123", "View status"),
    ],
)
def test_replies_are_button_presses(name: str, payload: str, title: str) -> None:
    msg = one(name)
    assert msg.button == payload and msg.text is None
    assert msg.metadata["button_title"] == title
    assert msg.metadata["reply_to"].startswith("wa:wamid.")


@pytest.mark.parametrize(
    ("name", "kind", "ref", "mime", "filename", "caption"),
    [
        ("image", AttachmentKind.PHOTO, "1003383421387256", "image/jpeg", None, "صورة الحفرة"),
        (
            "document",
            AttachmentKind.DOCUMENT,
            "1003383421387257",
            "application/pdf",
            "invoice.pdf",
            "الفاتورة",
        ),
        ("audio_voice", AttachmentKind.VOICE, "1003383421387258", "audio/ogg; codecs=opus", None, None),
        ("video", AttachmentKind.VIDEO, "1003383421387259", "video/mp4", None, None),
    ],
)
def test_media(
    name: str, kind: AttachmentKind, ref: str, mime: str, filename: str | None, caption: str | None
) -> None:
    (att,) = one(name).attachments
    assert (att.kind, att.ref, att.mime_type, att.filename, att.caption) == (
        kind,
        ref,
        mime,
        filename,
        caption,
    )
    assert att.size is None  # not in the webhook; the channel looks it up


def test_location() -> None:
    msg = one("location")
    assert msg.location is not None
    assert (msg.location.latitude, msg.location.longitude) == (26.2235, 50.5876)
    assert msg.location.text == "Sitra Roundabout, Sitra, Bahrain"


def test_contact() -> None:
    msg = one("contacts")
    assert msg.contact is not None and (msg.contact.phone, msg.contact.name) == (
        "+973 3312 3456",
        "Fatima Ali",
    )


@pytest.mark.parametrize(("name", "unsupported"), [("sticker", "sticker"), ("unsupported", "unknown")])
def test_unsupported(name: str, unsupported: str) -> None:
    msg = one(name)
    assert msg.unsupported == unsupported and msg.text is None and not msg.attachments


def test_reaction_needs_no_answer() -> None:
    parsed = parse("reaction")
    assert parsed.messages == [] and parsed.skipped == 0


def test_batch_keeps_order() -> None:
    parsed = parse("batch_two_messages")
    assert [m.text for m in parsed.messages] == ["السلام عليكم", "عندي شكوى"]


@pytest.mark.parametrize("status", ["sent", "delivered", "read"])
def test_statuses(status: str) -> None:
    parsed = parse(f"status_{status}")
    (item,) = parsed.statuses
    assert item.status == status and item.recipient_id == SENDER and item.errors == ()
    assert item.message_id == "wa:wamid.HBgLOTczMzMxMjM0NTYVAgARGBJGRTg4QUQ4RTk3MjdCMEI3MEMA"
    assert parsed.messages == []


def test_failed_status_carries_the_error() -> None:
    (item,) = parse("status_failed").statuses
    assert item.status == "failed"
    assert [(e.code, e.title, e.details) for e in item.errors] == [
        (131026, "Message undeliverable", "Message Undeliverable.")
    ]


def test_other_fields_are_ignored() -> None:
    parsed = parse("template_status_update")
    assert parsed.messages == [] and parsed.statuses == []


def test_another_phone_number_is_left_out() -> None:
    parsed = parse_webhook(load_fixture("whatsapp", "text"), "999")
    assert parsed.messages == [] and parsed.other_numbers == 1


@pytest.mark.parametrize(
    "body",
    [
        [],
        "text",
        {"object": "page", "entry": []},
        {"object": "whatsapp_business_account"},
        {"object": "whatsapp_business_account", "entry": [{"changes": "no"}]},
        {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"field": "messages", "value": None}]}],
        },
    ],
)
def test_structurally_broken_bodies_raise(body: Any) -> None:
    with pytest.raises(MalformedPayload):
        parse_webhook(body, PHONE_ID)


def test_a_broken_item_is_skipped_and_counted() -> None:
    body = load_fixture("whatsapp", "batch_two_messages")
    messages = body["entry"][0]["changes"][0]["value"]["messages"]
    del messages[0]["id"]
    parsed = parse_webhook(body, PHONE_ID)
    assert parsed.skipped == 1 and [m.text for m in parsed.messages] == ["عندي شكوى"]


def test_every_fixture_is_covered() -> None:
    tested = {
        "text",
        "command_text",
        "interactive_button_reply",
        "interactive_list_reply",
        "template_button",
        "image",
        "document",
        "audio_voice",
        "video",
        "location",
        "contacts",
        "sticker",
        "unsupported",
        "reaction",
        "batch_two_messages",
        "status_sent",
        "status_delivered",
        "status_read",
        "status_failed",
        "template_status_update",
    }
    assert {p.stem for p in (FIXTURES / "whatsapp").glob("*.json")} == tested
