"""The Rasa export: same training split, same normalisation, a project Rasa itself accepts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from config.settings import Settings
from nlu.dataset import load_dataset
from nlu.rasa_cli import rasa_env
from nlu.rasa_export import (
    INTENT_SPLIT,
    export_project,
    joint_label,
    rasa_text,
    read_summary,
    split_label,
)

pytestmark = pytest.mark.timeout(600)


def _examples(project: Path) -> dict[str, list[str]]:
    data = yaml.safe_load((project / "data" / "nlu.yml").read_text(encoding="utf-8"))
    return {
        block["intent"]: [line[2:] for line in block["examples"].splitlines() if line.startswith("- ")]
        for block in data["nlu"]
        if "intent" in block
    }


def _plain(annotated: str) -> str:
    """Example text without Rasa's entity annotation syntax."""
    import re

    return re.sub(r"\[([^\]]+)\]\{[^}]*\}", r"\1", annotated)


def test_rasa_text_is_the_embedded_normal_form_spelt_as_words() -> None:
    assert rasa_text("ليييش الكهربا مقطوعة؟؟ 😡😡") == "ليش الكهربا مقطوعه qmark emo1f621"
    assert rasa_text("Where is TWS-2026-000123 ?!") == "where is twsref qmark emark"
    assert rasa_text("   ") == ""
    # Every token survives Rasa's WhitespaceTokenizer (it drops bare punctuation and emoji).
    assert all(tok.isalnum() for tok in rasa_text("hi!! 👍🏽 ok? ... #EWA @moh").split())


def test_labels_round_trip() -> None:
    assert split_label("complaint+ewa") == ("file_case", "complaint", "ewa")
    assert split_label("greet") == ("greet", None, None)
    assert INTENT_SPLIT == "+"


def test_full_export_is_the_training_split_and_rasa_validates_it(
    rasa_ready: Path, settings: Settings, tmp_path: Path
) -> None:
    project = export_project(settings, tmp_path / "project")
    dataset = load_dataset(settings)
    exported = _examples(project)
    summary = read_summary(project)

    train_labels = {rasa_text(e.text, settings.nlu.max_model_chars): joint_label(e) for e in dataset.train}
    plain = {_plain(line): label for label, lines in exported.items() for line in lines}
    assert plain == {text: label for text, label in train_labels.items() if text}, "export != train split"
    heldout = {rasa_text(e.text, settings.nlu.max_model_chars) for e in dataset.heldout}
    assert not heldout & set(plain), "held-out examples leaked into the Rasa training data"
    assert summary.examples == len(plain)
    # Every agency with every type it has in the data, and the dialogue intents, are Rasa intents.
    assert {"complaint+ewa", "inquiry+traffic", "suggestion+health", "greet", "check_status"} <= set(exported)
    domain = yaml.safe_load((project / "domain.yml").read_text(encoding="utf-8"))
    assert set(exported) <= set(domain["intents"]) and domain["entities"] == ["agency"]

    # Rasa's own validator, from .venv-rasa, on the exported project.
    proc = subprocess.run(
        [
            str(rasa_ready),
            "data",
            "validate",
            "--data",
            "data",
            "--domain",
            "domain.yml",
            "--config",
            "config.yml",
        ],
        cwd=project,
        env=rasa_env(),
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " ERROR " not in proc.stdout + proc.stderr


def test_explicit_mentions_are_annotated_with_agency_ids(settings: Settings, tmp_path: Path) -> None:
    from nlu.dataset import Example

    examples = [
        Example("الكهربا قطعت عندنا في سترة من امس", "file_case", "complaint", "ewa", "gulf", "t:1"),
        Example("the traffic directorate should add a u-turn near Isa Town", "file_case", "suggestion",
                "traffic", "en", "t:2"),
        Example("الماي مقطوع من الصبح", "file_case", "complaint", "ewa", "gulf", "t:3"),
        Example("هلا والله", "greet", None, None, "gulf", "t:4"),
    ]  # fmt: skip
    project = export_project(settings, tmp_path / "p", examples=examples, epochs=1)
    exported = _examples(project)
    lines = exported["complaint+ewa"]
    assert any('{"entity": "agency","value": "ewa"}' in line or '"value": "ewa"' in line for line in lines)
    assert "الماي مقطوع من الصبح" in lines  # implied only: nothing to tag
    assert any('"value": "traffic"' in line for line in exported["suggestion+traffic"])
    assert exported["greet"] == ["هلا والله"]
    synonyms = (project / "data" / "synonyms.yml").read_text(encoding="utf-8")
    assert "- synonym: ewa" in synonyms and "- lookup: agency" in synonyms
    config = yaml.safe_load((project / "config.yml").read_text(encoding="utf-8"))
    names = [c["name"] for c in config["pipeline"]]
    assert names == [
        "WhitespaceTokenizer",
        "RegexFeaturizer",
        "CountVectorsFeaturizer",
        "CountVectorsFeaturizer",
        "DIETClassifier",
        "EntitySynonymMapper",
        "FallbackClassifier",
    ]
    assert json.loads((project / "export.json").read_text())["examples"] == 4
