# shellcheck shell=bash
# Sourced after e2e-lib.sh by the suites that make their own VMs by name
# (e2e-drain.sh, e2e-maintenance.sh): reading a VMI, its launcher pod and
# its guest's serial console. e2e-vm.sh has single-VM forms of its own.
vmi_field() { kubectl get vmi "$1" -o jsonpath="$2" 2>/dev/null; }
vmi_is() { [[ $(vmi_field "$1" "$2") == "$3" ]]; }
# The launcher pod running VMI $1 now: on the VMI's node and made for this
# VMI (its uid; after a restart the old VMI's pod may still linger).
launcher_pod() {
    local node uid
    node=$(vmi_field "$1" '{.status.nodeName}')
    uid=$(vmi_field "$1" '{.metadata.uid}')
    kubectl get pods -l "vm.kubevirt.io/name=$1,kubevirt.io/created-by=$uid" -o json |
        jq -r --arg n "$node" '.items[] | select(.spec.nodeName == $n and .metadata.deletionTimestamp == null and .status.phase == "Running") | .metadata.name' | head -n1
}
last_tick() { # last_tick POD: N of the guest's newest "tick N" (serial console in the launcher's log)
    kubectl logs "$1" 2>/dev/null | tr -d '\r' | sed -n 's/^tick \([0-9]*\)$/\1/p' | tail -n1
}
ticking_past() { # ticking_past POD N
    local t
    t=$(last_tick "$1")
    [[ -n $t ]] && ((t > $2))
}
boots() { kubectl logs "$1" 2>/dev/null | grep -c 'mignet: ready' || true; }
