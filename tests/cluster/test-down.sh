#!/usr/bin/env bash
# down.sh after a crash: nothing of the bed may remain (tests/run.sh runs
# this after the end-to-end test).
#   1. the runner died: a bed is up, one kubelet and one containerd were
#      SIGKILLed mid-flight, nobody ran down; `down.sh` without arguments
#      finds the bed by its state directory;
#   2. the state directory is gone too: `down.sh` without arguments finds
#      the bed by its namespace and cgroup names alone.
# Both times leftovers.sh must find nothing.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
passed=0
fail() {
    echo "FAIL: $*" >&2
    echo "test-down: $passed passed, 1 failed"
    exit 1
}
bed() { # bed: up a bed, print its state dir
    local env
    env=$("$HERE/up.sh") || fail "up.sh"
    sed -n 's/^export MIGNET_CLUSTER_STATE=//p' "$env"
}

state=$(bed)
kill -KILL "$(cat "$state/nodes/node1/kubelet.pid")" "$(cat "$state/nodes/node2/containerd.pid")"
"$HERE/down.sh" || fail "down.sh after a killed runner exited non-zero"
out=$("$HERE/leftovers.sh") || fail "after a killed runner, down.sh left: $out"
passed=$((passed + 1))
echo "ok: a bed whose runner died is gone without a trace"

state=$(bed)
# The state directory goes while the bed runs (the node roots inside it are
# busy only in the nodes' own mount namespaces, so the root can delete it).
lost=$(mktemp -d /tmp/lost-bed.XXXXXX)
mv "$state" "$lost/"
"$HERE/down.sh" || fail "down.sh after a lost state directory exited non-zero"
rm -rf "$lost"
out=$("$HERE/leftovers.sh") || fail "after a lost state directory, down.sh left: $out"
passed=$((passed + 1))
echo "ok: a bed whose state directory was lost is gone without a trace"
echo "test-down: $passed passed, 0 failed"
