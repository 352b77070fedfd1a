# shellcheck shell=bash
# Shared helpers for the tests/k8s scripts. Sourced, not executed.

log() { printf '[k8s/%s %s] %s\n' "${K8S_SCRIPT:-?}" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# A TCP port on 127.0.0.1 that nothing listens on right now, not in "$@".
# The kernel-assigned-port trick would need a helper language; random picks
# checked against `ss` are good enough for a test bed that starts once per run
# (a lost race makes the server fail to bind, and up.sh reports that).
free_port() {
    local p taken
    taken=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        if grep -qx "$p" <<<"$taken"; then continue; fi
        if [[ " $* " == *" $p "* ]]; then continue; fi
        echo "$p"
        return 0
    done
    die "no free port found"
}

# True when pid $1 is alive and its command line mentions $2 (our state dir),
# so a recycled pid after a crash or reboot is never killed by mistake.
pid_is_ours() {
    local pid=$1 marker=$2
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}
