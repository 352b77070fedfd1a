#!/usr/bin/env bash
# Installs and builds everything the test suite and the lab need, idempotently:
# Debian packages, the Go-built kube-apiserver/kubectl/etcd and cnitool, the guest
# kernel + initramfs. Fast when everything is already there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: must run as root (network namespaces, QEMU, apt)" >&2
    exit 1
fi

# Debian packages: iproute2 (ip netns), the reference CNI plugins (differential
# tests and the benchmark anchor), QEMU + busybox-static + cpio (guests), openssl
# (test-bed certificates), procps/psmisc (process checks), jq. The cluster
# bed (tests/cluster/): containerd + runc (one runtime per node), socat (the
# root namespace's way to the apiserver), iptables (the kubernetes Service
# in each node), mmdebstrap (the mignet image from Debian packages).
pkgs=(iproute2 containernetworking-plugins qemu-system-x86 qemu-utils busybox-static cpio
      openssl procps psmisc jq curl ca-certificates gcc libc6-dev chromium chromium-driver
      containerd runc socat iptables mmdebstrap)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Earlier versions of the tool builds kept Go's build cache (about 3 GB) in
# the cache; the builds now use a throwaway one, so free the disk.
rm -rf "${MIGNET_CACHE:-$HOME/.cache/mignet}/go/build"

# Go-built test tooling (cached under ${MIGNET_CACHE:-~/.cache/mignet}) and the
# guest image. `--lab` prepares only what the lab demo needs (no Kubernetes build).
steps=("$here/guest/build.sh")
if [ "${1:-}" != "--lab" ]; then
    steps+=("$here/k8s/build.sh" "$here/tools/build-cnitool.sh" "$here/tools/build-multus.sh")
fi
for s in "${steps[@]}"; do
    if [ -x "$s" ] || [ -f "$s" ]; then
        echo "setup: $s"
        bash "$s"
    else
        echo "setup: missing $s" >&2
        exit 1
    fi
done
echo "setup: done ($root)"
