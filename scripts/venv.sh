# Sourced by the scripts: create or reuse the project's virtualenv and set $PY to its python.
VENV="${VIDATTN_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
PY="$VENV/bin/python"
export PYTHONUNBUFFERED=1
