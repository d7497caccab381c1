"""Hypothesis profiles of the fuzz suite, chosen by ``VIDATTN_FUZZ``.

``ci`` (default) runs few examples, derandomized (the same ones every run, no example database),
no deadline, so the whole suite takes well under three minutes on two cores. ``long``
(``scripts/fuzz.sh``) draws ``LONG_FACTOR`` times as many fresh examples per test and round, with
a 30 s deadline per example, keeps failures in ``.hypothesis/`` and prints a reproduction blob.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

from tests.support.mutate import damaged

# Seeds are large and cases slow by design; examples of one test share its ``scratch`` folder.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture]
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          suppress_health_check=_SLOW_OK)
settings.register_profile("long", deadline=timedelta(seconds=30), print_blob=True,
                          suppress_health_check=_SLOW_OK)
PROFILE = os.environ.get("VIDATTN_FUZZ", "ci")
settings.load_profile(PROFILE)
LONG_FACTOR = 25


def examples(n: int) -> settings:
    """``settings`` for a test worth ``n`` examples in CI (``n * LONG_FACTOR`` in a long round)."""
    return settings(max_examples=n * LONG_FACTOR if PROFILE == "long" else n)


def write_damaged(data, seeds: dict, folder, label: str):
    """Draw a damaged copy of one of ``seeds`` (name -> path) with ``mutate.damaged`` and write
    it to ``folder/case.EXT``, EXT the seed's own suffix; returns that path."""
    case = data.draw(damaged({name: path.read_bytes() for name, path in seeds.items()}),
                     label=label)
    path = folder / f"case{case.suffix}"
    path.write_bytes(case.data)
    return path
