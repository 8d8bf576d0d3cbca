from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tawasul.app import Service
from tests.dialogues.harness import Harness, StoryChannel
from tests.support import settings_for


@pytest.fixture
async def harness(tmp_path: Path, trained_nlu_dir: Path) -> AsyncIterator[Harness]:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", tmp_path)
    channel = StoryChannel()
    service = Service(settings, channels=[channel])
    await service.start()
    try:
        yield Harness(service, channel)
    finally:
        await service.stop()
