"""The embedded NLU engine: normalisation, gazetteers, entities and the linear model, in process.

``parse_sync`` is pure CPU work of well under a millisecond for a chat message, so ``parse`` runs it inline
rather than in a thread (a thread hop would cost more than the work). It never raises: any internal failure
is logged (without the text) and answered with an ``out_of_scope`` result of confidence 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from config.settings import NLUSettings
from nlu.entities import pattern_entities, place_gazetteer
from nlu.gazetteer import Gazetteer, Match, agency_gazetteer, topic_gazetteer
from nlu.language import detect_language
from nlu.model import EmbeddedModel
from nlu.normalize import FoldedText, normalize_folded, word_spans
from nlu.types import AgencyCandidate, CaseType, Entity, Intent, Language, NLUResult

log = logging.getLogger(__name__)

ENGINE_NAME = "embedded"
# Entities (not the classifiers) look this far into a message; the dialogue caps messages well below it.
ENTITY_MAX_CHARS = 20_000
TOP_K = 3


# Message length in tokens, bucketed: dialogue turns ("ok", "thanks a lot") are short, cases are not, and an
# unseen one-word reply should not inherit the case messages' prior.
LENGTH_BUCKETS: tuple[tuple[int, str], ...] = ((1, "1"), (3, "2-3"), (6, "4-6"), (12, "7-12"), (10**9, "13+"))
META_NAMES: tuple[str, ...] = tuple(f"len:{name}" for _, name in LENGTH_BUCKETS)


def length_feature(n_tokens: int) -> str:
    return "len:" + next(name for limit, name in LENGTH_BUCKETS if n_tokens <= limit)


def meta_features(mentions: Sequence[Match], topics: Sequence[Match], n_tokens: int = 0) -> list[str]:
    """Indicator names the model sees for one message: gazetteer hits and its length."""
    return (
        [f"mention:{m.key}" for m in mentions]
        + [f"topic:{m.key}" for m in topics]
        + ([length_feature(n_tokens)] if n_tokens else [])
    )


class TextAnalyzer:
    """Everything but the classifiers: folding, gazetteers, entities, model text (shared with training)."""

    def __init__(
        self, max_model_chars: int, *, agencies: Gazetteer, places: Gazetteer | None, topics: Gazetteer
    ) -> None:
        self.max_model_chars = max_model_chars
        self.agencies = agencies
        self.places = places
        self.topics = topics

    def analyse(
        self, text: str, with_entities: bool = True
    ) -> tuple[str, list[str], list[Entity], list[Match]]:
        """(model text, indicator features, entities, agency mentions in the model window) of a message."""
        limit = self.max_model_chars
        folded = FoldedText.of(text[: ENTITY_MAX_CHARS if with_entities else limit])
        spans = word_spans(folded.folded)
        words = [tok for tok, _, _ in spans]
        mentions = self.agencies.find(folded, spans, words)
        entities: list[Entity] = []
        if with_entities:
            entities = pattern_entities(folded)
            if self.places is not None:
                entities.extend(
                    Entity("place", m.key, m.start, m.end) for m in self.places.find(folded, spans, words)
                )
            entities.extend(Entity("agency", m.key, m.start, m.end) for m in mentions)
            entities.sort(key=lambda e: (e.start, e.end, e.entity))
        model_text = normalize_folded(folded.folded[:limit] if len(text) > limit else folded.folded)
        in_window = [m for m in mentions if m.start < limit]
        topic_hits = self.topics.find(folded, spans, words) if len(self.topics) else []
        meta = meta_features(in_window, [m for m in topic_hits if m.start < limit], len(model_text.split()))
        return model_text, meta, entities, in_window


class EmbeddedEngine:
    name = ENGINE_NAME

    def __init__(
        self,
        model: EmbeddedModel,
        settings: NLUSettings | None = None,
        *,
        agencies: Gazetteer | None = None,
        places: Gazetteer | None = None,
        topics: Gazetteer | None = None,
    ) -> None:
        self.model = model
        self.settings = settings or NLUSettings()
        self.analyzer = TextAnalyzer(
            model.max_model_chars,
            agencies=agencies or agency_gazetteer(),
            places=places or place_gazetteer(),
            topics=topics or topic_gazetteer(),
        )
        intent_head = model.heads["intent"]
        self._intents = tuple(Intent(c) for c in intent_head.classes)
        self._types = tuple(CaseType(c) for c in model.heads["type"].classes)
        self._agency_ids = model.heads["agency"].classes
        self._agency_index = {a: i for i, a in enumerate(self._agency_ids)}

    @classmethod
    def load(cls, path: Path, settings: NLUSettings | None = None) -> EmbeddedEngine:
        """Load a model directory (or its model file) written by ``nlu.training``."""
        started = time.perf_counter()
        engine = cls(EmbeddedModel.load(path), settings)
        log.info(
            "embedded NLU model %s loaded in %.0f ms",
            engine.model_version,
            (time.perf_counter() - started) * 1000,
        )
        return engine

    @property
    def model_version(self) -> str:
        return self.model.version

    async def parse(self, text: str) -> NLUResult:
        return self.parse_sync(text)

    def parse_sync(self, text: str) -> NLUResult:
        try:
            return self._parse(text if isinstance(text, str) else str(text))
        except Exception:  # the contract: odd input never raises; a bug must not take the dialogue down
            log.exception("embedded NLU failed on a message of %d characters", len(text) if text else 0)
            return self._empty(text if isinstance(text, str) else "", Language.AR)

    # --- internals ---------------------------------------------------------------------------------------

    def _empty(self, text: str, language: Language) -> NLUResult:
        return NLUResult(
            text=text,
            language=language,
            intent=Intent.OUT_OF_SCOPE,
            intent_confidence=0.0,
            type=None,
            type_confidence=0.0,
            agency=None,
            agency_confidence=0.0,
            agency_candidates=(),
            entities=(),
            engine=self.name,
            model_version=self.model_version,
        )

    def _parse(self, text: str) -> NLUResult:
        model_text, meta, entities, mentions = self.analyzer.analyse(text)
        tokens = model_text.split()
        language = detect_language(tokens)
        if not tokens:
            result = self._empty(text, language)
            return _with_entities(result, entities)
        cols, vals = self.model.features.vector(model_text, meta, language)
        scores = self.model.scores(cols, vals).astype(np.float64)
        p_intent = self.model.proba("intent", scores)
        p_type = self.model.proba("type", scores)
        p_agency = self.model.proba("agency", scores)
        if mentions:
            p_agency = self.combine_agency(p_agency, [m.key for m in mentions])

        i = int(p_intent.argmax())
        intent = self._intents[i]
        intent_conf = float(p_intent[i])
        case_type: CaseType | None = None
        type_conf = 0.0
        if intent is Intent.FILE_CASE:
            t = int(p_type.argmax())
            case_type, type_conf = self._types[t], float(p_type[t])

        order = (-p_agency).argsort()[:TOP_K]
        candidates = tuple(AgencyCandidate(self._agency_ids[k], round(float(p_agency[k]), 4)) for k in order)
        best = candidates[0]
        agency: str | None = None
        agency_conf = float(p_agency[order[0]])
        mentioned = {m.key for m in mentions}
        credible = agency_conf >= self.settings.agency_threshold
        # Outside a case message only a named agency is worth proposing (e.g. an answer "the municipality").
        if credible and (intent is Intent.FILE_CASE or best.agency in mentioned):
            agency = best.agency
        return NLUResult(
            text=text,
            language=language,
            intent=intent,
            intent_confidence=round(intent_conf, 4),
            type=case_type,
            type_confidence=round(type_conf, 4),
            agency=agency,
            agency_confidence=round(agency_conf, 4),
            agency_candidates=candidates,
            entities=tuple(entities),
            engine=self.name,
            model_version=self.model_version,
        )

    def combine_agency(
        self, p_model: npt.NDArray[np.float64], mentioned: Sequence[str]
    ) -> npt.NDArray[np.float64]:
        """Explicit mentions outrank the topic model: with weight w, ``(1-w) * p + w * p|mentioned``.

        ``p|mentioned`` is the model's distribution restricted to the named agencies, so one mention takes
        weight w outright and among several the model decides which one the message is about.
        """
        w = self.settings.explicit_agency_weight
        idx = sorted({self._agency_index[a] for a in mentioned if a in self._agency_index})
        if not idx or w <= 0:
            return p_model
        restricted = np.zeros_like(p_model)
        restricted[idx] = p_model[idx]
        total = restricted.sum()
        if total <= 0:
            restricted[idx] = 1.0 / len(idx)
        else:
            restricted /= total
        out: npt.NDArray[np.float64] = (1.0 - w) * p_model + w * restricted
        return out


def _with_entities(result: NLUResult, entities: list[Entity]) -> NLUResult:
    from dataclasses import replace

    return replace(result, entities=tuple(entities))
