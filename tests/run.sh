#!/usr/bin/env bash
# The README's test command: installs what the suite needs, starts a real
# kube-apiserver on loopback, runs every test of the workspace as root, stops
# the apiserver, runs the cluster end-to-end test on a multi-node bed
# (tests/cluster/), and fails if anything left a network namespace behind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: must run as root (network namespaces, QEMU); try: sudo tests/run.sh" >&2
    exit 1
fi

bash "$here/setup.sh"

netns_before="$(ip netns list 2>/dev/null | awk '{print $1}' | sort)"

state="$(mktemp -d /tmp/mignet-k8s.XXXXXX)"
cleanup() {
    bash "$here/k8s/down.sh" "$state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
bash "$here/k8s/up.sh" "$state"
# shellcheck disable=SC1091
source "$state/env"

status=0
# --no-fail-fast: one failing test binary must not hide the ones after it.
cargo test --workspace --locked --no-fail-fast -- --test-threads="${MIGNET_TEST_THREADS:-2}" || status=$?
bash "$here/k8s/down.sh" "$state" >/dev/null 2>&1 || true

# Bounded fuzzing of the parsers of hostile input (tests/fuzz/README.md):
# corpus and regressions replayed, then each AFL++ target for a fixed time.
t_fuzz=$SECONDS
if bash "$here/fuzz/run.sh"; then
    echo "tests/run.sh: fuzzing passed in $((SECONDS - t_fuzz))s"
else
    echo "tests/run.sh: fuzzing FAILED after $((SECONDS - t_fuzz))s" >&2
    status=1
fi

# Cluster mode on a real multi-node cluster (tests/cluster/README.md): the
# bed is built (Kubernetes, Multus, release binaries, the mignet image), the
# seed's network story and then the seed's VM run on it (tests/cluster/e2e.sh),
# and the bed is taken down again.
t_cluster=$SECONDS
# Built once (Kubernetes, Multus, release binaries, images) for every bed below.
if built=$(bash "$here/cluster/build.sh" --env); then
    eval "$built"
    export K8S_BIN MULTUS PAUSE_ARCHIVE PAUSE_IMAGE MIGNET_ARCHIVE
    export MIGNET_CLUSTER_PREBUILT=1
    echo "tests/run.sh: cluster bed built in $((SECONDS - t_cluster))s"
else
    echo "tests/run.sh: building the cluster bed FAILED" >&2
    status=1
fi
t_cluster=$SECONDS
if bash "$here/cluster/run.sh" bash "$here/cluster/e2e.sh"; then
    echo "tests/run.sh: cluster e2e passed in $((SECONDS - t_cluster))s"
else
    echo "tests/run.sh: cluster e2e FAILED after $((SECONDS - t_cluster))s" >&2
    status=1
fi
# Nothing of that bed may remain, and down.sh must also clean up after a crash.
bash "$here/cluster/leftovers.sh" || status=1
t_down=$SECONDS
bash "$here/cluster/test-down.sh" || status=1
echo "tests/run.sh: cluster test-down took $((SECONDS - t_down))s"

netns_after="$(ip netns list 2>/dev/null | awk '{print $1}' | sort)"
leaked="$(comm -13 <(echo "$netns_before") <(echo "$netns_after") || true)"
if [ -n "$leaked" ]; then
    echo "tests/run.sh: network namespaces left behind by the suite:" >&2
    echo "$leaked" >&2
    status=1
fi
exit "$status"
