"""Channel-neutral ``OutgoingMessage`` -> WhatsApp Cloud API ``/messages`` request bodies.

Limits (Cloud API reference): text body 4096 characters; interactive body 1024; reply buttons at most 3,
title 20, id 256; list rows at most 10 in all, row title 24, description 72, id 200, list button label 20.

Menus: up to 3 short choices become reply buttons; otherwise a list. More than 10 choices are paged: each
page shows 9 rows and a "more" row whose id is ``~more:<page>``; the channel answers that row itself by
sending the next page (see ``WhatsAppOutput``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.channel import Button, OutgoingMessage
from bot.text import split_text
from bot.whatsapp_parse import MORE_PREFIX
from config.settings import WhatsAppTemplate

TEXT_LIMIT = 4096
BODY_LIMIT = 1024
MAX_REPLY_BUTTONS = 3
REPLY_TITLE_LIMIT = 20
REPLY_ID_LIMIT = 256
MAX_ROWS = 10
ROW_TITLE_LIMIT = 24
ROW_DESCRIPTION_LIMIT = 72
ROW_ID_LIMIT = 200
LIST_BUTTON_LIMIT = 20

Payload = dict[str, Any]

_TEXTS: dict[str, dict[str, str]] = {
    "ar": {
        "choose": "اختر",
        "please_choose": "يرجى الاختيار:",
        "more": "خيارات أخرى…",
        "more_body": "خيارات أخرى ({page}/{pages}):",
        "share_location": "اضغط الزر لإرسال موقعك.",
        "or_choose": "أو اختر:",
    },
    "en": {
        "choose": "Choose",
        "please_choose": "Please choose:",
        "more": "More choices…",
        "more_body": "More choices ({page}/{pages}):",
        "share_location": "Tap the button to send your location.",
        "or_choose": "Or choose:",
    },
}


def ui_text(language: str, key: str, **params: Any) -> str:
    return _TEXTS.get(language, _TEXTS["en"])[key].format(**params)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _envelope(to: str, kind: str, body: Payload) -> Payload:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: body,
    }


def text_payload(to: str, body: str) -> Payload:
    if not body.strip() or len(body) > TEXT_LIMIT:
        raise ValueError(f"text body must be 1-{TEXT_LIMIT} characters")
    return _envelope(to, "text", {"preview_url": False, "body": body})


def _check_id(payload: str, limit: int) -> str:
    if not payload or len(payload) > limit:
        raise ValueError(f"button payload must be 1-{limit} characters for WhatsApp")
    return payload


def fits_reply_buttons(buttons: Sequence[Button]) -> bool:
    return 0 < len(buttons) <= MAX_REPLY_BUTTONS and all(len(b.title) <= REPLY_TITLE_LIMIT for b in buttons)


def reply_buttons_payload(to: str, body: str, buttons: Sequence[Button]) -> Payload:
    if not fits_reply_buttons(buttons):
        raise ValueError("reply buttons: 1-3 buttons with titles of at most 20 characters")
    return _envelope(
        to,
        "interactive",
        {
            "type": "button",
            "body": {"text": _clip(body, BODY_LIMIT)},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": _check_id(b.payload, REPLY_ID_LIMIT), "title": b.title}}
                    for b in buttons
                ]
            },
        },
    )


def _row(button: Button) -> Payload:
    row: Payload = {
        "id": _check_id(button.payload, ROW_ID_LIMIT),
        "title": _clip(button.title, ROW_TITLE_LIMIT),
    }
    if len(button.title) > ROW_TITLE_LIMIT:  # the full title stays readable under the clipped one
        row["description"] = _clip(button.title, ROW_DESCRIPTION_LIMIT)
    return row


def list_payload(to: str, body: str, rows: Sequence[Button], language: str) -> Payload:
    if not 0 < len(rows) <= MAX_ROWS:
        raise ValueError("a list has 1-10 rows")
    return _envelope(
        to,
        "interactive",
        {
            "type": "list",
            "body": {"text": _clip(body, BODY_LIMIT)},
            "action": {
                "button": _clip(ui_text(language, "choose"), LIST_BUTTON_LIMIT),
                "sections": [{"rows": [_row(b) for b in rows]}],
            },
        },
    )


def list_pages(buttons: Sequence[Button], language: str) -> list[list[Button]]:
    """Rows per list message: all of them when they fit in 10, else pages of 9 plus a "more" row."""
    if len(buttons) <= MAX_ROWS:
        return [list(buttons)]
    per_page = MAX_ROWS - 1
    chunks = [list(buttons[i : i + per_page]) for i in range(0, len(buttons), per_page)]
    # The last page may take a 10th row instead of a "more" row.
    if len(chunks) >= 2 and len(chunks[-1]) == 1:
        chunks[-2].append(chunks.pop()[0])
    more = ui_text(language, "more")
    for index, chunk in enumerate(chunks[:-1]):
        chunk.append(Button(more, f"{MORE_PREFIX}{index + 1}"))
    return chunks


def location_request_payload(to: str, body: str) -> Payload:
    return _envelope(
        to,
        "interactive",
        {
            "type": "location_request_message",
            "body": {"text": _clip(body, BODY_LIMIT)},
            "action": {"name": "send_location"},
        },
    )


def template_payload(to: str, template: WhatsAppTemplate, language: str, params: Sequence[str]) -> Payload:
    """An approved template; ``params`` fill its body (named when the template declares names)."""
    body: Payload = {
        "name": template.name,
        "language": {"code": template.languages.get(language, template.language)},
    }
    if params:
        parameters: list[Payload] = []
        for index, value in enumerate(params):
            parameter: Payload = {"type": "text", "text": str(value)}
            if index < len(template.params):
                parameter["parameter_name"] = template.params[index]
            parameters.append(parameter)
        body["components"] = [{"type": "body", "parameters": parameters}]
    return _envelope(to, "template", body)


def read_payload(wamid: str) -> Payload:
    return {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}


@dataclass(slots=True)
class Plan:
    """The requests that deliver one message, in order; ``later_pages`` are list pages sent on "more"."""

    steps: list[Payload]
    later_pages: list[Payload]


def _texts(to: str, text: str) -> list[Payload]:
    return [text_payload(to, piece) for piece in split_text(text, TEXT_LIMIT) if piece.strip()]


def plan_message(to: str, message: OutgoingMessage) -> Plan:
    """Free-form (inside the customer-service window) requests for ``message``."""
    lang = message.language
    text = message.text
    buttons = list(message.buttons)
    steps: list[Payload] = []
    later: list[Payload] = []

    def menu(body: str) -> None:
        if fits_reply_buttons(buttons):
            steps.append(reply_buttons_payload(to, body, buttons))
            return
        pages = list_pages(buttons, lang)
        steps.append(list_payload(to, body, pages[0], lang))
        for number, rows in enumerate(pages[1:], start=2):
            later.append(
                list_payload(to, ui_text(lang, "more_body", page=number, pages=len(pages)), rows, lang)
            )

    short = bool(text.strip()) and len(text) <= BODY_LIMIT
    if message.request_location:
        if short:
            steps.append(location_request_payload(to, text))
        else:
            steps.extend(_texts(to, text))
            steps.append(location_request_payload(to, ui_text(lang, "share_location")))
        if buttons:
            menu(ui_text(lang, "or_choose"))
    elif buttons:
        if short:
            menu(text)
        else:
            steps.extend(_texts(to, text))
            menu(ui_text(lang, "please_choose"))
    else:
        steps.extend(_texts(to, text))
    if not steps:
        raise ValueError("cannot send an empty message to WhatsApp")
    return Plan(steps, later)
