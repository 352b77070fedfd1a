#!/usr/bin/env bash
# Stop a test bed started by up.sh and delete its state dir.
#
#   tests/k8s/down.sh [STATE_DIR]     (default: $MIGNET_K8S_STATE)
#
# Idempotent: a missing dir, dead or recycled pids and a second call are all
# fine. It only kills pids recorded in the state dir whose command line names
# that dir, and only deletes a dir that up.sh marked as its own.
set -euo pipefail
K8S_SCRIPT=down
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

STATE=${1:-${MIGNET_K8S_STATE:-}}
if [[ -z $STATE ]]; then
    log "no state dir given and MIGNET_K8S_STATE unset; nothing to do"
    exit 0
fi
if [[ ! -d $STATE ]]; then
    log "$STATE is gone already; nothing to do"
    exit 0
fi
if [[ -z "$(ls -A "$STATE")" ]]; then
    # up.sh failed before it wrote anything (or a caller's mktemp -d).
    rmdir "$STATE"
    log "removed empty $STATE"
    exit 0
fi
[[ -f $STATE/.mignet-k8s ]] || die "$STATE has no .mignet-k8s marker; refusing to touch it"

# apiserver first so it does not spend its shutdown retrying a dead etcd.
for name in kube-apiserver etcd; do
    pidfile=$STATE/$name.pid
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if pid_is_ours "$pid" "$STATE"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            pid_is_ours "$pid" "$STATE" || break
            sleep 0.1
        done
        if pid_is_ours "$pid" "$STATE"; then
            log "$name (pid $pid) ignored SIGTERM for 10s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            ! pid_is_ours "$pid" "$STATE" || die "$name (pid $pid) survived SIGKILL; state kept in $STATE"
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
done

rm -rf "$STATE"
log "removed $STATE"
