# Sourced by the tools/* scripts: create .venv on first use and install casckpt with its extras.
# torch is pinned through tools/constraints.txt so the CPU wheel on this machine's disk is used.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.casckpt-installed"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$ROOT/tools/constraints.txt" -nt "$STAMP" ]; then
    findlinks=()
    [ -d /opt/wheels ] && findlinks=(--find-links /opt/wheels)
    "$VENV/bin/python" -m pip install -q "${findlinks[@]}" -c "$ROOT/tools/constraints.txt" \
        -e "$ROOT[torch,test,bench,report,integrations,cloud]"
    touch "$STAMP"
fi
PY="$VENV/bin/python"
