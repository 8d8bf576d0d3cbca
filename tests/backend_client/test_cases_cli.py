"""``tawasul cases ...`` in a subprocess against ``tawasul backend serve`` running standalone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend_client import BackendClient, CaseStatus
from tests.core_backend.backend_harness import (
    SERVICE_TOKEN,
    STAFF_TOKEN,
    cli_env,
    new_case,
    run_tawasul,
    standalone_backend,
)

ARABIC = "حفرة كبيرة في الشارع أمام المدرسة\nمنذ أسبوعين"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """A standalone backend with three cases; yields (url, references)."""
    import socket

    tmp = tmp_path_factory.mktemp("cli")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with standalone_backend(
        f"sqlite+aiosqlite:///{tmp / 'core.db'}", port, tmp / "backend.log", "--no-webhooks"
    ) as url:

        async def seed() -> list[str]:
            async with BackendClient(url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client:
                a = await client.create_case(new_case(description=ARABIC, agency="works"), "cli-key-0001")
                b = await client.create_case(
                    new_case(
                        type="inquiry", agency="moh", description="When does the clinic open?", language="en"
                    ),
                    "cli-key-0002",
                )
                c = await client.create_case(
                    new_case(type="suggestion", description="More \x1b[31mbuses\x1b[0m"), "cli-key-0003"
                )
                await client.set_status(b.reference, CaseStatus.UNDER_REVIEW)
                return [a.reference, b.reference, c.reference]

        yield url, asyncio.run(seed())


def cases(url: str, *args: str, **env: str) -> tuple[int, str, str]:
    result = run_tawasul("cases", *args, env=cli_env(TAWASUL_BACKEND_URL=url, **env))
    return result.returncode, result.stdout, result.stderr


def test_list_all_and_filtered(served: tuple[str, list[str]]) -> None:
    url, (a, b, c) = served
    code, out, err = cases(url, "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["REFERENCE", "STATUS", "TYPE", "AGENCY", "DUE", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:4]] == [c, b, a]  # newest first
    assert "حفرة كبيرة في الشارع أمام المدرسة منذ أسبوعين" in out  # Arabic intact, newline folded
    assert "\x1b" not in out  # a citizen's escape sequence cannot reach the terminal
    assert lines[-1] == "(3 cases)"

    code, out, _ = cases(url, "list", "--status", "under_review")
    assert code == 0 and re.search(rf"^{b}\s+under_review\s+inquiry\s+moh\s", out, re.MULTILINE)
    assert a not in out and c not in out
    code, out, _ = cases(url, "list", "--agency", "works", "--limit", "1")
    assert code == 0 and c in out and a not in out and "(1 case)" in out
    code, out, _ = cases(url, "list", "--agency", "nobody")
    assert (code, out.strip()) == (0, "no cases")


def test_show_one_case(served: tuple[str, list[str]]) -> None:
    url, (a, _, _) = served
    code, out, err = cases(url, "show", a)
    assert (code, err) == (0, "")
    assert out.startswith(f"{a}  complaint · works · submitted")
    assert "    حفرة كبيرة في الشارع أمام المدرسة\n    منذ أسبوعين" in out
    assert "via telegram id:" in out and "100200300" not in out  # the citizen's id is masked
    assert re.search(r"submitted\s+citizen", out)


def test_staff_actions_change_the_case(served: tuple[str, list[str]]) -> None:
    url, (a, _, _) = served
    assert cases(url, "set-status", a, "under_review") == (0, f"{a} is now under_review\n", "")
    code, out, _ = cases(url, "transfer", a, "moh", "--note", "هذا من اختصاص وزارة الصحة")
    assert (code, out) == (0, f"{a} is now transferred (now with moh)\n")
    assert cases(url, "set-status", a, "in_progress")[:2] == (0, f"{a} is now in_progress\n")
    code, out, _ = cases(url, "request-info", a, "ما هو رقم المجمع؟")
    assert (code, out) == (0, f"{a} is now more_info_requested; the citizen will be asked\n")

    code, out, _ = cases(url, "show", a)
    assert "note: هذا من اختصاص وزارة الصحة" in out
    assert "question: ما هو رقم المجمع؟" in out
    assert out.startswith(f"{a}  complaint · moh · more_info_requested")


def test_refusals_are_one_line_and_exit_1(served: tuple[str, list[str]]) -> None:
    url, (_, b, c) = served
    code, out, err = cases(url, "set-status", c, "answered", "--note", "done")
    assert (code, out) == (1, "")
    assert err == (
        f"tawasul: case {c} cannot go from submitted to answered; "
        "from submitted it can go to: transferred, under_review\n"
    )
    code, _, err = cases(url, "set-status", b, "answered")
    assert (code, err) == (1, "tawasul: an answer needs a note: the text the citizen will read\n")
    code, _, err = cases(url, "show", "TWS-1999-000001")
    assert (code, err) == (1, "tawasul: no case TWS-1999-000001\n")
    code, _, err = cases(url, "transfer", b, "Not An Agency")
    assert code == 1 and err.startswith("tawasul: agency:") and err.count("\n") == 1
    code, _, err = cases(url, "list", TAWASUL_BACKEND_STAFF_TOKEN="wrong-token")
    assert (code, err) == (1, "tawasul: invalid bearer token (check TAWASUL_BACKEND_STAFF_TOKEN)\n")
    code, _, err = cases(url, "set-status", b, "in_progress", TAWASUL_BACKEND_STAFF_TOKEN=SERVICE_TOKEN)
    assert (code, err) == (1, "tawasul: this action needs the staff token\n")


def test_usage_errors_exit_2(served: tuple[str, list[str]]) -> None:
    url, (a, _, _) = served
    code, _, err = cases(url, "set-status", a, "lost")
    assert code == 2 and "invalid choice: 'lost'" in err


def test_unreachable_backend_exits_3(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        code, out, err = cases(url, "list", TAWASUL_BACKEND__RETRIES="0")
    assert (code, out) == (3, "")
    assert err.startswith(f"tawasul: cannot reach the core backend at {url}:") and err.count("\n") == 1
