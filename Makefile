PY311 ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup run test lint bench bench-floor bench-nlu browser rasa-setup clean

setup: $(STAMP)

# Reinstall when the project metadata changes (a "stale" venv).
$(STAMP): pyproject.toml
	@$(PY311) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	test -x $(BIN)/python || $(PY311) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU wheel on this disk; otherwise a dependency would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's Chromium for the staff console's browser tests (Playwright's own browser download is not used).
browser: $(CHROMIUM)
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi

# Rasa 3.6 lives in its own Python 3.10 venv (its pins must never enter .venv); pinned by
# scripts/rasa-constraints.txt; idempotent (a stamp holds the Rasa version and the lock's hash).
RASA_VENV := .venv-rasa
RASA_STAMP := $(RASA_VENV)/.installed

rasa-setup: $(RASA_STAMP)
$(RASA_STAMP): scripts/rasa_setup.sh scripts/rasa-constraints.txt
	bash scripts/rasa_setup.sh

run: setup
	$(BIN)/tawasul run

test: setup browser rasa-setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy tawasul bot nlu dialogues backend_client core_backend staff_console config

# End to end (~5 min each): real worker processes, a fake Telegram API, throwaway PostgreSQL databases.
bench: setup
	$(BIN)/python benchmarks/bench_nlu_embedded.py
	$(BIN)/python benchmarks/bench_inbound.py
	$(BIN)/python benchmarks/bench_fanout.py

# The ceiling of the leanest Python webhook-to-reply pipeline on this machine (~4 min; context for bench).
bench-floor: setup
	$(BIN)/python benchmarks/bench_floor.py

# Embedded engine vs Rasa DIET on the same held-out split (trains both; Rasa takes many minutes).
bench-nlu: setup rasa-setup
	$(BIN)/python benchmarks/bench_nlu_compare.py

clean:
	rm -rf $(VENV) $(RASA_VENV) var/rasa
