"""Conversation states. The transition table lives in ``dialogues/policy.py`` (``TRANSITIONS``)."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    IDLE = "idle"  # no draft; menu and free text
    AWAIT_DESCRIPTION = "await_description"  # "new request" pressed, waiting for the text
    CONFIRM = "confirm"  # showing "complaint — Ministry of Works", confirm/change/cancel
    CHOOSE_TYPE = "choose_type"
    CHOOSE_AGENCY = "choose_agency"  # top candidates + "another agency"
    AGENCY_LIST = "agency_list"  # paged, searchable list of all agencies
    ASK_LOCATION = "ask_location"  # optional: skip / send now
    ASK_PHOTO = "ask_photo"  # optional: skip / send now
    AWAIT_REFERENCE = "await_reference"  # status check without a reference
    AWAIT_INFO_REPLY = "await_info_reply"  # the agency asked a question
    RATING_COMMENT = "rating_comment"  # rated; optional comment
    CHOOSE_LANGUAGE = "choose_language"


DRAFT_STATES = frozenset(
    {
        State.AWAIT_DESCRIPTION,
        State.CONFIRM,
        State.CHOOSE_TYPE,
        State.CHOOSE_AGENCY,
        State.AGENCY_LIST,
        State.ASK_LOCATION,
        State.ASK_PHOTO,
    }
)
