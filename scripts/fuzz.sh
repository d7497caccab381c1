#!/usr/bin/env bash
# Long fuzzing run: the hypothesis tests of tests/fuzz in the "long" profile (fresh random
# examples, 25x the CI counts per round), round after round until MINUTES are up (default 30).
#
#   bash scripts/fuzz.sh [MINUTES]
#
# Uses the project's venv (scripts/venv.sh; VIDATTN_VENV to choose another). Prints each round's
# result and, at the end, what was found: a failing example is printed by hypothesis with a
# @reproduce_failure blob, kept in .hypothesis/ (replayed first on the next run), and the run
# stops. Add what it finds to tests/fuzz as a regression case once fixed. The log goes to
# out/fuzz.log. Exit status: 0 nothing found, 1 something found.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

minutes="${1:-30}"
tests="damaged or hostile_pickles or allowed_globals or random_safetensors_headers or random_class_targets"
end=$((SECONDS + minutes * 60))
mkdir -p out
log=out/fuzz.log
: >"$log"
round=0
status=0
while ((SECONDS < end)); do
  round=$((round + 1))
  echo "== round $round ($(((end - SECONDS + 59) / 60)) min left)" | tee -a "$log"
  VIDATTN_FUZZ=long timeout --signal=INT "$((end - SECONDS))" \
    "$PY" -m pytest tests/fuzz -k "$tests" -x -q -p no:cacheprovider \
    --hypothesis-show-statistics >>"$log" 2>&1
  rc=$?
  tail -n 1 "$log"
  if ((rc == 124 || (rc == 2 && SECONDS >= end))); then
    break  # time is up in the middle of a round
  elif ((rc != 0)); then
    status=1
    break
  fi
done

if ((status)); then
  echo "FOUND after $((SECONDS / 60)) min, round $round: the failing example (see $log):"
  grep -E "^(FAILED|E  |Falsifying|@reproduce_failure)|reproduce_failure" "$log" | head -40
else
  echo "found nothing: $round round(s) in $((SECONDS / 60)) min $((SECONDS % 60)) s (log: $log)"
fi
exit "$status"
