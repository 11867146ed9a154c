#!/usr/bin/env bash
# Builds OpenWrt's own `uci` command line tool (libuci and the parts of libubox it needs) for the
# OpenWrt lab test (tests/it/openwrt.rs), into a cache directory outside the repository.
#
#   tests/openwrt/build.sh       build it if the cache is not complete; print the cache's path
#   WGPROV_OPENWRT_CACHE=DIR     where (default /var/cache/wgprov-openwrt as root, else
#                                ~/.cache/wgprov-openwrt)
#
# The sources are OpenWrt's uci and libubox (GPL-2.0 and ISC), as the crates.io package
# `libuci-sys` 1.0.5 carries them, unmodified; cargo downloads that package (checksum checked
# against the crates.io index) and this script compiles the C with gcc: no cmake, no Lua
# binding, nothing installed outside the cache. The cache holds:
#   bin/uci                     the uci tool, statically linked with libuci and libubox
#   bin/jshn, share/libubox/jshn.sh  libubox's JSON tool and its shell library, which
#                               netifd's protocol handlers use (needs json-c: libjson-c-dev)
#   licenses/                   what the package says of its licences
# A no-op (a few milliseconds) when DIR.complete holds this recipe; a changed recipe rebuilds.
set -euo pipefail

if [ "$(id -u)" = 0 ]; then
  default=/var/cache/wgprov-openwrt
else
  default=${XDG_CACHE_HOME:-$HOME/.cache}/wgprov-openwrt
fi
cache=${WGPROV_OPENWRT_CACHE:-$default}
version=1.0.5
# the recipe: bump when what goes into the cache changes, so that caches are rebuilt
recipe="wgprov-openwrt-uci 2 libuci-sys $version"

if [ -f "$cache.complete" ] && [ "$(cat "$cache.complete")" = "$recipe" ] && [ -x "$cache/bin/uci" ] && [ -x "$cache/bin/jshn" ]; then
  echo "$cache"
  exit 0
fi
command -v cc >/dev/null 2>&1 || { echo "build.sh: no C compiler (apt-get install gcc libc6-dev)" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || { echo "build.sh: cargo is needed to download libuci-sys" >&2; exit 1; }
[ -f /usr/include/json-c/json.h ] || { echo "build.sh: no json-c headers (apt-get install libjson-c-dev)" >&2; exit 1; }

rm -rf "$cache" "$cache.complete"
mkdir -p "$cache/fetch/src" "$cache/bin" "$cache/share/libubox" "$cache/licenses" "$cache/obj/include"

# a throw-away manifest that depends on the package: `cargo fetch` brings its source into
# cargo's own registry cache (\$CARGO_HOME/registry/src)
cat > "$cache/fetch/Cargo.toml" <<TOML
[package]
name = "wgprov-openwrt-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
libuci-sys = "=$version"
TOML
echo 'fn main() {}' > "$cache/fetch/src/main.rs"
cargo fetch --quiet --manifest-path "$cache/fetch/Cargo.toml" --target "$(rustc -vV | sed -n 's/^host: //p')"
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"libuci-sys-$version" 2>/dev/null | head -n1)
[ -f "$src/uci/cli.c" ] && [ -f "$src/libubox/blobmsg.c" ] || { echo "build.sh: no uci sources in $src" >&2; exit 1; }

obj=$cache/obj
ln -s "$src/libubox" "$obj/include/libubox"
# uci_config.h as uci's CMakeLists makes it with its defaults (no debugging)
printf '/* #undef UCI_DEBUG */\n/* #undef UCI_DEBUG_TYPECAST */\n' > "$obj/include/uci_config.h"
cflags=(-Os -std=gnu99 -w -I"$obj/include" -I"$src/uci" -DUCI_PREFIX='"/usr"')
# libubox: what libuci and the cli use (avl, blob, blobmsg, utils)
for f in avl avl-cmp blob blobmsg utils; do
  cc "${cflags[@]}" -c "$src/libubox/$f.c" -o "$obj/ubox-$f.o"
done
for f in libuci file util delta parse blob cli; do
  cc "${cflags[@]}" -c "$src/uci/$f.c" -o "$obj/uci-$f.o"
done
cc -static -o "$cache/bin/uci" "$obj"/uci-*.o "$obj"/ubox-*.o 2>/dev/null ||
  cc -o "$cache/bin/uci" "$obj"/uci-*.o "$obj"/ubox-*.o -ldl
# jshn: libubox's JSON tool, with json-c (as OpenWrt builds it)
for f in blobmsg_json jshn; do
  cc "${cflags[@]}" -DJSONC -I/usr/include/json-c -c "$src/libubox/$f.c" -o "$obj/jshn-$f.o"
done
cc -o "$cache/bin/jshn" "$obj"/jshn-*.o "$obj"/ubox-*.o -ljson-c
cp "$src/libubox/sh/jshn.sh" "$cache/share/libubox/jshn.sh"
cp "$src/README.md" "$cache/licenses/libuci-sys-README.md"
rm -rf "$obj" "$cache/fetch/target"
# the tool answers: `uci` with no argument prints its usage and exits 255
"$cache/bin/uci" 2>&1 | grep -q '^Usage: ' || { echo "build.sh: the built uci does not run" >&2; exit 1; }
[ "$("$cache/bin/jshn" -r '{"a":1}')" = "$(printf "json_init;\njson_add_int 'a' 1;")" ] || { echo "build.sh: the built jshn does not run" >&2; exit 1; }
echo "$recipe" > "$cache.complete"
echo "$cache"
