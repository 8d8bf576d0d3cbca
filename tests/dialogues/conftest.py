from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.dialogues.harness import Harness
from tests.support import settings_for


@pytest.fixture
async def harness(tmp_path: Path, trained_nlu_dir: Path) -> AsyncIterator[Harness]:
    async with Harness.running(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tmp_path)) as harness:
        yield harness
