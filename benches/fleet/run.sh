#!/usr/bin/env bash
# Fleet benchmark: wgprov vs the SSH floor, pyinfra and Ansible on the same lab hosts.
#   benches/fleet/run.sh [N…]     (default: 10 50; needs root; FLEET_RUNS=5 runs per figure)
# Installs the lab's packages, builds wgprov (release), makes a virtualenv with pyinfra and
# ansible-core from PyPI, then runs fleet.py, which prints the table and writes RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/install-deps
command -v /usr/bin/time >/dev/null || apt-get install -y -qq --no-install-recommends time
cargo build --release --locked --quiet
venv=benches/fleet/.venv
if [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -x "$venv/bin/pyinfra" ]; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q pyinfra==3.10.0 ansible-core==2.19.14
fi
# every lab node's wireguard-go takes an inotify instance; the default of 128 per user stops
# the 129th: raise it for the run when needed, and put it back afterwards
max=0; for n in ${@:-10 50}; do [ "$n" -gt "$max" ] && max=$n; done
old=$(cat /proc/sys/fs/inotify/max_user_instances)
need=$((max * 2 + 64))
if [ "$old" -lt "$need" ]; then
  echo "fs.inotify.max_user_instances: $old -> $need for this run (restored at the end)" >&2
  sysctl -qw fs.inotify.max_user_instances="$need"
  restore_inotify="sysctl -qw fs.inotify.max_user_instances=$old"
fi
# every namespace's ARP entries count against one machine-wide table (gc_thresh2/3, 512/1024 by
# default): past it the kernel evicts live entries and drops packets, which a fleet of separate
# machines never does (at N=500 pings between next-hops failed for 20 s in every apply). Raise
# it for the run when the largest lab needs more (about 4 per node), and put it back afterwards.
neigh=/proc/sys/net/ipv4/neigh/default
old2=$(cat $neigh/gc_thresh2); old3=$(cat $neigh/gc_thresh3)
need=$((max * 4 + 64))
if [ "$old2" -lt "$need" ]; then
  echo "net.ipv4.neigh.default.gc_thresh2/3: $old2/$old3 -> $need/$((need * 2)) for this run (restored at the end)" >&2
  sysctl -qw net.ipv4.neigh.default.gc_thresh3=$((need * 2)) net.ipv4.neigh.default.gc_thresh2=$need
  restore_neigh="sysctl -qw net.ipv4.neigh.default.gc_thresh2=$old2 net.ipv4.neigh.default.gc_thresh3=$old3"
fi
trap "${restore_inotify:-true}; ${restore_neigh:-true}" EXIT
/usr/bin/python3 benches/fleet/fleet.py "$@"
