#!/usr/bin/env bash
# Proves build.sh's archives work: starts a throwaway containerd (Debian's
# containerd + runc), imports both archives with import.sh, lists them, runs
# each image once with `ctr run --rm`, then stops containerd and removes
# everything it made.
#
#   sudo deploy/image/verify.sh ARCHIVE_DIR      # holds mignet.oci.tar, pause.oci.tar
#
# Isolation: containerd's root, state and socket live in a temp dir; the whole
# run happens in a private mount namespace with a tmpfs over /run, because
# containerd 1.6's shims and runc keep /run/containerd/{s,runc} and ctr its
# FIFOs in /run/containerd/fifo whatever --state says; containers get cgroups
# under /mignet-image-verify, removed at the end. The host's /run/containerd
# and /var/lib/containerd are never touched.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
die() { printf 'verify.sh: %s\n' "$*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 ARCHIVE_DIR"
dir="$(cd "$1" && pwd)"
[ "$(id -u)" = 0 ] || die "must run as root"

if [ -z "${MIGNET_VERIFY_INNER:-}" ]; then
    for tool in containerd ctr runc; do
        command -v "$tool" >/dev/null && continue
        echo "verify.sh: installing containerd and runc (Debian)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc >&2
        break
    done
    exec unshare --mount --propagation private env MIGNET_VERIFY_INNER=1 "$0" "$dir"
fi

mount -t tmpfs -o mode=0755 tmpfs /run
D="$(mktemp -d /tmp/mignet-image-verify.XXXXXX)"
sock="$D/containerd.sock"
cg=/mignet-image-verify
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    for c in /sys/fs/cgroup/*"$cg"; do
        [ -d "$c" ] || continue
        find "$c" -depth -mindepth 1 -type d -exec rmdir {} + 2>/dev/null || true
        rmdir "$c" 2>/dev/null || echo "verify.sh: could not remove cgroup $c" >&2
    done
    rm -rf "$D"
}
trap cleanup EXIT

cat >"$D/config.toml" <<EOF
version = 2
root = "$D/root"
state = "$D/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/opt"
EOF
containerd --config "$D/config.toml" >"$D/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$D/containerd.log" >&2; die "containerd did not start"; }
ctr=(ctr --address "$sock" -n k8s.io)
echo "== containerd $(ctr --address "$sock" version | awk '/Server/{s=1} s && /Version/{print $2; exit}') in $D"

echo "== import.sh"
ts=$(date +%s%N)
"$here/import.sh" "$sock" "$dir/mignet.oci.tar" "$dir/pause.oci.tar"
echo "   ($(( ($(date +%s%N) - ts) / 1000000 )) ms)"
"${ctr[@]}" images ls
"${ctr[@]}" snapshots usage

mignet=docker.io/library/mignet:dev
pause=mignet.local/pause:bed
run() { local id="$1"; shift; "${ctr[@]}" run --rm --cgroup "$cg/$id" "$@"; }

echo "== $mignet: mignet --version; the CNI binaries; the shell, iproute2, QEMU"
run v1 "$mignet" v1 mignet --version
run v2 --env CNI_COMMAND=VERSION "$mignet" v2 /bin/sh -ec '
    echo "{\"cniVersion\":\"1.0.0\"}" | mignet-macvlan; echo
    echo "{\"cniVersion\":\"1.0.0\"}" | mignet-ipam; echo'
run v3 "$mignet" v3 /bin/sh -ec '
    mkdir -p /tmp/cni; cp /usr/local/bin/mignet-ipam /tmp/cni/.t; chmod 0755 /tmp/cni/.t
    mv -f /tmp/cni/.t /tmp/cni/mignet-ipam; sleep 0.1
    printf "%s\n" "installer shell steps: ok (debian $(cat /etc/debian_version))"
    ip -V
    echo "CA certificates: $(ls /etc/ssl/certs | wc -l)"
    qemu-img --version | head -1
    printf "%s\n" "{\"execute\":\"qmp_capabilities\"}" "{\"execute\":\"query-status\"}" "{\"execute\":\"quit\"}" |
        timeout 60 qemu-system-x86_64 -machine q35,accel=tcg -m 64 -display none -nodefaults -S -qmp stdio |
        grep -q prelaunch
    echo "qemu-system-x86_64 $(qemu-system-x86_64 --version | head -1 | cut -d" " -f4): starts, answers QMP, quits"'

echo "== $pause: started, then SIGTERM and SIGINT"
for sig in TERM INT; do
    id="p-$(echo "$sig" | tr A-Z a-z)"
    run "$id" "$pause" "$id" &
    runner=$!
    for _ in $(seq 100); do "${ctr[@]}" task ls -q | grep -qx "$id" && break; sleep 0.1; done
    sleep 0.5
    ts=$(date +%s%N)
    "${ctr[@]}" task kill -s "SIG$sig" "$id"
    rc=0; wait "$runner" || rc=$?
    echo "SIG$sig: ctr run --rm returned $rc after $(( ($(date +%s%N) - ts) / 1000000 )) ms"
    [ "$rc" = 0 ] || die "pause did not exit 0 on SIG$sig"
done
echo "== ok"
