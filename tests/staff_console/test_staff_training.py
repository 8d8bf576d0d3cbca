"""Export of reviewed items as Rasa YAML, background retraining with progress, promote and roll back."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nlu.dataset import load_examples
from nlu.registry import ModelRegistry
from staff_console.export import EXPORT_FILE, build_yaml
from tests.staff_console.staff_helpers import (
    ADMIN,
    Console,
    start_console,
    stop_console,
    tiny_training_data,
)


async def wait_for_training(console: Console, limit_s: float = 300.0) -> dict[str, Any]:
    """Poll the JSON status endpoint as the page's script does, until the training ends."""
    status: dict[str, Any] = {}
    for _ in range(int(limit_s / 0.25)):
        response = await console.get("/training/status", headers={"Accept": "application/json"})
        assert response.status == 200
        status = await response.json()
        if not status["running"]:
            return status
        await asyncio.sleep(0.25)
    raise AssertionError(f"training still running after {limit_s} s: {status}")


async def test_export_writes_rasa_yaml_the_nlu_reads(console: Console) -> None:
    ids = await console.add_items(
        {
            "status": "accepted",
            "final_type": "complaint",
            "final_agency": "ewa",
            "language": "ar",
            "text": "الكهرباء مقطوعة من الصبح\nوالرقم 880112345",
        },
        {
            "status": "relabelled",
            "final_type": "inquiry",
            "final_agency": "lmra",
            "language": "en",
            "text": "how to renew [work permit](agency) : # | > 'quoted' \"double\"",
        },
        {
            "status": "relabelled",
            "final_type": "suggestion",
            "final_agency": "works",
            "language": "arabizi",
            "text": "- plz fix el shari3\u2028second line\x07",
        },
        {"status": "not_a_case", "text": "hello"},
        {"status": "pending", "text": "still pending"},
    )
    await console.sign_in(ADMIN)
    token = await console.csrf()
    response = await console.post("/training/export", data={"csrf_token": token})
    assert response.status == 303 and response.headers["Location"] == "/staff/training?msg=exported&n=3"
    path = console.deps.reviewed_dir() / EXPORT_FILE
    examples = load_examples([path])
    got = {(e.text, e.type, e.agency, e.style) for e in examples}
    assert got == {
        ("الكهرباء مقطوعة من الصبح والرقم [CPR]", "complaint", "ewa", "gulf"),
        ("how to renew [work permit] (agency) : # | > 'quoted' \"double\"", "inquiry", "lmra", "en"),
        ("- plz fix el shari3 second line", "suggestion", "works", "arabizi"),
    }
    assert all(e.intent == "file_case" for e in examples)
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["version"] == "3.1"
    exported = [await console.item(i) for i in ids]
    assert [e.exported_at is not None for e in exported] == [True, True, True, False, False]
    # A later relabel replaces the example instead of adding a contradicting one.
    await console.post(
        f"/items/{ids[0]}",
        data={"csrf_token": token, "action": "relabel", "final_type": "inquiry", "final_agency": "ewa"},
    )
    assert (await console.item(ids[0])).exported_at is None
    await console.post("/training/export", data={"csrf_token": token})
    labels = {(e.type, e.agency) for e in load_examples([path]) if e.text.startswith("الكهرباء")}
    assert labels == {("inquiry", "ewa")}


def test_build_yaml_round_trips_awkward_text() -> None:
    texts = [
        "a: b",
        "# not a comment",
        "'single",
        '"double',
        "|pipe",
        ">fold",
        "@at",
        "`tick`",
        "%pct",
        "{brace}",
        "[bracket]",
        "tab\there",
        "  leading spaces",
        "trailing   ",
        "\ufeffbom",
        "emoji 😀",
        "نص عربي: مع نقطتين",
        "null",
        "true",
        "- dash",
        "--- three",
    ]
    rows = [(t, "complaint", "ewa", "en") for t in texts]
    content, n = build_yaml(rows)
    data = yaml.safe_load(content)
    lines = [line[2:] for line in data["nlu"][0]["examples"].splitlines()]
    assert n == len(texts) == len(lines)
    assert lines[0] == "a: b" and lines[-1] == "--- three" and "tab here" in lines
    assert "leading spaces" in lines and "trailing" in lines and "bom" in lines
    # The same text twice keeps the later label only.
    content, n = build_yaml([("same", "complaint", "ewa", "en"), ("Same", "inquiry", "lmra", "en")])
    assert n == 1 and "intent: inquiry" in content and "intent: complaint" not in content


@dataclass
class FakeInfo:
    version: str


async def test_training_progress_busy_and_failure(tmp_path: Path, sqlite_url: str, unused_port: int) -> None:
    release = threading.Event()
    calls: list[dict[str, Any]] = []

    def slow_trainer(settings: Any, *, extra_dirs: Any, progress: Any, promote: bool) -> FakeInfo:
        calls.append({"extra_dirs": extra_dirs, "promote": promote})
        progress("fit type", 0.4)
        release.wait(60)
        if len(calls) == 2:
            raise ValueError("bad data near 880112345")
        return FakeInfo("v-slow")

    # A closure cannot be pickled, so this trainer runs in a thread; the status protocol is the same.
    c = await start_console(tmp_path, sqlite_url, unused_port, trainer=slow_trainer)
    try:
        await c.sign_in(ADMIN)
        token = await c.csrf()
        start = await c.post(
            "/training/retrain",
            json={"promote": True},
            headers={"X-CSRF-Token": token, "Accept": "application/json"},
        )
        assert start.status == 202
        status: dict[str, Any] = {}
        for _ in range(400):
            status = await (await c.get("/training/status", headers={"Accept": "application/json"})).json()
            if status.get("stage") == "fit type":
                break
            await asyncio.sleep(0.05)
        assert status["running"] and status["state"] == "running" and status["fraction"] == 0.4
        again = await c.post(
            "/training/retrain", json={}, headers={"X-CSRF-Token": token, "Accept": "application/json"}
        )
        assert again.status == 409
        busy = await c.post("/training/export", data={"csrf_token": token})
        assert "msg=err_busy" in busy.headers["Location"]
        release.set()
        done = await wait_for_training(c)
        assert done["state"] == "done" and done["version"] == "v-slow" and done["promote"] is True
        assert calls[0]["extra_dirs"] == (c.deps.reviewed_dir(),) and calls[0]["promote"] is True
        assert len(c.reloads) == 1  # promoted: the running service switched models
        # A failing training is reported, redacted, and does not reload anything.
        await c.post("/training/retrain", data={"csrf_token": token})
        failed = await wait_for_training(c)
        assert failed["state"] == "failed"
        assert "bad data near [CPR]" in failed["error"] and "880112345" not in failed["error"]
        assert len(c.reloads) == 1
        page = await (await c.get("/training")).text()
        assert 'id="train-error"' in page
    finally:
        release.set()
        await stop_console(c)


async def test_real_retrain_promote_and_rollback(tmp_path: Path, sqlite_url: str, unused_port: int) -> None:
    """The default trainer (nlu.training.train_model) in a child process, on a small slice of the data."""
    c = await start_console(tmp_path, sqlite_url, unused_port)
    try:
        tiny_training_data(c.deps.settings.nlu.data_dir)
        await c.add_items(
            {
                "status": "relabelled",
                "final_type": "complaint",
                "final_agency": "ewa",
                "language": "en",
                "text": "no water in our area since morning and nobody answers the hotline",
            },
        )
        await c.sign_in(ADMIN)
        token = await c.csrf()
        response = await c.post("/training/retrain", data={"csrf_token": token})
        assert response.headers["Location"] == "/staff/training?msg=training_started"
        first = await wait_for_training(c)
        assert first["state"] == "done", first
        assert first["exported"] == 1
        registry = ModelRegistry(c.deps.registry_dir)
        [info] = registry.list_models()
        assert info.version == first["version"]
        assert any(EXPORT_FILE in s for s in info.data_sources)
        assert registry.current() is None and c.reloads == []  # not promoted yet
        page = await (await c.get("/training")).text()
        assert f'data-version="{info.version}"' in page and "promote-btn" in page
        promoted = await c.post("/training/promote", data={"csrf_token": token, "version": info.version})
        assert promoted.headers["Location"] == "/staff/training?msg=promoted"
        current = registry.current()
        assert current is not None and current.version == info.version
        assert len(c.reloads) == 1
        # A second training, promoted when it succeeds.
        await c.post("/training/retrain", data={"csrf_token": token, "promote": "1"})
        second = await wait_for_training(c)
        assert second["state"] == "done" and second["version"] != info.version
        assert registry.current().version == second["version"]  # type: ignore[union-attr]
        assert len(c.reloads) == 2
        back = await c.post("/training/rollback", data={"csrf_token": token})
        assert back.headers["Location"] == "/staff/training?msg=rolled_back"
        assert registry.current().version == info.version  # type: ignore[union-attr]
        assert len(c.reloads) == 3
        nothing = await c.post("/training/rollback", data={"csrf_token": token})
        assert nothing.headers["Location"] == "/staff/training?msg=err_rollback"
        unknown = await c.post("/training/promote", data={"csrf_token": token, "version": "../etc"})
        assert unknown.headers["Location"] == "/staff/training?msg=err_promote"
        assert len(c.reloads) == 3
    finally:
        await stop_console(c)


async def test_reload_failure_is_reported(tmp_path: Path, sqlite_url: str, unused_port: int) -> None:
    from tests.staff_console.test_staff_quality import fake_model

    c = await start_console(tmp_path, sqlite_url, unused_port)

    async def broken_reload() -> None:
        raise RuntimeError("model file unreadable")

    c.deps.nlu_reload = broken_reload
    try:
        fake_model(c.deps.registry_dir, "emb-a", "2026-03-01T10:00:00+00:00", type_acc=0.5)
        await c.sign_in(ADMIN)
        token = await c.csrf()
        response = await c.post("/training/promote", data={"csrf_token": token, "version": "emb-a"})
        assert response.headers["Location"] == "/staff/training?msg=err_reload"
        notice = await (await c.client.get(response.headers["Location"])).text()
        assert "could not switch models" in notice
    finally:
        await stop_console(c)
