#!/usr/bin/env bash
# failures.sh FILE: prints, for each test that failed in the `go test -v` output
# FILE, its own lines (from its "=== RUN" to its "--- FAIL"), without klog's
# lines, so a failure's message is in the last lines a CI log keeps.
set -euo pipefail
file=$1
mapfile -t failed < <(grep -oP '^\s*--- FAIL: \K\S+' "$file" | sort -u)
[ ${#failed[@]} -gt 0 ] || exit 0
echo "===== failed tests: ${failed[*]}"
for t in "${failed[@]}"; do
  echo "===== $t"
  awk -v t="$t" '
    $0 ~ "^=== (RUN|CONT|NAME) +" t "$" { on = 1 }
    on && $0 !~ /^[IWE][0-9][0-9][0-9][0-9] / { print }
    $0 ~ "^\\s*--- FAIL: " t " " { on = 0 }
  ' "$file" | tail -60
done
