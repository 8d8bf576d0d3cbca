"""Schemathesis hooks for ``test_fuzz.py`` (loaded through SCHEMATHESIS_HOOKS by the fuzzing subprocess)."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.check
def readable_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every refusal is JSON ``{"error": {"code", "message"}}`` whose message is a readable sentence."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} without a JSON body: {response.content[:200]!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        raise AssertionError(f"{response.status_code} without an error object: {body!r}"[:300])
    message = error.get("message")
    if not isinstance(message, str) or len(message.split()) < 3:
        raise AssertionError(f"{response.status_code} without a readable error message: {body!r}"[:300])
    if not isinstance(error.get("code"), str) or not error["code"]:
        raise AssertionError(f"{response.status_code} without an error code: {body!r}"[:300])
    return True
