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
  trap 'sysctl -qw fs.inotify.max_user_instances='"$old" EXIT
fi
/usr/bin/python3 benches/fleet/fleet.py "$@"
