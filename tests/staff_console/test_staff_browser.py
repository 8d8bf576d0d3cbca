"""Browser tests: Debian's Chromium driven by Playwright against a real console on 127.0.0.1.

Chromium must be installed (``apt-get install -y chromium``); without it these tests fail, they are not
skipped. A failing test leaves a screenshot in tests/artifacts/.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from config.settings import PROJECT_DIR
from nlu.registry import ModelRegistry
from tests.staff_console.staff_helpers import (
    ADMIN,
    PASSWORD,
    REVIEWER,
    Console,
    start_console,
    stop_console,
    tiny_training_data,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_DIR / "tests" / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TRAINING_TIMEOUT_MS = 240_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def live(tmp_path: Path, sqlite_url: str, unused_port: int) -> AsyncIterator[Console]:
    c = await start_console(tmp_path, sqlite_url, unused_port)
    tiny_training_data(c.deps.settings.nlu.data_dir)
    try:
        yield c
    finally:
        await stop_console(c)


@pytest.fixture
async def page(browser: Browser, live: Console, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    context = await browser.new_context(base_url=str(live.client.make_url("")).rstrip("/"), locale="en-GB")
    p = await context.new_page()
    p.set_default_timeout(20_000)
    errors: list[str] = []
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    p.on("dialog", lambda dialog: dialog.accept())  # the promote / roll back confirmations
    try:
        yield p
        # No script errors and no Content-Security-Policy violations on any page visited.
        assert errors == [], errors
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await p.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        await context.close()


async def sign_in(page: Page, username: str) -> None:
    await page.goto("/staff/queue")
    await expect(page).to_have_url(re.compile(r"/staff/login\?next="))
    await page.fill("#username", username)
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await expect(page).to_have_url(re.compile(r"/staff/queue$"))


async def test_sign_in_filter_relabel_and_bulk_accept(page: Page, live: Console) -> None:
    ids = await live.add_items(
        {
            "reason": "transferred",
            "text": "The hospital lost my file <b>twice</b>",
            "predicted_agency": "health",
            "citizen_agency": "health",
            "backend_agency": "nhra",
            "predicted_type_confidence": 0.9,
            "predicted_agency_confidence": 0.9,
        },
        {
            "reason": "correction",
            "text": "please add more buses to Sitra",
            "predicted_type": "complaint",
            "citizen_type": "suggestion",
            "predicted_agency": "transportation",
            "citizen_agency": "transportation",
        },
        {"reason": "low_confidence", "text": "streetlight broken near my house"},
        {"reason": "low_confidence", "text": "pothole on the main road", "predicted_type_confidence": 0.3},
    )
    await sign_in(page, REVIEWER)
    await expect(page.locator("tr.row")).to_have_count(4)

    # Filter the queue.
    await page.select_option("#f-reason", "transferred")
    await page.click("#apply-filters")
    await expect(page).to_have_url(re.compile(r"reason=transferred"))
    await expect(page.locator("tr.row")).to_have_count(1)
    await expect(page.locator(f"#row-{ids[0]} a.open")).to_have_text("The hospital lost my file <b>twice</b>")
    await page.click("#reset-filters")
    await page.select_option("#f-ptype", "complaint")
    await page.select_option("#f-fagency", "transportation")
    await page.click("#apply-filters")
    await expect(page.locator("tr.row")).to_have_count(1)
    await expect(page.locator(f"#row-{ids[1]}")).to_be_visible()

    # Open the item and relabel it with the keyboard: 2 = suggestion, pick an agency, r = save.
    await page.click(f"#row-{ids[1]} a.open")
    await expect(page.locator("#message-text")).to_have_text("please add more buses to Sitra")
    await expect(page.locator("#citizen-choice")).to_contain_text("suggestion")
    await page.keyboard.press("2")
    await expect(page.locator("#final-type")).to_have_value("suggestion")
    await page.select_option("#final-agency", "works")
    await page.locator("body").click()  # the shortcuts do not fire while a select has the focus
    await page.keyboard.press("r")
    await expect(page.locator("#flash")).to_be_visible()
    item = await live.item(ids[1])
    assert (item.status, item.final_type, item.final_agency, item.reviewer) == (
        "relabelled",
        "suggestion",
        "works",
        REVIEWER,
    )

    # Bulk accept from the queue with the keyboard: j moves, x selects, Shift+A accepts.
    await page.goto("/staff/queue?reason=low_confidence")
    await expect(page.locator("tr.row")).to_have_count(2)
    await page.keyboard.press("j")
    await page.keyboard.press("x")
    await page.keyboard.press("j")
    await page.keyboard.press("x")
    await page.keyboard.press("Shift+A")
    await expect(page.locator("#flash")).to_have_text("2 items accepted.")
    await expect(page.locator("#queue-empty")).to_be_visible()
    assert [(await live.item(i)).status for i in ids[2:]] == ["accepted", "accepted"]

    # Arabic interface, right to left.
    await page.click("#lang-ar")
    await expect(page.locator("html")).to_have_attribute("dir", "rtl")
    await expect(page.locator("html")).to_have_attribute("lang", "ar")
    await expect(page.locator("#nav-queue")).to_have_text("قائمة المراجعة")
    await page.click("#lang-en")
    await expect(page.locator("html")).to_have_attribute("dir", "ltr")

    # A reviewer sees no admin controls; signing out ends the session.
    await page.goto("/staff/training")
    await expect(page.locator("#retrain-btn")).to_have_count(0)
    await page.click("#sign-out")
    await expect(page).to_have_url(re.compile(r"/staff/login$"))
    await page.goto("/staff/queue")
    await expect(page).to_have_url(re.compile(r"/staff/login"))


async def chart(page: Page, name: str) -> bytes:
    response = await page.request.get(f"/staff/quality/charts/{name}.svg")
    assert response.ok
    return await response.body()


async def test_retrain_promote_and_see_the_charts_change(page: Page, live: Console) -> None:
    [item_id] = await live.add_items(
        {
            "reason": "correction",
            "text": "no water in Hamad Town since yesterday morning",
            "predicted_type": "inquiry",
            "citizen_type": "complaint",
            "predicted_agency": "ewa",
            "citizen_agency": "ewa",
        },
    )
    await sign_in(page, ADMIN)
    await page.goto("/staff/quality")
    await expect(page.locator("#tbl-type-reviewed-empty")).to_be_visible()
    await expect(page.locator("#heldout-version")).to_have_count(0)
    before = {name: await chart(page, name) for name in ("type-reviewed", "type-heldout", "accuracy")}

    # Review an item: the reviewed-items matrix gets a cell.
    await page.goto(f"/staff/items/{item_id}")
    await page.keyboard.press("a")
    await expect(page.locator("#flash")).to_be_visible()
    await page.goto("/staff/quality")
    await expect(
        page.locator('#tbl-type-reviewed td[data-true="complaint"][data-pred="inquiry"]')
    ).to_have_text("1")

    # Retrain in the background, watching the progress, then promote the new model.
    await page.goto("/staff/training")
    await expect(page.locator("#no-models")).to_be_visible()
    await page.click("#retrain-btn")
    await expect(page.locator("#flash")).to_have_text("Training started.")
    await expect(page.locator("#retrain-btn")).to_be_disabled()
    # The page polls the status endpoint and reloads itself when the training is over.
    await expect(page.locator("tr.model")).to_have_count(1, timeout=TRAINING_TIMEOUT_MS)
    await expect(page.locator("#train-state")).to_have_attribute("data-state", "done")
    version = await page.locator("tr.model").get_attribute("data-version")
    assert version
    await page.click(f'tr.model[data-version="{version}"] .promote-btn')
    await expect(page.locator("#flash")).to_have_text("Model promoted; the service now uses it.")
    await expect(page.locator("tr.model.current .current-badge")).to_be_visible()
    current = ModelRegistry(live.deps.registry_dir).current()
    assert current is not None and current.version == version
    assert len(live.reloads) == 1

    # The quality page now shows the model's held-out figures; the charts changed.
    await page.goto("/staff/quality")
    await expect(page.locator("#heldout-version")).to_have_text(version)
    await expect(page.locator("#tbl-type-heldout")).to_be_visible()
    await expect(page.locator(f'#accuracy-table tr[data-version="{version}"]')).to_be_visible()
    after = {name: await chart(page, name) for name in before}
    for name, old in before.items():
        assert after[name] != old, name
    for img in ("#chart-type-heldout", "#chart-accuracy", "#chart-type-reviewed"):
        loaded: Any = await page.locator(img).evaluate("el => el.complete && el.naturalWidth > 0")
        assert loaded, img
