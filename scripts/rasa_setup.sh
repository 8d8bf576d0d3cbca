#!/usr/bin/env bash
# Build the separate Rasa venv (.venv-rasa): Rasa 3.6.21 needs Python 3.10 and pins packages (TensorFlow 2.12,
# numpy 1.23, SQLAlchemy 1.4, pydantic 1) that must never enter the main 3.11 venv.
#
# Idempotent: a stamp records the Rasa version and the hash of the lock, so a second run (CI, `make test`) is a
# no-op and a changed lock rebuilds. Reproducible and offline-safe once installed: every package is pinned by
# scripts/rasa-constraints.txt; the pipeline uses no spaCy/MITIE/HF components, so nothing downloads a model;
# telemetry is off for every command the project runs (RASA_TELEMETRY_ENABLED=false).
#
#   scripts/rasa_setup.sh            build (or confirm) .venv-rasa
#   scripts/rasa_setup.sh --relock   resolve rasa==3.6.21 afresh in a scratch venv and rewrite the lock
set -euo pipefail

cd "$(dirname "$0")/.."
RASA_VERSION=3.6.21
PIP_VERSION=24.0
VENV=${RASA_VENV:-.venv-rasa}
LOCK=scripts/rasa-constraints.txt
export RASA_TELEMETRY_ENABLED=false PIP_DISABLE_PIP_VERSION_CHECK=1

find_python() {
    local candidate
    if command -v pyenv >/dev/null 2>&1; then
        candidate="$(pyenv prefix 3.10.13 2>/dev/null || true)/bin/python"
        if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
    fi
    # A bare python3.10 may be a pyenv shim that fails when that version is not installed: run it to be sure.
    if candidate=$(command -v python3.10) && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' \
        >/dev/null 2>&1; then
        echo "$candidate"; return 0
    fi
    echo "rasa-setup: Python 3.10 not found (tried 'pyenv prefix 3.10.13' and python3.10 on PATH);" \
        "install it, e.g. 'pyenv install 3.10.13'" >&2
    return 1
}

lock_hash() { sha256sum "$LOCK" | cut -c1-16; }

if [ "${1:-}" = "--relock" ]; then
    PY=$(find_python)
    scratch=$(mktemp -d)
    "$PY" -m venv "$scratch/venv"
    "$scratch/venv/bin/pip" install -q "pip==$PIP_VERSION"
    "$scratch/venv/bin/pip" install -q "rasa==$RASA_VERSION"
    {
        echo "# Lock for .venv-rasa (Rasa $RASA_VERSION, Python 3.10), from 'pip freeze' of a resolved install."
        echo "# Without it pip backtracks through many jax/jaxlib/aiogram releases and the result drifts."
        echo "# jax 0.4.13 (required by tensorflow 2.12, never imported by Rasa) has no hard jaxlib dependency:"
        echo "# pinning it saves ~290 MB. Regenerate: scripts/rasa_setup.sh --relock"
        "$scratch/venv/bin/pip" freeze --all | grep -v -E '^(pip|rasa|jax|jaxlib)=='
        echo "jax==0.4.13"
    } >"$LOCK"
    rm -rf "$scratch"
    echo "rasa-setup: wrote $LOCK"
    exit 0
fi

STAMP="$VENV/.installed"
want="rasa==$RASA_VERSION lock=$(lock_hash)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/rasa" ]; then
    exit 0
fi

PY=$(find_python)
start=$(date +%s)
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet "pip==$PIP_VERSION"
"$VENV/bin/pip" install --quiet -c "$LOCK" "rasa==$RASA_VERSION"
"$VENV/bin/rasa" --version >/dev/null 2>&1 || { echo "rasa-setup: 'rasa --version' fails in $VENV" >&2; exit 1; }
echo "$want" >"$STAMP"
echo "rasa-setup: $VENV ready (rasa $RASA_VERSION) in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
