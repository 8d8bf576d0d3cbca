"""Export the NLU training data as a complete Rasa 3.6 project (`tawasul nlu export-rasa`, `tawasul rasa train`).

The Rasa model learns from exactly the examples the embedded engine trains on (the train side of
``nlu.dataset.load_dataset``; the held-out side is never exported), normalised by the same code
(``nlu.normalize.normalize``). ``rasa_text`` is that normal form made safe for Rasa's WhitespaceTokenizer,
which would otherwise drop the "?" / "!" / emoji tokens the normaliser deliberately keeps (they separate
inquiries from complaints); ``RasaEngine`` sends ``rasa_text(message)`` to the server, so train and serve agree.

Labels. A case example becomes the joint intent ``<type>+<agency>`` (``complaint+ewa``); dialogue intents keep
their names. Why not an ``agency`` entity alone: half the messages never name the agency ("الماي مقطوع" ->
ewa), and an entity extractor can only tag words that are there. Why not a ResponseSelector with retrieval
intents ``agency/ewa``: a Rasa example belongs to one intent, so every case example would have to be both
``complaint`` and ``agency/ewa`` (a label conflict ``rasa data validate`` rejects, and DIET would then learn
"agency" as an intent). The joint intent is Rasa-native (multi-intents, ``intent_split_symbol: "+"``: DIET
embeds the label tokens ``complaint`` and ``ewa`` separately, so rare combinations share what they have in
common), and summing the full intent ranking over agencies / types gives the same two distributions the
embedded engine outputs (type and agency with candidates), so the benchmark compares like with like.
Explicit mentions are still annotated as the ``agency`` entity (DIET's CRF tags them; EntitySynonymMapper maps
the alias to the agency id), like the embedded engine's gazetteer, and ``RasaEngine`` weighs them the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from config.agencies import load_agencies
from config.settings import Settings
from nlu.gazetteer import Gazetteer, agency_entries
from nlu.normalize import CASE_REF_TOKEN, FoldedText, gazetteer_key, normalize
from nlu.types import CaseType, Intent

INTENT_SPLIT = "+"
AGENCY_ENTITY = "agency"
FALLBACK_INTENT = "nlu_fallback"
# Bumped when the text encoding or the label scheme changes (a model trained on another one is stale).
EXPORT_FORMAT = "tawasul-rasa-1"
# Stands in for ISO 639 in config.yml: the data mixes Arabic, English and Arabizi, and no component in the
# pipeline has language-specific behaviour ("xx" is the multi-language code spaCy uses).
LANGUAGE = "xx"
_PUNCT_WORDS = {"?": "qmark", "!": "emark"}
# Regex features over rasa_text: a case reference is one token, numbers are "num<digit count>".
_SHAPES = {"case_reference": rf"\b{CASE_REF_TOKEN}\b", "cpr_shape": r"\bnum9\b", "phone_shape": r"\bnum8\b"}


class ExampleLike(Protocol):
    """What the export reads from an example (``nlu.dataset.Example`` fits)."""

    @property
    def text(self) -> str: ...
    @property
    def intent(self) -> str: ...
    @property
    def type(self) -> str | None: ...
    @property
    def agency(self) -> str | None: ...


def _token_word(token: str) -> str:
    """A normalised token as a word the WhitespaceTokenizer keeps (alphanumeric)."""
    if token.isalnum():
        return token
    if token in _PUNCT_WORDS:
        return _PUNCT_WORDS[token]
    # Emoji (possibly a ZWJ sequence): spell the code points, "😡" -> "emo1f621".
    return "emo" + "x".join(f"{ord(c):x}" for c in token if unicodedata.category(c) != "Mn")


def encode_tokens(normalized: str) -> str:
    """``normalize`` output with every token spelt as a word (see the module doc)."""
    return " ".join(_token_word(t) for t in normalized.split())


def rasa_text(text: str, max_chars: int | None = None) -> str:
    """The text Rasa trains on and is asked about."""
    return encode_tokens(normalize(text, max_chars))


def joint_label(example: ExampleLike) -> str:
    """The Rasa intent of an example: ``<type>+<agency>`` for a case, the dialogue intent otherwise."""
    if example.intent == Intent.FILE_CASE.value:
        if example.type is None:
            raise ValueError(f"case example without type: {example.text[:40]!r}")
        return example.type if example.agency is None else f"{example.type}{INTENT_SPLIT}{example.agency}"
    return example.intent


def split_label(label: str) -> tuple[str, str | None, str | None]:
    """(intent, type, agency) of a Rasa intent name (inverse of ``joint_label``)."""
    head, _, agency = label.partition(INTENT_SPLIT)
    if head in {t.value for t in CaseType}:
        return Intent.FILE_CASE.value, head, agency or None
    return label, None, None


def exact_agency_gazetteer() -> Gazetteer:
    """The embedded engine's agency gazetteer (``nlu.gazetteer.agency_entries``) without typo matching.

    Training annotations use exact matches only: a one-letter typo match ("الجوالات" for "الجوازات") is right
    often enough at run time but would teach the entity tagger wrong spans.
    """
    return Gazetteer(agency_entries(load_agencies()), fuzzy=False)


def _alias_forms() -> dict[str, str]:
    """Every alias in its ``rasa_text`` form -> agency id; ambiguous forms are left out."""
    forms: dict[str, str] = {}
    ambiguous: set[str] = set()
    for agency in load_agencies():
        for name in agency.names():
            if not gazetteer_key(name):
                continue
            form = rasa_text(name)
            if not form:
                continue
            if forms.setdefault(form, agency.id) != agency.id:
                ambiguous.add(form)
    return {form: agency for form, agency in forms.items() if form not in ambiguous}


def annotate(text: str, gazetteer: Gazetteer) -> str:
    """``text`` (already ``rasa_text``) with explicit agency mentions marked for Rasa.

    Uses the extended annotation ``[words]{"entity": "agency", "value": "<id>"}`` so the synonym from the
    mention's surface form to the agency id is learnt from the example itself (clitic forms such as
    "للبلدية" included). Every token of ``text`` is alphanumeric, so no bracket of the annotation syntax can
    come from the message.
    """
    matches = gazetteer.find(FoldedText.of(text))
    if not matches:
        return text
    out: list[str] = []
    pos = 0
    for m in matches:
        out.append(text[pos : m.start])
        value = json.dumps(
            {"entity": AGENCY_ENTITY, "value": m.key}, ensure_ascii=False, separators=(",", ": ")
        )
        out.append(f"[{text[m.start : m.end]}]{value}")
        pos = m.end
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True, slots=True)
class ExportSummary:
    examples: int
    intents: int
    annotated: int
    dropped_conflicts: int
    dropped_duplicates: int
    data_hash: str


def _block(lines: Iterable[str]) -> str:
    return "".join(f"      - {line}\n" for line in lines)


def _config(
    epochs: int, seed: int, fallback_threshold: float, diet_options: Mapping[str, Any] | None = None
) -> str:
    diet: dict[str, Any] = {
        "name": "DIETClassifier",
        "epochs": epochs,
        "random_seed": seed,
        # No transformer: on 2 CPU cores DIET's default 2x256 transformer costs ~60 s per epoch on this data
        # (100 epochs: well over an hour), one 128-wide layer ~20 s; without it ~5 s, and the labels here
        # are decided by which words occur far more than by their order (Rasa's own advice for intent
        # classification on small data sets). Tokens still get their CRF entity tags.
        "number_of_transformer_layers": 0,
        "constrain_similarities": True,
        # The whole ranking is needed to sum probabilities per type and per agency.
        "ranking_length": 0,
        "entity_recognition": True,
        **(diet_options or {}),
    }
    config = {
        "recipe": "default.v1",
        "assistant_id": "tawasul-nlu",
        "language": LANGUAGE,
        "pipeline": [
            # Text arrives normalised (rasa_text): tokens are space-separated words, so whitespace splitting
            # is exact. The "+" split makes the joint intents multi-intents (label tokens type and agency).
            {
                "name": "WhitespaceTokenizer",
                "intent_tokenization_flag": True,
                "intent_split_symbol": INTENT_SPLIT,
            },
            # Case-reference / CPR / phone shapes and the agency lookup table as features.
            {"name": "RegexFeaturizer", "case_sensitive": False, "use_word_boundaries": True},
            # Rasa's recommended pair: words, and character 1-4-grams within words (typos, clitics glued to
            # Arabic words, Arabizi spellings). Word bigrams and 5-grams would double the vocabulary, and
            # DIET's training time grows with it (~40 s an epoch here instead of ~6).
            {"name": "CountVectorsFeaturizer", "analyzer": "word"},
            {"name": "CountVectorsFeaturizer", "analyzer": "char_wb", "min_ngram": 1, "max_ngram": 4},
            diet,
            {"name": "EntitySynonymMapper"},
            # Fires only when DIET is unsure about every joint label; RasaEngine reads it as out of scope.
            {"name": "FallbackClassifier", "threshold": fallback_threshold, "ambiguity_threshold": 0.0},
        ],
        # NLU-only project; listed so Rasa does not auto-configure (and rewrite) config.yml.
        "policies": [{"name": "RulePolicy"}],
    }
    header = (
        "# Generated by tawasul (nlu/rasa_export.py) from nlu/data; do not edit, re-export instead.\n"
        f"# format: {EXPORT_FORMAT}\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def export_project(
    settings: Settings,
    out_dir: Path,
    *,
    examples: Sequence[ExampleLike] | None = None,
    epochs: int = 100,
    seed: int = 42,
    fallback_threshold: float = 0.1,
    diet_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Rasa project (config.yml, domain.yml, data/*.yml, export.json) to ``out_dir``; return it.

    ``examples`` defaults to the train split of ``load_dataset(settings)``. Examples whose ``rasa_text`` is
    empty are skipped; exact duplicates are written once; when one text carries two labels the first wins
    (``tawasul nlu check`` reports those conflicts; Rasa would refuse them). ``diet_options`` override
    DIETClassifier settings (e.g. fewer epochs for tests).
    """
    if examples is None:
        from nlu.dataset import load_dataset

        examples = load_dataset(settings).train
    gazetteer = exact_agency_gazetteer()
    max_chars = settings.nlu.max_model_chars
    by_label: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    conflicts = duplicates = annotated = 0
    for example in examples:
        text = rasa_text(example.text, max_chars)
        if not text:
            continue
        label = joint_label(example)
        if text in seen:
            if seen[text] == label:
                duplicates += 1
            else:
                conflicts += 1
            continue
        seen[text] = label
        line = annotate(text, gazetteer)
        annotated += line != text
        by_label.setdefault(label, []).append(line)
    if not by_label:
        raise ValueError("no training examples to export")

    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "data"
    data_dir.mkdir(exist_ok=True)
    labels = sorted(by_label)

    nlu_parts = ['version: "3.1"\nnlu:\n']
    for label in labels:
        nlu_parts.append(f"  - intent: {label}\n    examples: |\n{_block(by_label[label])}")
    (data_dir / "nlu.yml").write_text("".join(nlu_parts), encoding="utf-8")

    forms = _alias_forms()
    syn_parts = ['version: "3.1"\nnlu:\n']
    by_agency: dict[str, list[str]] = {}
    for form, agency in sorted(forms.items()):
        if form != agency:
            by_agency.setdefault(agency, []).append(form)
    for agency in sorted(by_agency):
        syn_parts.append(f"  - synonym: {agency}\n    examples: |\n{_block(by_agency[agency])}")
    syn_parts.append(f"  - lookup: {AGENCY_ENTITY}\n    examples: |\n{_block(sorted(forms))}")
    for name, pattern in _SHAPES.items():
        syn_parts.append(f"  - regex: {name}\n    examples: |\n{_block([pattern])}")
    (data_dir / "synonyms.yml").write_text("".join(syn_parts), encoding="utf-8")

    domain = {
        "version": "3.1",
        "intents": [*labels, FALLBACK_INTENT] if FALLBACK_INTENT not in labels else labels,
        "entities": [AGENCY_ENTITY],
        "session_config": {"session_expiration_time": 60, "carry_over_slots_to_new_session": True},
    }
    (out_dir / "domain.yml").write_text(
        "# Generated by tawasul (nlu/rasa_export.py).\n"
        + yaml.safe_dump(domain, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    (out_dir / "config.yml").write_text(
        _config(epochs, seed, fallback_threshold, diet_options), encoding="utf-8"
    )

    digest = hashlib.sha256()
    for name in ("config.yml", "domain.yml", "data/nlu.yml", "data/synonyms.yml"):
        digest.update((out_dir / name).read_bytes())
    summary = ExportSummary(
        examples=len(seen),
        intents=len(labels),
        annotated=annotated,
        dropped_conflicts=conflicts,
        dropped_duplicates=duplicates,
        data_hash=digest.hexdigest()[:16],
    )
    manifest = {"format": EXPORT_FORMAT, **dataclasses.asdict(summary)}
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def read_summary(project_dir: Path) -> ExportSummary:
    data = json.loads((project_dir / "export.json").read_text(encoding="utf-8"))
    return ExportSummary(**{f.name: data[f.name] for f in dataclasses.fields(ExportSummary)})
