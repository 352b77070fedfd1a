#!/usr/bin/env bash
# What a bed is doing: its nodes, pods, and each node's daemons. Uses the
# env of up.sh ($MIGNET_CLUSTER_STATE), or the state dir given.
#   tests/cluster/status.sh [STATE] [--usage SECONDS]
set -uo pipefail
CLUSTER_SCRIPT=status
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

STATE=${1:-${MIGNET_CLUSTER_STATE:-}}
[[ ${1:-} != --usage ]] || { set -- "${MIGNET_CLUSTER_STATE:-}" "$@"; STATE=$1; }
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

# --usage SECONDS: CPU (% of one core) and memory of every process of the
# bed over that window, the figure tests/cluster/README.md reports as idle.
if [[ ${2:-} == --usage ]]; then
    secs=${3:-60}
    hz=$(getconf CLK_TCK)
    ticks() { # sum of utime+stime of the bed's processes, "pid:ticks" lines
        local p
        for p in $(bed_pids "$STATE"); do
            awk -v p="$p" '{print p ":" $14 + $15}' "/proc/$p/stat" 2>/dev/null
        done
    }
    before=$(ticks)
    sleep "$secs"
    after=$(ticks)
    used=$(join -t: <(sort <<<"$before") <(sort <<<"$after") | awk -F: '{s += $3 - $2} END {print s + 0}')
    rss=$(for p in $(bed_pids "$STATE"); do awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done |
        awk '{s += $1} END {printf "%.0f", s / 1024}')
    nproc_bed=$(bed_pids "$STATE" | wc -l)
    awk -v u="$used" -v hz="$hz" -v s="$secs" -v r="$rss" -v n="$nproc_bed" \
        'BEGIN {printf "usage over %ds: %.1f%% of one core, %d processes, %d MiB resident (sum of RSS)\n", s, 100 * u / hz / s, n, r}'
fi
