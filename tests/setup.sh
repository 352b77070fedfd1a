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
# in each node), mmdebstrap (the mignet image from Debian packages). The
# reliability suite (manager/tests/lab_faults.rs): nftables (dropping the
# migration segment's packets), ss from iproute2, mount from util-linux.
pkgs=(iproute2 containernetworking-plugins qemu-system-x86 qemu-utils busybox-static cpio
      openssl procps psmisc jq curl ca-certificates gcc libc6-dev chromium chromium-driver
      containerd runc socat iptables mmdebstrap nftables util-linux)
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

# Fuzzing (tests/fuzz/): cargo-afl and the AFL++ it builds from the sources it
# ships (stable Rust; no nightly, no download besides the crate), cached under
# ${MIGNET_CACHE:-~/.cache/mignet}/fuzz; AFL++ is rebuilt only for a new rustc.
# The version must match the `afl` crate in tests/fuzz/Cargo.lock.
afl_version=0.18.2
fuzz_cache="${MIGNET_CACHE:-$HOME/.cache/mignet}/fuzz"
if ! grep -qx "cargo-afl $afl_version.*" "$fuzz_cache/cargo-afl/version" 2>/dev/null \
    || [ ! -x "$fuzz_cache/cargo-afl/bin/cargo-afl" ]; then
    echo "setup: cargo-afl $afl_version"
    cargo install --quiet --locked cargo-afl --version "$afl_version" \
        --root "$fuzz_cache/cargo-afl" --target-dir "$fuzz_cache/build"
    echo "cargo-afl $afl_version" >"$fuzz_cache/cargo-afl/version"
    rm -rf "$fuzz_cache/build"
fi
rustc_version="$(rustc --version | awk '{print $2}')"
if ! compgen -G "$fuzz_cache/share/afl.rs/rustc-$rustc_version-*/afl.rs-$afl_version/afl-llvm/afl-compiler-rt.o" >/dev/null; then
    echo "setup: AFL++ for rustc $rustc_version"
    (cd "$fuzz_cache" && PATH="$fuzz_cache/cargo-afl/bin:$PATH" XDG_DATA_HOME="$fuzz_cache/share" \
        cargo afl config --build --force >/dev/null)
fi

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
