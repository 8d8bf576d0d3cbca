"""The Rasa engine (a real Rasa 3.6 server's ``/model/parse``) and the fallback wrapper the service uses with it.

``RasaEngine`` sends ``rasa_text(message)`` (the embedded engine's normal form, see ``nlu/rasa_export.py``) and
maps Rasa's answer to the same ``NLUResult`` as the embedded engine:

* Rasa's intents are joint labels ``<type>+<agency>`` plus the dialogue intents; the full ranking is summed
  into P(file_case), P(type | case) and P(agency | case), so the type and the agency candidates are the same
  kind of distribution the embedded engine's classifiers give.
* An agency Rasa tagged as an entity (an explicit mention, mapped to its id by EntitySynonymMapper) is weighed
  against the topic with ``nlu.explicit_agency_weight``, as the embedded engine weighs its gazetteer.
* Case references, CPR and phone numbers and places come from the embedded engine's extractors on the raw
  text (``nlu.entities``), so offsets point into what the citizen sent; language from ``nlu.language``.

Errors: connection refused / reset, a timeout (``nlu.rasa_timeout_s`` per request), 5xx or an answer that is
not a parse result raise ``NLUUnavailable``; connection errors and 5xx are retried first. ``FallbackEngine``
turns that into an answer from the embedded engine, so the dialogue never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiohttp

from config.agencies import AGENCY_IDS
from config.settings import Settings
from nlu.entities import extract_entities, place_gazetteer
from nlu.gazetteer import Gazetteer, agency_gazetteer
from nlu.language import detect_language
from nlu.normalize import FoldedText, normalize
from nlu.rasa_export import (
    AGENCY_ENTITY,
    FALLBACK_INTENT,
    encode_tokens,
    split_label,
)
from nlu.types import AgencyCandidate, CaseType, Entity, Intent, NLUEngine, NLUResult, NLUUnavailable

log = logging.getLogger(__name__)

_CASE_TYPES = tuple(CaseType)
_AGENCY_IDS = frozenset(AGENCY_IDS)
_DIALOGUE_INTENTS = {i.value: i for i in Intent if i is not Intent.FILE_CASE}
_RETRY_STATUSES = frozenset({500, 502, 503, 504})


def _probabilities(ranking: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Intent name -> confidence (Rasa's FallbackClassifier entry left out, duplicates ignored)."""
    probs: dict[str, float] = {}
    for item in ranking:
        name = item.get("name")
        if not isinstance(name, str) or name == FALLBACK_INTENT or name in probs:
            continue
        probs[name] = max(0.0, float(item.get("confidence") or 0.0))
    return probs


def combine_agency(topic: dict[str, float], mentioned: Sequence[str], weight: float) -> dict[str, float]:
    """Explicit mentions outrank the topic, exactly as ``EmbeddedEngine.combine_agency``:
    ``(1-w) * p + w * p|mentioned`` (``p|mentioned`` is ``p`` restricted to the named agencies, uniform
    among them if ``p`` gives them nothing)."""
    named = [a for a in dict.fromkeys(mentioned) if a in topic]
    if not named or weight <= 0:
        return dict(topic)
    total = sum(topic[a] for a in named)
    restricted = {a: (topic[a] / total if total > 0 else 1.0 / len(named)) for a in named}
    return {a: (1.0 - weight) * p + weight * restricted.get(a, 0.0) for a, p in topic.items()}


def map_parse(
    answer: dict[str, Any],
    text: str,
    settings: Settings,
    *,
    agencies: Gazetteer,
    places: Gazetteer | None,
    model_version: str,
    normalized: str | None = None,
) -> NLUResult:
    """An NLUResult from a ``/model/parse`` answer for the raw ``text``. Raises TypeError on a malformed one."""
    ranking = answer.get("intent_ranking")
    top = answer.get("intent") or {}
    if not isinstance(ranking, list) or not isinstance(top, dict):
        raise TypeError("not a Rasa parse result")
    probs = _probabilities(ranking) or _probabilities([top])
    case_mass = 0.0
    type_mass: dict[str, float] = dict.fromkeys((t.value for t in _CASE_TYPES), 0.0)
    agency_mass: dict[str, float] = {}
    intent_mass: dict[str, float] = {}
    for name, p in probs.items():
        label_intent, label_type, label_agency = split_label(name)
        if label_type is not None:
            case_mass += p
            type_mass[label_type] += p
            if label_agency is not None:
                agency_mass[label_agency] = agency_mass.get(label_agency, 0.0) + p
        elif label_intent in _DIALOGUE_INTENTS:
            intent_mass[label_intent] = intent_mass.get(label_intent, 0.0) + p
    intent_mass[Intent.FILE_CASE.value] = case_mass

    # Rasa's FallbackClassifier fired: DIET is unsure about every label; that is out of scope here.
    if top.get("name") == FALLBACK_INTENT or not probs:
        intent, intent_conf = Intent.OUT_OF_SCOPE, float(top.get("confidence") or 0.0)
    else:
        best = max(intent_mass.items(), key=lambda kv: kv[1])
        intent, intent_conf = Intent(best[0]), best[1]

    # As in the embedded engine: a type only for a case message, P(type | case) as its confidence.
    case_type: CaseType | None = None
    type_conf = 0.0
    if intent is Intent.FILE_CASE and case_mass > 0.0:
        name, mass = max(type_mass.items(), key=lambda kv: kv[1])
        case_type, type_conf = CaseType(name), mass / case_mass
    topic = {a: (agency_mass.get(a, 0.0) / case_mass if case_mass > 0.0 else 0.0) for a in AGENCY_IDS}

    folded = FoldedText.of(text)
    mentioned: list[str] = []
    for ent in answer.get("entities") or []:
        if not isinstance(ent, dict) or ent.get("entity") != AGENCY_ENTITY:
            continue
        value = str(ent.get("value") or "")
        if value not in _AGENCY_IDS:
            # An alias form the synonym table lacks (e.g. another clitic): resolve it like a message.
            found = agencies.find(FoldedText.of(value))
            value = found[0].key if found else ""
        if value and value not in mentioned:
            mentioned.append(value)
    dist = combine_agency(topic, mentioned, settings.nlu.explicit_agency_weight)
    candidates = tuple(
        AgencyCandidate(a, round(p, 4))
        for a, p in sorted(dist.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        if p > 0.0
    )
    agency: str | None = None
    agency_conf = candidates[0].confidence if candidates else 0.0
    # Outside a case message only a named agency is worth proposing (the embedded engine's rule).
    if (
        candidates
        and agency_conf >= settings.nlu.agency_threshold
        and (intent is Intent.FILE_CASE or candidates[0].agency in mentioned)
    ):
        agency = candidates[0].agency

    entities = extract_entities(folded, None, places)
    # Agency spans from the raw text for the agencies Rasa found (Rasa's offsets index the normalised text).
    entities.extend(
        Entity(AGENCY_ENTITY, m.key, m.start, m.end) for m in agencies.find(folded) if m.key in mentioned
    )
    entities.sort(key=lambda e: (e.start, e.end, e.entity))
    norm = normalize(text, settings.nlu.max_model_chars) if normalized is None else normalized
    return NLUResult(
        text=text,
        language=detect_language(norm.split()),
        intent=intent,
        intent_confidence=round(min(1.0, intent_conf), 4),
        type=case_type,
        type_confidence=round(min(1.0, type_conf), 4),
        agency=agency,
        agency_confidence=round(min(1.0, agency_conf), 4),
        agency_candidates=candidates,
        entities=tuple(entities),
        engine="rasa",
        model_version=model_version,
    )


class RasaEngine:
    """``NLUEngine`` backed by a Rasa server (``settings.nlu.rasa_url``). One aiohttp session, made lazily in
    the running loop; ``close()`` it when done."""

    name = "rasa"

    def __init__(self, settings: Settings, *, url: str | None = None, retries: int = 2) -> None:
        self._settings = settings
        self._url = (url or settings.nlu.rasa_url).rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=settings.nlu.rasa_timeout_s)
        self._retries = retries
        self._session: aiohttp.ClientSession | None = None
        self._model_version = "rasa:unknown"
        self._agencies = agency_gazetteer()
        self._places = place_gazetteer()

    @property
    def url(self) -> str:
        return self._url

    @property
    def model_version(self) -> str:
        return self._model_version

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # A small pool: the NLU calls are short; keep-alive saves a TCP handshake per message.
            connector = aiohttp.TCPConnector(limit=16, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        session = self._client()
        last = "no attempt"
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(0.05 * 2 ** (attempt - 1))
            try:
                async with session.request(method, self._url + path, json=payload) as resp:
                    if resp.status in _RETRY_STATUSES:
                        last = f"HTTP {resp.status}"
                        continue
                    if resp.status != 200:
                        raise NLUUnavailable(f"rasa {path}: HTTP {resp.status}")
                    return await resp.json(content_type=None)
            except TimeoutError:
                # Slow, not down: a retry would double the citizen's wait; the fallback answers instead.
                raise NLUUnavailable(f"rasa {path}: no answer within {self._timeout.total} s") from None
            except (aiohttp.ClientError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise NLUUnavailable(f"rasa {path}: {last}")

    async def refresh_status(self) -> str:
        """Read the loaded model from ``/status``; raise NLUUnavailable when none is loaded."""
        status = await self._request("GET", "/status")
        if not isinstance(status, dict) or not status.get("model_file"):
            raise NLUUnavailable("rasa /status: no model loaded")
        model_id = str(status.get("model_id") or "")
        model_file = str(status["model_file"]).rsplit("/", 1)[-1].removesuffix(".tar.gz")
        self._model_version = f"rasa:{model_file}" + (f"@{model_id[:8]}" if model_id else "")
        return self._model_version

    async def ping(self) -> bool:
        """True when the server answers ``/status`` with a loaded model (used to end a fallback period)."""
        try:
            await self.refresh_status()
        except NLUUnavailable:
            return False
        return True

    async def parse(self, text: str) -> NLUResult:
        norm = normalize(text, self._settings.nlu.max_model_chars)
        rtext = encode_tokens(norm)
        if self._model_version == "rasa:unknown":
            await self.refresh_status()
        if not rtext:
            # Nothing for a model to read (empty, bare punctuation, control characters): out of scope with
            # no confidence, as the embedded engine answers; entities are still extracted.
            answer: dict[str, Any] = {
                "intent": {"name": FALLBACK_INTENT, "confidence": 0.0},
                "intent_ranking": [],
            }
        else:
            answer = await self._request("POST", "/model/parse", {"text": rtext})
            if not isinstance(answer, dict):
                raise NLUUnavailable("rasa /model/parse: not a JSON object")
        try:
            return map_parse(
                answer,
                text,
                self._settings,
                agencies=self._agencies,
                places=self._places,
                model_version=self._model_version,
                normalized=norm,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise NLUUnavailable(f"rasa /model/parse: unexpected answer ({type(exc).__name__})") from None


# --- fallback --------------------------------------------------------------------------------------------

# Called with (primary name, fallback name) for every message the fallback answered; the service counts
# these as ``tawasul_nlu_fallback_total`` on its own metrics (nlu/ knows nothing of Prometheus).
FallbackHook = Callable[[str, str], None]


class FallbackEngine:
    """``primary`` (e.g. Rasa) with ``fallback`` (the embedded engine) when it raises ``NLUUnavailable``.

    The first failure starts an outage: one warning is logged, and from then on messages go straight to the
    fallback (no citizen waits for a dead server's timeout) while the primary is retried every
    ``retry_after_s`` in the background (``ping()`` when the primary has one, else on the next message).
    Recovery is logged once. ``parse`` never raises: if the fallback fails too, it returns an empty proposal
    (intent ``file_case`` with no confidence, so the dialogue asks the citizen instead of guessing).
    """

    def __init__(
        self,
        primary: NLUEngine,
        fallback: NLUEngine,
        *,
        retry_after_s: float = 15.0,
        on_fallback: FallbackHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._on_fallback = on_fallback
        self._fallbacks = 0
        self._down_since: float | None = None
        self._next_try = 0.0
        self._probe: asyncio.Task[None] | None = None
        self.outages = 0

    @property
    def degraded(self) -> bool:
        """True while the primary is considered unavailable."""
        return self._down_since is not None

    @property
    def model_version(self) -> str:
        return self.fallback.model_version if self.degraded else self.primary.model_version

    @property
    def fallback_count(self) -> int:
        """Messages the fallback answered since this engine was built."""
        return self._fallbacks

    async def parse(self, text: str) -> NLUResult:
        if self._down_since is not None and not self._due():
            return await self._from_fallback(text)
        try:
            result = await self.primary.parse(text)
        except NLUUnavailable as exc:
            self._mark_down(exc)
            return await self._from_fallback(text)
        self._mark_up()
        return result

    def _due(self) -> bool:
        if self._clock() < self._next_try:
            return False
        ping = getattr(self.primary, "ping", None)
        if ping is None:
            return True  # no health check: this message tries the primary
        if self._probe is None or self._probe.done():
            self._next_try = self._clock() + self.retry_after_s
            self._probe = asyncio.get_running_loop().create_task(self._run_probe(ping))
        return False

    async def _run_probe(self, ping: Callable[[], Any]) -> None:
        try:
            ok = bool(await ping())
        except Exception:
            ok = False
        if ok:
            self._mark_up()

    def _mark_down(self, exc: Exception) -> None:
        now = self._clock()
        self._next_try = now + self.retry_after_s
        if self._down_since is None:
            self._down_since = now
            self.outages += 1
            log.warning(
                "NLU engine %s unavailable (%s); answering with %s until it is back",
                self.primary.name,
                exc,
                self.fallback.name,
            )

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning(
                "NLU engine %s is back after %.1f s; %s no longer used",
                self.primary.name,
                self._clock() - self._down_since,
                self.fallback.name,
            )
            self._down_since = None

    async def _from_fallback(self, text: str) -> NLUResult:
        self._fallbacks += 1
        if self._on_fallback is not None:
            try:
                self._on_fallback(self.primary.name, self.fallback.name)
            except Exception:  # counting must never cost the citizen an answer
                log.exception("NLU fallback hook failed")
        try:
            return await self.fallback.parse(text)
        except Exception as exc:
            log.error("fallback NLU engine %s failed too: %s", self.fallback.name, type(exc).__name__)
            return NLUResult(
                text=text,
                language=detect_language(normalize(text, 1000).split()),
                intent=Intent.FILE_CASE,
                intent_confidence=0.0,
                type=None,
                type_confidence=0.0,
                agency=None,
                agency_confidence=0.0,
                agency_candidates=(),
                entities=(),
                engine="none",
                model_version="unavailable",
            )

    async def close(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        for engine in (self.primary, self.fallback):
            closer = getattr(engine, "close", None)
            if closer is not None:
                outcome = closer()
                if inspect.isawaitable(outcome):
                    await outcome
