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


def read_all(paths: dict) -> dict[str, bytes]:
    """name -> bytes of a seed dict, what ``mutate.damaged`` takes."""
    return {name: path.read_bytes() for name, path in paths.items()}
