"""The review queue (filters, sorting, paging) and the decisions on items, over HTTP."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from staff_console import messages
from tests.staff_console.staff_helpers import (
    ADMIN,
    REVIEWER,
    Console,
    csrf_of,
    row_ids,
    start_console,
    stop_console,
)

UTC = dt.UTC


async def seed(console: Console) -> dict[str, int]:
    now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    specs = {
        "corr_ar": {
            "reason": "correction",
            "language": "ar",
            "channel": "whatsapp",
            "text": "الماي مقطوع",
            "predicted_type": "inquiry",
            "predicted_agency": "ewa",
            "citizen_type": "complaint",
            "citizen_agency": "ewa",
            "predicted_type_confidence": 0.7,
            "predicted_agency_confidence": 0.9,
            "created_at": now - dt.timedelta(days=5),
        },
        "low_en": {
            "reason": "low_confidence",
            "predicted_type_confidence": 0.2,
            "predicted_agency_confidence": 0.35,
            "created_at": now - dt.timedelta(days=2),
        },
        "moved": {
            "reason": "transferred",
            "predicted_agency": "health",
            "citizen_agency": "health",
            "backend_agency": "nhra",
            "predicted_type_confidence": 0.95,
            "predicted_agency_confidence": 0.8,
            "created_at": now - dt.timedelta(days=1),
        },
        "sample": {
            "reason": "sample",
            "predicted_type": "suggestion",
            "citizen_type": "suggestion",
            "predicted_agency": "education",
            "citizen_agency": "education",
            "predicted_type_confidence": 0.99,
            "predicted_agency_confidence": 0.97,
            "created_at": now,
        },
        "done": {
            "reason": "sample",
            "status": "accepted",
            "final_type": "complaint",
            "final_agency": "works",
            "created_at": now - dt.timedelta(days=3),
        },
    }
    ids = await console.add_items(*specs.values())
    return dict(zip(specs, ids, strict=True))


async def shown(console: Console, query: str) -> list[int]:
    response = await console.get("/queue" + query)
    assert response.status == 200
    return row_ids(await response.text())


async def test_filters(console_any_db: Console) -> None:
    console = console_any_db
    ids = await seed(console)
    await console.sign_in(REVIEWER)
    pending = {ids["corr_ar"], ids["low_en"], ids["moved"], ids["sample"]}
    assert set(await shown(console, "")) == pending  # pending by default
    assert set(await shown(console, "?status=all")) == pending | {ids["done"]}
    assert await shown(console, "?status=reviewed") == [ids["done"]]
    assert await shown(console, "?reason=correction") == [ids["corr_ar"]]
    assert await shown(console, "?reason=transferred") == [ids["moved"]]
    assert await shown(console, "?ptype=inquiry") == [ids["corr_ar"]]
    # Final labels: the citizen's type, the backend's agency (else the citizen's) until reviewed.
    assert set(await shown(console, "?ftype=complaint")) == {ids["corr_ar"], ids["low_en"], ids["moved"]}
    assert await shown(console, "?ftype=complaint&status=reviewed") == [ids["done"]]
    assert await shown(console, "?pagency=health") == [ids["moved"]]
    assert await shown(console, "?fagency=nhra") == [ids["moved"]]
    assert await shown(console, "?fagency=health") == []
    assert await shown(console, "?language=ar") == [ids["corr_ar"]]
    assert await shown(console, "?channel=whatsapp") == [ids["corr_ar"]]
    # Dates are calendar days in the console's time zone (Asia/Bahrain, UTC+3).
    assert set(await shown(console, "?date_from=2026-03-09")) == {ids["moved"], ids["sample"]}
    assert set(await shown(console, "?date_from=2026-03-05&date_to=2026-03-08")) == {
        ids["corr_ar"],
        ids["low_en"],
    }
    assert await shown(console, "?date_to=2026-03-05") == [ids["corr_ar"]]
    # Combined filters.
    assert await shown(console, "?reason=low_confidence&language=en&channel=telegram") == [ids["low_en"]]
    # Invalid values are ignored rather than failing.
    assert set(await shown(console, "?reason=bogus&date_from=notadate&page=x&sort=evil")) == pending


async def test_sort_by_confidence(console_any_db: Console) -> None:
    console = console_any_db
    ids = await seed(console)
    await console.sign_in(REVIEWER)
    least_first = [ids["low_en"], ids["corr_ar"], ids["moved"], ids["sample"]]  # min(type, agency) conf
    assert await shown(console, "") == least_first
    assert await shown(console, "?sort=confidence_desc") == list(reversed(least_first))
    assert await shown(console, "?sort=newest") == [
        ids["sample"],
        ids["moved"],
        ids["low_en"],
        ids["corr_ar"],
    ]


async def test_paging(tmp_path: Path, sqlite_url: str, unused_port: int) -> None:
    c = await start_console(tmp_path, sqlite_url, unused_port, staff={"page_size": 5})
    try:
        ids = await c.add_items(
            *({"predicted_type_confidence": i / 100, "predicted_agency_confidence": 0.9} for i in range(12))
        )
        await c.sign_in(REVIEWER)
        first = await c.get("/queue?reason=low_confidence")
        body = await first.text()
        assert row_ids(body) == ids[:5]
        assert "page 1 of 3" in body
        nxt = re.search(r'id="next-page" rel="next"|href="([^"]+)" id="next-page"', body)
        assert nxt and nxt.group(1) and "reason=low_confidence" in nxt.group(1).replace("&amp;", "&")
        assert await shown(c, "?reason=low_confidence&page=2") == ids[5:10]
        assert await shown(c, "?page=3") == ids[10:]
        assert await shown(c, "?page=99") == ids[10:]  # past the end: the last page
    finally:
        await stop_console(c)


async def test_accept_relabel_not_a_case(console: Console) -> None:
    ids = await seed(console)
    await console.sign_in(REVIEWER)
    page = await console.get(f"/items/{ids['moved']}")
    body = await page.text()
    token = csrf_of(body)
    assert 'id="backend-agency"' in body and "NHRA" in body
    # Accept takes the citizen's type and the backend's agency.
    response = await console.post(f"/items/{ids['moved']}", data={"csrf_token": token, "action": "accept"})
    assert response.status == 303
    assert re.match(r"/staff/items/\d+\?msg=saved", response.headers["Location"])
    item = await console.item(ids["moved"])
    assert (item.status, item.final_type, item.final_agency, item.reviewer) == (
        "accepted",
        "complaint",
        "nhra",
        REVIEWER,
    )
    assert item.reviewed_at is not None
    # Relabel.
    response = await console.post(
        f"/items/{ids['low_en']}",
        data={
            "csrf_token": token,
            "action": "relabel",
            "final_type": "suggestion",
            "final_agency": "municipalities",
        },
    )
    assert response.status == 303
    item = await console.item(ids["low_en"])
    assert (item.status, item.final_type, item.final_agency) == ("relabelled", "suggestion", "municipalities")
    # Not a case.
    await console.post(f"/items/{ids['sample']}", data={"csrf_token": token, "action": "not_a_case"})
    item = await console.item(ids["sample"])
    assert (item.status, item.final_type, item.final_agency) == ("not_a_case", None, None)


async def test_relabel_rejects_unknown_labels(console: Console) -> None:
    ids = await seed(console)
    await console.sign_in(REVIEWER)
    token = await console.csrf()
    for data in (
        {"final_type": "praise", "final_agency": "ewa"},
        {"final_type": "complaint", "final_agency": "nasa"},
        {"action": "delete"},
    ):
        response = await console.post(
            f"/items/{ids['low_en']}", data={"csrf_token": token, "action": "relabel", **data}
        )
        assert response.status == 303 and "msg=err_" in response.headers["Location"]
        assert (await console.item(ids["low_en"])).status == "pending"
    assert (await console.post("/items/999999", data={"csrf_token": token, "action": "accept"})).status == 404


async def test_after_a_decision_the_next_item_of_the_same_filter_opens(console: Console) -> None:
    ids = await seed(console)
    await console.sign_in(REVIEWER)
    token = await console.csrf()
    response = await console.post(
        f"/items/{ids['low_en']}?language=en", data={"csrf_token": token, "action": "accept"}
    )
    # Next least-confident English pending item: "moved" (0.8), then "sample".
    assert response.headers["Location"].startswith(f"/staff/items/{ids['moved']}?language=en")
    await console.post(f"/items/{ids['moved']}?language=en", data={"csrf_token": token, "action": "accept"})
    last = await console.post(
        f"/items/{ids['sample']}?language=en", data={"csrf_token": token, "action": "accept"}
    )
    assert last.headers["Location"].startswith("/staff/queue?language=en")
    assert "msg=queue_done" in last.headers["Location"]


async def test_bulk_accept(console_any_db: Console) -> None:
    console = console_any_db
    ids = await seed(console)
    unlabelled = (await console.add_items({"predicted_type": None, "citizen_type": None}))[0]
    await console.sign_in(REVIEWER)
    token = await console.csrf()
    chosen = [ids["low_en"], ids["moved"], ids["done"], unlabelled]
    response = await console.post(
        "/queue/accept",
        data=[("csrf_token", token), ("back", "reason=transferred"), *[("ids", str(i)) for i in chosen]],
    )
    assert response.status == 303
    assert response.headers["Location"] == "/staff/queue?reason=transferred&msg=accepted&n=2"
    assert (await console.item(ids["low_en"])).status == "accepted"
    assert (await console.item(ids["moved"])).final_agency == "nhra"
    done = await console.item(ids["done"])
    assert done.reviewer is None  # already reviewed earlier: untouched
    assert (await console.item(unlabelled)).status == "pending"  # nothing to accept
    assert (await console.item(ids["corr_ar"])).status == "pending"  # not selected
    notice = await (await console.client.get(response.headers["Location"])).text()
    assert "2 items accepted." in notice


async def test_item_page_shows_prediction_and_choices(console: Console) -> None:
    ids = await seed(console)
    await console.sign_in(REVIEWER)
    body = await (await console.get(f"/items/{ids['corr_ar']}")).text()
    assert 'id="message-text">الماي مقطوع</div>' in body
    assert 'id="candidates-agency"' in body and "<meter" in body
    assert 'id="citizen-choice">complaint' in body
    assert 'id="pred-type">inquiry' in body


async def test_arabic_interface_is_right_to_left(console: Console) -> None:
    await console.sign_in(ADMIN)
    english = await (await console.get("/queue")).text()
    assert '<html lang="en" dir="ltr">' in english
    switch = await console.get("/lang/ar?next=/staff/quality")
    assert switch.status == 303 and switch.headers["Location"] == "/staff/quality"
    for path in ("/queue", "/quality", "/training", "/users"):
        arabic = await (await console.get(path)).text()
        assert '<html lang="ar" dir="rtl">' in arabic, path
    assert messages.AR["nav_queue"] in arabic
    assert (await console.get("/lang/fr")).status == 404
    back = await console.get("/lang/en?next=https://evil.example/")
    assert back.headers["Location"] == "/staff/queue"


def test_catalogue_languages_have_the_same_keys() -> None:
    assert set(messages.AR) == set(messages.EN)
    for key in messages.EN:
        placeholders_en = set(re.findall(r"\{(\w+)\}", messages.EN[key]))
        placeholders_ar = set(re.findall(r"\{(\w+)\}", messages.AR[key]))
        assert placeholders_en == placeholders_ar, key


def test_every_literal_message_key_in_templates_exists() -> None:
    templates = Path(messages.__file__).parent / "templates"
    keys = set()
    for path in templates.glob("*.html"):
        keys |= set(re.findall(r"\bt\('([a-z_]+)'[,)]", path.read_text(encoding="utf-8")))
    assert keys, "no message keys found"
    assert keys <= set(messages.EN), keys - set(messages.EN)
