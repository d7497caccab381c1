"""Regenerate the Reliability table in README.md from the rows the test suite declares
(``tests/support/reliability.py``). Run with the project's venv: ``.venv/bin/python
scripts/reliability_table.py``; ``--check`` exits 1 instead of writing when the table is stale."""

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package

from tests.support.reliability import README, readme_with_table  # noqa: E402


def main() -> int:
    text = README.read_text(encoding="utf-8")
    updated = readme_with_table(text)
    if updated == text:
        print("README.md: the Reliability table is up to date")
        return 0
    if "--check" in sys.argv[1:]:
        print("README.md: the Reliability table is stale; run scripts/reliability_table.py")
        return 1
    README.write_text(updated, encoding="utf-8")
    print("README.md: Reliability table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
