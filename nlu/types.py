"""The NLU result every engine returns (embedded, Rasa) and every consumer reads (dialogues, CLI, console).

The JSON form (``to_dict``) is the `tawasul nlu predict` contract; change it only additively.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class CaseType(StrEnum):
    COMPLAINT = "complaint"
    SUGGESTION = "suggestion"
    INQUIRY = "inquiry"


class Intent(StrEnum):
    """Dialogue intents. ``file_case`` is a message that carries a complaint, suggestion or inquiry."""

    FILE_CASE = "file_case"
    GREET = "greet"
    THANKS = "thanks"
    GOODBYE = "goodbye"
    AFFIRM = "affirm"
    DENY = "deny"
    CANCEL = "cancel"
    HELP = "help"
    CHECK_STATUS = "check_status"
    LIST_CASES = "list_cases"
    OUT_OF_SCOPE = "out_of_scope"


class Language(StrEnum):
    AR = "ar"
    EN = "en"
    ARABIZI = "arabizi"
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class AgencyCandidate:
    agency: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Entity:
    """``entity`` is one of case_reference, cpr, phone, place, agency; ``start``/``end`` index the raw text."""

    entity: str
    value: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class NLUResult:
    text: str
    language: Language
    intent: Intent
    intent_confidence: float
    type: CaseType | None
    type_confidence: float
    agency: str | None
    agency_confidence: float
    agency_candidates: tuple[AgencyCandidate, ...]
    entities: tuple[Entity, ...]
    engine: str
    model_version: str

    def entity_values(self, name: str) -> list[str]:
        return [e.value for e in self.entities if e.entity == name]

    def to_dict(self) -> dict[str, Any]:
        # Field by field rather than ``dataclasses.asdict``, which deep-copies every value: this runs on
        # every message, and asdict was a measurable share of a turn's CPU.
        return {
            "text": self.text, "language": str(self.language), "intent": str(self.intent),
            "intent_confidence": self.intent_confidence,
            "type": None if self.type is None else str(self.type), "type_confidence": self.type_confidence,
            "agency": self.agency, "agency_confidence": self.agency_confidence,
            "agency_candidates": [{"agency": c.agency, "confidence": c.confidence} for c in self.agency_candidates],
            "entities": [{"entity": e.entity, "value": e.value, "start": e.start, "end": e.end}
                         for e in self.entities],
            "engine": self.engine, "model_version": self.model_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NLUResult:
        return cls(
            text=data["text"],
            language=Language(data["language"]),
            intent=Intent(data["intent"]),
            intent_confidence=float(data["intent_confidence"]),
            type=None if data.get("type") is None else CaseType(data["type"]),
            type_confidence=float(data["type_confidence"]),
            agency=data.get("agency"),
            agency_confidence=float(data["agency_confidence"]),
            agency_candidates=tuple(AgencyCandidate(**c) for c in data.get("agency_candidates", [])),
            entities=tuple(Entity(**e) for e in data.get("entities", [])),
            engine=data["engine"],
            model_version=data["model_version"],
        )


class NLUEngine(Protocol):
    """What the dialogues call. Engines never raise for odd input; they raise ``NLUUnavailable`` only
    when they cannot answer at all (so "no intent" is never confused with "NLU is down")."""

    name: str

    @property
    def model_version(self) -> str: ...

    async def parse(self, text: str) -> NLUResult: ...


class NLUUnavailable(Exception):
    """The engine cannot answer (server down, no model loaded)."""
