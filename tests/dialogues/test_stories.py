"""Runs the conversation scripts in tests/dialogues/stories/*.yml through the whole service."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from bot.channel import OutgoingMessage
from tawasul.db.models import ReviewItem
from tests.dialogues.harness import Harness, Person, texts

STORIES = Path(__file__).parent / "stories"
REF_RE = re.compile(r"TWS-\d{4}-\d{6}")


def _load() -> list[Any]:
    out = []
    for path in sorted(STORIES.glob("*.yml")):
        for story in yaml.safe_load(path.read_text(encoding="utf-8"))["stories"]:
            out.append(pytest.param(story, id=f"{path.stem}: {story['name']}"))
    return out


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


class Runner:
    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.people: dict[str, Person] = {}
        self.person = self._person("citizen")
        self.last: list[OutgoingMessage] = []
        self.ref: str | None = None
        self.clock_offset = dt.timedelta()

    def _person(self, name: str) -> Person:
        if name not in self.people:
            self.people[name] = self.h.person(f"story-{name}")
        return self.people[name]

    def sub(self, text: str) -> str:
        if "$ref" in text:
            assert self.ref, "no reference given yet"
            text = text.replace("$ref", self.ref)
        return text

    def _record(self, messages: list[OutgoingMessage]) -> None:
        self.last = messages
        for m in messages:
            found = REF_RE.findall(m.text)
            if found:
                self.ref = found[-1]

    async def step(self, step: dict[str, Any]) -> None:
        (kind, value), = step.items()
        p = self.person
        if kind == "user":
            self._record(await p.say(self.sub(str(value))))
        elif kind == "press":
            self._record(await p.press(self.sub(str(value))))
        elif kind == "photo":
            self._record(await p.photo())
        elif kind == "location":
            self._record(await p.location(*value))
        elif kind == "unsupported":
            self._record(await p.send(unsupported=str(value)))
        elif kind == "bot":
            # Replies are delivered through the outbox; one the background worker took may come a moment
            # after the action returned, so wait for it (bounded) before failing.
            expected = [self.sub(v) for v in _as_list(value)]
            while not all(e in texts(self.last) for e in expected):
                try:
                    self._record(self.last + await p.wait(1, timeout=10))
                except AssertionError:
                    raise AssertionError(f"expected {expected!r} in replies:\n{texts(self.last)}") from None
        elif kind == "not_bot":
            got = texts(self.last)
            assert self.sub(str(value)) not in got, f"did not expect {value!r} in replies:\n{got}"
        elif kind == "buttons":
            offered = [b.payload for b in p.last_buttons()]
            for prefix in _as_list(value):
                assert any(o.startswith(self.sub(prefix)) for o in offered), f"{prefix!r} not in {offered}"
        elif kind == "wait":
            expected = [self.sub(v) for v in _as_list(value)]
            collected: list[OutgoingMessage] = []
            while not all(e in texts(collected) for e in expected):
                collected += await p.wait(1)
            self._record(collected)
        elif kind == "staff":
            await self._staff(value)
        elif kind == "backend":
            await (self.h.backend_down() if value == "down" else self.h.backend_up())
        elif kind == "person":
            self.person = self._person(str(value))
        elif kind == "cases":
            cases = await self.h.staff.list_cases("story", p.sender_id)
            assert len(cases) == int(value), [c.reference for c in cases]
        elif kind in ("attachments", "has_location", "backend_status", "backend_reply", "rating"):
            await self._check_case(kind, value)
        elif kind == "review":
            async with self.h.service.db.session() as s:
                reasons = [str(r) for r in (await s.execute(select(ReviewItem.reason))).scalars()]
            assert value in reasons, reasons
        elif kind == "advance_minutes":
            engine = self.h.service.engine
            self.clock_offset += dt.timedelta(minutes=int(value))
            offset = self.clock_offset
            engine.clock = lambda: dt.datetime.now(dt.UTC) + offset
            await engine.sweep()
        elif kind == "duplicate_event":
            await self._duplicate_event()
        else:
            raise AssertionError(f"unknown step {kind}")

    async def _staff(self, action: dict[str, Any]) -> None:
        assert self.ref
        staff = self.h.staff
        if "set_status" in action:
            await staff.set_status(self.ref, action["set_status"], action.get("note"))
        elif "transfer" in action:
            await staff.transfer(self.ref, action["transfer"], action.get("note"))
        elif "request_info" in action:
            await staff.request_info(self.ref, action["request_info"])

    async def _check_case(self, kind: str, value: Any) -> None:
        assert self.ref
        case = await self.h.staff.get_case(self.ref)
        if kind == "attachments":
            assert len(case.attachments) == int(value)
        elif kind == "has_location":
            assert (case.location is not None) == bool(value)
        elif kind == "backend_status":
            # The reply is delivered through the outbox; give it a moment.
            for _ in range(100):
                if str(case.status) == value:
                    break
                await self.h.service.outbox.run_due()
                case = await self.h.staff.get_case(self.ref)
            assert str(case.status) == value
        elif kind == "backend_reply":
            assert any(value in (r.text or "") for r in case.replies), case.replies
        elif kind == "rating":
            for _ in range(100):
                if case.ratings:
                    break
                await self.h.service.outbox.run_due()
                case = await self.h.staff.get_case(self.ref)
            assert case.ratings and case.ratings[-1].score == int(value)

    async def _duplicate_event(self) -> None:
        """Replaying every event of the case (as a poll after a webhook would) sends nothing new."""
        before = len(self.person.all())
        await self.h.service.poll_once()
        await self.h.service.outbox.run_due()
        assert len(self.person.all()) == before


@pytest.mark.parametrize("story", _load())
async def test_story(harness: Harness, story: dict[str, Any]) -> None:
    runner = Runner(harness)
    for i, step in enumerate(story["steps"]):
        try:
            await runner.step(step)
        except AssertionError as exc:
            raise AssertionError(f"step {i + 1} {step}: {exc}") from None
