"""Training and evaluation of the embedded model (synchronous, CPU, a few seconds).

``train_model`` trains on the training split (hand-written train side + staff-reviewed data), evaluates
the engine end to end on the held-out split, writes the artifact and its metadata into the registry and
optionally promotes it. ``evaluate`` produces per-class precision/recall/F1, macro-F1, agency accuracy,
per-style and per-language breakdowns and confusion matrices (PNG).

Heads are linear SVMs (``LinearSVC``: the most accurate of the fast linear models on these n-gram features,
and it trains in well under a second) calibrated by temperature scaling on 5-fold out-of-fold scores of the
training data (never the held-out split).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize, sparse
from sklearn.model_selection import StratifiedKFold
from sklearn.naive_bayes import ComplementNB
from sklearn.svm import LinearSVC

from config.settings import Settings
from nlu.dataset import STYLE_LANGUAGE, Dataset, Example, load_dataset
from nlu.engine import META_NAMES, EmbeddedEngine, TextAnalyzer
from nlu.features import FeatureSpace
from nlu.gazetteer import agency_gazetteer, topic_gazetteer
from nlu.model import FORMAT_VERSION, EmbeddedModel, Head, spread
from nlu.registry import ModelInfo, ModelRegistry
from nlu.types import CaseType, Intent, NLUResult

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
CASE_TYPES = tuple(t.value for t in CaseType)


@dataclass(frozen=True, slots=True)
class Hyper:
    """Model hyper-parameters, chosen by cross-validation on the training split (see benchmarks/)."""

    c_intent: float = 0.5
    c_type: float = 0.5
    c_agency: float = 0.5
    char_min_df: int = 2
    word_min_df: int = 1
    meta_weight: float = 0.5
    # Weight of the consonant-skeleton block (0: off).
    skel_weight: float = 2.5
    # Light stems of Arabic words in the skeleton block.
    stems: bool = True
    # "balanced" reweights classes by inverse frequency (the case messages outnumber each dialogue intent).
    intent_class_weight: str | None = "balanced"
    agency_class_weight: str | None = None
    # Feature blocks each head sees (see nlu/features.py); the others get zero weight.
    intent_blocks: tuple[str, ...] = ("char", "word", "skel", "meta")
    type_blocks: tuple[str, ...] = ("char", "word")
    agency_blocks: tuple[str, ...] = ("char", "word", "skel", "meta")
    # Agency head: a linear SVM plus a Complement Naive Bayes (different errors on few examples per class),
    # scores brought to a common scale and summed with this weight on the NB part; None: SVM only.
    agency_nb_alpha: float | None = 0.1
    agency_nb_weight: float = 1.0
    # Agency head also learns from the catalog (scope texts, aliases) and the topic terms, one short document
    # per agency and language: vocabulary the hand-written examples may not cover.
    knowledge_docs: bool = False
    calibration_folds: int = 5
    seed: int = 0


DEFAULT_HYPER = Hyper()


def _noop(stage: str, fraction: float) -> None:
    return None


def analyzer_for(settings: Settings) -> TextAnalyzer:
    return TextAnalyzer(
        settings.nlu.max_model_chars, agencies=agency_gazetteer(), places=None, topics=topic_gazetteer()
    )


def prepare(examples: Sequence[Example], analyzer: TextAnalyzer) -> tuple[list[str], list[list[str]]]:
    texts: list[str] = []
    metas: list[list[str]] = []
    for e in examples:
        text, meta, _, _ = analyzer.analyse(e.text, with_entities=False)
        texts.append(text)
        metas.append(meta)
    return texts, metas


def _fit_svm(
    x: sparse.csr_matrix,
    y: npt.NDArray[np.int64],
    n_classes: int,
    c: float,
    seed: int,
    class_weight: str | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(coef (n_classes, F), intercept) of a one-vs-rest linear SVM, padded for absent classes."""
    clf = LinearSVC(C=c, random_state=seed, class_weight=class_weight)
    clf.fit(x, y)
    coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    intercept = np.full(n_classes, -10.0, dtype=np.float32)  # a class absent from a fold is never chosen
    present = clf.classes_.astype(int)
    if len(present) == 2:  # binary: scikit-learn keeps one row for the positive class
        coef[present[1]], intercept[present[1]] = clf.coef_[0], clf.intercept_[0]
        coef[present[0]], intercept[present[0]] = -clf.coef_[0], -clf.intercept_[0]
    else:
        coef[present], intercept[present] = clf.coef_, clf.intercept_
    return coef, intercept


def _fit_temperature(scores: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float:
    """Temperature minimising the negative log-likelihood of softmax(scores / T)."""

    def nll(log_t: float) -> float:
        z = scores / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(y)), y].mean())

    res = optimize.minimize_scalar(nll, bounds=(math.log(0.01), math.log(10.0)), method="bounded")
    return float(math.exp(res.x))


@dataclass(slots=True)
class FittedHead:
    svm_w: npt.NDArray[np.float32]  # (F, k)
    svm_b: npt.NDArray[np.float32]  # (k,)
    temperature: float
    nb_w: npt.NDArray[np.float32] | None = None  # (F, k) log feature weights of Complement NB
    nb_weight: float = 0.0
    svm_scale: float = 1.0
    nb_scale: float = 1.0


def _fit_nb(
    x: sparse.csr_matrix, y: npt.NDArray[np.int64], n_classes: int, alpha: float
) -> npt.NDArray[np.float32]:
    """(n_classes, F) Complement Naive Bayes weights; its score ``x @ w.T`` is linear like the SVM's."""
    nb = ComplementNB(alpha=alpha)
    nb.fit(x, y)
    w = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    w[nb.classes_.astype(int)] = nb.feature_log_prob_
    return w


def fit_head(
    x: sparse.csr_matrix,
    labels: Sequence[str],
    classes: Sequence[str],
    c: float,
    hyper: Hyper,
    class_weight: str | None = None,
    nb_alpha: float | None = None,
    nb_weight: float = 0.0,
) -> FittedHead:
    """An SVM (plus, with ``nb_alpha``, a Complement NB) head and its temperature from out-of-fold scores."""
    index = {label: i for i, label in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    k = len(classes)
    counts = Counter(y.tolist())
    folds = min(hyper.calibration_folds, min(counts.values())) if counts else 0
    temperature, svm_scale, nb_scale = 1.0, 1.0, 1.0
    if folds >= 2 and len(counts) >= 2:
        oof = np.zeros((len(y), 2 * k))
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=hyper.seed)
        for tr, te in splitter.split(np.zeros(len(y)), y):
            coef, intercept = _fit_svm(x[tr], y[tr], k, c, hyper.seed, class_weight)
            oof[te, :k] = x[te] @ coef.T + intercept
            if nb_alpha is not None:
                oof[te, k:] = x[te] @ _fit_nb(x[tr], y[tr], k, nb_alpha).T
        if nb_alpha is not None:
            svm_scale, nb_scale = spread(oof[:, :k]), spread(oof[:, k:])
        probe = Head(tuple(classes), 0, k, 1.0)
        if nb_alpha is not None:
            probe = Head(tuple(classes), 0, k, 1.0, k, 2 * k, nb_weight, svm_scale, nb_scale)
        temperature = _fit_temperature(probe.combine(oof), y)
    coef, intercept = _fit_svm(x, y, k, c, hyper.seed, class_weight)
    nb_w = np.ascontiguousarray(_fit_nb(x, y, k, nb_alpha).T) if nb_alpha is not None else None
    return FittedHead(
        np.ascontiguousarray(coef.T), intercept, temperature, nb_w, nb_weight, svm_scale, nb_scale
    )


def fit_model(
    train: Sequence[Example],
    settings: Settings,
    *,
    version: str,
    hyper: Hyper = DEFAULT_HYPER,
    progress: Progress = _noop,
    analyzer: TextAnalyzer | None = None,
    prepared: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None,
) -> EmbeddedModel:
    progress("features", 0.1)
    texts, metas = prepared if prepared is not None else prepare(train, analyzer or analyzer_for(settings))
    meta_names = [f"{kind}:{a}" for kind in ("mention", "topic") for a in _agency_ids()] + list(META_NAMES)
    space, x = FeatureSpace.fit_matrix(
        texts,
        metas,
        meta_names,
        char_min_df=hyper.char_min_df,
        word_min_df=hyper.word_min_df,
        meta_weight=hyper.meta_weight,
        skel_weight=hyper.skel_weight,
        use_stems=hyper.stems,
    )
    case_rows = [i for i, e in enumerate(train) if e.intent == Intent.FILE_CASE.value]
    x_case = x[case_rows]
    case_agencies = [train[i].agency or "" for i in case_rows]
    x_agency = x_case
    if hyper.knowledge_docs:
        k_texts, k_metas, k_labels = knowledge_documents(analyzer or analyzer_for(settings))
        x_agency = sparse.vstack([x_case, space.matrix(k_texts, k_metas)]).tocsr()
        case_agencies = case_agencies + k_labels

    def masked(m: sparse.csr_matrix, blocks: tuple[str, ...]) -> sparse.csr_matrix:
        if set(blocks) >= {"char", "word", "skel", "meta"}:
            return m
        return sparse.csr_matrix(m @ sparse.diags(space.block_mask(blocks)))

    intents = [i.value for i in Intent if any(e.intent == i.value for e in train)]
    case_types = [train[i].type or "" for i in case_rows]
    heads_spec: list[tuple[str, sparse.csr_matrix, list[str], list[str], float, str | None]] = [
        (
            "intent",
            masked(x, hyper.intent_blocks),
            [e.intent for e in train],
            intents,
            hyper.c_intent,
            hyper.intent_class_weight,
        ),
        ("type", masked(x_case, hyper.type_blocks), case_types, list(CASE_TYPES), hyper.c_type, None),
        (
            "agency",
            masked(x_agency, hyper.agency_blocks),
            case_agencies,
            list(_agency_ids()),
            hyper.c_agency,
            hyper.agency_class_weight,
        ),
    ]
    weights: list[npt.NDArray[np.float32]] = []
    biases: list[npt.NDArray[np.float32]] = []
    heads: dict[str, Head] = {}
    start = 0
    for n, (name, xm, labels, classes, c, weighting) in enumerate(heads_spec):
        progress(f"fit {name}", 0.2 + 0.6 * n / len(heads_spec))
        nb_alpha = hyper.agency_nb_alpha if name == "agency" else None
        fitted = fit_head(xm, labels, classes, c, hyper, weighting, nb_alpha, hyper.agency_nb_weight)
        k = len(classes)
        weights.append(fitted.svm_w)
        biases.append(fitted.svm_b)
        head = Head(tuple(classes), start, start + k, fitted.temperature)
        start += k
        if fitted.nb_w is not None:
            weights.append(fitted.nb_w)
            biases.append(np.zeros(k, dtype=np.float32))
            head.nb_start, head.nb_end, head.nb_weight = start, start + k, fitted.nb_weight
            head.svm_scale, head.nb_scale = fitted.svm_scale, fitted.nb_scale
            start += k
        heads[name] = head
    return EmbeddedModel(
        version=version,
        features=space,
        weights=np.ascontiguousarray(np.hstack(weights), dtype=np.float32),
        bias=np.concatenate(biases).astype(np.float32),
        heads=heads,
        max_model_chars=settings.nlu.max_model_chars,
        info={"hyper": _hyper_dict(hyper)},
    )


def knowledge_documents(analyzer: TextAnalyzer) -> tuple[list[str], list[list[str]], list[str]]:
    """Short labelled documents from config/agencies.yml and nlu/topics.yml (agency head only)."""
    from config.agencies import load_agencies
    from nlu.gazetteer import load_topics

    topics = load_topics()
    docs: list[tuple[str, str]] = []
    for agency in load_agencies():
        docs.append((agency.scope.ar, agency.id))
        docs.append((agency.scope.en, agency.id))
        terms = topics.get(agency.id, [])
        arabic = [t for t in terms if not t.isascii()]
        latin = [t for t in terms if t.isascii()]
        docs.append(("، ".join(arabic), agency.id))
        docs.append((", ".join(latin), agency.id))
    texts: list[str] = []
    metas: list[list[str]] = []
    labels: list[str] = []
    for text, label in docs:
        if not text:
            continue
        model_text, meta, _, _ = analyzer.analyse(text, with_entities=False)
        texts.append(model_text)
        metas.append(meta)
        labels.append(label)
    return texts, metas, labels


def _hyper_dict(hyper: Hyper) -> dict[str, Any]:
    return {f: getattr(hyper, f) for f in hyper.__dataclass_fields__}


def _agency_ids() -> tuple[str, ...]:
    from config.agencies import AGENCY_IDS

    return AGENCY_IDS


# --- evaluation ----------------------------------------------------------------------------------------


def _prf(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": tp + fn,
        }
    return out


def _macro_f1(per_class: dict[str, dict[str, float]]) -> float:
    scored = [v["f1"] for v in per_class.values() if v["support"] > 0]
    return round(sum(scored) / len(scored), 4) if scored else 0.0


def _accuracy(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    return round(sum(1 for g, p in zip(gold, pred, strict=True) if g == p) / len(gold), 4) if gold else 0.0


def _ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error of the top-1 confidence."""
    if not confidences:
        return 0.0
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidences) if lo < c <= hi or (b == 0 and c == 0)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) / len(confidences) * abs(acc - conf)
    return round(total, 4)


def _confusion(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    pos = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        if g in pos and p in pos:
            matrix[pos[g]][pos[p]] += 1
    return matrix


def evaluate(
    engine: EmbeddedEngine,
    examples: Sequence[Example],
    *,
    out_dir: Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Metrics of ``engine`` on labelled ``examples`` (the held-out split); PNGs into ``out_dir``.

    The type and agency heads are scored on case messages as the dialogue uses them: ``type_top1`` /
    ``agency_top1`` take the best candidate whatever the intent head said; ``type_e2e`` counts a case
    message whose intent was misread as wrong; ``agency_answered`` is the accuracy when the confidence
    reaches the threshold, and ``agency_coverage`` how often it does.
    """
    nlu = settings.nlu if settings is not None else engine.settings
    results = [engine.parse_sync(e.text) for e in examples]
    case = [(e, r) for e, r in zip(examples, results, strict=True) if e.intent == Intent.FILE_CASE.value]
    type_probs = [_type_top1(engine, e.text) for e, _ in case]

    gold_intent = [e.intent for e in examples]
    pred_intent = [str(r.intent) for r in results]
    intent_labels = [i.value for i in Intent if i.value in set(gold_intent) | set(pred_intent)]
    intent_prf = _prf(gold_intent, pred_intent, intent_labels)

    gold_type = [e.type or "" for e, _ in case]
    pred_type_top1 = [t for t, _ in type_probs]
    pred_type_e2e = [str(r.type) if r.type is not None else "none" for _, r in case]
    type_prf = _prf(gold_type, pred_type_top1, CASE_TYPES)
    type_prf_e2e = _prf(gold_type, pred_type_e2e, CASE_TYPES)

    gold_agency = [e.agency or "" for e, _ in case]
    top1_agency = [r.agency_candidates[0].agency if r.agency_candidates else "none" for _, r in case]
    answered = [(g, r.agency) for g, (_, r) in zip(gold_agency, case, strict=True) if r.agency is not None]
    agency_ids = list(_agency_ids())
    agency_prf = _prf(gold_agency, top1_agency, agency_ids)
    top3 = [g in {c.agency for c in r.agency_candidates} for g, (_, r) in zip(gold_agency, case, strict=True)]

    by_style: dict[str, dict[str, Any]] = {}
    styles = sorted({e.style for e in examples if e.style})
    for style in styles:
        idx = [i for i, (e, _) in enumerate(case) if e.style == style]
        all_idx = [i for i, e in enumerate(examples) if e.style == style]
        g_t = [gold_type[i] for i in idx]
        by_style[style] = {
            "n_case": len(idx),
            "n_all": len(all_idx),
            "type_macro_f1": _macro_f1(_prf(g_t, [pred_type_top1[i] for i in idx], CASE_TYPES)),
            "type_macro_f1_e2e": _macro_f1(_prf(g_t, [pred_type_e2e[i] for i in idx], CASE_TYPES)),
            "agency_accuracy": _accuracy([gold_agency[i] for i in idx], [top1_agency[i] for i in idx]),
            "agency_top3": round(sum(top3[i] for i in idx) / len(idx), 4) if idx else 0.0,
            "intent_accuracy": _accuracy(
                [gold_intent[i] for i in all_idx], [pred_intent[i] for i in all_idx]
            ),
            "language_accuracy": _accuracy(
                [STYLE_LANGUAGE[style].value] * len(all_idx), [str(results[i].language) for i in all_idx]
            ),
        }
    by_language: dict[str, dict[str, Any]] = defaultdict(dict)
    for lang in sorted({STYLE_LANGUAGE[s].value for s in styles}):
        idx = [i for i, (e, _) in enumerate(case) if e.style and STYLE_LANGUAGE[e.style].value == lang]
        by_language[lang] = {
            "n_case": len(idx),
            "type_macro_f1": _macro_f1(
                _prf([gold_type[i] for i in idx], [pred_type_top1[i] for i in idx], CASE_TYPES)
            ),
            "agency_accuracy": _accuracy([gold_agency[i] for i in idx], [top1_agency[i] for i in idx]),
        }
    metrics: dict[str, Any] = {
        "n_heldout": len(examples),
        "n_case": len(case),
        "intent_accuracy": _accuracy(gold_intent, pred_intent),
        "intent_macro_f1": _macro_f1(intent_prf),
        "type_macro_f1": _macro_f1(type_prf),
        "type_macro_f1_e2e": _macro_f1(type_prf_e2e),
        "type_accuracy": _accuracy(gold_type, pred_type_top1),
        "agency_accuracy": _accuracy(gold_agency, top1_agency),
        "agency_top3_accuracy": round(sum(top3) / len(top3), 4) if top3 else 0.0,
        "agency_answered_accuracy": _accuracy([g for g, _ in answered], [p for _, p in answered]),
        "agency_coverage": round(len(answered) / len(case), 4) if case else 0.0,
        "agency_threshold": nlu.agency_threshold,
        "type_ece": _ece(
            [p for _, p in type_probs], [t == g for (t, _), g in zip(type_probs, gold_type, strict=True)]
        ),
        "agency_ece": _ece(
            [r.agency_candidates[0].confidence if r.agency_candidates else 0.0 for _, r in case],
            [g == p for g, p in zip(gold_agency, top1_agency, strict=True)],
        ),
        "language_accuracy": _accuracy(
            [STYLE_LANGUAGE[e.style].value for e in examples if e.style],
            [str(r.language) for e, r in zip(examples, results, strict=True) if e.style],
        ),
        "by_style": by_style,
        "by_language": dict(by_language),
        "per_class": {"intent": intent_prf, "type": type_prf, "type_e2e": type_prf_e2e, "agency": agency_prf},
        "confusion": {
            "intent": {
                "labels": intent_labels,
                "matrix": _confusion(gold_intent, pred_intent, intent_labels),
            },
            "type": {"labels": list(CASE_TYPES), "matrix": _confusion(gold_type, pred_type_top1, CASE_TYPES)},
            "agency": {"labels": agency_ids, "matrix": _confusion(gold_agency, top1_agency, agency_ids)},
        },
    }
    if out_dir is not None:
        metrics["plots"] = save_confusion_plots(metrics["confusion"], out_dir)
    return metrics


def _type_top1(engine: EmbeddedEngine, text: str) -> tuple[str, float]:
    model_text, meta, _, _ = engine.analyzer.analyse(text, with_entities=False)
    cols, vals = engine.model.features.vector(model_text, meta)
    p = engine.model.proba("type", engine.model.scores(cols, vals))
    k = int(np.argmax(p))
    return engine.model.heads["type"].classes[k], float(p[k])


def save_confusion_plots(confusion: dict[str, dict[str, Any]], out_dir: Path) -> list[str]:
    """One PNG per confusion matrix (rows: gold, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for name, cm in confusion.items():
        labels = cm["labels"]
        matrix = np.array(cm["matrix"])
        size = max(4.0, 0.45 * len(labels) + 2)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{name} (held-out)")
        for i in range(len(labels)):
            for j in range(len(labels)):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black",
                    )
        fig.tight_layout()
        path = out_dir / f"confusion_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def cross_validate(
    examples: Sequence[Example],
    settings: Settings,
    hyper: Hyper = DEFAULT_HYPER,
    folds: int = 5,
    predictions: list[tuple[Example, NLUResult]] | None = None,
) -> dict[str, Any]:
    """Grouped k-fold estimate on training data (near-duplicates stay in one fold): for choosing
    hyper-parameters without touching the held-out split."""
    from sklearn.model_selection import StratifiedGroupKFold

    from nlu.dataset import duplicate_groups

    analyzer = analyzer_for(settings)
    texts, metas = prepare(examples, analyzer)
    groups = duplicate_groups(examples, settings.nlu.near_duplicate_jaccard)
    strata = [e.agency or e.intent for e in examples]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=hyper.seed)
    gold: list[Example] = []
    results: list[NLUResult] = []
    for tr, te in splitter.split(np.zeros(len(examples)), strata, groups):
        model = fit_model(
            [examples[i] for i in tr],
            settings,
            version="cv",
            hyper=hyper,
            prepared=([texts[i] for i in tr], [metas[i] for i in tr]),
        )
        engine = EmbeddedEngine(model, settings.nlu, agencies=analyzer.agencies, topics=analyzer.topics)
        for i in te:
            gold.append(examples[i])
            results.append(engine.parse_sync(examples[i].text))
    if predictions is not None:
        predictions.extend(zip(gold, results, strict=True))
    return score_results(gold, results)


def score_results(gold: Sequence[Example], results: Sequence[NLUResult]) -> dict[str, Any]:
    """Headline numbers from (example, result) pairs: intent macro-F1, type macro-F1 (end to end),
    agency top-1 accuracy, overall and per style."""

    def block(pairs: list[tuple[Example, NLUResult]]) -> dict[str, float]:
        case = [(e, r) for e, r in pairs if e.intent == Intent.FILE_CASE.value]
        return {
            "n": len(pairs),
            "intent_macro_f1": _macro_f1(
                _prf(
                    [e.intent for e, _ in pairs], [str(r.intent) for _, r in pairs], [i.value for i in Intent]
                )
            ),
            "type_macro_f1": _macro_f1(
                _prf([e.type or "" for e, _ in case], [str(r.type) for _, r in case], CASE_TYPES)
            ),
            "agency_accuracy": _accuracy(
                [e.agency for e, _ in case],
                [r.agency_candidates[0].agency if r.agency_candidates else None for _, r in case],
            ),
        }

    pairs = list(zip(gold, results, strict=True))
    out: dict[str, Any] = block(pairs)
    out["by_style"] = {
        style: block([(e, r) for e, r in pairs if e.style == style])
        for style in sorted({e.style for e in gold if e.style})
    }
    return out


# --- the whole run -------------------------------------------------------------------------------------


def new_version(data_hash: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"emb-{now:%Y%m%d-%H%M%S}-{data_hash[:8]}"


def train_model(
    settings: Settings,
    *,
    extra_dirs: Sequence[Path] = (),
    progress: Progress | None = None,
    promote: bool = False,
    hyper: Hyper = DEFAULT_HYPER,
) -> ModelInfo:
    """Train on the training split, evaluate on held-out, save into the registry; return its info."""
    report = progress or _noop
    started = time.perf_counter()
    report("load data", 0.0)
    dataset: Dataset = load_dataset(settings, extra_dirs)
    if not dataset.train:
        raise ValueError(f"no training examples under {settings.nlu.data_dir}")
    registry = ModelRegistry(settings.nlu.model_dir)
    version = registry.unique_version(new_version(dataset.data_hash))
    model = fit_model(dataset.train, settings, version=version, hyper=hyper, progress=report)
    train_seconds = time.perf_counter() - started
    report("evaluate", 0.85)
    engine = EmbeddedEngine(model, settings.nlu)
    with registry.staging(version) as staging:
        metrics = evaluate(engine, dataset.heldout, out_dir=staging / "plots", settings=settings)
        metrics["train_seconds"] = round(train_seconds, 2)
        metrics["plots"] = [str(Path(p).relative_to(staging)) for p in metrics.get("plots", [])]
        model.save(staging)
        (staging / "metrics.json").write_text(
            json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        info = ModelInfo(
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            data_hash=dataset.data_hash,
            metrics=summary(metrics),
            promoted=False,
            path=staging,
            n_train=len(dataset.train),
            n_heldout=len(dataset.heldout),
            data_sources=dataset.files,
            format_version=FORMAT_VERSION,
        )
        info.write(staging)
    info = registry.get(version)
    if promote:
        registry.promote(version)
        info = registry.get(version)
    report("done", 1.0)
    log.info(
        "trained NLU model %s in %.1f s (type macro-F1 %.3f, agency accuracy %.3f)",
        version,
        train_seconds,
        metrics["type_macro_f1"],
        metrics["agency_accuracy"],
    )
    return info


SUMMARY_KEYS = (
    "n_heldout",
    "n_case",
    "intent_accuracy",
    "intent_macro_f1",
    "type_macro_f1",
    "type_macro_f1_e2e",
    "agency_accuracy",
    "agency_top3_accuracy",
    "agency_answered_accuracy",
    "agency_coverage",
    "language_accuracy",
    "type_ece",
    "agency_ece",
    "train_seconds",
)


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What goes into metadata.json: headline numbers and the per-style ones."""
    out = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    out["by_style"] = {
        s: {k: v for k, v in m.items() if k in ("type_macro_f1", "agency_accuracy", "n_case")}
        for s, m in metrics.get("by_style", {}).items()
    }
    return out
