"""Training data: loading and label mapping, the held-out split (deterministic, stratified, no leakage),
and the data check (on crafted data and on the real nlu/data)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from config import Settings
from config.agencies import AGENCY_IDS
from nlu.dataset import (
    STYLES,
    Example,
    check_data,
    example_key,
    load_dataset,
    load_examples,
    near_duplicate_pairs,
    split_examples,
)
from tests.nlu.conftest import settings_with

YAML = """version: "3.1"
nlu:
- intent: complaint
  metadata: {agency: ewa, style: gulf}
  examples: |
    - الماي مقطوع عندنا في سترة من امس
    - الكهربا طافية من الصبح
- intent: greet
  metadata: {style: en}
  examples: |
    - hi there
- intent: inquiry
  metadata: {agency: no_such_agency, style: en}
  examples: |
    - how do I pay my [bill](thing) online?
"""


def _write(path: Path, text: str = YAML) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_examples_maps_labels_and_lines(tmp_path: Path) -> None:
    examples = load_examples([_write(tmp_path / "a.yml")])
    assert [(e.intent, e.type, e.agency, e.style) for e in examples] == [
        ("file_case", "complaint", "ewa", "gulf"),
        ("file_case", "complaint", "ewa", "gulf"),
        ("greet", None, None, "en"),
        ("file_case", "inquiry", "no_such_agency", "en"),
    ]
    assert examples[1].text == "الكهربا طافية من الصبح"
    assert examples[1].source.endswith("a.yml:7")
    assert examples[3].text == "how do I pay my bill online?"  # Rasa entity annotation stripped


def test_check_data_finds_problems(tmp_path: Path) -> None:
    examples = load_examples([_write(tmp_path / "a.yml")])
    examples += [
        Example("الماي مقطوع عندنا في سترة من أمس!!", "file_case", "complaint", "ewa", "gulf", "x.yml:1"),
        Example("الكهربا طافيه من الصبح", "file_case", "suggestion", "ewa", "gulf", "x.yml:2"),
        Example("the power is off since morning", "file_case", "complaint", "ewa", "arabizi", "x.yml:3"),
        Example("hello", "wave", None, None, "en", "x.yml:4"),
        Example("no agency here at all", "file_case", "complaint", None, "en", "x.yml:5"),
    ]
    kinds = Counter(i.kind for i in check_data(examples))
    assert kinds["duplicate"] == 1  # same text after normalisation, same labels
    assert kinds["label_conflict"] == 1  # same text, complaint vs suggestion
    assert kinds["unknown_agency"] == 1
    assert kinds["unknown_intent"] == 1
    assert kinds["missing_agency"] == 1
    assert kinds["style_language"] == 1  # "arabizi" that is plain English
    conflict = next(i for i in check_data(examples) if i.kind == "label_conflict")
    assert conflict.severity == "error" and "x.yml:2" in conflict.sources


def test_real_data_passes_the_check(nlu_settings: Settings) -> None:
    files = sorted(nlu_settings.nlu.data_dir.glob("*.yml"))
    examples = load_examples(files)
    errors = [str(i) for i in check_data(examples, nlu_settings.nlu) if i.severity == "error"]
    assert errors == [], "\n".join(errors[:30])


def test_real_data_size_and_coverage(nlu_settings: Settings) -> None:
    dataset = load_dataset(nlu_settings)
    case = [e for e in dataset.examples if e.intent == "file_case"]
    assert len(case) >= 2500
    types = Counter(e.type for e in case)
    assert min(types.values()) / max(types.values()) > 0.7  # balanced over the three types
    assert {e.agency for e in case} == set(AGENCY_IDS)
    assert {e.style for e in case} == set(STYLES)


def test_split_is_deterministic_stratified_and_disjoint(nlu_settings: Settings) -> None:
    a = load_dataset(nlu_settings)
    b = load_dataset(nlu_settings)
    assert [e.source for e in a.heldout] == [e.source for e in b.heldout] and a.data_hash == b.data_hash
    assert 0.12 < len(a.heldout) / len(a.examples) < 0.3
    held_case = [e for e in a.heldout if e.intent == "file_case"]
    assert {e.agency for e in held_case} == set(AGENCY_IDS)
    assert {e.style for e in held_case} == set(STYLES)
    # no leakage: no held-out text (normalised) or near-duplicate of it is in train
    train_keys = {example_key(e) for e in a.train}
    assert not any(example_key(e) in train_keys for e in a.heldout)
    keys = [example_key(e) for e in a.train] + [example_key(e) for e in a.heldout]
    n = len(a.train)
    crossing = [
        (i, j)
        for i, j in near_duplicate_pairs(keys, nlu_settings.nlu.near_duplicate_jaccard)
        if (i < n) != (j < n)
    ]
    assert crossing == []


def test_split_does_not_depend_on_file_order(nlu_settings: Settings) -> None:
    files = sorted(nlu_settings.nlu.data_dir.glob("*.yml"))
    examples = load_examples(files)
    shuffled = examples[:]
    random.Random(7).shuffle(shuffled)
    _, held_a, _ = split_examples(examples, nlu_settings.nlu)
    _, held_b, _ = split_examples(shuffled, nlu_settings.nlu)
    assert sorted(e.source for e in held_a) == sorted(e.source for e in held_b)


def test_reviewed_data_is_train_only(nlu_settings: Settings, tmp_path: Path) -> None:
    base = load_dataset(nlu_settings)
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    # a staff-reviewed copy of a held-out example: it trains, and the hand-written twin leaves held-out
    twin = next(e for e in base.heldout if e.intent == "file_case")
    _write(
        reviewed / "staff_batch_01.yml",
        f'version: "3.1"\nnlu:\n- intent: {twin.type}\n'
        f"  metadata: {{agency: {twin.agency}, style: {twin.style}}}\n"
        f"  examples: |\n    - {twin.text}\n    - a brand new reviewed example about potholes in Sitra\n",
    )
    with_reviewed = load_dataset(settings_with(nlu_settings, reviewed_data_dir=reviewed))
    assert not any(
        e.source.endswith("staff_batch_01.yml:6") or e.source.endswith("staff_batch_01.yml:7") for e in with_reviewed.heldout
    )
    assert sum(e.source.startswith(str(reviewed)) or "staff_batch_01.yml" in e.source for e in with_reviewed.train) == 2
    assert twin.source not in {e.source for e in with_reviewed.heldout}
    assert with_reviewed.moved_to_train >= 1
    assert with_reviewed.data_hash != base.data_hash
    # extra_dirs behave the same way
    extra = load_dataset(nlu_settings, extra_dirs=[reviewed])
    assert {e.source for e in extra.heldout} == {e.source for e in with_reviewed.heldout}
