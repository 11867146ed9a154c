#!/usr/bin/env bash
# CI step (b), before merge: prove the change in `wgprov lab` (as root, in a CI VM or a
# privileged container). Builds the inventory's sites in network namespaces (NAT routers,
# nodes with sshd, a controller), runs the merge step (apply.sh) from the lab's controller,
# runs it again (it must find nothing to change), pings every pair of nodes in different sites
# over WireGuard (bounded tries), prints `wgprov status`, and always tears the lab down.
#   lab.sh INVENTORY [PREFIX]
# PREFIX (1-12 lowercase letters and digits) must be unique on the machine; default ci<pid>.
# Env: WGPROV (default wgprov), OUT (default wgprov-out; lab-apply.json and friends land there).
set -euo pipefail
inv=${1:?usage: lab.sh INVENTORY [PREFIX]}
prefix=${2:-ci$(( $$ % 100000 ))}
wgprov=$(command -v "${WGPROV:-wgprov}")
out=$(mkdir -p "${OUT:-wgprov-out}" && cd "${OUT:-wgprov-out}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
inv=$(realpath "$inv")
if [ "$(id -u)" != 0 ]; then
  echo "lab.sh: the lab needs root (network namespaces)" >&2
  exit 1
fi
"$wgprov" validate -i "$inv" >/dev/null
teardown() { "$wgprov" lab down --prefix "$prefix" || true; }
trap teardown EXIT
trap 'exit 130' INT TERM
"$wgprov" lab up -i "$inv" --prefix "$prefix"
in_lab() { "$wgprov" lab exec --prefix "$prefix" "$@"; }

echo "== the merge step (apply.sh) from the lab's controller"
in_lab controller -- env WGPROV="$wgprov" OUT="$out/lab-first" bash "$here/apply.sh" "$inv"
echo "== again: nothing may change"
in_lab controller -- env WGPROV="$wgprov" OUT="$out/lab-second" bash "$here/apply.sh" "$inv" | tee "$out/lab-second.log"
grep -q "nothing to change" "$out/lab-second.log" || { echo "lab.sh: the second apply changed something" >&2; exit 1; }

echo "== pings over WireGuard between nodes of different sites"
# "SITE NODE WIREGUARD_IP" for every managed node, from the plan
nodes=$("$wgprov" plan -i "$inv" | awk '/^site /{s=$2} /^  [^ ]/ && $2 ~ /^[0-9.]+$/ {print s, $1, $2}')
failed=0
crossed=0
while read -r site node _; do
  while read -r osite _ oip; do
    [ "$site" = "$osite" ] && continue
    ok=no
    for _try in 1 2 3 4 5 6 7 8 9 10; do
      if in_lab "$node" -- ping -c 1 -W 1 "$oip" </dev/null >/dev/null 2>&1; then ok=yes; break; fi
    done
    echo "  $node -> $oip $ok"
    if [ $ok = yes ]; then crossed=$((crossed + 1)); else failed=$((failed + 1)); fi
  done <<< "$nodes"
done <<< "$nodes"
echo "== wgprov status"
in_lab controller -- "$wgprov" status -i "$inv" || true
echo "lab.sh: $crossed pings crossed, $failed failed"
[ "$failed" = 0 ] && [ "$crossed" -gt 0 ]
