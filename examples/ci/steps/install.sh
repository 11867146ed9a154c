#!/usr/bin/env bash
# CI step: make `wgprov` available. Order: already on PATH; a .deb named by WGPROV_DEB (a path
# or an https URL, e.g. a release asset); else build it from this checkout when it is wgprov's
# own repository (cargo install --locked --path .).
set -euo pipefail
if command -v wgprov >/dev/null 2>&1; then
  wgprov --version
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if [ -n "${WGPROV_DEB:-}" ]; then
  deb=$WGPROV_DEB
  case "$deb" in
    https://*) curl -fsSL -o /tmp/wgprov.deb "$deb"; deb=/tmp/wgprov.deb ;;
  esac
  $sudo apt-get install -y "$(realpath "$deb")"
elif grep -qs '^name = "wgprov"' Cargo.toml; then
  cargo install --locked --path .
else
  echo "install.sh: no wgprov on PATH; set WGPROV_DEB to a .deb (path or https URL)" >&2
  exit 1
fi
wgprov --version
