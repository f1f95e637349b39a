#!/bin/bash
# Usage: expect_job_failure.sh SECONDS PATTERN COMMAND...
# Passes when COMMAND exits non-zero within SECONDS and its stderr matches the extended regular
# expression PATTERN. A timeout (a hung job) or a zero exit fails.
set -u
limit=$1 pattern=$2
shift 2
err=$(mktemp)
trap 'rm -f "$err"' EXIT
start=$(date +%s%N)
timeout --kill-after=5 "$limit" "$@" 2> "$err"
rc=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
cat "$err" >&2
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "FAIL: job still running after ${limit}s (hang)" >&2
  exit 1
fi
if [ "$rc" -eq 0 ]; then
  echo "FAIL: job exited 0, expected a failure" >&2
  exit 1
fi
if ! grep -Eq -- "$pattern" "$err"; then
  echo "FAIL: stderr does not match /$pattern/" >&2
  exit 1
fi
echo "ok: exit $rc after ${elapsed_ms} ms, stderr matches /$pattern/"
