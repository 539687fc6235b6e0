#!/usr/bin/env bash
# Build tar images of a small Debian armhf device root filesystem at two point releases
# (issue 20, "Archives"): $CORPUS_ROOT/rootfs/<pair>/{old,new}. Same helpers, cache and
# FORCE=1 as corpus-arm32.sh; needs root for the armhf apt-get download.
#   R1 rootfs-armhf   the packages below unpacked (dpkg-deb -x) into one directory per
#                     release and tarred reproducibly (TARFLAGS: sorted names, mtime 0,
#                     owner 0): libraries, binaries, tzdata, CA bundle, config, docs.
#   R2 rootfs-nodoc   the same trees without usr/share/{doc,man,info,locale,lintian}
#                     (what a device image usually drops; no gzipped changelogs/man pages).
# Packages with two versions in bookworm's armhf index change between old and new; the
# others (ONE) are in both trees unchanged, as in a real image.
# Run the side-by-side benchmark with
#   python3 benches/peers/run.py --corpus "$CORPUS_ROOT/rootfs"
# Debian keeps only the current point releases (main) and the newest security/updates
# versions: when a version below is gone, pick the two that
#   apt-get -oAPT::Architecture=armhf ... madison PKG  (ARMO in corpus-lib.sh) lists.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/corpus-lib.sh"
SET=$CORPUS_ROOT/rootfs
mkdir -p "$SET"
W=$(mktemp -d /tmp/corpus-rootfs.XXXXXX); trap 'rm -rf "$W"' EXIT

# package old-version new-version
TWO='
libc6            2.36-9+deb12u7          2.36-9+deb12u14
libc-bin         2.36-9+deb12u7          2.36-9+deb12u14
libssl3          3.0.20-1~deb12u2        3.0.22-1~deb12u2
openssl          3.0.20-1~deb12u2        3.0.22-1~deb12u2
zlib1g           1:1.2.13.dfsg-1         1:1.2.13.dfsg-1+deb12u1
tzdata           2026b-0+deb12u1         2026f-0+deb12u1
ca-certificates  20230311+deb12u1        20250419~deb12u2
libsystemd0      252.38-1~deb12u1        252.39-1~deb12u2
libudev1         252.38-1~deb12u1        252.39-1~deb12u2
libcurl4         7.88.1-10+deb12u5       7.88.1-10+deb12u15
curl             7.88.1-10+deb12u5       7.88.1-10+deb12u15
openssh-client   1:9.2p1-2+deb12u9       1:9.2p1-2+deb12u10
libexpat1        2.5.0-1+deb12u2         2.5.0-1+deb12u5
libxml2          2.9.14+dfsg-1.3~deb12u4 2.9.14+dfsg-1.3~deb12u6
libssh2-1        1.10.0-3+b1             1.10.0-3+deb12u1
libpam0g         1.5.2-6+deb12u2         1.5.2-6+deb12u3
libpam-modules   1.5.2-6+deb12u2         1.5.2-6+deb12u3
util-linux       2.38.1-5+deb12u1        2.38.1-5+deb12u3
libblkid1        2.38.1-5+deb12u1        2.38.1-5+deb12u3
libmount1        2.38.1-5+deb12u1        2.38.1-5+deb12u3
libuuid1         2.38.1-5+deb12u1        2.38.1-5+deb12u3
libglib2.0-0     2.74.6-2+deb12u2        2.74.6-2+deb12u9
libzstd1         1.5.4+dfsg2-5           1.5.4+dfsg2-5+deb12u1
liblzma5         5.4.1-1+deb12u1         5.4.1-1+deb12u2
libpcre2-8-0     10.42-1                 10.42-1+deb12u2
sudo             1.9.13p3-1+deb12u2      1.9.13p3-1+deb12u4
'
ONE='
libstdc++6       12.2.0-14+deb12u1
libgcc-s1        12.2.0-14+deb12u1
busybox          1:1.35.0-4+deb12u1+b1
base-files       12.4+deb12u15
dropbear-bin     2022.83-1+deb12u3
bash             5.2.15-2+b13
libsqlite3-0     3.40.1-2+deb12u2
libcap2          1:2.66-4+deb12u3+b1
libselinux1      3.4-1+b6
libgnutls30      3.7.9-2+deb12u7
'

# rootfs_tree SIDE(old|new) DIR : unpack every package's data into DIR
rootfs_tree() {
  local side=$1 dir=$2 pkg v1 v2
  rm -rf "$dir"; mkdir -p "$dir"
  while read -r pkg v1 v2; do
    [ -n "$pkg" ] || continue
    if [ "$side" = old ]; then deb_unpack "$(deb_get armhf "$pkg" "$v1")" "$dir"
    else deb_unpack "$(deb_get armhf "$pkg" "$v2")" "$dir"; fi
  done <<<"$TWO"
  while read -r pkg v1; do
    [ -n "$pkg" ] || continue
    deb_unpack "$(deb_get armhf "$pkg" "$v1")" "$dir"
  done <<<"$ONE"
}

# rootfs_tar DIR OUT : reproducible tar of DIR's contents
rootfs_tar() { tar "${TARFLAGS[@]}" -C "$1" -cf "$2" .; }

if pair_needed "$SET" R1-rootfs-armhf || pair_needed "$SET" R2-rootfs-nodoc; then
  for side in old new; do
    log "rootfs $side: unpacking $(grep -c . <<<"$TWO$ONE") packages"
    rootfs_tree $side "$W/$side"
    rootfs_tar "$W/$side" "$W/r1-$side.tar"
    rm -rf "$W/$side/usr/share/"{doc,man,info,locale,lintian}
    rootfs_tar "$W/$side" "$W/r2-$side.tar"
  done
  pair_put "$SET" R1-rootfs-armhf "$W/r1-old.tar" "$W/r1-new.tar"
  pair_put "$SET" R2-rootfs-nodoc "$W/r2-old.tar" "$W/r2-new.tar"
fi
summary "$SET"
log "rootfs pairs in $SET"
