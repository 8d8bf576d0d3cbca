"""RasaEngine's HTTP behaviour and FallbackEngine, against real HTTP servers on 127.0.0.1.

The server here is a small aiohttp app speaking Rasa's API (``/status``, ``/model/parse``) with answers in the
shape Rasa 3.6 gives, so failure modes (refused, 5xx, slow, back again) can be produced on demand; the real
Rasa server is exercised in test_rasa_integration.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from config.settings import Settings
from nlu.rasa_engine import FallbackEngine, RasaEngine, combine_agency, map_parse
from nlu.types import CaseType, Intent, Language, NLUResult, NLUUnavailable
from tawasul.metrics import Metrics

TEXT = "الكهربا مقطوعة عندنا في سترة من امس ورقم البلاغ TWS-2026-000123"


def _answer(ranking: list[tuple[str, float]], entities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "text": "x",
        "intent": {"name": ranking[0][0], "confidence": ranking[0][1]},
        "entities": entities or [],
        "intent_ranking": [{"name": n, "confidence": c} for n, c in ranking],
    }


CASE_ANSWER = _answer(
    [("complaint+ewa", 0.55), ("inquiry+ewa", 0.2), ("complaint+works", 0.15), ("greet", 0.1)],
    [{"entity": "agency", "start": 0, "end": 7, "value": "ewa", "extractor": "DIETClassifier"}],
)


@dataclass
class FakeRasa:
    """Rasa's HTTP API with switchable failure modes."""

    mode: str = "ok"  # ok | error500 | slow | bad
    answer: dict[str, Any] = field(default_factory=lambda: CASE_ANSWER)
    parse_calls: int = 0
    status_calls: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_post("/model/parse", self.parse)
        return app

    async def status(self, request: web.Request) -> web.Response:
        self.status_calls += 1
        if self.mode == "error500":
            return web.Response(status=500)
        return web.json_response({"model_id": "0123456789abcdef", "model_file": "/m/small-1234.tar.gz"})

    async def parse(self, request: web.Request) -> web.Response:
        self.parse_calls += 1
        body = await request.json()
        assert isinstance(body.get("text"), str)
        if self.mode == "error500":
            return web.Response(status=500, text="boom")
        if self.mode == "slow":
            await asyncio.sleep(2.0)
        if self.mode == "bad":
            return web.json_response(["not", "a", "parse"])
        return web.json_response(self.answer)


async def _serve(fake: FakeRasa, port: int) -> web.AppRunner:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
def settings() -> Settings:
    return Settings()


def _settings(base: Settings, port: int, timeout_s: float = 1.0) -> Settings:
    nlu = base.nlu.model_copy(update={"rasa_url": f"http://127.0.0.1:{port}", "rasa_timeout_s": timeout_s})
    return base.model_copy(update={"nlu": nlu})


@pytest.fixture
async def fake(unused_port: int) -> AsyncIterator[tuple[FakeRasa, int]]:
    server = FakeRasa()
    runner = await _serve(server, unused_port)
    yield server, unused_port
    await runner.cleanup()


class StaticEngine:
    """A second engine for FallbackEngine tests that records what it was asked."""

    def __init__(self, name: str = "embedded", fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls = 0

    @property
    def model_version(self) -> str:
        return "emb-test"

    async def parse(self, text: str) -> NLUResult:
        self.calls += 1
        if self.fail:
            raise NLUUnavailable("no model")
        return NLUResult(text, Language.AR, Intent.FILE_CASE, 0.9, CaseType.COMPLAINT, 0.9, "ewa", 0.9, (), (),
                         self.name, self.model_version)  # fmt: skip


# --- mapping -----------------------------------------------------------------------------------------------


def test_map_parse_sums_joint_labels_and_weighs_the_mention(settings: Settings) -> None:
    from nlu.entities import place_gazetteer
    from nlu.gazetteer import agency_gazetteer

    result = map_parse(
        CASE_ANSWER,
        TEXT,
        settings,
        agencies=agency_gazetteer(),
        places=place_gazetteer(),
        model_version="rasa:t",
    )
    assert result.intent is Intent.FILE_CASE and result.intent_confidence == pytest.approx(0.9)
    assert result.type is CaseType.COMPLAINT and result.type_confidence == pytest.approx(0.7 / 0.9, abs=1e-3)
    # topic P(ewa | case) = 0.75/0.9; the mention adds weight w to ewa (the only one named).
    w = settings.nlu.explicit_agency_weight
    assert result.agency == "ewa"
    assert result.agency_confidence == pytest.approx((1 - w) * 0.75 / 0.9 + w, abs=1e-3)
    assert [c.agency for c in result.agency_candidates][:2] == ["ewa", "works"]
    assert len(result.agency_candidates) == 2  # only agencies with some probability
    refs = [e for e in result.entities if e.entity == "case_reference"]
    assert [(e.value, TEXT[e.start : e.end]) for e in refs] == [("TWS-2026-000123", "TWS-2026-000123")]
    agency_spans = [TEXT[e.start : e.end] for e in result.entities if e.entity == "agency"]
    assert agency_spans == ["الكهربا"]
    assert result.language is Language.AR and result.engine == "rasa" and result.model_version == "rasa:t"


def test_map_parse_dialogue_intent_has_no_type_and_fallback_is_out_of_scope(settings: Settings) -> None:
    from nlu.gazetteer import agency_gazetteer

    greet = map_parse(_answer([("greet", 0.8), ("complaint+ewa", 0.2)]), "hello", settings,
                      agencies=agency_gazetteer(), places=None, model_version="v")  # fmt: skip
    assert greet.intent is Intent.GREET and greet.type is None and greet.agency is None
    unsure = map_parse(
        _answer([("nlu_fallback", 0.1), ("thanks", 0.06), ("greet", 0.05)]), "blah", settings,
        agencies=agency_gazetteer(), places=None, model_version="v",
    )  # fmt: skip
    assert unsure.intent is Intent.OUT_OF_SCOPE
    with pytest.raises(TypeError):
        map_parse({"intent_ranking": "nope"}, "x", settings, agencies=agency_gazetteer(), places=None,
                  model_version="v")  # fmt: skip


def test_combine_agency_matches_the_embedded_rule() -> None:
    topic = {"ewa": 0.1, "works": 0.6, "health": 0.3}
    assert combine_agency(topic, [], 0.7) == topic
    both = combine_agency(topic, ["ewa", "works"], 0.7)
    assert both["works"] == pytest.approx(0.3 * 0.6 + 0.7 * 0.6 / 0.7)
    assert max(both, key=both.__getitem__) == "works"
    zero = combine_agency({"ewa": 0.0, "works": 1.0}, ["ewa"], 0.7)
    assert zero["ewa"] == pytest.approx(0.7)


# --- HTTP ------------------------------------------------------------------------------------------------


async def test_parse_over_http_and_model_version(settings: Settings, fake: tuple[FakeRasa, int]) -> None:
    server, port = fake
    engine = RasaEngine(_settings(settings, port))
    try:
        first = await engine.parse(TEXT)
        second = await engine.parse("EWA bill is wrong")
    finally:
        await engine.close()
    assert first.engine == "rasa" and first.agency == "ewa"
    assert engine.model_version == "rasa:small-1234@01234567" == second.model_version
    assert server.parse_calls == 2 and server.status_calls == 1  # /status once, one session reused


async def test_empty_text_is_answered_without_the_server(
    settings: Settings, fake: tuple[FakeRasa, int]
) -> None:
    server, port = fake
    engine = RasaEngine(_settings(settings, port))
    try:
        result = await engine.parse(" \u200f\x00 ")
    finally:
        await engine.close()
    assert result.intent is Intent.OUT_OF_SCOPE and result.intent_confidence == 0.0
    assert server.parse_calls == 0


async def test_down_server_raises_unavailable(settings: Settings, unused_port: int) -> None:
    engine = RasaEngine(_settings(settings, unused_port))
    try:
        with pytest.raises(NLUUnavailable):
            await engine.parse(TEXT)
        assert await engine.ping() is False
    finally:
        await engine.close()


async def test_5xx_is_retried_then_unavailable(settings: Settings, fake: tuple[FakeRasa, int]) -> None:
    server, port = fake
    engine = RasaEngine(_settings(settings, port), retries=2)
    await engine.refresh_status()
    server.mode = "error500"
    try:
        with pytest.raises(NLUUnavailable, match="HTTP 500"):
            await engine.parse(TEXT)
    finally:
        await engine.close()
    assert server.parse_calls == 3


async def test_slow_server_times_out_without_retry(settings: Settings, fake: tuple[FakeRasa, int]) -> None:
    server, port = fake
    engine = RasaEngine(_settings(settings, port, timeout_s=0.3))
    await engine.refresh_status()
    server.mode = "slow"
    try:
        with pytest.raises(NLUUnavailable, match="no answer within"):
            await engine.parse(TEXT)
    finally:
        await engine.close()
    assert server.parse_calls == 1


async def test_malformed_answer_is_unavailable(settings: Settings, fake: tuple[FakeRasa, int]) -> None:
    server, port = fake
    server.mode = "bad"
    engine = RasaEngine(_settings(settings, port))
    try:
        with pytest.raises(NLUUnavailable):
            await engine.parse(TEXT)
    finally:
        await engine.close()


# --- fallback --------------------------------------------------------------------------------------------


async def test_fallback_logs_once_counts_every_message_and_recovers(
    settings: Settings, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeRasa()
    runner = await _serve(server, unused_port)
    metrics = Metrics()  # the service's counters, reached through the engine's hook
    fallback = StaticEngine()
    engine = FallbackEngine(
        RasaEngine(_settings(settings, unused_port)), fallback, retry_after_s=0.2, on_fallback=metrics.nlu_fallback
    )
    caplog.set_level(logging.WARNING, logger="nlu.rasa_engine")
    try:
        assert (await engine.parse(TEXT)).engine == "rasa"
        await runner.cleanup()  # the server goes away mid-run
        results = [await engine.parse(TEXT) for _ in range(5)]
        assert [r.engine for r in results] == ["embedded"] * 5
        assert engine.degraded and engine.model_version == "emb-test"
        assert (
            metrics.registry.get_sample_value(
                "tawasul_nlu_fallback_total", {"primary": "rasa", "fallback": "embedded"}
            )
            == 5.0
        )
        assert engine.fallback_count == 5
        switches = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(switches) == 1, "the switch is logged once per outage, not per message"

        # Back on the same port: a background probe notices and messages go to Rasa again.
        runner = await _serve(server, unused_port)
        for _ in range(50):
            await asyncio.sleep(0.1)
            result = await engine.parse(TEXT)
            if result.engine == "rasa":
                break
        assert result.engine == "rasa" and not engine.degraded
        assert any("is back" in r.getMessage() for r in caplog.records)
    finally:
        await engine.close()
        await runner.cleanup()


async def test_fallback_never_raises_even_if_both_fail(settings: Settings, unused_port: int) -> None:
    engine = FallbackEngine(RasaEngine(_settings(settings, unused_port)), StaticEngine(fail=True))
    try:
        result = await engine.parse("الماي مقطوع")
    finally:
        await engine.close()
    assert result.engine == "none" and result.intent is Intent.FILE_CASE and result.type is None

