"""The embedded engine on the model trained from the real data (once per session)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from config import Settings
from nlu.engine import EmbeddedEngine
from nlu.features import FeatureSpace, char_ngrams
from nlu.model import EmbeddedModel
from nlu.registry import ModelInfo
from nlu.types import CaseType, Intent, Language, NLUResult


def test_model_metadata(trained: ModelInfo, engine: EmbeddedEngine) -> None:
    assert engine.name == "embedded" and engine.model_version == trained.version
    for key in ("type_macro_f1", "agency_accuracy", "intent_macro_f1", "by_style", "train_seconds"):
        assert key in trained.metrics
    assert trained.n_train > trained.n_heldout > 0 and trained.data_hash
    assert (trained.path / "plots" / "confusion_agency.png").stat().st_size > 1000


def test_topic_only_messages(engine: EmbeddedEngine) -> None:
    r = engine.parse_sync("الماي مقطوع عندنا من امس")  # the issue's own example
    assert r.intent is Intent.FILE_CASE and r.type is CaseType.COMPLAINT and r.agency == "ewa"
    r = engine.parse_sync(
        "a huge pothole near my house in Sitra burst my tyre and nobody fixed it for months!!"
    )
    assert r.type is CaseType.COMPLAINT and r.agency == "works"
    assert ("place", "Sitra") in [(e.entity, e.value) for e in r.entities]


def test_hard_types(engine: EmbeddedEngine) -> None:
    r = engine.parse_sync("ليش للحين ما وصلني رد من الإسكان؟ صار لي سنتين انتظر")  # complaint as a question
    assert r.type is CaseType.COMPLAINT and r.agency == "housing"
    r = engine.parse_sync("can you add more parking spaces at Salmaniya hospital? it's always full")
    assert r.type is CaseType.SUGGESTION and r.agency == "health"
    r = engine.parse_sync("what documents do I need to renew my passport?")
    assert r.type is CaseType.INQUIRY and r.agency == "npra"


def test_explicit_mention_outranks_topic(engine: EmbeddedEngine, nlu_settings: Settings) -> None:
    text = "the street lights on our road are off for a week, I reported it to the municipality"
    r = engine.parse_sync(text)
    assert r.agency == "municipalities"
    assert r.agency_confidence >= nlu_settings.nlu.explicit_agency_weight
    assert ("agency", "municipalities") in [(e.entity, e.value) for e in r.entities]
    # the topic alone (street lighting) says Works; the named agency wins only through the mention weight
    no_weight = EmbeddedEngine(
        engine.model, nlu_settings.nlu.model_copy(update={"explicit_agency_weight": 0.0})
    )
    assert no_weight.parse_sync(text).agency == "works"


def test_dialogue_intents(engine: EmbeddedEngine) -> None:
    expected = {
        "السلام عليكم": Intent.GREET,
        "شكرا جزيلا": Intent.THANKS,
        "فمان الله": Intent.GOODBYE,
        "ok bye": Intent.GOODBYE,
        "cancel": Intent.CANCEL,
        "وين وصلت شكوتي TWS-2026-000123": Intent.CHECK_STATUS,
    }
    for text, intent in expected.items():
        r = engine.parse_sync(text)
        assert r.intent is intent, text
        assert r.type is None and r.type_confidence == 0.0
    r = engine.parse_sync("وين وصلت شكوتي TWS-2026-000123")
    assert r.entity_values("case_reference") == ["TWS-2026-000123"]


def test_result_shape(engine: EmbeddedEngine, nlu_settings: Settings) -> None:
    r = engine.parse_sync("hi")
    assert r.agency is None  # a greeting names no agency
    r = engine.parse_sync("السلام عليكم، عندي شكوى على المرور، خالفوني وانا واقف صح")
    assert r.language is Language.AR and r.agency == "traffic"
    assert len(r.agency_candidates) == 3
    confs = [c.confidence for c in r.agency_candidates]
    assert confs == sorted(confs, reverse=True) and all(0.0 <= c <= 1.0 for c in confs)
    assert len({c.agency for c in r.agency_candidates}) == 3
    assert 0.0 <= r.type_confidence <= 1.0 and 0.0 <= r.intent_confidence <= 1.0
    assert NLUResult.from_dict(r.to_dict()) == r


def test_low_confidence_agency_is_null(engine: EmbeddedEngine, nlu_settings: Settings) -> None:
    strict = EmbeddedEngine(engine.model, nlu_settings.nlu.model_copy(update={"agency_threshold": 0.999}))
    r = strict.parse_sync("I have a problem and nobody is helping me")
    assert r.agency is None and len(r.agency_candidates) == 3


async def test_async_parse(engine: EmbeddedEngine) -> None:
    r = await engine.parse("el kahraba maqtoo3a 3indna fi sitra min ams")
    assert r.language is Language.ARABIZI and r.agency == "ewa"


def test_truncation_keeps_entities_beyond_the_model_window(engine: EmbeddedEngine) -> None:
    text = "الماي مقطوع " + "و" * 5000 + " TWS-2026-000001"
    r = engine.parse_sync(text)
    assert r.entity_values("case_reference") == ["TWS-2026-000001"]


def test_features_match_scikit_learn_tfidf() -> None:
    texts = ["الماي مقطوع من امس", "el mai maqtoo3", "the water is cut cut", "مقطوع مقطوع الماي"]
    space, _ = FeatureSpace.fit_matrix(texts, [], [], char_min_df=1, word_min_df=1)
    reference = TfidfVectorizer(analyzer=char_ngrams, sublinear_tf=True, dtype=np.float64).fit(texts)
    for text in texts + ["unseen words مقطوع"]:
        expected = reference.transform([text]).toarray()[0]
        cols, vals = space.char.weights(char_ngrams(text))
        ours = np.zeros(len(space.char.vocab))
        ours[cols] = vals
        order = [space.char.vocab[g] for g in reference.get_feature_names_out()]
        assert np.allclose(ours[order], expected, atol=1e-6)
        assert math.isclose(float(np.linalg.norm(ours)), 1.0, abs_tol=1e-6) or len(vals) == 0


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "😡😡😡", "\x00\x01\x02", "?" * 10])
def test_nothing_to_read(engine: EmbeddedEngine, text: str) -> None:
    r = engine.parse_sync(text)
    assert isinstance(r, NLUResult) and r.text == text
    assert r.type is None and r.agency is None


def test_serving_features_equal_training_features(engine: EmbeddedEngine) -> None:
    space = engine.model.features
    texts = ["الماي مقطوع من امس في سترة", "el mai maqtoo3 3indna", "the water is cut cut 😡", "?", ""]
    for text in texts * 2:  # twice: the second pass reads the per-word caches
        model_text, meta, _, _ = engine.analyzer.analyse(text, with_entities=False)
        served = np.zeros(space.n_features)
        cols, vals = space.vector(model_text, meta)
        served[cols] = vals
        trained = np.zeros(space.n_features)
        cols, vals = space._row(space.training_grams(model_text), meta)
        trained[cols] = vals
        assert np.allclose(served, trained, atol=1e-6)


def test_model_pickles_without_caches(engine: EmbeddedEngine, tmp_path: Path) -> None:
    engine.parse_sync("warm the caches up: الكهرباء مقطوعة")
    assert engine.model.features._token_cols
    engine.model.save(tmp_path)
    again = EmbeddedModel.load(tmp_path)
    assert again.features._token_cols == {}
    assert again.features.char.vocab == engine.model.features.char.vocab
    text = "الكهرباء مقطوعة"
    model_text, meta, _, _ = engine.analyzer.analyse(text, with_entities=False)
    a, b = engine.model.features.vector(model_text, meta), again.features.vector(model_text, meta)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
