#!/usr/bin/env bash
# Tear a cluster bed down: every process in its namespaces or cgroups, its
# cgroups, its network namespaces and its state directory. Idempotent, and
# safe after a crash of up.sh, of a test or of the machine's session:
#
#   tests/cluster/down.sh STATE_DIR...   those beds
#   tests/cluster/down.sh                every bed on this machine: state dirs
#                                        /tmp/mignet-cluster.* and any mgc*
#                                        namespace or cgroup without one
# Exits non-zero when something could not be removed, naming it.
set -uo pipefail
CLUSTER_SCRIPT=down
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

[[ $(id -u) == 0 ]] || die "must run as root"
failed=0

# Kill every pid the function prints, TERM first and KILL after 5 s, until
# none is left (a dying kubelet may still start a container).
kill_all() { # kill_all WHAT FN ARGS...
    local what=$1 pids round
    shift
    for round in $(seq 1 20); do
        mapfile -t pids < <("$@" | sort -u)
        ((${#pids[@]} == 0)) && return 0
        if ((round == 1)); then kill -TERM "${pids[@]}" 2>/dev/null; sleep 1
        elif ((round < 6)); then sleep 1
        else kill -KILL "${pids[@]}" 2>/dev/null; sleep 0.5
        fi
    done
    mapfile -t pids < <("$@" | sort -u)
    ((${#pids[@]} == 0)) && return 0
    log "could not stop processes of $what: ${pids[*]}"
    failed=1
}

# Processes of bed ID whose state dir is gone: by namespace name, cgroup,
# and (the root namespace's apiserver relay) the socket name.
orphan_pids() { # orphan_pids ID
    local id=$1 inodes="" f p ino
    for f in /run/netns/mgc"$id"-*; do
        [[ -e $f ]] && inodes+=" $(stat -L -c %i "$f")"
    done
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        ino=$(stat -L -c %i "/proc/$p/ns/net" 2>/dev/null) || continue
        if [[ " $inodes " == *" $ino "* ]] || grep -q ":/mgc$id-n[0-9]*\(/\|$\)" "/proc/$p/cgroup" 2>/dev/null; then
            echo "$p"
        # The root namespace's relay to the apiserver: its socket names the bed.
        elif { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -q "/api-mgc$id\.sock"; then
            echo "$p"
        fi
    done
}

remove_cgroups() { # remove_cgroups ID
    local id=$1 h d
    while read -r h; do
        for d in "$h"/mgc"$id"-n*; do
            [[ -d $d ]] || continue
            # Depth first: a cgroup directory goes only when it has no children.
            find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
            [[ ! -d $d ]] || { log "could not remove cgroup $d"; failed=1; }
        done
    done < <(cgroup_hierarchies)
}

remove_netns() { # remove_netns ID
    local f
    for f in /run/netns/mgc"$1"-*; do
        [[ -e $f ]] || continue
        ip netns del "$(basename "$f")" 2>/dev/null || { log "could not delete netns $(basename "$f")"; failed=1; }
    done
}

down_bed() { # down_bed STATE
    local state=$1 id f p
    [[ -f $state/.mignet-cluster ]] || { log "$state is not a cluster bed; not touching it"; failed=1; return; }
    id=$(cat "$state/id" 2>/dev/null || true)
    log "bed ${id:-?} in $state"
    # The root-namespace end of the apiserver relay lives outside the bed's
    # namespaces: by pid file, only while its command line names this bed.
    for f in "$state"/cp/relay-root.pid; do
        [[ -f $f ]] || continue
        p=$(cat "$f")
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$state" && kill -TERM "$p" 2>/dev/null
    done
    if [[ -n $id ]]; then
        kill_all "bed $id" bed_pids "$state"
        remove_cgroups "$id"
        remove_netns "$id"
    fi
    rm -rf "$state" || { log "could not remove $state"; failed=1; }
}

if (($# > 0)); then
    for s in "$@"; do
        [[ -e $s ]] || continue
        down_bed "$(cd "$s" && pwd)"
    done
else
    for s in /tmp/mignet-cluster.*; do
        [[ -f $s/.mignet-cluster ]] && down_bed "$s"
    done
    # Leftovers of beds whose state dir is gone.
    ids=$( (ls /run/netns 2>/dev/null; cgroup_hierarchies | while read -r h; do ls "$h"; done) |
        sed -n 's/^mgc\([0-9a-f]\{4\}\)-.*/\1/p' | sort -u)
    for id in $ids; do
        log "orphaned bed $id"
        kill_all "orphaned bed $id" orphan_pids "$id"
        remove_cgroups "$id"
        remove_netns "$id"
    done
fi
exit "$failed"
