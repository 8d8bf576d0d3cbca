"""expected_response_by: N working days after submission, Friday-Saturday weekend, configured holidays."""

from __future__ import annotations

import datetime as dt

import pytest

from backend_client import BackendClient
from core_backend.embedded import EmbeddedBackend
from core_backend.workdays import add_working_days, is_working_day, local_date
from tests.core_backend.backend_harness import SERVICE_TOKEN, STAFF_TOKEN, backend_settings, new_case

D = dt.date
# 2026-03-01 is a Sunday. That week: Sun 1 .. Thu 5 working, Fri 6 and Sat 7 weekend.
SUN, THU, FRI, SAT = D(2026, 3, 1), D(2026, 3, 5), D(2026, 3, 6), D(2026, 3, 7)


def test_weekend_is_friday_and_saturday() -> None:
    assert [is_working_day(SUN + dt.timedelta(days=i)) for i in range(7)] == [
        True,  # Sun
        True,  # Mon
        True,  # Tue
        True,  # Wed
        True,  # Thu
        False,  # Fri
        False,  # Sat
    ]
    assert not is_working_day(D(2026, 3, 3), {D(2026, 3, 3)})


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (SUN, 0, SUN),
        (SUN, 1, D(2026, 3, 2)),  # Monday
        (SUN, 4, THU),
        (THU, 1, D(2026, 3, 8)),  # Thursday + 1 skips the weekend to Sunday
        (FRI, 1, D(2026, 3, 8)),  # submitted on Friday: the first working day after is Sunday
        (SAT, 1, D(2026, 3, 8)),
        (SUN, 5, D(2026, 3, 8)),
        (SUN, 14, D(2026, 3, 19)),  # 2-5 (4), 8-12 (9), 15-19 (14): Thursday
    ],
)
def test_add_working_days_without_holidays(start: dt.date, days: int, expected: dt.date) -> None:
    assert add_working_days(start, days) == expected


def test_fourteen_days_from_friday_counted_by_hand() -> None:
    # Working days after Fri 6 March: 8 9 10 11 12 | 15 16 17 18 19 | 22 23 24 25 -> the 14th is Wed 25.
    assert add_working_days(FRI, 14) == D(2026, 3, 25)


def test_holidays_are_skipped() -> None:
    holidays = {D(2026, 3, 2), D(2026, 3, 3)}  # Monday and Tuesday off
    assert add_working_days(SUN, 1, holidays) == D(2026, 3, 4)
    assert add_working_days(SUN, 3, holidays) == D(2026, 3, 8)  # Wed, Thu, (weekend), Sun
    # A holiday on a weekend day changes nothing.
    assert add_working_days(THU, 1, {FRI, SAT}) == D(2026, 3, 8)
    # National Day (16-17 December) falls on Wed-Thu in 2026: Tue 15 + 1 -> Sun 20.
    assert add_working_days(D(2026, 12, 15), 1, {D(2026, 12, 16), D(2026, 12, 17)}) == D(2026, 12, 20)


def test_negative_days_refused() -> None:
    with pytest.raises(ValueError):
        add_working_days(SUN, -1)


def test_submission_day_is_the_day_in_bahrain() -> None:
    # 22:30 UTC on Thursday is 01:30 on Friday in Bahrain (UTC+3).
    assert local_date(dt.datetime(2026, 3, 5, 22, 30, tzinfo=dt.UTC)) == FRI
    assert local_date(dt.datetime(2026, 3, 5, 20, 59, tzinfo=dt.UTC)) == THU


async def test_backend_applies_per_type_days_and_holidays(sqlite_url: str) -> None:
    settings = backend_settings(
        sqlite_url,
        response_working_days={"complaint": 14, "suggestion": 5, "inquiry": 2},
        public_holidays=[D(2026, 3, 8), D(2026, 3, 9)],
    )
    now = dt.datetime(2026, 3, 5, 22, 30, tzinfo=dt.UTC)  # Friday 01:30 in Bahrain
    async with (
        EmbeddedBackend(settings, port=0, clock=lambda: now) as backend,
        BackendClient(backend.url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client,
    ):
        inquiry = await client.create_case(new_case(type="inquiry"), "workdays-key-1")
        suggestion = await client.create_case(new_case(type="suggestion"), "workdays-key-2")
        complaint = await client.create_case(new_case(type="complaint"), "workdays-key-3")
    # After Fri 6: Sun 8 and Mon 9 are holidays; Tue 10, Wed 11 | Thu 12, Sun 15, Mon 16 ...
    assert inquiry.expected_response_by == D(2026, 3, 11)
    assert suggestion.expected_response_by == D(2026, 3, 16)
    # 10 11 12 | 15-19 | 22-26 | 29 -> the 14th working day is Sun 29.
    assert complaint.expected_response_by == D(2026, 3, 29)
    assert inquiry.reference == "TWS-2026-000001"  # the year is Bahrain's too
