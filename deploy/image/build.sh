#!/usr/bin/env bash
# Builds the mignet image and the test bed's sandbox (pause) image as OCI image
# archives, without any container registry: the Debian part comes from the
# Debian mirror through mmdebstrap, our part from the release binaries.
#
#   deploy/image/build.sh [--only mignet|pause] OUT_DIR [BIN_DIR]
#
#   OUT_DIR  where the archives go (created if missing):
#              OUT_DIR/mignet.oci.tar  docker.io/library/mignet:dev  (`image: mignet:dev`)
#              OUT_DIR/pause.oci.tar   mignet.local/pause:bed        (sandbox_image)
#   BIN_DIR  holds mignet, mignet-macvlan, mignet-ipam
#            (default: ${CARGO_TARGET_DIR:-<repo>/target}/release). This script
#            never runs cargo: build them first with
#            `cargo build --release -p mignet -p mignet-cni --locked`.
#
# stdout: the archive paths, one per line (nothing else). stderr: progress
# with timings. Import them with deploy/image/import.sh.
#
# mignet.oci.tar has two layers: the Debian rootfs (debian bookworm, variant
# apt as in debian:bookworm-slim, plus deploy/image/packages.txt, no
# recommends, no docs/man/locales), cached under
# ${MIGNET_CACHE:-~/.cache/mignet}/image/ and keyed by the package list, the
# suite and the mirrors; and a small layer with /usr/local/bin/{mignet,
# mignet-macvlan,mignet-ipam} and, with MIGNET_GUEST_DIR, the lab guest in
# /usr/share/mignet/guest/{vmlinuz,initramfs.img} (what `mignet launcher`
# boots for a VMI without disks), rebuilt on every run. Delete the cache
# directory (or change packages.txt) to pick up newer Debian packages.
#
# Environment (all optional):
#   MIGNET_CACHE                 cache root (default ~/.cache/mignet)
#   MIGNET_IMAGE_SUITE           Debian suite (default bookworm)
#   MIGNET_DEBIAN_MIRROR         default http://deb.debian.org/debian
#   MIGNET_DEBIAN_SECURITY       default http://deb.debian.org/debian-security
#   MIGNET_IMAGE_NAME            default docker.io/library/mignet:dev
#   MIGNET_PAUSE_NAME            default mignet.local/pause:bed
#   MIGNET_PAUSE_IMPL            c (default when gcc -static works) or busybox
#   MIGNET_GUEST_DIR             a directory with vmlinuz and initramfs.img (the
#                                lab guest, tests/guest/build.sh) to put into
#                                the image at /usr/share/mignet/guest/; unset:
#                                no guest (launchers then need a boot disk)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

t0=$EPOCHREALTIME
usec() { local t="${1//[.,]/}"; echo $((10#$t)); }
elapsed() { local d=$(($(usec "$EPOCHREALTIME") - $(usec "$1"))); printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000)); }
log() { printf 'build.sh [%6ss] %s\n' "$(elapsed "$t0")" "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

only=""
if [ "${1:-}" = --only ]; then
    only="${2:-}"
    case "$only" in mignet|pause) ;; *) die "--only takes mignet or pause" ;; esac
    shift 2
fi
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 [--only mignet|pause] OUT_DIR [BIN_DIR]"
out_dir="$1"
bin_dir="${2:-${CARGO_TARGET_DIR:-$root/target}/release}"

suite="${MIGNET_IMAGE_SUITE:-bookworm}"
mirror="${MIGNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${MIGNET_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
image_name="${MIGNET_IMAGE_NAME:-docker.io/library/mignet:dev}"
pause_name="${MIGNET_PAUSE_NAME:-mignet.local/pause:bed}"
cache="${MIGNET_CACHE:-$HOME/.cache/mignet}/image"
bins=(mignet mignet-macvlan mignet-ipam)
guest_dir="${MIGNET_GUEST_DIR:-}"
guest_files=(vmlinuz initramfs.img)

# Fail before any slow step when a binary is missing.
if [ "$only" != pause ]; then
    missing=()
    for b in "${bins[@]}"; do [ -x "$bin_dir/$b" ] || missing+=("$bin_dir/$b"); done
    [ ${#missing[@]} -eq 0 ] || die "missing release binaries: ${missing[*]}
  build them first: cargo build --release -p mignet -p mignet-cni --locked
  (or pass their directory as BIN_DIR)"
    if [ -n "$guest_dir" ]; then
        missing=()
        for f in "${guest_files[@]}"; do [ -s "$guest_dir/$f" ] || missing+=("$guest_dir/$f"); done
        [ ${#missing[@]} -eq 0 ] || die "MIGNET_GUEST_DIR: missing ${missing[*]}
  build the lab guest first: tests/guest/build.sh (prints its directory's files)"
    fi
fi
for tool in tar gzip sha256sum flock; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

mkdir -p "$out_dir" "$cache"
out_dir="$(cd "$out_dir" && pwd)"
work="$(mktemp -d "$out_dir/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
# det_tar DIR TAR: deterministic tar of DIR's entries (root-owned, fixed mtime,
# sorted), without a "./" entry that would reset the rootfs root's mode.
det_tar() {
    # shellcheck disable=SC2046  # entry names are ours, without spaces
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$1" -cf "$2" $(ls -A "$1")
}
# make_layer TAR DIR CREATED_BY: gzip TAR into DIR/layer.tar.gz and record the
# OCI facts of the layer next to it (digest, diff_id, size, created_by).
make_layer() {
    local tarf="$1" dir="$2"
    mkdir -p "$dir"
    echo "sha256:$(sha "$tarf")" >"$dir/diff_id"
    gzip -n -6 -c "$tarf" >"$dir/layer.tar.gz"
    echo "sha256:$(sha "$dir/layer.tar.gz")" >"$dir/digest"
    stat -c %s "$dir/layer.tar.gz" >"$dir/size"
    echo "$3" >"$dir/created_by"
    now >"$dir/created"
}
# blob: stdin into the layout's blobs/sha256/; prints "sha256:HEX SIZE".
blob() {
    local f="$work/blob.tmp" d
    cat >"$f"
    d="$(sha "$f")"
    mv "$f" "$layout/blobs/sha256/$d"
    echo "sha256:$d $(stat -c %s "$layout/blobs/sha256/$d")"
}
# make_image OUT_TAR REF CONFIG_EXTRA LAYER_DIR...: an OCI image layout tarball
# (oci-layout, index.json, blobs/sha256/*) with one linux/amd64 manifest.
# CONFIG_EXTRA is the JSON body of the config's "config" object. index.json
# names the manifest with io.containerd.image.name (the full reference ctr
# import registers) and org.opencontainers.image.ref.name (the tag, as
# containerd's own exports do).
make_image() {
    local out="$1" ref="$2" cfg="$3"; shift 3
    layout="$work/layout.$(basename "$out")"
    rm -rf "$layout"
    mkdir -p "$layout/blobs/sha256"
    local diff_ids="" layers="" history="" sep="" l d
    for l in "$@"; do
        d="$(cat "$l/digest")"
        ln "$l/layer.tar.gz" "$layout/blobs/sha256/${d#sha256:}" 2>/dev/null ||
            cp "$l/layer.tar.gz" "$layout/blobs/sha256/${d#sha256:}"
        diff_ids+="$sep\"$(cat "$l/diff_id")\""
        layers+="$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$(cat "$l/size")}"
        history+="$sep{\"created\":\"$(cat "$l/created")\",\"created_by\":\"$(cat "$l/created_by")\"}"
        sep=,
    done
    local config manifest
    config=$(printf '{"created":"%s","architecture":"amd64","os":"linux","config":{%s},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
        "$(now)" "$cfg" "$diff_ids" "$history" | blob)
    manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
        "${config% *}" "${config#* }" "$layers" | blob)
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "${manifest% *}" "${manifest#* }" "$ref" "${ref##*:}" >"$layout/index.json"
    tar --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out.tmp.$$" oci-layout index.json blobs
    mv -f "$out.tmp.$$" "$out"
    rm -rf "$layout"
    log "wrote $out ($(du -h "$out" | cut -f1), $ref, manifest ${manifest% *})"
}

results=()

# ---- mignet image -----------------------------------------------------------
if [ "$only" != pause ]; then
    pkgs="$(sed -e 's/#.*//' "$here/packages.txt" | tr -s ' \t\n' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
    [ -n "$pkgs" ] || die "$here/packages.txt lists no packages"
    sources=("deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main")
    # The same dpkg filters as debian:*-slim (debuerreotype's slimify) keep docs,
    # man pages and translations out; they stay in the image's dpkg config.
    dpkgopts=()
    for p in /usr/share/doc/ /usr/share/man/ /usr/share/info/ /usr/share/locale/ \
             /usr/share/groff/ /usr/share/lintian/ /usr/share/linda/; do
        dpkgopts+=("--dpkgopt=path-exclude=$p*")
    done
    dpkgopts+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    # Bump when the way the rootfs is made changes (invalidates the cache).
    recipe="rootfs-v1 variant=apt hook=merged-usr $suite ${sources[*]} ${dpkgopts[*]} no-recommends skip=output/dev include=$pkgs"
    key="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
    rootfs="$cache/rootfs-$suite-$key"

    exec 9>"$cache/.lock"
    ts=$EPOCHREALTIME
    flock 9
    [ "$(elapsed "$ts")" = 0.0 ] || log "waited $(elapsed "$ts")s for $cache/.lock"
    if [ -f "$rootfs/done" ]; then
        log "rootfs layer: cached ($rootfs, $(du -h "$rootfs/layer.tar.gz" | cut -f1))"
    else
        if ! command -v mmdebstrap >/dev/null; then
            log "installing mmdebstrap"
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >&2
        fi
        ts=$EPOCHREALTIME
        log "rootfs layer: mmdebstrap $suite + $pkgs (cold; about a minute)"
        tmp="$cache/.rootfs.$$"
        rm -rf "$tmp" && mkdir -p "$tmp"
        # The merged-usr hook makes the /usr symlinks itself and installs
        # usr-is-merged (as debian:bookworm-slim has): without it apt picks
        # usrmerge, which drags in perl (~50 MB) for a conversion never needed.
        mmdebstrap --variant=apt --format=tar --skip=output/dev \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --aptopt='APT::Install-Recommends "false"' --aptopt='APT::Install-Suggests "false"' \
            "${dpkgopts[@]}" --include="$pkgs" \
            --customize-hook="chroot \"\$1\" dpkg-query -W -f='\${Package} \${Version}\n' > '$tmp/packages.lock'" \
            "$suite" "$tmp/rootfs.tar" "${sources[@]}" >&2
        log "rootfs layer: mmdebstrap done in $(elapsed "$ts")s ($(du -h "$tmp/rootfs.tar" | cut -f1) uncompressed, $(wc -l <"$tmp/packages.lock") packages); compressing"
        make_layer "$tmp/rootfs.tar" "$tmp/layer" "mmdebstrap --variant=apt $suite --include=$pkgs"
        mv "$tmp/packages.lock" "$tmp/layer/"
        stat -c %s "$tmp/rootfs.tar" >"$tmp/layer/size.uncompressed"
        printf '%s\n' "$recipe" >"$tmp/layer/recipe"
        rm -f "$tmp/rootfs.tar"
        touch "$tmp/layer/done"
        # Older recipes' layers are dead weight (about 100 MB each).
        for old in "$cache"/rootfs-*; do [ -e "$old" ] && rm -rf "$old"; done
        mv "$tmp/layer" "$rootfs"
        rm -rf "$tmp"
        log "rootfs layer: built in $(elapsed "$ts")s ($(du -h "$rootfs/layer.tar.gz" | cut -f1) gzip) -> $rootfs"
    fi
    exec 9>&-

    ts=$EPOCHREALTIME
    stage="$work/bins"
    mkdir -p "$stage/usr/local/bin"
    chmod 0755 "$stage" "$stage/usr" "$stage/usr/local" "$stage/usr/local/bin"
    for b in "${bins[@]}"; do install -m 0755 "$bin_dir/$b" "$stage/usr/local/bin/$b"; done
    created_by="COPY mignet mignet-macvlan mignet-ipam /usr/local/bin/"
    if [ -n "$guest_dir" ]; then
        # The guest rides in the same small layer: it changes with the
        # binaries (tests/guest/build.sh), never with the Debian packages.
        mkdir -p "$stage/usr/share/mignet/guest"
        chmod 0755 "$stage/usr/share" "$stage/usr/share/mignet" "$stage/usr/share/mignet/guest"
        for f in "${guest_files[@]}"; do install -m 0644 "$guest_dir/$f" "$stage/usr/share/mignet/guest/$f"; done
        created_by="$created_by; COPY vmlinuz initramfs.img /usr/share/mignet/guest/"
    fi
    det_tar "$stage" "$work/bins.tar"
    make_layer "$work/bins.tar" "$work/binlayer" "$created_by"
    log "binaries layer${guest_dir:+ + guest}: $(du -h "$work/binlayer/layer.tar.gz" | cut -f1) gzip in $(elapsed "$ts")s"
    make_image "$out_dir/mignet.oci.tar" "$image_name" \
        '"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/usr/local/bin/mignet"]' \
        "$rootfs" "$work/binlayer"
    results+=("$out_dir/mignet.oci.tar")
fi

# ---- pause (sandbox) image -------------------------------------------------
if [ "$only" != mignet ]; then
    ts=$EPOCHREALTIME
    stage="$work/pause"
    mkdir -p "$stage"
    impl="${MIGNET_PAUSE_IMPL:-}"
    if [ -z "$impl" ]; then
        impl=busybox
        command -v gcc >/dev/null && [ -e /usr/lib/x86_64-linux-gnu/libc.a ] && impl=c
    fi
    case "$impl" in
    c)
        gcc -static -Os -s -o "$stage/pause" "$here/pause.c"
        ;;
    busybox)
        # PID 1 ignores signals it has no handler for: the trap makes SIGTERM
        # end it at once, and `wait` returns as soon as a trapped signal comes.
        [ -x /bin/busybox ] || die "no gcc -static and no /bin/busybox: apt-get install busybox-static"
        ! ldd /bin/busybox >/dev/null 2>&1 || die "/bin/busybox is dynamically linked: apt-get install busybox-static"
        mkdir -p "$stage/bin"
        cp /bin/busybox "$stage/bin/busybox"
        ln -s busybox "$stage/bin/sh"
        printf '%s\n' '#!/bin/busybox sh' "trap 'exit 0' TERM INT" \
            'while :; do /bin/busybox sleep 86400 & wait $!; done' >"$stage/pause"
        chmod 0755 "$stage/pause"
        ;;
    *) die "MIGNET_PAUSE_IMPL must be c or busybox" ;;
    esac
    det_tar "$stage" "$work/pause.tar"
    make_layer "$work/pause.tar" "$work/pauselayer" "pause ($impl)"
    log "pause layer ($impl): built in $(elapsed "$ts")s"
    make_image "$out_dir/pause.oci.tar" "$pause_name" '"Entrypoint":["/pause"]' "$work/pauselayer"
    results+=("$out_dir/pause.oci.tar")
fi

log "done"
printf '%s\n' "${results[@]}"
