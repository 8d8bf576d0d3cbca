"""Quality figures: confusion matrices (reviewed items, held-out split), accuracy per model version, and
their charts as SVG drawn server-side with matplotlib (Agg/SVG backend, no display needed).

Charts carry only label ids and numbers: matplotlib cannot shape Arabic, so titles and legends are HTML
around the image, in the page's language.
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from staff_console.review import CASE_TYPES, LABELLED
from tawasul.db.models import ReviewItem

KINDS = ("type", "agency")
# Series colours of the accuracy chart; the HTML legend uses the same ones.
SERIES_COLOURS = {
    "heldout_type": "#1f77b4",
    "heldout_agency": "#ff7f0e",
    "reviewed_type": "#2ca02c",
    "reviewed_agency": "#d62728",
}


@dataclass
class Confusion:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (true, predicted) -> n

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str, int]]) -> Confusion:
        c: Counter[tuple[str, str]] = Counter()
        for true, pred, n in pairs:
            if n:
                c[(str(true), str(pred))] += int(n)
        return cls(c)

    @property
    def labels(self) -> list[str]:
        present = {t for t, _ in self.counts} | {p for _, p in self.counts}
        ordered = [t for t in CASE_TYPES if t in present]
        return ordered + sorted(present - set(ordered))

    def matrix(self) -> list[list[int]]:
        labels = self.labels
        return [[self.counts.get((t, p), 0) for p in labels] for t in labels]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def correct(self) -> int:
        return sum(n for (t, p), n in self.counts.items() if t == p)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    def top_confusions(self, n: int = 10) -> list[tuple[str, str, int]]:
        errors = [(t, p, c) for (t, p), c in self.counts.items() if t != p and c > 0]
        errors.sort(key=lambda r: (-r[2], r[0], r[1]))
        return errors[:n]


async def reviewed_confusion(session: AsyncSession, kind: str, model_version: str | None = None) -> Confusion:
    """Prediction against the reviewer's label, over accepted and relabelled items."""
    pred = ReviewItem.predicted_type if kind == "type" else ReviewItem.predicted_agency
    final = ReviewItem.final_type if kind == "type" else ReviewItem.final_agency
    q = (
        select(final, pred, func.count())
        .where(ReviewItem.status.in_(LABELLED), pred.is_not(None), final.is_not(None))
        .group_by(final, pred)
    )
    if model_version:
        q = q.where(ReviewItem.model_version == model_version)
    return Confusion.from_pairs((t, p, n) for t, p, n in (await session.execute(q)).all())


async def reviewed_accuracy_by_version(session: AsyncSession) -> dict[str, dict[str, float | int]]:
    """Per model version: share of reviewed items whose predicted type / agency was right."""
    rows = (
        await session.execute(
            select(
                ReviewItem.model_version,
                func.count(),
                func.sum(case((ReviewItem.predicted_type == ReviewItem.final_type, 1), else_=0)),
                func.sum(case((ReviewItem.predicted_agency == ReviewItem.final_agency, 1), else_=0)),
            )
            .where(ReviewItem.status.in_(LABELLED), ReviewItem.model_version.is_not(None))
            .group_by(ReviewItem.model_version)
        )
    ).all()
    out: dict[str, dict[str, float | int]] = {}
    for version, n, type_ok, agency_ok in rows:
        if n:
            out[str(version)] = {
                "n": int(n),
                "type": float(type_ok or 0) / n,
                "agency": float(agency_ok or 0) / n,
            }
    return out


# -- held-out metrics stored with each model ------------------------------------------------------------
def _lookup(metrics: Mapping[str, Any], paths: Sequence[Sequence[str]]) -> Any:
    for path in paths:
        node: Any = metrics
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                node = None
                break
            node = node[key]
        if node is not None:
            return node
    return None


def _confusion_from_any(raw: Any) -> Confusion | None:
    """Accepts {"labels": [...], "matrix": [[...]]} (rows true, columns predicted) or {true: {pred: n}}."""
    if isinstance(raw, Mapping) and "labels" in raw and "matrix" in raw:
        labels, matrix = list(raw["labels"]), list(raw["matrix"])
        pairs = []
        for i, row in enumerate(matrix[: len(labels)]):
            for j, n in enumerate(list(row)[: len(labels)]):
                if n:
                    pairs.append((str(labels[i]), str(labels[j]), int(n)))
        return Confusion.from_pairs(pairs)
    if isinstance(raw, Mapping) and all(isinstance(v, Mapping) for v in raw.values()):
        return Confusion.from_pairs(
            (str(t), str(p), int(n)) for t, row in raw.items() for p, n in row.items() if n
        )
    return None


def full_metrics(model: Any) -> dict[str, Any]:
    """A model's complete held-out metrics: ``metrics.json`` beside the artifact (it has the confusion
    matrices), else the summary kept in the registry's metadata."""
    summary = getattr(model, "metrics", None) or {}
    path = getattr(model, "path", None)
    if path:
        try:
            data = json.loads((Path(path) / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            return {**summary, **data}
    return dict(summary)


def heldout_confusion(metrics: Mapping[str, Any] | None, kind: str) -> Confusion | None:
    if not metrics:
        return None
    raw = _lookup(
        metrics,
        [
            ("heldout", kind, "confusion"),
            (kind, "confusion"),
            ("heldout", f"{kind}_confusion"),
            (f"{kind}_confusion",),
            ("confusion", kind),
        ],
    )
    return None if raw is None else _confusion_from_any(raw)


def heldout_accuracy(metrics: Mapping[str, Any] | None, kind: str) -> float | None:
    if not metrics:
        return None
    value = _lookup(
        metrics,
        [
            ("heldout", kind, "accuracy"),
            (kind, "accuracy"),
            ("heldout", f"{kind}_accuracy"),
            (f"{kind}_accuracy",),
        ],
    )
    if isinstance(value, int | float):
        return float(value)
    confusion = heldout_confusion(metrics, kind)
    return None if confusion is None else confusion.accuracy


def metric_summary(metrics: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Flat (name, value) pairs of a model's top-level numeric metrics, for the versions table."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, node: Any, depth: int) -> None:
        if isinstance(node, bool):
            return
        if isinstance(node, int | float):
            out.append((prefix, f"{node:.3f}" if isinstance(node, float) else str(node)))
        elif isinstance(node, Mapping) and depth < 3:
            for key, value in node.items():
                if "confusion" in str(key) or str(key) in ("per_label", "per_class", "labels", "errors"):
                    continue
                walk(f"{prefix}.{key}" if prefix else str(key), value, depth + 1)

    walk("", metrics or {}, 0)
    return out[:24]


# -- charts ---------------------------------------------------------------------------------------------
_render_lock = threading.Lock()  # matplotlib's font cache and rc state are not thread-safe


def _svg(fig: Any) -> bytes:
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buf = io.BytesIO()
    # Fixed hash salt and no date: the same data gives the same bytes.
    with matplotlib.rc_context({"svg.hashsalt": "tawasul-staff", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def confusion_svg(confusion: Confusion) -> bytes:
    from matplotlib.figure import Figure

    with _render_lock:
        labels = confusion.labels or ["-"]
        matrix = confusion.matrix() or [[0]]
        size = max(3.2, 0.42 * len(labels) + 1.6)
        fig = Figure(figsize=(size, size), dpi=72)
        ax = fig.add_subplot(1, 1, 1)
        peak = max((max(row) for row in matrix), default=0) or 1
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=peak)
        ax.set_xticks(range(len(labels)), labels=labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        for i, row in enumerate(matrix):
            for j, n in enumerate(row):
                if n:
                    ax.text(
                        j,
                        i,
                        str(n),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if n > peak / 2 else "black",
                    )
        fig.tight_layout()
        return _svg(fig)


def accuracy_svg(versions: Sequence[str], series: Mapping[str, Sequence[float | None]]) -> bytes:
    from matplotlib.figure import Figure

    with _render_lock:
        fig = Figure(figsize=(7.5, 3.4), dpi=72)
        ax = fig.add_subplot(1, 1, 1)
        xs = list(range(len(versions)))
        for name, values in series.items():
            points = [(x, v) for x, v in zip(xs, values, strict=False) if v is not None]
            if points:
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    marker="o",
                    color=SERIES_COLOURS.get(name, "#555555"),
                    label=name,
                )
        ax.set_ylim(0, 1.02)
        ax.set_xticks(xs, labels=[_short_version(v) for v in versions], rotation=30, ha="right", fontsize=7)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        return _svg(fig)


def _short_version(version: str) -> str:
    return version if len(version) <= 22 else version[:10] + "…" + version[-10:]
