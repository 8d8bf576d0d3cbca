"""The review queue: filtering, paging and the reviewers' decisions on items."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from staff_console.auth import utcnow
from tawasul.db.models import ReviewItem, ReviewReason, ReviewStatus

CASE_TYPES: tuple[str, ...] = ("complaint", "suggestion", "inquiry")
STATUS_FILTERS: tuple[str, ...] = ("pending", "reviewed", "all", *(s.value for s in ReviewStatus))
SORTS: tuple[str, ...] = ("confidence", "confidence_desc", "newest", "oldest")
REVIEWED: tuple[str, ...] = (ReviewStatus.ACCEPTED, ReviewStatus.RELABELLED, ReviewStatus.NOT_A_CASE)
# Items whose final labels are training examples.
LABELLED: tuple[str, ...] = (ReviewStatus.ACCEPTED, ReviewStatus.RELABELLED)

# The best-known true label: the reviewer's when reviewed, else what the case was filed as (the citizen's
# choice) and where the backend finally put it.
FINAL_TYPE: ColumnElement[Any] = case(
    (ReviewItem.status == ReviewStatus.NOT_A_CASE, None),
    else_=func.coalesce(ReviewItem.final_type, ReviewItem.citizen_type),
)
FINAL_AGENCY: ColumnElement[Any] = case(
    (ReviewItem.status == ReviewStatus.NOT_A_CASE, None),
    else_=func.coalesce(ReviewItem.final_agency, ReviewItem.backend_agency, ReviewItem.citizen_agency),
)
_TC = func.coalesce(ReviewItem.predicted_type_confidence, ReviewItem.predicted_agency_confidence, 0.0)
_AC = func.coalesce(ReviewItem.predicted_agency_confidence, ReviewItem.predicted_type_confidence, 0.0)
# The weaker of the two confidences (portable: SQLite has no LEAST).
CONFIDENCE: ColumnElement[Any] = case((_TC < _AC, _TC), else_=_AC)


@dataclass(frozen=True)
class QueueFilter:
    status: str = "pending"
    reason: str = ""
    ptype: str = ""
    ftype: str = ""
    pagency: str = ""
    fagency: str = ""
    language: str = ""
    channel: str = ""
    date_from: str = ""
    date_to: str = ""
    sort: str = "confidence"
    page: int = 1

    @classmethod
    def from_query(cls, query: Mapping[str, str], agency_ids: Sequence[str]) -> QueueFilter:
        """Parse query parameters; anything invalid falls back to "no filter" instead of an error."""

        def pick(name: str, allowed: Sequence[str], default: str = "") -> str:
            value = query.get(name, default)
            return value if value in allowed else default

        def date(name: str) -> str:
            value = query.get(name, "")
            try:
                return dt.date.fromisoformat(value).isoformat() if value else ""
            except ValueError:
                return ""

        def free(name: str) -> str:
            value = query.get(name, "").strip()
            return value if len(value) <= 32 and value.replace("_", "").isalnum() else ""

        try:
            page = max(1, min(int(query.get("page", "1")), 100_000))
        except ValueError:
            page = 1
        return cls(
            status=pick("status", STATUS_FILTERS, "pending"),
            reason=pick("reason", [r.value for r in ReviewReason]),
            ptype=pick("ptype", CASE_TYPES),
            ftype=pick("ftype", CASE_TYPES),
            pagency=pick("pagency", agency_ids),
            fagency=pick("fagency", agency_ids),
            language=free("language"),
            channel=free("channel"),
            date_from=date("date_from"),
            date_to=date("date_to"),
            sort=pick("sort", SORTS, "confidence"),
            page=page,
        )

    def query_string(self, **overrides: Any) -> str:
        """The filter as a query string (defaults left out), with some fields replaced."""
        current = replace(self, **overrides)
        default = QueueFilter()
        params = {
            f.name: getattr(current, f.name)
            for f in fields(self)
            if getattr(current, f.name) != getattr(default, f.name)
        }
        return urlencode(params)

    @property
    def active(self) -> bool:
        return self.query_string(page=1, sort="confidence") != ""

    def conditions(self, tz: ZoneInfo) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = []
        if self.status == "pending":
            conds.append(ReviewItem.status == ReviewStatus.PENDING)
        elif self.status == "reviewed":
            conds.append(ReviewItem.status.in_(REVIEWED))
        elif self.status != "all":
            conds.append(ReviewItem.status == self.status)
        if self.reason:
            conds.append(ReviewItem.reason == self.reason)
        if self.ptype:
            conds.append(ReviewItem.predicted_type == self.ptype)
        if self.ftype:
            conds.append(FINAL_TYPE == self.ftype)  # noqa: SIM300 - a SQL expression, column first
        if self.pagency:
            conds.append(ReviewItem.predicted_agency == self.pagency)
        if self.fagency:
            conds.append(FINAL_AGENCY == self.fagency)  # noqa: SIM300 - a SQL expression, column first
        if self.language:
            conds.append(ReviewItem.language == self.language)
        if self.channel:
            conds.append(ReviewItem.channel == self.channel)
        # Dates are the staff's local calendar days.
        if self.date_from:
            start = dt.datetime.combine(dt.date.fromisoformat(self.date_from), dt.time(), tz)
            conds.append(ReviewItem.created_at >= start.astimezone(dt.UTC))
        if self.date_to:
            end = dt.datetime.combine(
                dt.date.fromisoformat(self.date_to) + dt.timedelta(days=1), dt.time(), tz
            )
            conds.append(ReviewItem.created_at < end.astimezone(dt.UTC))
        return conds

    def order_by(self) -> list[Any]:
        if self.sort == "confidence_desc":
            return [CONFIDENCE.desc(), ReviewItem.id]
        if self.sort == "newest":
            return [ReviewItem.created_at.desc(), ReviewItem.id.desc()]
        if self.sort == "oldest":
            return [ReviewItem.created_at, ReviewItem.id]
        return [CONFIDENCE, ReviewItem.id]


@dataclass
class QueuePage:
    items: list[ReviewItem]
    total: int
    page: int
    pages: int
    filter: QueueFilter
    languages: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    pending_total: int = 0


async def load_queue(session: AsyncSession, flt: QueueFilter, page_size: int, tz: ZoneInfo) -> QueuePage:
    conds = flt.conditions(tz)
    where = and_(*conds) if conds else None
    count_q = select(func.count(ReviewItem.id))
    items_q = select(ReviewItem)
    if where is not None:
        count_q = count_q.where(where)
        items_q = items_q.where(where)
    total = int(await session.scalar(count_q) or 0)
    pages = max(1, -(-total // page_size))
    page = min(flt.page, pages)
    items = list(
        (
            await session.scalars(
                items_q.order_by(*flt.order_by()).limit(page_size).offset((page - 1) * page_size)
            )
        ).all()
    )
    languages = sorted(str(v) for v in (await session.scalars(select(ReviewItem.language).distinct())).all())
    channels = sorted(str(v) for v in (await session.scalars(select(ReviewItem.channel).distinct())).all())
    pending_total = int(
        await session.scalar(
            select(func.count(ReviewItem.id)).where(ReviewItem.status == ReviewStatus.PENDING)
        )
        or 0
    )
    return QueuePage(items, total, page, pages, replace(flt, page=page), languages, channels, pending_total)


def accept_labels(item: ReviewItem) -> tuple[str | None, str | None]:
    """What "accept" records: the citizen's type and the backend's (else the citizen's) agency, falling back
    to the prediction. For a sampled item nobody corrected, that is the prediction itself."""
    return (
        item.citizen_type or item.predicted_type,
        item.backend_agency or item.citizen_agency or item.predicted_agency,
    )


def final_labels(item: ReviewItem) -> tuple[str | None, str | None]:
    if item.status == ReviewStatus.NOT_A_CASE:
        return None, None
    if item.status in LABELLED:
        return item.final_type, item.final_agency
    return accept_labels(item)


class ReviewError(ValueError):
    """A decision that cannot be recorded; ``code`` is a messages-catalogue key."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _record(item: ReviewItem, status: ReviewStatus, ftype: str | None, fagency: str | None, who: str) -> None:
    item.status = status
    item.final_type = ftype
    item.final_agency = fagency
    item.reviewer = who
    item.reviewed_at = utcnow()
    item.exported_at = None  # the training export must pick the new decision up


def accept(item: ReviewItem, who: str) -> None:
    ftype, fagency = accept_labels(item)
    if ftype is None or fagency is None:
        raise ReviewError("err_accept_unlabelled")
    _record(item, ReviewStatus.ACCEPTED, ftype, fagency, who)


def relabel(item: ReviewItem, ftype: str, fagency: str, agency_ids: Sequence[str], who: str) -> None:
    if ftype not in CASE_TYPES:
        raise ReviewError("err_bad_type")
    if fagency not in agency_ids:
        raise ReviewError("err_bad_agency")
    _record(item, ReviewStatus.RELABELLED, ftype, fagency, who)


def not_a_case(item: ReviewItem, who: str) -> None:
    _record(item, ReviewStatus.NOT_A_CASE, None, None, who)


async def bulk_accept(session: AsyncSession, ids: Sequence[int], who: str) -> tuple[int, int]:
    """Accept the given pending items; return (accepted, skipped). Skipped: not pending or no labels."""
    if not ids:
        return 0, 0
    items = (
        await session.scalars(
            select(ReviewItem).where(ReviewItem.id.in_(ids), ReviewItem.status == ReviewStatus.PENDING)
        )
    ).all()
    done = 0
    for item in items:
        try:
            accept(item, who)
            done += 1
        except ReviewError:
            continue  # not acceptable as it stands (e.g. no label yet): counted as skipped below
    return done, len(set(ids)) - done


async def next_pending_id(
    session: AsyncSession, flt: QueueFilter, after: ReviewItem, tz: ZoneInfo
) -> int | None:
    """The next pending item of the queue (in the queue's order) other than ``after``."""
    conds = replace(flt, status="pending").conditions(tz)
    conds.append(ReviewItem.id != after.id)
    found = await session.scalar(select(ReviewItem.id).where(*conds).order_by(*flt.order_by()).limit(1))
    return None if found is None else int(found)


async def mark_exported(session: AsyncSession, ids: Sequence[int]) -> None:
    if ids:
        await session.execute(
            update(ReviewItem)
            .where(ReviewItem.id.in_(ids), ReviewItem.exported_at.is_(None))
            .values(exported_at=utcnow())
        )


async def review_counts(session: AsyncSession) -> dict[str, int]:
    rows = (await session.execute(select(ReviewItem.status, func.count()).group_by(ReviewItem.status))).all()
    counts = {str(s): int(n) for s, n in rows}
    counts["unexported"] = int(
        await session.scalar(
            select(func.count(ReviewItem.id)).where(
                ReviewItem.status.in_(LABELLED), ReviewItem.exported_at.is_(None)
            )
        )
        or 0
    )
    return counts


def candidate_rows(item: ReviewItem, kind: str) -> list[tuple[str, float]]:
    """Top candidates stored with the item (``{"agency": [[id, conf], ...], "type": [...]}``)."""
    raw = (item.candidates or {}).get(kind) or []
    rows: list[tuple[str, float]] = []
    for entry in raw:
        try:
            if isinstance(entry, Mapping):
                label, conf = entry.get(kind) or entry.get("label"), entry.get("confidence")
            else:
                label, conf = entry[0], entry[1]
            if label is None or conf is None:
                continue
            rows.append((str(label), float(conf)))
        except (TypeError, ValueError, IndexError, KeyError):
            continue
    rows.sort(key=lambda r: -r[1])
    return rows[:5]
