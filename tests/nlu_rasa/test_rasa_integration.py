"""A real Rasa 3.6 server (from .venv-rasa) trained on a small export, parsed through RasaEngine.

Slow by nature (training a small DIET model, starting TensorFlow), so the model is cached by export hash
(see conftest.py); still, these tests never skip: without .venv-rasa they fail and say how to build it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import PROJECT_DIR, Settings
from nlu.dataset import Example
from nlu.rasa_cli import RasaServer
from nlu.rasa_engine import FallbackEngine, RasaEngine
from nlu.types import Intent, NLUUnavailable
from tawasul.metrics import Metrics

pytestmark = pytest.mark.timeout(900)


async def _parse_all(engine: RasaEngine, texts: list[str]) -> list:  # type: ignore[type-arg]
    try:
        return [await engine.parse(t) for t in texts]
    finally:
        await engine.close()


def test_rasa_answers_map_to_the_engine_contract(rasa_settings: Settings, small_set: list[Example]) -> None:
    cases = [e for e in small_set if e.intent == "file_case"]
    dialogue = [e for e in small_set if e.intent != "file_case"]
    engine = RasaEngine(rasa_settings)
    results = asyncio.run(_parse_all(engine, [e.text for e in cases + dialogue]))
    assert engine.model_version.startswith("rasa:small-")
    assert all(r.engine == "rasa" and r.model_version == engine.model_version for r in results)

    case_results = results[: len(cases)]
    # Training examples (what DIET has seen) must come back with their labels through the mapping
    # joint intent -> intent/type/agency; a broken mapping scores near chance (1/3 type, 1/4 agency).
    intents = sum(r.intent is Intent.FILE_CASE for r in case_results) / len(cases)
    types = sum(
        r.type is not None and r.type.value == e.type for r, e in zip(case_results, cases, strict=True)
    )
    agencies = sum(r.agency == e.agency for r, e in zip(case_results, cases, strict=True))
    assert intents >= 0.9, intents
    assert types / len(cases) >= 0.8, types / len(cases)
    assert agencies / len(cases) >= 0.8, agencies / len(cases)
    for r in case_results:
        assert 0.0 <= r.type_confidence <= 1.0 and 0.0 <= r.agency_confidence <= 1.0
        assert 1 <= len(r.agency_candidates) <= 3
        assert r.agency is None or r.agency == r.agency_candidates[0].agency
    dialogue_ok = sum(
        r.intent.value == e.intent for r, e in zip(results[len(cases) :], dialogue, strict=True)
    )
    assert dialogue_ok / len(dialogue) >= 0.8
    assert all(r.type is None for r in results[len(cases) :] if r.intent is not Intent.FILE_CASE)


def test_references_mentions_and_language_through_rasa(rasa_settings: Settings) -> None:
    texts = [
        "السلام عليكم وين وصلت شكوتي رقم TWS-2026-000123 ؟",
        "EWA cut our electricity in Sitra since yesterday, my number is 36123456",
        "ya jama3a el kahraba maqtoo3a 3indna",
        "",
    ]
    ref, mention, arabizi, empty = asyncio.run(_parse_all(RasaEngine(rasa_settings), texts))

    refs = [(e.value, texts[0][e.start : e.end]) for e in ref.entities if e.entity == "case_reference"]
    assert refs == [("TWS-2026-000123", "TWS-2026-000123")]
    assert ref.language.value == "ar"

    assert mention.agency == "ewa" and mention.agency_candidates[0].agency == "ewa"
    assert [texts[1][e.start : e.end] for e in mention.entities if e.entity == "agency"] == ["EWA"]
    assert [e.value for e in mention.entities if e.entity == "phone"] == ["+97336123456"]
    assert mention.language.value == "en" and mention.intent is Intent.FILE_CASE

    assert arabizi.language.value == "arabizi"
    assert empty.intent is Intent.OUT_OF_SCOPE and empty.intent_confidence == 0.0


def test_predict_cli_with_rasa_engine(rasa_settings: Settings, rasa_server: RasaServer) -> None:
    lines = [
        json.dumps({"id": 1, "text": "الكهربا مقطوعة في سترة TWS-2026-000042"}, ensure_ascii=False),
        "this is not json",
        json.dumps({"id": 3, "nope": "no text"}),
        json.dumps({"id": 4, "text": "hello"}),
    ]
    env = {**os.environ, "TAWASUL_RASA_URL": rasa_server.url}
    proc = subprocess.run(
        [sys.executable, "-m", "tawasul.cli", "nlu", "predict", "--engine", "rasa"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_DIR,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == 4
    first, bad, missing, hello = out
    assert "error" in bad and "error" in missing
    for record, source in ((first, 1), (hello, 4)):
        assert record["id"] == source and record["engine"] == "rasa"
        assert record["model_version"].startswith("rasa:small-")
        for key in ("text", "language", "intent", "type", "type_confidence", "agency", "agency_confidence",
                    "agency_candidates", "entities"):  # fmt: skip
            assert key in record
    assert {"entity": "case_reference", "value": "TWS-2026-000042"}.items() <= first["entities"][
        -1
    ].items() or any(
        e["entity"] == "case_reference" and e["value"] == "TWS-2026-000042" for e in first["entities"]
    )


def test_predict_cli_reports_rasa_down_per_line(unused_port: int) -> None:
    env = {**os.environ, "TAWASUL_RASA_URL": f"http://127.0.0.1:{unused_port}"}
    proc = subprocess.run(
        [sys.executable, "-m", "tawasul.cli", "nlu", "predict", "--engine", "rasa"],
        input='{"text": "hello"}\n{"text": "bye"}\n',
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_DIR,
        timeout=120,
        check=False,
    )
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == 2 and all("unavailable" in r["error"] for r in out), proc.stdout + proc.stderr


def test_rasa_engine_unavailable_is_not_an_answer(settings: Settings, unused_port: int) -> None:
    nlu = settings.nlu.model_copy(update={"rasa_url": f"http://127.0.0.1:{unused_port}"})
    engine = RasaEngine(settings.model_copy(update={"nlu": nlu}))
    with pytest.raises(NLUUnavailable):
        asyncio.run(_parse_all(engine, ["hello"]))


# Last in this module on purpose: it stops the shared server (a later test would have to restart it).
def test_server_stopped_mid_run_falls_back_to_embedded(
    rasa_server: RasaServer, settings: Settings, trained_nlu_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nlu.service import load_embedded

    local = settings.model_copy(
        update={"nlu": settings.nlu.model_copy(update={"model_dir": trained_nlu_dir})}
    )
    embedded, _ = load_embedded(local)
    server = rasa_server
    try:
        nlu = local.nlu.model_copy(update={"rasa_url": server.url})
        metrics = Metrics()
        engine = FallbackEngine(RasaEngine(local.model_copy(update={"nlu": nlu})), embedded,
                                on_fallback=metrics.nlu_fallback, retry_after_s=3600)  # fmt: skip
        caplog.set_level(logging.WARNING, logger="nlu.rasa_engine")
        messages = [
            "الماي مقطوع عندنا من امس",
            "EWA bill is wrong this month",
            "شكرا",
            "hello",
            "المرور ما يردون",
        ]

        async def run() -> list[str]:
            engines = [(await engine.parse(messages[0])).engine]
            server.stop()  # Rasa goes away in the middle of the conversation
            for text in messages[1:]:
                result = await engine.parse(text)  # never raises
                engines.append(result.engine)
            await engine.close()
            return engines

        engines = asyncio.run(run())
    finally:
        server.stop()
    assert not server.running
    assert engines == ["rasa", "embedded", "embedded", "embedded", "embedded"]
    labels = {"primary": "rasa", "fallback": "embedded"}
    assert metrics.registry.get_sample_value("tawasul_nlu_fallback_total", labels) == 4.0
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
