#!/usr/bin/env bash
# CI step (c), on merge: apply the inventory.
#   apply.sh INVENTORY
# First `apply --check --detailed-exitcode`: exit 0 means nothing is pending (done, exit 0);
# exit 3 means changes are pending, so `apply` runs. Both reports are kept as JSON in $OUT
# (default wgprov-out): check.json and apply.json, for the pipeline's artifacts.
# Env: WGPROV (default wgprov); extra apply flags in WGPROV_APPLY_FLAGS (e.g. --forks 20).
set -uo pipefail
inv=${1:?usage: apply.sh INVENTORY}
wgprov=${WGPROV:-wgprov}
out=${OUT:-wgprov-out}
mkdir -p "$out"
# shellcheck disable=SC2086 # WGPROV_APPLY_FLAGS is a list of flags
"$wgprov" apply -i "$inv" --check --detailed-exitcode --format json ${WGPROV_APPLY_FLAGS:-} > "$out/check.json"
check=$?
case $check in
  0) echo "apply.sh: nothing to change on any host"; exit 0 ;;
  3) echo "apply.sh: changes are pending; applying" ;;
  *) echo "apply.sh: apply --check failed (exit $check); see $out/check.json" >&2; exit "$check" ;;
esac
# shellcheck disable=SC2086
"$wgprov" apply -i "$inv" --format json ${WGPROV_APPLY_FLAGS:-} > "$out/apply.json"
code=$?
echo "apply.sh: apply exited $code; report in $out/apply.json"
exit "$code"
