"""The WhatsApp channel end to end: our webhook and Graph client against the fake Graph API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from bot.channel import Button, DeliveryFailed, IncomingMessage, OutgoingMessage, OutputChannel, accepted
from bot.delivery import AttachmentTooLarge
from bot.whatsapp import SentMessage, WhatsAppInput
from bot.whatsapp_parse import DeliveryStatus
from bot.whatsapp_window import InMemoryWindowTracker
from config.settings import ServerSettings, WhatsAppSettings, WhatsAppTemplate
from tests.bot.helpers import Recorder, load_fixture, serve
from tests.fakes import FakeGraph, wait_until

CITIZEN = "97333123456"
VERIFY = "verify-me-please"
PATH = "/webhooks/whatsapp"


def settings_for(fake: FakeGraph, **overrides: Any) -> WhatsAppSettings:
    values: dict[str, Any] = {
        "access_token": SecretStr(fake.access_token),
        "phone_number_id": fake.phone_number_id,
        "app_secret": SecretStr(fake.app_secret),
        "verify_token": SecretStr(VERIFY),
        "api_base_url": fake.base_url,
        "api_version": fake.api_version,
        "retry_base_s": 0.02,
        "retry_max_s": 0.2,
        "max_inline_wait_s": 1.0,
        "status_template": WhatsAppTemplate(name="case_status_update", languages={"ar": "ar", "en": "en_US"}),
    }
    values.update(overrides)
    return WhatsAppSettings(**values)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def channel_for(fake: FakeGraph, http: aiohttp.ClientSession, **kwargs: Any) -> WhatsAppInput:
    overrides = kwargs.pop("settings", {})
    return WhatsAppInput(settings_for(fake, **overrides), ServerSettings(), http, **kwargs)


# ---------------------------------------------------------------------------------------------- handshake


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}, 200),
        ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1158201444"}, 403),
        ({"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}, 403),
        ({"hub.mode": "subscribe", "hub.verify_token": VERIFY}, 403),
        ({}, 403),
    ],
)
async def test_verification_handshake(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int, query: dict[str, str], status: int
) -> None:
    async with (
        serve(channel_for(fake_graph, http), Recorder(), unused_port) as base,
        http.get(f"{base}{PATH}", params=query) as resp,
    ):
        assert resp.status == status
        if status == 200:
            assert await resp.text() == "1158201444"


async def test_without_secrets_the_webhook_refuses_everything(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    recorder = Recorder()
    channel = channel_for(fake_graph, http, settings={"app_secret": None, "verify_token": None})
    async with serve(channel, recorder, unused_port) as base:
        params = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
        async with http.get(f"{base}{PATH}", params=params) as resp:
            assert resp.status == 403
        assert await fake_graph.user_sends(f"{base}{PATH}", CITIZEN, "hello") == 401
    assert recorder.received == []


# ---------------------------------------------------------------------------------------------- inbound


async def test_signed_message_is_handled_and_marked_read(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    recorder = Recorder(echo=True)
    channel = channel_for(fake_graph, http)
    async with serve(channel, recorder, unused_port) as base:
        body = fake_graph.text_message(CITIZEN, "مرحبا", name="Fatima")
        assert await fake_graph.deliver(f"{base}{PATH}", body) == 200
        await wait_until(
            lambda: len(fake_graph.sent) == 1 and len(fake_graph.reads) == 1, what="echo and read"
        )
    (msg,) = recorder.received
    wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert msg.message_id == f"wa:{wamid}" and msg.text == "مرحبا" and msg.sender_name == "Fatima"
    assert fake_graph.reads == [wamid]
    assert fake_graph.text_of(fake_graph.sent[0]) == "echo: مرحبا"
    assert await channel.tracker.last_inbound(CITIZEN) == msg.received_at


async def test_bad_or_missing_signature_is_401(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    async with serve(channel_for(fake_graph, http), recorder, unused_port) as base:
        body = fake_graph.text_message(CITIZEN, "forged")
        assert await fake_graph.deliver(f"{base}{PATH}", body, signature="sha256=" + "0" * 64) == 401
        raw = json.dumps(body).encode()
        async with http.post(f"{base}{PATH}", data=raw, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 401
        # Signed with another app's secret.
        other = FakeGraph(app_secret="someone-else")
        assert await fake_graph.deliver(f"{base}{PATH}", raw, signature=other.sign(raw)) == 401
    assert recorder.received == []
    assert "signature" in caplog.text


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"object": "page", "entry": [], "from": CITIZEN}).encode(),
        json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "changes": [
                            {"field": "messages", "value": {"messages": [{"from": CITIZEN, "type": "text"}]}}
                        ]
                    }
                ],
            }
        ).encode(),
    ],
)
async def test_malformed_signed_payload_is_400_and_logged_redacted(
    fake_graph: FakeGraph,
    http: aiohttp.ClientSession,
    unused_port: int,
    body: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    caplog.set_level(logging.WARNING)
    async with serve(channel_for(fake_graph, http), recorder, unused_port) as base:
        assert await fake_graph.deliver(f"{base}{PATH}", body) == 400
        assert await fake_graph.user_sends(f"{base}{PATH}", CITIZEN, "still works") == 200
        await wait_until(lambda: len(recorder.received) == 1, what="a good message after a bad one")
    assert "malformed" in caplog.text
    assert CITIZEN not in caplog.text  # phone numbers never reach the logs in clear


async def test_redelivered_message_is_handled_once(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    recorder = Recorder()
    channel = channel_for(fake_graph, http)
    async with serve(channel, recorder, unused_port) as base:
        body = fake_graph.text_message(CITIZEN, "مرة واحدة")
        for _ in range(3):
            assert await fake_graph.deliver(f"{base}{PATH}", body) == 200
        await wait_until(lambda: channel.pending == 0 and len(recorder.received) == 1, what="processing")
    assert len(recorder.received) == 1
    assert channel.duplicates == 2


async def test_one_citizens_messages_are_handled_in_order(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    order: list[str] = []

    async def slow_first(message: IncomingMessage, output: OutputChannel) -> None:
        if message.text == "first":
            await asyncio.sleep(0.1)  # a slow NLU call must not let the second message overtake
        order.append(message.text or "")

    async with serve(channel_for(fake_graph, http), slow_first, unused_port) as base:
        await fake_graph.user_sends(f"{base}{PATH}", CITIZEN, "first")
        await fake_graph.user_sends(f"{base}{PATH}", CITIZEN, "second")
        await wait_until(lambda: len(order) == 2, what="both messages")
    assert order == ["first", "second"]


async def test_statuses_reach_the_hook(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[DeliveryStatus] = []

    async def on_status(status: DeliveryStatus) -> None:
        seen.append(status)

    async with serve(channel_for(fake_graph, http, on_status=on_status), Recorder(), unused_port) as base:
        for name in ("status_sent", "status_delivered", "status_read", "status_read", "status_failed"):
            assert await fake_graph.deliver(f"{base}{PATH}", load_fixture("whatsapp", name)) == 200
        await wait_until(lambda: len(seen) == 4, what="four distinct statuses")
    assert [s.status for s in seen] == ["sent", "delivered", "read", "failed"]
    assert seen[-1].errors[0].code == 131026
    assert "failed (codes 131026)" in caplog.text
    assert CITIZEN not in caplog.text


async def test_media_size_is_looked_up_and_bytes_fetched(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    recorder = Recorder()
    channel = channel_for(fake_graph, http)
    content = b"\xff\xd8\xff\xe0 a photo of the pothole"
    media_id = fake_graph.add_media(content, "image/jpeg")
    async with serve(channel, recorder, unused_port) as base:
        body = fake_graph.media_message(CITIZEN, "image", media_id, caption="الحفرة")
        assert await fake_graph.deliver(f"{base}{PATH}", body) == 200
        await wait_until(lambda: len(recorder.received) == 1, what="the photo")
        (attachment,) = recorder.received[0].attachments
        assert attachment.size == len(content)  # looked up, so the dialogue can refuse big files early
        assert attachment.caption == "الحفرة"
        assert await channel.output_channel().fetch_attachment(attachment) == content
    # Two steps: the media id to a URL, then the URL with the bearer token.
    gets = [r.path for r in fake_graph.requests if r.method == "GET"]
    assert gets[-2:] == [f"/{fake_graph.api_version}/{media_id}", f"/media/{media_id}"]


async def test_too_big_media_is_refused_before_download(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    channel = channel_for(fake_graph, http, settings={"max_media_bytes": 4096})
    media_id = fake_graph.add_media(b"%PDF-1.7", "application/pdf", declared_size=50_000_000)
    from bot.channel import Attachment, AttachmentKind

    with pytest.raises(AttachmentTooLarge) as caught:
        await channel.output_channel().fetch_attachment(Attachment(AttachmentKind.DOCUMENT, media_id))
    assert caught.value.permanent and caught.value.size == 50_000_000
    assert not any(r.path.startswith("/media/") for r in fake_graph.requests)


async def test_stop_drains_work_in_progress_then_refuses(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    done: list[str] = []
    release = asyncio.Event()

    async def slow(message: IncomingMessage, output: OutputChannel) -> None:
        accepted()  # stored (the webhook answers now); the rest of the work is still in progress
        await release.wait()
        done.append(message.message_id)

    channel = channel_for(fake_graph, http)
    async with serve(channel, slow, unused_port) as base:
        assert await fake_graph.user_sends(f"{base}{PATH}", CITIZEN, "in flight") == 200
        await wait_until(lambda: channel.pending >= 1, what="a task in flight")
        stopping = asyncio.create_task(channel.stop())
        await asyncio.sleep(0.05)
        assert await fake_graph.user_sends(f"{base}{PATH}", CITIZEN, "too late") == 503  # Meta retries later
        release.set()
        await stopping
        assert len(done) == 1  # the message taken before stop was finished, not dropped


# ---------------------------------------------------------------------------------------------- outbound


async def test_menu_press_round_trip(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    class Menu(Recorder):
        async def __call__(self, message: IncomingMessage, output: OutputChannel) -> None:
            await super().__call__(message, output)
            if message.text == "hi":
                await output.send(
                    message.sender_id,
                    OutgoingMessage(
                        text="تأكيد الإرسال؟", buttons=(Button("تأكيد", "confirm"), Button("إلغاء", "cancel"))
                    ),
                )

    bot = Menu()
    async with serve(channel_for(fake_graph, http), bot, unused_port) as base:
        await fake_graph.user_sends(f"{base}{PATH}", CITIZEN, "hi")
        await wait_until(lambda: len(fake_graph.sent) == 1, what="the menu")
        assert fake_graph.choices_of(fake_graph.sent[0]) == ["confirm", "cancel"]
        assert await fake_graph.user_presses(f"{base}{PATH}", CITIZEN, "confirm") == 200
        await wait_until(lambda: len(bot.received) == 2, what="the press")
    press = bot.received[1]
    assert press.button == "confirm" and press.metadata["button_title"] == "تأكيد"
    assert press.metadata["reply_to"] == f"wa:{fake_graph.sent[0]['wamid']}"


async def test_long_menu_pages_on_more(
    fake_graph: FakeGraph, http: aiohttp.ClientSession, unused_port: int
) -> None:
    recorder = Recorder()
    channel = channel_for(fake_graph, http)
    choices = tuple(Button(f"Agency {i}", f"ag:{i}") for i in range(1, 26))
    async with serve(channel, recorder, unused_port) as base:
        await channel.output_channel().send(
            CITIZEN, OutgoingMessage(text="Which agency?", buttons=choices, language="en")
        )
        assert fake_graph.choices_of(fake_graph.sent[-1])[-1] == "~more:1"
        await fake_graph.user_presses(f"{base}{PATH}", CITIZEN, "~more:1")
        await wait_until(lambda: len(fake_graph.sent) == 2, what="page 2")
        await fake_graph.user_presses(f"{base}{PATH}", CITIZEN, "~more:2")
        await wait_until(lambda: len(fake_graph.sent) == 3, what="page 3")
        await fake_graph.user_presses(f"{base}{PATH}", CITIZEN, "ag:23")
        await wait_until(lambda: len(recorder.received) == 1, what="the choice")
    assert [m.button for m in recorder.received] == ["ag:23"]  # "more" presses never reach the dialogue
    shown = [c for p in fake_graph.sent for c in fake_graph.choices_of(p) if not c.startswith("~more")]
    assert shown == [f"ag:{i}" for i in range(1, 26)]


async def test_notification_outside_the_window_uses_the_template(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    tracker = InMemoryWindowTracker()
    sent: list[SentMessage] = []

    async def on_sent(item: SentMessage) -> None:
        sent.append(item)

    channel = channel_for(fake_graph, http, window_tracker=tracker, on_sent=on_sent)
    out = channel.output_channel()
    fake_graph.enforce_window = True
    notice = OutgoingMessage(
        text="Your case TWS-1 is in progress",
        language="en",
        notification=True,
        template_params=("TWS-1", "In progress"),
    )
    await out.send(CITIZEN, notice)  # never wrote: template
    await tracker.record_inbound(CITIZEN, dt.datetime.now(dt.UTC) - dt.timedelta(hours=30))
    await out.send(CITIZEN, notice)  # wrote 30 h ago: template
    now = dt.datetime.now(dt.UTC)
    await tracker.record_inbound(CITIZEN, now)
    fake_graph.last_inbound[CITIZEN] = now
    await out.send(CITIZEN, notice)  # inside the window: free text
    kinds = [p["type"] for p in fake_graph.sent]
    assert kinds == ["template", "template", "text"]
    assert fake_graph.sent[0]["template"]["language"] == {"code": "en_US"}
    assert [p["text"] for p in fake_graph.sent[0]["template"]["components"][0]["parameters"]] == [
        "TWS-1",
        "In progress",
    ]
    assert fake_graph.text_of(fake_graph.sent[2]) == "Your case TWS-1 is in progress"
    assert [s.template for s in sent] == [True, True, False]
    assert sent[2].message_id == f"wa:{fake_graph.sent[2]['wamid']}"


async def test_stale_window_falls_back_to_the_template(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    tracker = InMemoryWindowTracker()
    await tracker.record_inbound(CITIZEN, dt.datetime.now(dt.UTC))  # we think the window is open...
    fake_graph.enforce_window = True  # ...but the platform saw no message from this citizen
    channel = channel_for(fake_graph, http, window_tracker=tracker)
    await channel.output_channel().send(
        CITIZEN, OutgoingMessage(text="update", notification=True, template_params=("TWS-9", "closed"))
    )
    assert [p["type"] for p in fake_graph.sent] == ["template"]
    # An ordinary reply outside the window cannot be fixed by retrying.
    with pytest.raises(DeliveryFailed) as caught:
        await channel.output_channel().send(CITIZEN, OutgoingMessage(text="hello"))
    assert caught.value.permanent


async def test_throughput_errors_back_off_and_deliver(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    channel = channel_for(fake_graph, http)
    fake_graph.fail(times=2, code=130429)
    fake_graph.fail(times=1, code=131056)
    fake_graph.fail(times=1, code=None, http_status=503)
    await channel.output_channel().send_text(CITIZEN, "after the storm")
    assert [fake_graph.text_of(p) for p in fake_graph.sent] == ["after the storm"]
    assert channel.client.retries == 4
    assert len([r for r in fake_graph.requests if r.method == "POST"]) == 5


async def test_429_storm_on_many_citizens_loses_nothing(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    channel = channel_for(fake_graph, http)
    fake_graph.fail(times=5, code=130429)
    out = channel.output_channel()
    await asyncio.gather(*(out.send_text(f"9733300000{i}", f"notice {i}") for i in range(8)))
    assert sorted(p["to"] for p in fake_graph.sent) == sorted(f"9733300000{i}" for i in range(8))


async def test_persistent_throttling_is_left_to_the_outbox(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    channel = channel_for(fake_graph, http, settings={"max_retries": 2})
    fake_graph.fail(times=10, code=None, http_status=500)
    with pytest.raises(DeliveryFailed) as caught:
        await channel.output_channel().send_text(CITIZEN, "hello")
    assert not caught.value.permanent and caught.value.retry_after is not None
    assert len([r for r in fake_graph.requests if r.method == "POST"]) == 3


@pytest.mark.parametrize("code", [131026, 100, 132001])
async def test_permanent_errors(fake_graph: FakeGraph, http: aiohttp.ClientSession, code: int) -> None:
    channel = channel_for(fake_graph, http)
    fake_graph.fail(times=1, code=code)
    with pytest.raises(DeliveryFailed) as caught:
        await channel.output_channel().send_text(CITIZEN, "hello")
    assert caught.value.permanent
    assert len([r for r in fake_graph.requests if r.method == "POST"]) == 1  # not retried


async def test_wrong_token_is_retryable_not_permanent(
    fake_graph: FakeGraph, http: aiohttp.ClientSession
) -> None:
    # An expired token is an operator problem; the messages must wait for the fix, not be dropped.
    channel = channel_for(fake_graph, http, settings={"access_token": SecretStr("expired"), "max_retries": 0})
    with pytest.raises(DeliveryFailed) as caught:
        await channel.output_channel().send_text(CITIZEN, "hello")
    assert not caught.value.permanent


async def test_location_request(fake_graph: FakeGraph, http: aiohttp.ClientSession) -> None:
    channel = channel_for(fake_graph, http)
    await channel.output_channel().send(
        CITIZEN, OutgoingMessage(text="أرسل الموقع", request_location=True, buttons=(Button("تخطي", "skip"),))
    )
    location, menu = fake_graph.sent
    assert location["interactive"]["type"] == "location_request_message"
    assert fake_graph.choices_of(menu) == ["skip"]
