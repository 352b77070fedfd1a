#!/usr/bin/env bash
# What a bed is doing: its nodes, pods, and each node's daemons. Uses the
# env of up.sh ($MIGNET_CLUSTER_STATE), or the state dir given.
set -uo pipefail
CLUSTER_SCRIPT=status
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

STATE=${1:-${MIGNET_CLUSTER_STATE:-}}
[[ -n $STATE && -f $STATE/.mignet-cluster ]] || die "no bed: give its state dir or source its env"
KUBECTL=$(sed -n 's/^export MIGNET_KUBECTL=//p' "$STATE/env" 2>/dev/null)
[[ -n $KUBECTL ]] || die "$STATE/env missing: the bed never came up"
echo "bed $(cat "$STATE/id") in $STATE"
for f in "$STATE"/cp/*.pid "$STATE"/nodes/*/*.pid; do
    p=$(cat "$f")
    name=${f#"$STATE"/}
    if kill -0 "$p" 2>/dev/null; then st=running; else st=DEAD; fi
    printf '  %-40s pid %-8s %s\n' "${name%.pid}" "$p" "$st"
done
"$KUBECTL" --kubeconfig "$STATE/kubeconfig" get nodes -o wide
"$KUBECTL" --kubeconfig "$STATE/kubeconfig" get pods -A -o wide
