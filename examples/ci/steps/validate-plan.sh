#!/usr/bin/env bash
# CI step (a), on every change to the inventory: validate it offline, then write the plan.
#   validate-plan.sh INVENTORY
# Problems print as `FILE:LINE:COL: field: message` (exit 2), the form CI annotators read
# (GitHub: examples/ci/wgprov-matcher.json). Writes into $OUT (default wgprov-out):
# plan.txt, plan.json and plan.md (a comment body for the pull/merge request).
# Nothing is contacted. Env: WGPROV (default wgprov).
set -euo pipefail
inv=${1:?usage: validate-plan.sh INVENTORY}
wgprov=${WGPROV:-wgprov}
out=${OUT:-wgprov-out}
mkdir -p "$out"
# validate never writes the lock file; plan writes new allocations to it (commit it)
"$wgprov" validate -i "$inv"
"$wgprov" plan -i "$inv" > "$out/plan.txt"
"$wgprov" plan -i "$inv" --format json > "$out/plan.json"
{
  echo "### wgprov plan for \`$inv\`"
  echo
  echo '```'
  cat "$out/plan.txt"
  echo '```'
} > "$out/plan.md"
cat "$out/plan.txt"
