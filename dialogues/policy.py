"""The dialogue policy: an explicit state table. ``Policy.step`` maps (state, data, turn) to an Outcome.

It reads nothing but its arguments and the two directories (agencies, the citizen's own cases); it writes
nothing: persistence, locking, the outbox and channels belong to ``dialogues.engine``. That keeps every flow
testable as a pure conversation script.

Button payloads are short ASCII strings (Telegram allows 64 bytes). Global ones work in any state:
``menu:new|status|cases|help``, ``st:REF`` (status of a case), ``rate:REF:N``, ``info:REF``, ``lang:ar|en``,
``resume``, ``discard``, ``asis`` (submit an out-of-scope text anyway). The rest belong to one state and
are refused politely elsewhere (an old button pressed late).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from bot.channel import Button, IncomingMessage, OutgoingMessage
from config.settings import DialogueSettings, NLUSettings
from dialogues.i18n import Catalog, reply_language
from dialogues.model import (
    AgencyDirectory,
    CaseDirectory,
    CaseView,
    CitizenView,
    ConversationData,
    Draft,
    DraftAttachment,
    DraftLocation,
    FileCase,
    Outcome,
    RateCase,
    SendReply,
    SetLanguage,
    Turn,
)
from dialogues.states import DRAFT_STATES, State

REFERENCE_RE = re.compile(r"\bTWS[\s\-_]?(\d{4})[\s\-_]?(\d{6})\b", re.IGNORECASE)
TYPES = ("complaint", "suggestion", "inquiry")
AGENCY_PAGE_SIZE = 8
CASE_BUTTONS = 6

# Intents that, when confidently recognised, are dialogue acts rather than the content of a request.
DIALOGUE_ACTS = frozenset(
    {"greet", "thanks", "goodbye", "affirm", "deny", "cancel", "help", "check_status", "list_cases",
     "out_of_scope"}
)

# The location question is a reply keyboard on Telegram (only those can ask for a location): a press
# arrives as the button's title, which only the process that showed the keyboard maps to its payload.
# Another worker, or the same one after a restart, receives plain text; these titles are read as presses.
REPLY_KEYBOARDS: dict[State, tuple[tuple[str, str], ...]] = {
    State.ASK_LOCATION: (("btn_skip", "skip"), ("btn_send_now", "send"), ("btn_cancel", "cancel")),
}

# Which input each state accepts besides the global commands/buttons (documentation and a test check it).
TRANSITIONS: dict[State, dict[str, tuple[State, ...]]] = {
    State.IDLE: {"text": (State.CONFIRM, State.CHOOSE_TYPE, State.CHOOSE_AGENCY, State.AWAIT_REFERENCE,
                          State.IDLE), "attachment": (State.AWAIT_DESCRIPTION,)},
    State.AWAIT_DESCRIPTION: {"text": (State.CONFIRM, State.CHOOSE_TYPE, State.CHOOSE_AGENCY),
                              "attachment": (State.AWAIT_DESCRIPTION,)},
    State.CONFIRM: {"confirm": (State.ASK_LOCATION, State.ASK_PHOTO, State.IDLE),
                    "chtype": (State.CHOOSE_TYPE,), "chag": (State.CHOOSE_AGENCY,), "cancel": (State.IDLE,),
                    "text": (State.CONFIRM,)},
    State.CHOOSE_TYPE: {"type:*": (State.CONFIRM, State.CHOOSE_AGENCY)},
    State.CHOOSE_AGENCY: {"ag:*": (State.CONFIRM,), "ag:other": (State.AGENCY_LIST,)},
    State.AGENCY_LIST: {"ag:*": (State.CONFIRM,), "agp:*": (State.AGENCY_LIST,), "text": (State.AGENCY_LIST,)},
    State.ASK_LOCATION: {"location": (State.ASK_PHOTO, State.IDLE), "skip": (State.ASK_PHOTO, State.IDLE),
                         "send": (State.IDLE,), "text": (State.ASK_PHOTO, State.IDLE)},
    State.ASK_PHOTO: {"attachment": (State.ASK_PHOTO,), "skip": (State.IDLE,), "send": (State.IDLE,)},
    State.AWAIT_REFERENCE: {"text": (State.IDLE,), "st:*": (State.IDLE,)},
    State.AWAIT_INFO_REPLY: {"text": (State.IDLE,), "attachment": (State.IDLE,)},
    State.RATING_COMMENT: {"text": (State.IDLE,), "rskip": (State.IDLE,)},
    State.CHOOSE_LANGUAGE: {"lang:*": (State.IDLE,)},
}


def find_reference(text: str | None) -> str | None:
    if not text:
        return None
    match = REFERENCE_RE.search(_ascii_digits(text))
    return f"TWS-{match.group(1)}-{match.group(2)}" if match else None


def _ascii_digits(text: str) -> str:
    return text.translate(str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789"))


class Policy:
    def __init__(
        self,
        texts: Catalog,
        agencies: AgencyDirectory,
        dialogue: DialogueSettings,
        nlu: NLUSettings,
    ) -> None:
        self.t = texts
        self.agencies = agencies
        self.cfg = dialogue
        self.nlu_cfg = nlu

    # ------------------------------------------------------------------ entry point
    async def step(
        self,
        citizen: CitizenView,
        state: State,
        data: ConversationData,
        turn: Turn,
        cases: CaseDirectory,
    ) -> Outcome:
        turn = self._as_pressed(state, turn)
        msg = turn.message
        lang = self._language(citizen, turn)
        ctx = _Ctx(self, citizen, lang, data, cases, turn)
        if lang != citizen.language and not citizen.language_locked:
            ctx.effects.append(SetLanguage(lang, locked=False))

        if msg.unsupported:
            ctx.say("unsupported", kind=msg.unsupported)
            return ctx.stay(state)
        if msg.command:
            return await self._command(ctx, state, msg.command)
        if msg.button:
            handled = await self._global_button(ctx, state, msg.button)
            if handled is not None:
                return handled
        text = (msg.text or "").strip()
        if msg.text is not None and len(msg.text) > self.cfg.max_text_chars:
            ctx.say("too_long", length=len(msg.text), max=self.cfg.max_text_chars)
            return ctx.stay(state)
        if not text and not msg.button and not msg.attachments and not msg.location and not msg.contact:
            ctx.say("empty_message")
            return ctx.stay(state)

        handler = _STATE_HANDLERS[state]
        return await handler(self, ctx)

    def _as_pressed(self, state: State, turn: Turn) -> Turn:
        """A reply-keyboard button's title typed back as text is that button's press (``REPLY_KEYBOARDS``)."""
        msg = turn.message
        text = (msg.text or "").strip()
        if msg.button or not text:
            return turn
        for key, payload in REPLY_KEYBOARDS.get(state, ()):
            if any(text == self.t(lang, key) for lang in ("ar", "en")):
                return replace(turn, message=replace(msg, button=payload, text=None))
        return turn

    def _language(self, citizen: CitizenView, turn: Turn) -> str:
        if citizen.language_locked:
            return citizen.language
        nlu = turn.nlu
        text = turn.message.text or ""
        # One word ("ok", "تمام") is too little to switch language on; a sentence is enough.
        if nlu is not None and (len(text.split()) >= 3 or citizen.first_contact):
            return reply_language(str(nlu.language), citizen.language, self.cfg.default_language)
        return citizen.language or self.cfg.default_language

    # ------------------------------------------------------------------ commands & global buttons
    async def _command(self, ctx: _Ctx, state: State, command: str) -> Outcome:
        command = command.lower().lstrip("/").split("@")[0]
        if command == "start":
            ctx.park_draft(state)
            ctx.data.welcomed = True
            ctx.say("welcome")
            return ctx.menu(State.IDLE, resume=ctx.data.saved_draft is not None)
        if command == "new":
            ctx.park_draft(state)
            ctx.data.draft = Draft(language=ctx.lang)
            ctx.say("ask_description", buttons=[ctx.button("btn_cancel", "cancel")])
            return ctx.stay(State.AWAIT_DESCRIPTION)
        if command == "status":
            return await self._ask_reference(ctx, state)
        if command == "cases":
            await self._my_cases(ctx)
            return ctx.stay(state)
        if command == "help":
            ctx.say("help", call_centre=self.cfg.call_centre)
            return ctx.reprompt(state)
        if command == "cancel":
            return self._cancel(ctx, state)
        if command == "language":
            ctx.say("choose_language", buttons=[ctx.button("btn_lang_ar", "lang:ar"),
                                                ctx.button("btn_lang_en", "lang:en")])
            return ctx.stay(state if state in DRAFT_STATES else State.CHOOSE_LANGUAGE)
        ctx.say("help", call_centre=self.cfg.call_centre)
        return ctx.reprompt(state)

    async def _global_button(self, ctx: _Ctx, state: State, payload: str) -> Outcome | None:
        head, _, rest = payload.partition(":")
        if head == "menu":
            return await self._command(ctx, state, {"new": "new", "status": "status", "cases": "cases",
                                                     "help": "help"}.get(rest, "help"))
        if head == "lang" and rest in ("ar", "en"):
            ctx.lang = rest
            ctx.effects.append(SetLanguage(rest, locked=True))
            ctx.say("language_set")
            return ctx.reprompt(State.IDLE if state == State.CHOOSE_LANGUAGE else state)
        if head == "st":
            await self._show_status(ctx, rest)
            return ctx.stay(State.IDLE if state == State.AWAIT_REFERENCE else state)
        if head == "rate":
            ref, _, score_s = rest.rpartition(":")
            case = await ctx.cases.find(ctx.citizen, ref) if ref else None
            if case is None or not score_s.isdigit() or not 1 <= int(score_s) <= 5:
                ctx.say("not_understood_button")
                return ctx.stay(state)
            ctx.data.rating_reference, ctx.data.rating_score = ref, int(score_s)
            ctx.say("ask_rating_comment", score=score_s, buttons=[ctx.button("btn_rate_skip", "rskip")])
            return ctx.stay(State.RATING_COMMENT)
        if head == "info":
            case = await ctx.cases.find(ctx.citizen, rest)
            if case is None:
                ctx.say("not_understood_button")
                return ctx.stay(state)
            ctx.park_draft(state)
            ctx.data.info_reference = rest
            ctx.say("info_reply_prompt", agency=self.agencies.name(case.agency, ctx.lang), reference=rest)
            return ctx.stay(State.AWAIT_INFO_REPLY)
        if payload == "resume":
            if ctx.data.saved_draft is None:
                ctx.say("no_draft")
                return ctx.menu(State.IDLE)
            ctx.data.draft, ctx.data.saved_draft = ctx.data.saved_draft, None
            ctx.say("draft_resumed")
            return self._after_draft_update(ctx)
        if payload == "discard":
            ctx.data.saved_draft = None
            ctx.say("draft_discarded")
            return ctx.menu(State.IDLE if state not in DRAFT_STATES else state)
        if payload == "asis" and state == State.IDLE and ctx.data.pending_text:
            text, ctx.data.pending_text = ctx.data.pending_text, None
            ctx.data.draft = Draft(text=text, language=ctx.lang)
            return self._after_draft_update(ctx, need_type=True)
        if payload == "cancel":
            return self._cancel(ctx, state)
        return None

    def _cancel(self, ctx: _Ctx, state: State) -> Outcome:
        had_something = ctx.data.draft is not None or state != State.IDLE
        ctx.data.draft = None
        ctx.data.info_reference = None
        ctx.data.rating_reference = ctx.data.rating_score = None
        ctx.say("cancelled" if had_something else "nothing_to_cancel")
        outcome = ctx.menu(State.IDLE)
        if had_something:
            outcome.label = "cancelled"
        return outcome

    # ------------------------------------------------------------------ IDLE
    async def _idle(self, ctx: _Ctx) -> Outcome:
        msg, nlu = ctx.turn.message, ctx.turn.nlu
        if msg.button:
            ctx.say("not_understood_button")
            return ctx.menu(State.IDLE)
        if msg.attachments or msg.location:
            ctx.data.draft = Draft(language=ctx.lang)
            self._absorb_media(ctx, msg)
            if not (msg.text or "").strip():
                ctx.say("ask_description", buttons=[ctx.button("btn_cancel", "cancel")])
                return ctx.stay(State.AWAIT_DESCRIPTION)
        text = (msg.text or "").strip()
        reference = find_reference(text)
        if reference:
            await self._show_status(ctx, reference)
            return ctx.stay(State.IDLE)
        intent = str(nlu.intent) if nlu is not None else "file_case"
        if self._is_dialogue_act(ctx.turn, intent):
            return await self._dialogue_act(ctx, intent, text)
        return self._start_draft(ctx, text)

    def _is_dialogue_act(self, turn: Turn, intent: str) -> bool:
        nlu = turn.nlu
        if nlu is None or intent not in DIALOGUE_ACTS:
            return False
        if intent == "out_of_scope":
            return True
        # A long message with a confident case type is a request even if it opens with "hello".
        words = len((turn.message.text or "").split())
        strong_case = nlu.type is not None and nlu.type_confidence >= 0.8 and words >= 6
        return nlu.intent_confidence >= self.nlu_cfg.intent_threshold and not strong_case

    async def _dialogue_act(self, ctx: _Ctx, intent: str, text: str) -> Outcome:
        if intent == "greet":
            ctx.say("welcome" if not ctx.data.welcomed else "welcome_back")
            ctx.data.welcomed = True
            return ctx.menu(State.IDLE, resume=ctx.data.saved_draft is not None)
        if intent == "thanks":
            ctx.say("thanks_reply")
            return ctx.stay(State.IDLE)
        if intent == "goodbye":
            ctx.say("goodbye_reply")
            return ctx.stay(State.IDLE)
        if intent == "help":
            ctx.say("help", call_centre=self.cfg.call_centre)
            return ctx.menu(State.IDLE)
        if intent == "check_status":
            return await self._ask_reference(ctx, State.IDLE)
        if intent == "list_cases":
            await self._my_cases(ctx)
            return ctx.stay(State.IDLE)
        if intent == "cancel":
            return self._cancel(ctx, State.IDLE)
        if intent == "out_of_scope" and len(text.split()) >= 3:
            ctx.data.pending_text = text
            ctx.say("out_of_scope", buttons=[ctx.button("btn_new_case_anyway", "asis"),
                                             ctx.button("btn_help", "menu:help")])
            return ctx.stay(State.IDLE)
        if not ctx.data.welcomed:
            ctx.data.welcomed = True
            ctx.say("welcome")
        else:
            ctx.say("menu_prompt")
        return ctx.menu(State.IDLE, say_prompt=False)

    # ------------------------------------------------------------------ drafting
    def _start_draft(self, ctx: _Ctx, text: str) -> Outcome:
        draft = ctx.data.draft or Draft(language=ctx.lang)
        draft.text = f"{draft.text}\n{text}".strip() if draft.text else text
        self._apply_nlu(draft, ctx.turn.nlu)
        ctx.data.draft = draft
        ctx.data.welcomed = True
        return self._after_draft_update(ctx)

    def _apply_nlu(self, draft: Draft, nlu: object | None) -> None:
        if nlu is None:
            return
        from nlu.types import NLUResult

        assert isinstance(nlu, NLUResult)
        draft.nlu_language = str(nlu.language)
        draft.model_version, draft.engine = nlu.model_version, nlu.engine
        draft.proposed_type = str(nlu.type) if nlu.type is not None else None
        draft.type_confidence = nlu.type_confidence
        draft.proposed_agency = nlu.agency
        draft.agency_confidence = nlu.agency_confidence
        draft.candidates = [(c.agency, c.confidence) for c in nlu.agency_candidates]
        if draft.type is None and nlu.type is not None and nlu.type_confidence >= self.nlu_cfg.type_threshold:
            draft.type = str(nlu.type)
        if draft.agency is None and nlu.agency and nlu.agency_confidence >= self.nlu_cfg.agency_threshold:
            draft.agency = nlu.agency

    def _after_draft_update(self, ctx: _Ctx, need_type: bool = False) -> Outcome:
        draft = ctx.data.draft
        assert draft is not None
        if not draft.text:
            ctx.say("ask_description", buttons=[ctx.button("btn_cancel", "cancel")])
            return ctx.stay(State.AWAIT_DESCRIPTION)
        if draft.type is None or need_type:
            return self._prompt_type(ctx)
        if draft.agency is None:
            return self._prompt_agency(ctx, unknown=True)
        return self._prompt_confirm(ctx)

    def _prompt_confirm(self, ctx: _Ctx) -> Outcome:
        draft = ctx.data.draft
        assert draft is not None and draft.type and draft.agency
        text = ctx.text("understood", type=ctx.text(f"type_{draft.type}"),
                        agency=self.agencies.name(draft.agency, ctx.lang))
        text = f"{text}\n{ctx.text('privacy_notice')}"
        ctx.say_text(text, buttons=[ctx.button("btn_confirm", "confirm"), ctx.button("btn_change_type", "chtype"),
                                    ctx.button("btn_change_agency", "chag"), ctx.button("btn_cancel", "cancel")])
        return ctx.stay(State.CONFIRM)

    def _prompt_type(self, ctx: _Ctx) -> Outcome:
        ctx.say("choose_type", buttons=[ctx.button(f"type_{t}", f"type:{t}") for t in TYPES]
                + [ctx.button("btn_cancel", "cancel")])
        return ctx.stay(State.CHOOSE_TYPE)

    def _prompt_agency(self, ctx: _Ctx, unknown: bool = False) -> Outcome:
        draft = ctx.data.draft
        assert draft is not None
        ids = set(self.agencies.ids())
        top = [a for a, c in draft.candidates if a in ids and c >= 0.05][:3]
        if not top:
            return self._agency_page(ctx, 0)
        buttons = [Button(self.agencies.short(a, ctx.lang), f"ag:{a}") for a in top]
        buttons.append(ctx.button("btn_other_agency", "ag:other"))
        ctx.say("choose_agency_unknown" if unknown else "choose_agency", buttons=buttons)
        return ctx.stay(State.CHOOSE_AGENCY)

    def _agency_page(self, ctx: _Ctx, page: int, ids: Sequence[str] | None = None, key: str = "agency_list",
                     ) -> Outcome:
        all_ids = list(ids) if ids is not None else self.agencies.ids()
        pages = max(1, -(-len(all_ids) // AGENCY_PAGE_SIZE))
        page = max(0, min(page, pages - 1))
        ctx.data.agency_page = page
        chunk = all_ids[page * AGENCY_PAGE_SIZE : (page + 1) * AGENCY_PAGE_SIZE]
        buttons = [Button(self.agencies.short(a, ctx.lang), f"ag:{a}") for a in chunk]
        if page > 0:
            buttons.append(ctx.button("btn_prev", f"agp:{page - 1}"))
        if page < pages - 1:
            buttons.append(ctx.button("btn_next", f"agp:{page + 1}"))
        ctx.say(key, page=page + 1, pages=pages, buttons=buttons)
        return ctx.stay(State.AGENCY_LIST)

    def _absorb_media(self, ctx: _Ctx, msg: IncomingMessage) -> bool:
        """Attach files/location to the draft. Returns True when something was added."""
        draft = ctx.data.draft
        assert draft is not None
        added = False
        for att in msg.attachments:
            if len(draft.attachments) >= self.cfg.max_attachments:
                ctx.say("too_many_attachments", max=self.cfg.max_attachments)
                break
            if att.size is not None and att.size > self.cfg.max_attachment_bytes:
                ctx.say("attachment_too_large", max_mb=self.cfg.max_attachment_bytes // (1024 * 1024))
                continue
            draft.attachments.append(DraftAttachment.of(att))
            what = {"photo": "what_photo", "document": "what_document", "voice": "what_audio",
                    "audio": "what_audio"}.get(str(att.kind), "what_file")
            ctx.say("attachment_added", what=ctx.text(what), count=len(draft.attachments))
            added = True
        if msg.location:
            draft.location = DraftLocation.of(msg.location)
            ctx.say("location_added")
            added = True
        return added

    async def _await_description(self, ctx: _Ctx) -> Outcome:
        msg = ctx.turn.message
        if msg.button:
            ctx.say("not_understood_button")
            return ctx.reprompt(State.AWAIT_DESCRIPTION)
        if msg.attachments or msg.location:
            self._absorb_media(ctx, msg)
        text = (msg.text or "").strip()
        if not text:
            return ctx.stay(State.AWAIT_DESCRIPTION)
        if ctx.turn.nlu is not None and str(ctx.turn.nlu.intent) == "cancel" and len(text.split()) <= 3:
            return self._cancel(ctx, State.AWAIT_DESCRIPTION)
        return self._start_draft(ctx, text)

    async def _confirm(self, ctx: _Ctx) -> Outcome:
        msg, draft = ctx.turn.message, ctx.data.draft
        assert draft is not None
        if msg.attachments or msg.location:
            self._absorb_media(ctx, msg)
            if not (msg.text or "").strip():
                return self._prompt_confirm(ctx)
        button = msg.button
        intent = str(ctx.turn.nlu.intent) if ctx.turn.nlu is not None and msg.text else None
        short = len((msg.text or "").split()) <= 4
        if button == "confirm" or (intent == "affirm" and short):
            return self._next_question(ctx)
        if button == "chtype" or (intent == "deny" and short):
            return self._prompt_type(ctx)
        if button == "chag":
            return self._prompt_agency(ctx)
        if intent == "cancel" and short:
            return self._cancel(ctx, State.CONFIRM)
        if button:
            ctx.say("not_understood_button")
            return self._prompt_confirm(ctx)
        reference = find_reference(msg.text)
        if reference and intent == "check_status":
            await self._show_status(ctx, reference)
            return self._prompt_confirm(ctx)
        draft.text = f"{draft.text}\n{(msg.text or '').strip()}"
        ctx.say("details_added")
        return self._prompt_confirm(ctx)

    async def _choose_type(self, ctx: _Ctx) -> Outcome:
        draft, button = ctx.data.draft, ctx.turn.message.button
        assert draft is not None
        if button and button.startswith("type:") and button[5:] in TYPES:
            draft.type = button[5:]
            return self._after_draft_update(ctx)
        nlu = ctx.turn.nlu
        typed = ctx.turn.message.text
        # A typed answer ("شكوى", "it's a suggestion"): accept a confident type.
        if (nlu is not None and not button and typed and nlu.type is not None and nlu.type_confidence >= 0.7
                and len(typed.split()) <= 3):
            draft.type = str(nlu.type)
            return self._after_draft_update(ctx)
        ctx.say("not_understood_button" if button else "choose_type")
        return self._prompt_type(ctx) if button else ctx.stay(State.CHOOSE_TYPE, reprompt=self._prompt_type)

    async def _choose_agency(self, ctx: _Ctx) -> Outcome:
        draft, button = ctx.data.draft, ctx.turn.message.button
        assert draft is not None
        if button == "ag:other":
            return self._agency_page(ctx, 0)
        if button and button.startswith("agp:") and button[4:].isdigit():
            return self._agency_page(ctx, int(button[4:]))
        if button and button.startswith("ag:") and button[3:] in self.agencies.ids():
            draft.agency = button[3:]
            return self._after_draft_update(ctx)
        if button:
            ctx.say("not_understood_button")
            return self._prompt_agency(ctx)
        text = (ctx.turn.message.text or "").strip()
        found = self.agencies.search(text) if text else []
        if len(found) == 1:
            draft.agency = found[0]
            return self._after_draft_update(ctx)
        if found:
            return self._agency_page(ctx, 0, ids=found)
        return self._agency_page(ctx, 0, key="agency_search_none")

    async def _next_question_handler(self, ctx: _Ctx, state: State) -> Outcome:
        msg, draft = ctx.turn.message, ctx.data.draft
        assert draft is not None
        if msg.button == "send":
            return self._file(ctx)
        if msg.button == "skip":
            return self._next_question(ctx)
        if msg.button:
            ctx.say("not_understood_button")
            return self._ask(ctx, state)
        if msg.attachments or msg.location:
            self._absorb_media(ctx, msg)
            if state == State.ASK_LOCATION and msg.location:
                return self._next_question(ctx)
            if state == State.ASK_PHOTO and msg.attachments:
                # Stay: more photos may follow; "send now" files.
                return self._ask(ctx, state, repeat=True)
        text = (msg.text or "").strip()
        if text:
            nlu = ctx.turn.nlu
            intent = str(nlu.intent) if nlu is not None else ""
            short = len(text.split()) <= 3
            if intent == "cancel" and short:
                return self._cancel(ctx, state)
            if intent == "deny" and short:
                return self._next_question(ctx)
            if state == State.ASK_LOCATION:
                draft.location = DraftLocation(text=text)
                ctx.say("location_added")
                return self._next_question(ctx)
            draft.text = f"{draft.text}\n{text}"
            ctx.say("details_added")
        return self._ask(ctx, state, repeat=True)

    async def _ask_location(self, ctx: _Ctx) -> Outcome:
        return await self._next_question_handler(ctx, State.ASK_LOCATION)

    async def _ask_photo(self, ctx: _Ctx) -> Outcome:
        return await self._next_question_handler(ctx, State.ASK_PHOTO)

    def _pending_questions(self, draft: Draft) -> list[State]:
        assert draft.agency is not None
        questions: list[State] = []
        if self.agencies.location_relevant(draft.agency) and draft.location is None and "location" not in draft.asked:
            questions.append(State.ASK_LOCATION)
        has_photo = any(a.kind == "photo" for a in draft.attachments)
        if self.agencies.photo_relevant(draft.agency) and not has_photo and "photo" not in draft.asked:
            questions.append(State.ASK_PHOTO)
        return questions

    def _next_question(self, ctx: _Ctx) -> Outcome:
        draft = ctx.data.draft
        assert draft is not None
        pending = self._pending_questions(draft)
        if not pending:
            return self._file(ctx)
        return self._ask(ctx, pending[0])

    def _ask(self, ctx: _Ctx, state: State, repeat: bool = False) -> Outcome:
        draft = ctx.data.draft
        assert draft is not None
        name = "location" if state == State.ASK_LOCATION else "photo"
        if name not in draft.asked:
            draft.asked.append(name)
        # Three buttons at most: WhatsApp shows up to three reply buttons without a list.
        buttons = [ctx.button("btn_skip", "skip"), ctx.button("btn_send_now", "send"),
                   ctx.button("btn_cancel", "cancel")]
        if repeat:
            ctx.say_text(ctx.text("menu_prompt"), buttons=[ctx.button("btn_send_now", "send")])
        else:
            ctx.say("ask_location" if state == State.ASK_LOCATION else "ask_photo", buttons=buttons,
                    request_location=state == State.ASK_LOCATION)
        return ctx.stay(state)

    def _file(self, ctx: _Ctx) -> Outcome:
        draft = ctx.data.draft
        assert draft is not None
        ctx.effects.append(FileCase(replace(draft, language=ctx.lang)))
        ctx.data.draft = None
        return ctx.stay(State.IDLE)

    # ------------------------------------------------------------------ status, cases, replies, rating
    async def _ask_reference(self, ctx: _Ctx, state: State) -> Outcome:
        reference = find_reference(ctx.turn.message.text)
        if reference:
            await self._show_status(ctx, reference)
            return ctx.stay(State.IDLE if state not in DRAFT_STATES else state)
        cases = [c for c in await ctx.cases.list(ctx.citizen) if c.reference][:CASE_BUTTONS]
        if not cases:
            ctx.say("no_cases")
            return ctx.menu(State.IDLE) if state not in DRAFT_STATES else ctx.reprompt(state)
        ctx.park_draft(state)
        ctx.say("ask_reference", buttons=[Button(c.reference or "", f"st:{c.reference}") for c in cases])
        return ctx.stay(State.AWAIT_REFERENCE)

    async def _await_reference(self, ctx: _Ctx) -> Outcome:
        reference = find_reference(ctx.turn.message.text)
        if reference:
            await self._show_status(ctx, reference)
            return ctx.stay(State.IDLE)
        return await self._idle(ctx)

    async def _show_status(self, ctx: _Ctx, reference: str) -> None:
        case = await ctx.cases.find(ctx.citizen, reference)
        if case is None:
            ctx.say("case_not_found")
            return
        text = self._case_text(ctx, case)
        ctx.say_text(text)

    def _case_text(self, ctx: _Ctx, case: CaseView) -> str:
        text = ctx.text(
            "case_status", reference=case.reference or ctx.text("pending_reference"),
            type=ctx.text(f"type_{case.type}"), agency=self.agencies.name(case.agency, ctx.lang),
            status=ctx.text(f"status_{case.status}"),
            due=case.expected_response_by.isoformat() if case.expected_response_by else "—",
        )
        if case.last_note:
            text += "\n" + ctx.text("case_status_note", note=case.last_note)
        if case.stale:
            text += "\n" + ctx.text("case_status_stale")
        return text

    async def _my_cases(self, ctx: _Ctx) -> None:
        cases = await ctx.cases.list(ctx.citizen)
        if not cases:
            ctx.say("no_cases")
            return
        lines = [ctx.text("my_cases")]
        for case in cases[:20]:
            lines.append(ctx.text(
                "my_cases_line", reference=case.reference or ctx.text("pending_reference"),
                type=ctx.text(f"type_{case.type}"), agency=self.agencies.short(case.agency, ctx.lang),
                status=ctx.text(f"status_{case.status}"),
            ))
        with_ref = [c for c in cases if c.reference][:CASE_BUTTONS]
        ctx.say_text("\n".join(lines), buttons=[Button(c.reference or "", f"st:{c.reference}") for c in with_ref])

    async def _await_info_reply(self, ctx: _Ctx) -> Outcome:
        msg = ctx.turn.message
        reference = ctx.data.info_reference
        if reference is None or msg.button:
            return await self._idle(ctx)
        text = (msg.text or "").strip() or None
        attachments = tuple(DraftAttachment.of(a) for a in msg.attachments[: self.cfg.max_attachments])
        if text is None and not attachments:
            return ctx.stay(State.AWAIT_INFO_REPLY)
        ctx.effects.append(SendReply(reference, text, attachments))
        ctx.data.info_reference = None
        ctx.say("info_reply_sent", reference=reference)
        return ctx.resume_parked()

    async def _rating_comment(self, ctx: _Ctx) -> Outcome:
        msg = ctx.turn.message
        ref, score = ctx.data.rating_reference, ctx.data.rating_score
        if ref is None or score is None:
            return await self._idle(ctx)
        comment = None if msg.button == "rskip" else (msg.text or "").strip() or None
        if msg.button and msg.button != "rskip":
            ctx.say("not_understood_button")
            return ctx.stay(State.RATING_COMMENT)
        ctx.effects.append(RateCase(ref, score, comment))
        ctx.data.rating_reference = ctx.data.rating_score = None
        ctx.say("rating_thanks")
        return ctx.resume_parked()

    async def _choose_language(self, ctx: _Ctx) -> Outcome:
        return await self._idle(ctx)

    # ------------------------------------------------------------------ notices built for the engine
    def timeout_notice(self, lang: str, has_draft: bool) -> OutgoingMessage:
        t = self.t
        if has_draft:
            return OutgoingMessage(
                text=t(lang, "timeout_notice"), language=lang,
                buttons=(Button(t(lang, "btn_resume"), "resume"), Button(t(lang, "btn_discard"), "discard")),
            )
        return OutgoingMessage(text=t(lang, "timeout_notice_plain"), language=lang)


Handler = Callable[[Policy, "_Ctx"], Awaitable[Outcome]]

_STATE_HANDLERS: dict[State, Handler] = {
    State.IDLE: Policy._idle,
    State.AWAIT_DESCRIPTION: Policy._await_description,
    State.CONFIRM: Policy._confirm,
    State.CHOOSE_TYPE: Policy._choose_type,
    State.CHOOSE_AGENCY: Policy._choose_agency,
    State.AGENCY_LIST: Policy._choose_agency,
    State.ASK_LOCATION: Policy._ask_location,
    State.ASK_PHOTO: Policy._ask_photo,
    State.AWAIT_REFERENCE: Policy._await_reference,
    State.AWAIT_INFO_REPLY: Policy._await_info_reply,
    State.RATING_COMMENT: Policy._rating_comment,
    State.CHOOSE_LANGUAGE: Policy._choose_language,
}


class _Ctx:
    """Per-turn scratch: the language, replies and effects collected while the policy runs."""

    def __init__(self, policy: Policy, citizen: CitizenView, lang: str, data: ConversationData,
                 cases: CaseDirectory, turn: Turn) -> None:
        self.policy = policy
        self.citizen = citizen
        self.lang = lang
        self.data = data
        self.cases = cases
        self.turn = turn
        self.replies: list[OutgoingMessage] = []
        self.effects: list[FileCase | SendReply | RateCase | SetLanguage] = []
        self._parked_state: State | None = None

    def text(self, key: str, **params: object) -> str:
        return self.policy.t(self.lang, key, **params)

    def button(self, key: str, payload: str) -> Button:
        return Button(self.text(key), payload)

    def say(self, key: str, *, buttons: Sequence[Button] = (), request_location: bool = False,
            **params: object) -> None:
        self.say_text(self.text(key, **params), buttons=buttons, request_location=request_location)

    def say_text(self, text: str, *, buttons: Sequence[Button] = (), request_location: bool = False) -> None:
        self.replies.append(OutgoingMessage(text=text, buttons=tuple(buttons), language=self.lang,
                                            request_location=request_location))

    def stay(self, state: State, reprompt: Callable[[_Ctx], Outcome] | None = None) -> Outcome:
        if reprompt is not None:
            return reprompt(self)
        return Outcome(state=state, data=self.data, replies=self.replies, effects=self.effects)

    def menu(self, state: State, *, resume: bool = False, say_prompt: bool = True) -> Outcome:
        buttons = [self.button("btn_new", "menu:new"), self.button("btn_status", "menu:status"),
                   self.button("btn_cases", "menu:cases"), self.button("btn_help", "menu:help")]
        if resume:
            buttons.insert(0, self.button("btn_resume", "resume"))
        if say_prompt or not self.replies:
            self.say("menu_prompt", buttons=buttons)
        else:  # attach the menu to the message just said
            last = self.replies[-1]
            self.replies[-1] = replace(last, buttons=tuple(buttons))
        return self.stay(state)

    def reprompt(self, state: State) -> Outcome:
        """Repeat the question of a state after an interruption (help, status check...)."""
        if state == State.CONFIRM and self.data.draft and self.data.draft.type and self.data.draft.agency:
            return self.policy._prompt_confirm(self)
        if state == State.CHOOSE_TYPE:
            return self.policy._prompt_type(self)
        if state == State.CHOOSE_AGENCY and self.data.draft:
            return self.policy._prompt_agency(self)
        if state == State.AGENCY_LIST:
            return self.policy._agency_page(self, self.data.agency_page)
        if state in (State.ASK_LOCATION, State.ASK_PHOTO) and self.data.draft:
            return self.policy._ask(self, state)
        if state == State.AWAIT_DESCRIPTION:
            self.say("ask_description", buttons=[self.button("btn_cancel", "cancel")])
            return self.stay(state)
        if state in (State.AWAIT_INFO_REPLY, State.RATING_COMMENT):
            return self.stay(state)
        return self.menu(State.IDLE)

    def park_draft(self, state: State) -> None:
        """Keep a draft in progress aside (resumable) when the citizen starts something else."""
        if state in DRAFT_STATES and self.data.draft is not None:
            self.data.saved_draft = self.data.draft
            self.data.draft = None

    def resume_parked(self) -> Outcome:
        if self.data.saved_draft is not None:
            return self.menu(State.IDLE, resume=True)
        return self.stay(State.IDLE)
