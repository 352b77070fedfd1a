#!/usr/bin/env bash
# Everything a cluster bed runs, built or taken from the cache:
#   - kube-apiserver, kubectl, etcd, kubelet, kube-controller-manager,
#     kube-scheduler (tests/k8s/build.sh, one Go build from the module proxy)
#   - Multus' thin plugin (tests/tools/build-multus.sh)
#   - our release binaries (cargo build --release)
#   - the lab guest (tests/guest/build.sh), which the mignet image carries
#     for launcher pods of VMIs without disks
#   - the mignet image and the sandbox (pause) image as OCI archives
#     (deploy/image/build.sh: Debian packages through mmdebstrap, no registry)
#
#   tests/cluster/build.sh          build, print a summary
#   tests/cluster/build.sh --env    build, print KEY=VALUE lines for eval (up.sh)
# MIGNET_CLUSTER_NO_CARGO=1 skips the cargo build (binaries already there).
set -euo pipefail
CLUSTER_SCRIPT=build
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

CACHE=${MIGNET_CACHE:-$HOME/.cache/mignet}
t=$SECONDS
K8S_BIN=$("$ROOT/tests/k8s/build.sh" | tail -n1)
MULTUS=$("$ROOT/tests/tools/build-multus.sh" | tail -n1)
if [[ ${MIGNET_CLUSTER_NO_CARGO:-0} != 1 ]]; then
    log "cargo build --release (mignet, mignet-cni)"
    (cd "$ROOT" && cargo build --release --locked -p mignet -p mignet-cni) >&2
fi
# The guest's kernel and initramfs go into the image (MIGNET_GUEST_DIR).
GUEST_ENV=$("$ROOT/tests/guest/build.sh")
VMLINUZ=$(sed -n 's/^VMLINUZ=//p' <<<"$GUEST_ENV")
INITRAMFS=$(sed -n 's/^INITRAMFS=//p' <<<"$GUEST_ENV")
GUEST_DIR=$(dirname "$VMLINUZ")
[[ -s $VMLINUZ && -s $INITRAMFS && $(dirname "$INITRAMFS") == "$GUEST_DIR" ]] ||
    die "tests/guest/build.sh printed no usable guest: $GUEST_ENV"
IMAGES=$CACHE/cluster/images
mkdir -p "$IMAGES"
# One builder at a time writes the archives.
exec 8>"$IMAGES/.lock"
flock 8
MIGNET_GUEST_DIR=$GUEST_DIR "$ROOT/deploy/image/build.sh" "$IMAGES" "${CARGO_TARGET_DIR:-$ROOT/target}/release" >/dev/null
[[ -f $IMAGES/mignet.oci.tar && -f $IMAGES/pause.oci.tar ]] || die "deploy/image/build.sh wrote no archives to $IMAGES"
log "built in $((SECONDS - t))s"

if [[ ${1:-} == --env ]]; then
    printf 'K8S_BIN=%q\nMULTUS=%q\n' "$K8S_BIN" "$MULTUS"
    printf 'PAUSE_ARCHIVE=%q\nPAUSE_IMAGE=%q\n' "$IMAGES/pause.oci.tar" "${MIGNET_PAUSE_NAME:-mignet.local/pause:bed}"
    printf 'MIGNET_ARCHIVE=%q\n' "$IMAGES/mignet.oci.tar"
else
    echo "kubernetes: $K8S_BIN"
    echo "multus:     $MULTUS"
    echo "images:     $IMAGES/mignet.oci.tar $IMAGES/pause.oci.tar"
fi
