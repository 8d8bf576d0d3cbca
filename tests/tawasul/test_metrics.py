"""/metrics counters move through the real code paths: the whole service on 127.0.0.1 (web chat HTTP API, the
fake Telegram Bot API and Graph API, the reference core backend), scraped over HTTP like Prometheus does.
Nothing here calls a counter directly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tawasul.app import Service
from tests.fakes import FakeGraph, FakeTelegram, wait_until
from tests.support import free_port, settings_for

INQUIRY = "What are the opening hours of the passport office in Muharraq on Saturdays?"
COMPLAINT = "The street light on road 3015 in Riffa has been off for a week, it is very dark at night"
WAIT_S = 45.0  # bounds a hung test only (two loaded cores)


@contextlib.asynccontextmanager
async def running(settings: Any) -> AsyncIterator[Service]:
    service = Service(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def scrape(service: Service) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics and parse it with prometheus-client's own parser."""
    assert service.http is not None
    async with service.http.get(f"{service.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class WebCitizen:
    """A citizen on the web chat. A reply usually comes back in the response to the message that caused it;
    when the service's background outbox loop delivered it instead, it waits for a poll, so the ``expect``
    helpers poll until what they look for arrived."""

    def __init__(self, service: Service, sender: str) -> None:
        assert service.http is not None
        self.http: aiohttp.ClientSession = service.http
        self.url = f"{service.url}/chat/api"
        self.sender = sender
        self.received: list[dict[str, Any]] = []
        self.mark = 0  # replies before this index answered earlier actions

    async def _post(self, body: dict[str, Any]) -> None:
        self.mark = len(self.received)
        async with self.http.post(f"{self.url}/send", json={"sender": self.sender, **body}) as resp:
            assert resp.status == 200, await resp.text()
            self.received.extend((await resp.json())["messages"])

    async def says(self, text: str) -> None:
        await self._post({"text": text})

    async def presses(self, payload: str) -> None:
        await self._post({"button": payload})

    async def expect_button(self, wanted: Callable[[str], bool], what: str) -> str:
        """The payload of a button on a reply to the last action that ``wanted`` accepts."""

        def found() -> str | None:
            return next((p for p in payloads(self.received[self.mark:]) if wanted(p)), None)

        async def polled() -> bool:
            await self.poll()
            return found() is not None

        if found() is None:
            await eventually(polled, what)
        payload = found()
        assert payload is not None
        return payload

    async def poll(self) -> None:
        async with self.http.get(f"{self.url}/poll", params={"sender": self.sender}) as resp:
            self.received.extend((await resp.json())["messages"])

    def find(self, fragment: str) -> dict[str, Any] | None:
        return next((m for m in self.received[self.mark:] if fragment in m["text"]), None)

    async def expect(self, fragment: str) -> dict[str, Any]:
        """A reply to the last action containing ``fragment``."""

        async def polled() -> bool:
            await self.poll()
            return self.find(fragment) is not None

        if self.find(fragment) is None:
            await eventually(polled, f"a reply with {fragment!r}")
        found = self.find(fragment)
        assert found is not None
        return found


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """``wait_until`` for an async condition (a scrape, a poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def outbox_drained(service: Service, *citizens: WebCitizen) -> None:
    """Nothing pending in the outbox, and every web reply picked up (the background loop may have
    delivered one after the request that caused it returned)."""

    async def idle() -> bool:
        return value(await scrape(service), "tawasul_outbox_items", status="pending") == 0

    await eventually(idle, "an idle outbox")
    for citizen in citizens:
        await citizen.poll()


def payloads(messages: list[dict[str, Any]]) -> list[str]:
    return [b["payload"] for m in messages for b in m["buttons"]]


# -------------------------------------------------------------------------------------------------- tests


async def test_replies_and_dialogue_outcomes_are_counted(tmp_path: Path, trained_nlu_dir: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    async with running(settings_for(db, tmp_path)) as service:
        filer = WebCitizen(service, "metrics-filer-01")
        await filer.says(INQUIRY)
        await filer.expect_button("confirm".__eq__, "the proposal")
        await filer.presses("confirm")
        await filer.expect("TWS-")

        canceller = WebCitizen(service, "metrics-canceller-01")
        await canceller.says(COMPLAINT)
        await canceller.expect_button("cancel".__eq__, "the proposal")
        await canceller.presses("cancel")
        await canceller.expect_button(lambda p: p.startswith("menu:"), "the menu after cancelling")

        # The citizen changes the type the NLU proposed, then files: a corrected filing.
        corrector = WebCitizen(service, "metrics-corrector-01")
        await corrector.says(INQUIRY)
        await corrector.expect_button("chtype".__eq__, "the proposal")
        await corrector.presses("chtype")
        other = await corrector.expect_button(lambda p: p.endswith("suggestion"), "the type choice")
        await corrector.presses(other)
        await corrector.expect_button("confirm".__eq__, "the corrected proposal")
        await corrector.presses("confirm")
        await corrector.expect("TWS-")

        await outbox_drained(service, filer, canceller, corrector)
        samples = await scrape(service)
        delivered = len(filer.received) + len(canceller.received) + len(corrector.received)
        # Every reply the web chat handed out was counted once, when the outbox delivered it.
        assert value(samples, "tawasul_replies_out_total", channel="web") == delivered
        assert value(samples, "tawasul_updates_in_total", channel="web", outcome="filed") == 1
        assert value(samples, "tawasul_updates_in_total", channel="web", outcome="corrected") == 1
        assert value(samples, "tawasul_updates_in_total", channel="web", outcome="cancelled") == 1
        assert value(samples, "tawasul_nlu_latency_seconds_count", engine="embedded") >= 3
        assert value(samples, "tawasul_outbox_items", status="done") == delivered + 2  # + the two filings


async def test_failed_backend_calls_are_counted_by_kind(tmp_path: Path, trained_nlu_dir: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    settings = settings_for(db, tmp_path, backend={"retries": 0, "timeout_s": 2.0})
    async with running(settings) as service:
        citizen = WebCitizen(service, "metrics-backend-01")
        await citizen.says(INQUIRY)
        await citizen.expect_button("confirm".__eq__, "the proposal")
        await citizen.presses("confirm")
        filed = await citizen.expect("TWS-")
        reference = next(w for w in filed["text"].split() if w.startswith("TWS-"))[:15]
        before = await scrape(service)
        assert value(before, "tawasul_backend_errors_total", kind="status", error="unavailable") == 0

        # The core backend goes away: a status check answers from the local mirror, a filing waits.
        assert service.embedded_backend is not None
        await service.embedded_backend.stop()
        service.embedded_backend = None
        await citizen.presses(f"st:{reference}")
        await citizen.expect(reference)  # from the local mirror
        await citizen.says(INQUIRY)
        await citizen.expect_button("confirm".__eq__, "the proposal")
        await citizen.presses("confirm")

        async def filing_failed() -> bool:
            samples = await scrape(service)
            return value(samples, "tawasul_backend_errors_total", kind="file_case", error="unavailable") >= 1

        await eventually(filing_failed, "a failed filing counted")
        after = await scrape(service)
        assert value(after, "tawasul_backend_errors_total", kind="status", error="unavailable") == 1
        assert value(after, "tawasul_outbox_items", status="pending") >= 1  # the filing waits for the backend


async def test_telegram_429s_are_counted(tmp_path: Path, trained_nlu_dir: Path) -> None:
    chat = 5_550_777
    db = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    async with FakeTelegram() as tg:
        settings = settings_for(db, tmp_path, telegram={
            "bot_token": SecretStr(tg.token), "api_base_url": tg.base_url, "api_file_base_url": tg.file_base_url,
            "poll_timeout_s": 1})
        async with running(settings) as service:
            tg.fail("sendMessage", times=2, status=429, retry_after=1)
            tg.user_sends(chat, "/start")
            await wait_until(lambda: bool(tg.texts_to(chat)), timeout=WAIT_S, what="the answer after the 429s")
            samples = await scrape(service)
    assert value(samples, "tawasul_platform_throttled_total", channel="telegram") == 2
    assert value(samples, "tawasul_replies_out_total", channel="telegram") >= 1


async def test_whatsapp_rate_limit_answers_are_counted(tmp_path: Path, trained_nlu_dir: Path) -> None:
    wa_id = "97333000777"
    verify = "verify-me-0123456789"
    db = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    async with FakeGraph() as wa:
        settings = settings_for(db, tmp_path, whatsapp={
            "access_token": SecretStr(wa.access_token), "phone_number_id": wa.phone_number_id,
            "app_secret": SecretStr(wa.app_secret), "verify_token": SecretStr(verify),
            "api_base_url": wa.base_url, "api_version": wa.api_version, "retry_base_s": 0.05, "retry_max_s": 0.2,
            "mark_read": False})
        async with running(settings) as service:
            # Throughput (130429), pair rate (131056) and a bare HTTP 429, then the send goes through.
            wa.fail(times=1, code=130429)
            wa.fail(times=1, code=131056)
            wa.fail(times=1, code=None, http_status=429)
            url = f"{service.url}{settings.whatsapp.webhook_path}"
            assert await wa.user_sends(url, wa_id, "مرحبا") == 200
            await wait_until(lambda: bool(wa.messages_to(wa_id)), timeout=WAIT_S, what="the answer")
            samples = await scrape(service)
    assert value(samples, "tawasul_platform_throttled_total", channel="whatsapp") == 3
    assert value(samples, "tawasul_replies_out_total", channel="whatsapp") >= 1


async def test_nlu_fallback_switches_are_counted_on_the_service(tmp_path: Path, trained_nlu_dir: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    # Rasa configured but nothing listens there: the embedded engine answers every message.
    settings = settings_for(db, tmp_path, nlu={"engine": "rasa", "rasa_url": f"http://127.0.0.1:{free_port()}",
                                               "rasa_timeout_s": 1.0})
    async with running(settings) as service:
        citizen = WebCitizen(service, "metrics-fallback-01")
        await citizen.says(INQUIRY)
        await citizen.says(COMPLAINT)
        await citizen.expect_button("confirm".__eq__, "the proposal")  # the dialogue went on as usual
        samples = await scrape(service)
    assert value(samples, "tawasul_nlu_fallback_total", primary="rasa", fallback="embedded") == 2
    assert value(samples, "tawasul_nlu_latency_seconds_count", engine="embedded") == 2
    assert value(samples, "tawasul_nlu_latency_seconds_count", engine="rasa") == 0
