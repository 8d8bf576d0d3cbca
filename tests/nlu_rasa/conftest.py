"""Fixtures for the Rasa engine tests: a SMALL export, a real Rasa model trained on it, a real server.

These tests need ``.venv-rasa`` (``make rasa-setup``; ``make test`` builds it first). Without it they FAIL with
that instruction, they never skip. The small model is cached under ``var/test-rasa`` by the hash of its exported
project (config + data), so it is retrained only when the data, the export or the pipeline change.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import PROJECT_DIR, Settings
from nlu.dataset import Example, load_dataset
from nlu.rasa_cli import RasaServer, RasaSetupError, rasa_bin, train_model
from nlu.rasa_export import export_project, joint_label, read_summary
from tests.support import free_port

CACHE_DIR = PROJECT_DIR / "var" / "test-rasa"
# A slice of the training split: four agencies x three types, and the dialogue intents the tests use.
SMALL_AGENCIES = ("ewa", "traffic", "housing", "health")
SMALL_DIALOGUE = ("greet", "thanks", "goodbye", "check_status", "cancel")
PER_LABEL = 12
SMALL_EPOCHS = 60


def _stable(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def small_examples(settings: Settings) -> list[Example]:
    """Deterministic subset: per label, alternately an example that names the agency and one that does not."""
    from nlu.normalize import FoldedText
    from nlu.rasa_export import exact_agency_gazetteer

    gazetteer = exact_agency_gazetteer()
    by_label: dict[str, tuple[list[Example], list[Example]]] = defaultdict(lambda: ([], []))
    for ex in sorted(load_dataset(settings).train, key=lambda e: _stable(e.text)):
        if ex.intent == "file_case" and ex.agency not in SMALL_AGENCIES:
            continue
        if ex.intent != "file_case" and ex.intent not in SMALL_DIALOGUE:
            continue
        named, implied = by_label[joint_label(ex)]
        (named if gazetteer.find(FoldedText.of(ex.text)) else implied).append(ex)
    chosen: list[Example] = []
    for named, implied in by_label.values():
        mixed = [e for pair in zip(named, implied, strict=False) for e in pair]
        rest = named[len(implied) :] + implied[len(named) :]
        chosen.extend((mixed + rest)[:PER_LABEL])
    return chosen


@pytest.fixture(scope="session")
def rasa_ready() -> Path:
    try:
        return rasa_bin()
    except RasaSetupError as exc:
        pytest.fail(f"{exc}. The Rasa tests never skip: `make test` builds .venv-rasa first.", pytrace=False)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def small_set(settings: Settings) -> list[Example]:
    examples = small_examples(settings)
    assert len(examples) >= 100, "the small Rasa training set came out too small; check the data"
    return examples


@pytest.fixture(scope="session")
def small_project(
    settings: Settings, small_set: list[Example], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return export_project(
        settings, tmp_path_factory.mktemp("rasa") / "project", examples=small_set, epochs=SMALL_EPOCHS
    )


@pytest.fixture(scope="session")
def small_model(rasa_ready: Path, small_project: Path) -> Path:
    """A real Rasa model of the small export (trained once per export hash, then reused from var/test-rasa)."""
    key = read_summary(small_project).data_hash
    cached = CACHE_DIR / f"small-{key}.tar.gz"
    if cached.is_file():
        return cached
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = CACHE_DIR / "train.log"
    with log_path.open("w") as log:
        result = train_model(small_project, small_project / "models", name=f"small-{key}", log=log)
    for stale in CACHE_DIR.glob("small-*.tar.gz"):
        stale.unlink()
    shutil.copy2(result.model, cached)
    return cached


@pytest.fixture(scope="session")
def _rasa_session_server(small_model: Path) -> Iterator[RasaServer]:
    server = RasaServer(small_model, free_port(), log_path=CACHE_DIR / "serve.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rasa_server(_rasa_session_server: RasaServer) -> RasaServer:
    """The shared ``rasa run`` (loading a model takes a minute or two: one server for all tests). A test may
    stop it (the fallback test does); the next test that needs it starts it again on a new port."""
    server = _rasa_session_server
    if not server.running:
        server.port = free_port()
        server.url = f"http://127.0.0.1:{server.port}"
        server.start()
    return server


@pytest.fixture
def rasa_settings(settings: Settings, rasa_server: RasaServer) -> Settings:
    nlu = settings.nlu.model_copy(update={"rasa_url": rasa_server.url, "engine": "rasa"})
    return settings.model_copy(update={"nlu": nlu})
