"""OutgoingMessage -> WhatsApp Cloud API request bodies: text, reply buttons, lists and paging, templates."""

from __future__ import annotations

import pytest

from bot.channel import Button, OutgoingMessage
from bot.whatsapp_format import Payload, list_pages, plan_message, template_payload
from bot.whatsapp_parse import MORE_PREFIX
from config.settings import WhatsAppTemplate
from tests.fakes.fake_graph import GraphApiError, _validate

TO = "97333123456"


def buttons(n: int, title: str = "Agency") -> tuple[Button, ...]:
    return tuple(Button(f"{title} {i}", f"ag:{i}") for i in range(1, n + 1))


def valid(payload: Payload) -> Payload:
    _validate(payload)  # the fake Graph API's checks of the documented limits
    return payload


def test_plain_text() -> None:
    (step,) = plan_message(TO, OutgoingMessage(text="مرحبا")).steps
    assert valid(step) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "type": "text",
        "text": {"preview_url": False, "body": "مرحبا"},
    }


def test_long_text_is_split_under_4096() -> None:
    text = "\n".join("سطر " + "ن" * 500 for _ in range(20))
    steps = plan_message(TO, OutgoingMessage(text=text)).steps
    assert len(steps) == 3
    assert "".join(s["text"]["body"] for s in steps) == text
    for step in steps:
        valid(step)


def test_up_to_three_short_choices_are_reply_buttons() -> None:
    (step,) = plan_message(TO, OutgoingMessage(text="Confirm?", buttons=buttons(3, "Yes"))).steps
    interactive = valid(step)["interactive"]
    assert interactive["type"] == "button"
    assert [b["reply"] for b in interactive["action"]["buttons"]] == [
        {"id": "ag:1", "title": "Yes 1"},
        {"id": "ag:2", "title": "Yes 2"},
        {"id": "ag:3", "title": "Yes 3"},
    ]


def test_a_long_title_makes_a_list_with_the_full_title_as_description() -> None:
    long_title = "Ministry of Municipalities Affairs and Agriculture"
    message = OutgoingMessage(
        text="Which agency?", buttons=(Button(long_title, "ag:mun"), Button("Other", "ag:x"))
    )
    (step,) = plan_message(TO, message).steps
    interactive = valid(step)["interactive"]
    assert interactive["type"] == "list"
    row = interactive["action"]["sections"][0]["rows"][0]
    assert len(row["title"]) == 24 and row["title"].endswith("…")
    assert row["description"].startswith("Ministry of Municipalities Affairs")
    assert row["id"] == "ag:mun"


def test_four_to_ten_choices_are_one_list() -> None:
    (step,) = plan_message(TO, OutgoingMessage(text="Pick", buttons=buttons(10), language="ar")).steps
    interactive = valid(step)["interactive"]
    assert interactive["type"] == "list"
    assert interactive["action"]["button"] == "اختر"
    assert [r["id"] for r in interactive["action"]["sections"][0]["rows"]] == [
        f"ag:{i}" for i in range(1, 11)
    ]


@pytest.mark.parametrize(
    ("count", "sizes"), [(11, [10, 2]), (19, [10, 10]), (25, [10, 10, 7]), (28, [10, 10, 10])]
)
def test_more_than_ten_choices_are_paged_with_a_more_row(count: int, sizes: list[int]) -> None:
    pages = list_pages(buttons(count), "en")
    assert [len(p) for p in pages] == sizes
    assert all(p[-1].payload == f"{MORE_PREFIX}{i + 1}" for i, p in enumerate(pages[:-1]))
    assert not pages[-1][-1].payload.startswith(MORE_PREFIX)
    real = [b.payload for p in pages for b in p if not b.payload.startswith(MORE_PREFIX)]
    assert real == [f"ag:{i}" for i in range(1, count + 1)]  # every choice once, in order


def test_paged_plan_sends_the_first_page_and_keeps_the_rest() -> None:
    plan = plan_message(TO, OutgoingMessage(text="Which agency?", buttons=buttons(25), language="en"))
    (first,) = plan.steps
    assert len(plan.later_pages) == 2
    for payload in (first, *plan.later_pages):
        valid(payload)
    assert plan.later_pages[0]["interactive"]["body"]["text"] == "More choices (2/3):"
    last_row = first["interactive"]["action"]["sections"][0]["rows"][-1]
    assert last_row == {"id": "~more:1", "title": "More choices…"}


def test_text_too_long_for_an_interactive_body_goes_first() -> None:
    text = "تفاصيل " * 300  # > 1024 characters
    steps = plan_message(TO, OutgoingMessage(text=text, buttons=buttons(2, "Ok"), language="ar")).steps
    assert [s["type"] for s in steps] == ["text", "interactive"]
    assert steps[0]["text"]["body"] == text
    assert steps[1]["interactive"]["body"]["text"] == "يرجى الاختيار:"
    for step in steps:
        valid(step)


def test_location_request_then_the_other_choices() -> None:
    message = OutgoingMessage(
        text="أرسل موقع المشكلة",
        request_location=True,
        buttons=(Button("تخطي", "skip"), Button("أرسل الآن", "send")),
        language="ar",
    )
    location, menu = plan_message(TO, message).steps
    assert valid(location)["interactive"] == {
        "type": "location_request_message",
        "body": {"text": "أرسل موقع المشكلة"},
        "action": {"name": "send_location"},
    }
    assert valid(menu)["interactive"]["body"]["text"] == "أو اختر:"


def test_button_payload_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="payload"):
        plan_message(TO, OutgoingMessage(text="x", buttons=(Button("a", "p" * 300),)))


def test_empty_text_is_refused() -> None:
    with pytest.raises(ValueError):
        plan_message(TO, OutgoingMessage(text="  "))


def test_positional_template() -> None:
    template = WhatsAppTemplate(name="case_status_update", languages={"ar": "ar", "en": "en_US"})
    payload = valid(template_payload(TO, template, "en", ("TWS-2026-000123", "In progress")))
    assert payload["template"] == {
        "name": "case_status_update",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "TWS-2026-000123"},
                    {"type": "text", "text": "In progress"},
                ],
            }
        ],
    }


def test_named_template_and_unknown_language_fallback() -> None:
    template = WhatsAppTemplate(name="case_status_update", language="ar", params=("reference", "status"))
    payload = template_payload(TO, template, "fr", ("TWS-1", "مغلق"))
    assert payload["template"]["language"] == {"code": "ar"}
    assert payload["template"]["components"][0]["parameters"] == [
        {"type": "text", "text": "TWS-1", "parameter_name": "reference"},
        {"type": "text", "text": "مغلق", "parameter_name": "status"},
    ]


def test_template_without_params_has_no_components() -> None:
    payload = template_payload(TO, WhatsAppTemplate(name="hello_world"), "ar", ())
    assert "components" not in payload["template"]


def test_fake_graph_rejects_what_the_real_api_rejects() -> None:
    # Guard for the guard: the validator used above does refuse out-of-limit bodies.
    bad = {
        "messaging_product": "whatsapp",
        "to": TO,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "x"},
            "action": {
                "buttons": [{"type": "reply", "reply": {"id": f"b{i}", "title": "t"}} for i in range(4)]
            },
        },
    }
    with pytest.raises(GraphApiError):
        _validate(bad)
