# shellcheck shell=bash
# Sourced by the e2e suites (e2e-network.sh, e2e-vm.sh, e2e-drain.sh,
# e2e-maintenance.sh) after they set SUITE: the bed's env check, kubectl on PATH, lib.sh (NODES,
# wait_until), and the counted steps every suite prints the same way, ending
# in "SUITE: N passed, M failed".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# ROOT, NS, DS and AGENTS are for the suites that source this file.
# shellcheck disable=SC2034
ROOT=$(cd "$HERE/../.." && pwd)
: "${MIGNET_CLUSTER_STATE:?run inside the bed: tests/cluster/run.sh bash $0}"
PATH=$MIGNET_K8S_BIN:$PATH
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"
# shellcheck disable=SC2034
NS=mignet-system
# shellcheck disable=SC2034
DS=mignet-agent
# shellcheck disable=SC2034
AGENTS=app.kubernetes.io/name=mignet-agent
t0=$SECONDS
passed=0
ok() {
    passed=$((passed + 1))
    printf '   ok: %s\n' "$*"
}
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    printf '%s: %d passed, 1 failed\n' "$SUITE" "$passed"
    exit 1
}
# lib.sh's helpers stop through die(): in a suite that is a counted failure.
die() { fail "$@"; }
step() { printf '\n== [%4ds] %s\n' "$((SECONDS - t0))" "$*"; }
# Every component runs under its own ServiceAccount; a request its role does
# not allow shows up as a 403 in its log (kube-rs watchers retry refused
# watches forever, so this is the only place they surface). One counted
# step over every pod of mignet's namespace; WHAT says what was exercised.
no_refusals() { # no_refusals WHAT
    local p refused
    for p in $(kubectl -n "$NS" get pods -o name); do
        refused=$(kubectl -n "$NS" logs "$p" --all-containers 2>&1 | grep -iE 'forbidden|code: 403|status: 403' | head -n 3 || true)
        [[ -z $refused ]] || fail "$p was refused by the API server: $refused"
    done
    ok "no 403 in the logs of $(kubectl -n "$NS" get pods -o name | wc -l) pods ($1)"
}
# The suite's last line when every step passed.
all_passed() {
    printf '%s: %d passed, 0 failed\n' "$SUITE" "$passed"
}
