#!/usr/bin/env bash
# Runs make targets one after another and prints how long each took, so CI
# logs show where the time goes. Stops at the first failing stage.
set -uo pipefail
declare -a report
for stage in "$@"; do
  start=$(date +%s)
  echo "===== stage $stage ====="
  make --no-print-directory "$stage"
  status=$?
  report+=("$(printf '%-8s %4ss  %s' "$stage" "$(( $(date +%s) - start ))" "$([ $status -eq 0 ] && echo ok || echo FAILED)")")
  if [ $status -ne 0 ]; then break; fi
done
echo "===== stage timings ====="
printf '%s\n' "${report[@]}"
exit "${status:-0}"
