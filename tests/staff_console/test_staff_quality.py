"""The quality page: confusion matrices from reviewed items and from held-out metrics, accuracy per model
version, most frequent confusions, and the SVG charts."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from nlu.registry import ModelInfo, ModelRegistry
from staff_console.quality import Confusion, heldout_accuracy, heldout_confusion
from tests.staff_console.staff_helpers import REVIEWER, Console

TYPES = ["complaint", "suggestion", "inquiry"]


def fake_model(
    registry_dir: Path,
    version: str,
    created_at: str,
    *,
    type_acc: float,
    type_matrix: list[list[int]] | None = None,
    promote: bool = True,
) -> ModelInfo:
    """A registry entry as nlu.training writes it (metadata.json + metrics.json), without training."""
    directory = registry_dir / version
    directory.mkdir(parents=True)
    matrix = type_matrix or [[8, 1, 1], [0, 5, 0], [2, 0, 3]]
    metrics = {
        "type_accuracy": type_acc,
        "agency_accuracy": 0.7,
        "confusion": {
            "type": {"labels": TYPES, "matrix": matrix},
            "agency": {"labels": ["ewa", "works", "health"], "matrix": [[4, 1, 0], [0, 3, 0], [0, 2, 6]]},
        },
    }
    (directory / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    info = ModelInfo(
        version=version,
        created_at=created_at,
        data_hash="abc123",
        promoted=False,
        path=directory,
        metrics={"type_accuracy": type_acc, "agency_accuracy": 0.7},
        n_train=100,
        n_heldout=25,
        data_sources=["nlu/data/cases_en_1.yml"],
    )
    info.write(directory)
    if promote:
        ModelRegistry(registry_dir).promote(version)
    return info


def test_confusion_counts() -> None:
    c = Confusion.from_pairs(
        [
            ("complaint", "complaint", 3),
            ("complaint", "inquiry", 2),
            ("inquiry", "inquiry", 1),
            ("ewa", "works", 0),
        ]
    )
    assert c.labels == ["complaint", "inquiry"]
    assert c.matrix() == [[3, 2], [0, 1]]
    assert c.total == 6 and c.correct == 4
    assert c.top_confusions() == [("complaint", "inquiry", 2)]


def test_heldout_metrics_shapes() -> None:
    metrics = {
        "confusion": {"type": {"labels": TYPES, "matrix": [[2, 1, 0], [0, 1, 0], [0, 0, 0]]}},
        "type_accuracy": 0.75,
    }
    c = heldout_confusion(metrics, "type")
    assert c is not None and c.matrix() == [[2, 1], [0, 1]]
    assert heldout_accuracy(metrics, "type") == 0.75
    nested = {"agency": {"confusion": {"ewa": {"ewa": 3, "works": 1}}}}
    assert heldout_accuracy(nested, "agency") == 0.75
    assert heldout_confusion({}, "type") is None and heldout_accuracy(None, "agency") is None


def cell(body: str, table: str, true: str, pred: str) -> int:
    section = body[body.index(f'id="{table}"') :]
    section = section[: section.index("</table>")]
    m = re.search(rf'data-true="{true}" data-pred="{pred}">(\d+)<', section)
    assert m, (table, true, pred)
    return int(m.group(1))


async def test_quality_page_tables_and_charts(console_any_db: Console) -> None:
    console = console_any_db
    fake_model(console.deps.registry_dir, "emb-old", "2026-03-01T10:00:00+00:00", type_acc=0.6)
    fake_model(
        console.deps.registry_dir,
        "emb-new",
        "2026-03-05T10:00:00+00:00",
        type_acc=0.8,
        type_matrix=[[9, 1, 0], [0, 5, 0], [1, 0, 4]],
    )
    reviewed = {"model_version": "emb-new"}
    await console.add_items(
        {
            **reviewed,
            "status": "accepted",
            "predicted_type": "complaint",
            "final_type": "complaint",
            "predicted_agency": "ewa",
            "final_agency": "ewa",
        },
        {
            **reviewed,
            "status": "relabelled",
            "predicted_type": "inquiry",
            "final_type": "complaint",
            "predicted_agency": "works",
            "final_agency": "municipalities",
        },
        {
            **reviewed,
            "status": "relabelled",
            "predicted_type": "inquiry",
            "final_type": "complaint",
            "predicted_agency": "works",
            "final_agency": "municipalities",
        },
        {**reviewed, "status": "not_a_case"},
        {**reviewed, "status": "pending"},
    )
    await console.sign_in(REVIEWER)
    body = await (await console.get("/quality")).text()
    assert cell(body, "tbl-type-reviewed", "complaint", "complaint") == 1
    assert cell(body, "tbl-type-reviewed", "complaint", "inquiry") == 2
    assert cell(body, "tbl-agency-reviewed", "municipalities", "works") == 2
    # Held-out: the current model's metrics.json.
    assert 'id="heldout-version">emb-new<' in body
    assert cell(body, "tbl-type-heldout", "complaint", "complaint") == 9
    assert cell(body, "tbl-agency-heldout", "health", "works") == 2
    # Accuracy per version, oldest first, with the reviewed accuracy of the version that predicted.
    table = body[body.index('id="accuracy-table"') :]
    assert table.index("emb-old") < table.index("emb-new")
    assert "60.0%" in table and "80.0%" in table and "33.3%" in table  # 1 of 3 reviewed types right
    top = body[body.index('id="top-reviewed-type"') :]
    assert re.search(r"complaint</td><td>inquiry</td><td>2</td>", top)
    # Another version chosen: its held-out matrix, and reviewed items of that version only (none).
    old = await (await console.get("/quality?version=emb-old")).text()
    assert cell(old, "tbl-type-heldout", "complaint", "complaint") == 8
    assert 'id="tbl-type-reviewed-empty"' in old


async def test_charts_are_svg_and_follow_the_data(console: Console) -> None:
    fake_model(console.deps.registry_dir, "emb-1", "2026-03-01T10:00:00+00:00", type_acc=0.6)
    await console.sign_in(REVIEWER)
    charts = {}
    for name in ("type-reviewed", "agency-reviewed", "type-heldout", "agency-heldout", "accuracy"):
        response = await console.get(f"/quality/charts/{name}.svg")
        assert response.status == 200, name
        data = await response.read()
        root = ET.fromstring(data)
        assert root.tag.endswith("svg"), name
        charts[name] = data
    # Deterministic: the same data draws the same bytes.
    assert await (await console.get("/quality/charts/type-reviewed.svg")).read() == charts["type-reviewed"]
    await console.add_items(
        {
            "status": "relabelled",
            "predicted_type": "inquiry",
            "final_type": "suggestion",
            "predicted_agency": "ewa",
            "final_agency": "ewa",
            "model_version": "emb-1",
        }
    )
    changed = await (await console.get("/quality/charts/type-reviewed.svg")).read()
    assert changed != charts["type-reviewed"]
    assert b"suggestion" in changed and b"inquiry" in changed
    fake_model(console.deps.registry_dir, "emb-2", "2026-03-02T10:00:00+00:00", type_acc=0.9)
    accuracy = await (await console.get("/quality/charts/accuracy.svg")).read()
    assert accuracy != charts["accuracy"] and b"emb-2" in accuracy
    assert (await console.get("/quality/charts/nope.svg")).status == 404


async def test_quality_page_without_models_or_reviews(console: Console) -> None:
    await console.sign_in(REVIEWER)
    body = await (await console.get("/quality")).text()
    assert 'id="tbl-type-reviewed-empty"' in body
    assert (await console.get("/quality/charts/accuracy.svg")).status == 200
