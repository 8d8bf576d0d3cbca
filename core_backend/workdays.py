"""Working days in Bahrain: Friday and Saturday are the weekend, public holidays come from settings.

Hand-written rather than ``numpy.busday_offset`` or a holidays package: the rule is three lines, the
holiday list is configuration (lunar holidays are announced each year), and the result must be a
``datetime.date`` with "N working days *after* the submission day" semantics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

# Bahrain has no daylight saving time, so a fixed offset is exact and needs no tz database.
BAHRAIN_TZ = dt.timezone(dt.timedelta(hours=3), "AST")
WEEKEND: frozenset[int] = frozenset({4, 5})  # date.weekday(): Friday=4, Saturday=5


def is_working_day(day: dt.date, holidays: Collection[dt.date] = ()) -> bool:
    return day.weekday() not in WEEKEND and day not in holidays


def add_working_days(start: dt.date, days: int, holidays: Collection[dt.date] = ()) -> dt.date:
    """The ``days``-th working day after ``start`` (``start`` itself never counts, whatever it is)."""
    if days < 0:
        raise ValueError("days must not be negative")
    holiday_set = frozenset(holidays)
    current = start
    remaining = days
    while remaining:
        current += dt.timedelta(days=1)
        if is_working_day(current, holiday_set):
            remaining -= 1
    return current


def local_date(moment: dt.datetime) -> dt.date:
    """The calendar day in Bahrain at ``moment`` (an aware datetime)."""
    return moment.astimezone(BAHRAIN_TZ).date()
