"""`tawasul nlu ...` through the installed console script (a real subprocess), on the session model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from config import Settings
from config.settings import PROJECT_DIR
from nlu.registry import ModelInfo

TAWASUL = PROJECT_DIR / ".venv" / "bin" / "tawasul"


def _run(settings: Settings, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {
        **os.environ,
        "TAWASUL_MODEL_DIR": str(settings.nlu.model_dir),
        "TAWASUL_NLU__DATA_DIR": str(settings.nlu.data_dir),
        "TAWASUL_NLU__REVIEWED_DATA_DIR": str(settings.nlu.reviewed_data_dir),
    }
    return subprocess.run(
        [str(TAWASUL), "nlu", *args], input=stdin, capture_output=True, env=env, timeout=120, check=False
    )


def test_predict_contract(nlu_settings: Settings, trained: ModelInfo) -> None:
    lines = [
        json.dumps(
            {"text": "الماي مقطوع عندنا من امس", "id": 1, "gold": {"agency": "ewa"}}, ensure_ascii=False
        ),
        "this is not json",
        json.dumps({"id": 3}),
        json.dumps({"text": 42}),
        json.dumps(["text"]),
        "",
        json.dumps({"text": "وين وصلت TWS-2026-000123؟", "id": 7}, ensure_ascii=False),
        json.dumps({"text": ""}),
    ]
    stdin = ("\n".join(lines) + "\n").encode() + b"\xff\xfe broken utf-8\n" + b'{"text": "hi"}'
    proc = _run(nlu_settings, "predict", stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    out = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(out) == len(lines) + 2  # one object per input line, in order

    first = out[0]
    assert first["id"] == 1 and first["gold"] == {"agency": "ewa"}  # other keys pass through
    assert first["text"] == "الماي مقطوع عندنا من امس"
    assert first["intent"] == "file_case" and first["type"] == "complaint" and first["agency"] == "ewa"
    assert first["language"] == "ar" and first["engine"] == "embedded"
    assert first["model_version"] == trained.version
    assert 0 < first["type_confidence"] <= 1 and 0 < first["agency_confidence"] <= 1
    assert len(first["agency_candidates"]) == 3
    assert set(first["agency_candidates"][0]) == {"agency", "confidence"}
    for i in (1, 2, 3, 4, 5, 8):
        assert set(out[i]) == {"error"} and out[i]["error"], i
    assert out[6]["id"] == 7 and out[6]["intent"] == "check_status"
    assert out[6]["entities"] == [
        {"entity": "case_reference", "value": "TWS-2026-000123", "start": 9, "end": 24}
    ]
    assert out[7]["text"] == "" and out[7]["type"] is None and out[7]["agency"] is None
    assert out[9]["text"] == "hi" and "error" not in out[9]


def test_parse_models_promote_rollback(nlu_settings: Settings, trained: ModelInfo) -> None:
    proc = _run(nlu_settings, "parse", "el kahraba maqtoo3a")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["language"] == "arabizi" and result["agency"] == "ewa"

    proc = _run(nlu_settings, "models", "--json")
    rows = json.loads(proc.stdout)
    assert any(r["version"] == trained.version and r["current"] for r in rows)
    assert _run(nlu_settings, "promote", "no-such-version").returncode == 1
    assert _run(nlu_settings, "rollback").returncode == 1  # only one promotion so far


def test_check_command_on_the_data(nlu_settings: Settings) -> None:
    proc = _run(nlu_settings, "check")
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]
    assert b"0 errors" in proc.stderr


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_lists_commands(nlu_settings: Settings, command: str) -> None:
    proc = _run(nlu_settings, command, "--help")
    assert proc.returncode == 0 and command.encode() in proc.stdout


def test_evaluate_writes_pngs(nlu_settings: Settings, trained: ModelInfo, tmp_path: Path) -> None:
    proc = _run(nlu_settings, "evaluate", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["model_version"] == trained.version
    assert summary["type_macro_f1"] == trained.metrics["type_macro_f1"]  # same data, same model
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "confusion_intent.png",
        "confusion_type.png",
        "confusion_agency.png",
    }
    assert set(summary["per_class"]["type"]) == {"complaint", "suggestion", "inquiry"}
