#!/usr/bin/env bash
# Build two 32-bit ARM pairs from public packages, outside the public corpus (which has
# none with much new code): $CORPUS_ROOT/arm32/<pair>/{old,new}. Same helpers, cache and
# FORCE=1 as corpus-public.sh; needs root for the armhf apt-get download, and npm.
#   A1 esbuild-arm     npm @esbuild/linux-arm 0.26.0 -> 0.27.0, bin/esbuild (Go, A32 code)
#   A2 libcrypto-armhf armhf libssl3 3.0.17-1~deb12u2 -> 3.0.20-1~deb12u2,
#                      usr/lib/arm-linux-gnueabihf/libcrypto.so.3 (C, Thumb-2 code)
# Run the side-by-side benchmark on them with
#   python3 benches/peers/run.py --corpus "$CORPUS_ROOT/arm32"
# Debian keeps only the current point releases in its archive: when A2's versions are
# gone, pick the two newest `apt-cache madison libssl3` lists for armhf.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/corpus-lib.sh"
SET=$CORPUS_ROOT/arm32
mkdir -p "$SET"
W=$(mktemp -d /tmp/corpus-arm32.XXXXXX); trap 'rm -rf "$W"' EXIT

if pair_needed "$SET" A1-esbuild-arm; then
  log "A1 esbuild-arm"
  pair_put "$SET" A1-esbuild-arm \
    "$(npm_get @esbuild/linux-arm 0.26.0)/bin/esbuild" \
    "$(npm_get @esbuild/linux-arm 0.27.0)/bin/esbuild"
fi

if pair_needed "$SET" A2-libcrypto-armhf; then
  log "A2 libcrypto-armhf"
  for v in old:3.0.17-1~deb12u2 new:3.0.20-1~deb12u2; do
    deb_unpack "$(deb_get armhf libssl3 "${v#*:}")" "$W/a2/${v%%:*}"
  done
  f=usr/lib/arm-linux-gnueabihf/libcrypto.so.3
  pair_put "$SET" A2-libcrypto-armhf "$W/a2/old/$f" "$W/a2/new/$f"
fi
log "arm32 pairs in $SET"
