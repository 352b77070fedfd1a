# shellcheck shell=bash
# Shared by the tests/cluster scripts. Sourced, not executed.
#
# Layout of one bed (ID is 4 hex digits, fixed at `up`):
#   network namespaces  mgc<ID>-sw   the switch: bridges br-node (eth0s) and br-mig (eth1s)
#                       mgc<ID>-cp   control plane: etcd, kube-apiserver, controller-manager, scheduler
#                       mgc<ID>-n<i> node i: containerd + kubelet, in a private mount namespace
#   node network        172.30.0.0/24 (cp .2, node i .1<i>), pod CIDR of node i 10.244.<i>.0/24
#   migration segment   br-mig: every node's eth1, no addresses (the macvlan master)
#   state               $STATE (/tmp/mignet-cluster.XXXXXX): pki, configs, logs, pids, per-node dirs

log() { printf '[cluster/%s %s] %s\n' "${CLUSTER_SCRIPT:-?}" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

NODES=${MIGNET_CLUSTER_NODES:-3}
NODE_NET=172.30.0
CP_IP=$NODE_NET.2
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/12
API_SERVICE_IP=10.96.0.1
API_PORT_IN_CP=6443

node_ip() { echo "$NODE_NET.1$1"; }
node_name() { echo "node$1"; }
node_pod_cidr() { echo "10.244.$1.0/24"; }

# Every process whose network or mount namespace is one of the bed's, or
# whose cgroup lies under one of the bed's kubelet cgroup roots. Containers
# live in their own namespaces but in our cgroups; kubelet, containerd and
# the shims live in the node's namespaces.
bed_pids() { # bed_pids STATE
    local state=$1 id netns_inodes="" mnt_inodes="" f p ino
    id=$(cat "$state/id" 2>/dev/null) || return 0
    for f in /run/netns/mgc"$id"-*; do
        [[ -e $f ]] || continue
        ino=$(stat -L -c %i "$f" 2>/dev/null) || continue
        netns_inodes+=" $ino"
    done
    for f in "$state"/nodes/*/holder.pid; do
        [[ -f $f ]] || continue
        p=$(cat "$f")
        ino=$(stat -L -c %i "/proc/$p/ns/mnt" 2>/dev/null) || continue
        # Only when the holder is still ours (a recycled pid would not have
        # our marker on its command line).
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$state" || continue
        mnt_inodes+=" $ino"
    done
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        ino=$(stat -L -c %i "/proc/$p/ns/net" 2>/dev/null) || continue
        if [[ " $netns_inodes " == *" $ino "* ]]; then echo "$p"; continue; fi
        ino=$(stat -L -c %i "/proc/$p/ns/mnt" 2>/dev/null) || continue
        if [[ " $mnt_inodes " == *" $ino "* ]]; then echo "$p"; continue; fi
        if grep -q ":/mgc$id-n[0-9]*\(/\|$\)" "/proc/$p/cgroup" 2>/dev/null; then echo "$p"; fi
    done
}

# The v1 hierarchies (and the empty v2 one) a kubelet cgroup root must exist in.
cgroup_hierarchies() {
    awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts | sort -u
}

wait_until() { # wait_until SECONDS WHAT CMD...
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready after ${secs}s"
        sleep 0.5
    done
}
