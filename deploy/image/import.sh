#!/usr/bin/env bash
# Imports OCI image archives written by deploy/image/build.sh into a containerd
# and checks that each image is listed afterwards under the name the kubelet
# resolves (`image: mignet:dev` -> docker.io/library/mignet:dev).
#
#   deploy/image/import.sh CONTAINERD_SOCKET ARCHIVE...
#
# stdout: the imported image names, one per line. stderr: ctr's output.
# Environment (optional):
#   CTR_NAMESPACE       containerd namespace (default k8s.io, the CRI plugin's)
#   MIGNET_SNAPSHOTTER  snapshotter to unpack into (default: containerd's
#                       default, overlayfs); set it to the CRI plugin's
#                       `snapshotter` if the node uses another one.
set -euo pipefail

die() { printf 'import.sh: %s\n' "$*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 CONTAINERD_SOCKET ARCHIVE..."
sock="$1"; shift
ns="${CTR_NAMESPACE:-k8s.io}"
[ -S "$sock" ] || die "$sock is not a socket (is containerd running?)"
command -v ctr >/dev/null || die "ctr not found (Debian package containerd)"
ctr=(ctr --address "$sock" -n "$ns")

for archive in "$@"; do
    [ -f "$archive" ] || die "$archive: no such file"
    # The names build.sh wrote into index.json (io.containerd.image.name).
    mapfile -t names < <(tar -xOf "$archive" index.json |
        grep -o '"io.containerd.image.name":"[^"]*"' | cut -d'"' -f4)
    [ ${#names[@]} -gt 0 ] || die "$archive: index.json names no image (io.containerd.image.name); not a build.sh archive?"
    # No naming flags needed: ctr (1.6) registers the io.containerd.image.name
    # annotation as is (no "import-DATE" alias, --base-name changes nothing).
    # The default unpack (host platform, linux/amd64) makes it runnable at once.
    snap=()
    [ -n "${MIGNET_SNAPSHOTTER:-}" ] && snap=(--snapshotter "$MIGNET_SNAPSHOTTER")
    "${ctr[@]}" images import "${snap[@]}" "$archive" >&2
    listed="$("${ctr[@]}" images ls -q)"
    for n in "${names[@]}"; do
        grep -qxF "$n" <<<"$listed" || die "$archive imported, but $n is not listed in namespace $ns"
        echo "$n"
    done
done
