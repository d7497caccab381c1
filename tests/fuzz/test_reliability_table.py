"""The README's Reliability table is the one the suite declares (``scripts/reliability_table.py``
regenerates it)."""

from tests.support.reliability import README, readme_with_table, rows


def test_readme_table_matches_the_suite():
    text = README.read_text(encoding="utf-8")
    assert readme_with_table(text) == text, "run: python scripts/reliability_table.py"
    assert len(rows()) >= 40 and len(set(rows())) == len(rows())
