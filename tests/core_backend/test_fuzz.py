"""Fuzz the running standalone backend from ``backend_client/openapi.yaml`` with schemathesis.

Valid and invalid requests for every operation (examples, coverage and fuzzing phases; bounded by
``MAX_EXAMPLES`` per operation). Failing checks: a 5xx; a status, content type, header or body not in the
contract; an invalid request that is not refused with a 4xx; a refusal without a readable JSON message
(``schemathesis_hooks.readable_error``); an operation that ignores missing or wrong credentials; a wrong
method not answered 405 with an ``Allow`` header.
``positive_data_acceptance`` is left out on purpose: valid-looking requests are refused by business rules
(409 illegal transition, 422 unknown attachment), which the contract documents.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from backend_client import BackendClient, CaseStatus
from tests.core_backend.backend_harness import (
    PROJECT,
    SERVICE_TOKEN,
    STAFF_TOKEN,
    cli_env,
    new_case,
    standalone_backend,
)

MAX_EXAMPLES = 20
CHECKS = (
    "not_a_server_error,"
    "status_code_conformance,"
    "content_type_conformance,"
    "response_headers_conformance,"
    "response_schema_conformance,"
    "negative_data_rejection,"
    "missing_required_header,"
    "ignored_auth,"
    "unsupported_method,"
    "allow_header_conformance,"
    "readable_error"
)


async def _seed(url: str) -> tuple[list[str], list[str]]:
    """Cases in several states and uploaded files, so generated requests also reach real records."""
    references, attachments = [], []
    async with BackendClient(url, SERVICE_TOKEN, staff_token=STAFF_TOKEN) as client:
        for i, steps in enumerate(
            [
                [],
                [CaseStatus.UNDER_REVIEW],
                [CaseStatus.UNDER_REVIEW, CaseStatus.IN_PROGRESS],
                [CaseStatus.UNDER_REVIEW, CaseStatus.ANSWERED],
                [CaseStatus.UNDER_REVIEW, CaseStatus.CLOSED],
            ]
        ):
            case = await client.create_case(new_case(channel_user_id=f"fuzz-{i}"), f"fuzz-seed-{i:04d}")
            for status in steps:
                await client.set_status(case.reference, status, "seeded")
            references.append(case.reference)
        for i in range(5):
            ref = await client.upload_attachment(f"file {i}".encode(), "image/png", f"f{i}.png")
            attachments.append(ref.id)
    return references, attachments


def _config(path: Path, url: str, references: list[str], attachments: list[str]) -> None:
    # One schemathesis worker: with two threads, hypothesis parses lambdas' source in both at once, and CPython
    # 3.11.7 (this machine's) can then fail with "SystemError: AST constructor recursion depth mismatch"
    # (python/cpython#106905, fixed in 3.11.8): a flaky error of the interpreter, not of the contract.
    path.write_text(
        f"""
base-url = "{url}"
workers = 1

[auth.openapi.serviceToken]
bearer = "{SERVICE_TOKEN}"
[auth.openapi.staffToken]
bearer = "{STAFF_TOKEN}"

[generation]
max-examples = {MAX_EXAMPLES}

[phases.stateful]
enabled = false

[dictionaries.references]
values = {json.dumps(references)}
[dictionaries.attachments]
values = {json.dumps(attachments)}

[parameters]
"path.reference" = {{ dictionary = "references", probability = 0.7 }}
"path.attachment_id" = {{ dictionary = "attachments", probability = 0.5 }}
""",
        encoding="utf-8",
    )


def test_api_conforms_to_openapi_under_fuzzing(tmp_path: Path, unused_port: int) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
    with standalone_backend(db_url, unused_port, tmp_path / "backend.log", "--no-webhooks") as url:
        references, attachments = asyncio.run(_seed(url))
        config = tmp_path / "schemathesis.toml"
        _config(config, url, references, attachments)
        env = cli_env(SCHEMATHESIS_HOOKS="tests.core_backend.schemathesis_hooks")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "run",
                str(PROJECT / "backend_client" / "openapi.yaml"),
                "--checks",
                CHECKS,
                "--suppress-health-check",
                "all",
                "--report",
                "junit",
                "--report-dir",
                str(tmp_path / "reports"),
            ],
            check=False,
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=600,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert "15 selected / 15 total" in output  # every operation of the contract was exercised
    junit = next((tmp_path / "reports").glob("*.xml")).read_text(encoding="utf-8")
    assert 'failures="0"' in junit and 'errors="0"' in junit
