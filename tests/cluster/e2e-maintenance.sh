#!/usr/bin/env bash
# The seed's last two steps on the real cluster bed: section 10.7.1 (edit a
# running VM to evictionStrategy LiveMigrate, then `mignet restart vm`, the
# virtctl verb, through the bed's kubeconfig), then NodeMaintenance
# (nodemaintenance.medik8s.io/v1beta1, OpenShift's "maintenance mode"),
# driven with kubectl only:
# the manager cordons and taints the node, live-migrates the LiveMigrate VM
# off it through an evacuation migration, reports phase/pendingPods/
# evictionPods like the node-maintenance-operator, and uncordons when the
# NodeMaintenance is deleted (manager/src/control/maintenance.rs).
#
#   tests/cluster/run.sh bash -c 'tests/cluster/e2e-vm.sh && tests/cluster/e2e-maintenance.sh'
#
# Runs after e2e-vm.sh in the same bed (mignet deployed); deploys mignet
# itself when run alone. Makes its own VM, diskless (the lab guest):
#   vm-maint  256Mi, created without an eviction strategy.
# What it proves:
#   - 10.7.1: `kubectl patch` of the VM to evictionStrategy LiveMigrate
#     leaves the running VMI as it is; `mignet --kubeconfig restart vm`
#     prints virtctl's "VM vm-maint was scheduled to restart" and the
#     manager replaces the VMI (new uid) with one from the edited template
#     (evictionStrategy LiveMigrate), in a new launcher pod;
#   - the NodeMaintenance CRD is served and the manager may read it;
#   - `kubectl apply` of a NodeMaintenance for vm-maint's node: the node is
#     cordoned with the taints medik8s.io/drain and
#     node.kubernetes.io/unschedulable (NoSchedule), the NodeMaintenance
#     gets the operator's finalizer and phase Running, evictionPods >= 1;
#   - vm-maint: an evacuation VMIM Succeeded, the VMI (same uid) Running on
#     another node, the guest still ticking there (no reboot);
#   - phase Succeeded, drainProgress 100, no pendingPods;
#   - `kubectl delete nodemaintenance`: the object goes (finalizer
#     released), the node is schedulable again without the taints;
#   - no 403 in mignet's logs.
set -euo pipefail
SUITE=e2e-maintenance
# shellcheck source-path=SCRIPTDIR source=e2e-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
# shellcheck source-path=SCRIPTDIR source=e2e-vms.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-vms.sh"
VM=vm-maint
NM=
node=

finish() {
    local rc=$?
    if ((rc != 0)); then
        echo "---- state at failure" >&2
        kubectl get nodes >&2 || true
        kubectl get nodemaintenance -o yaml >&2 || true
        kubectl get vm,vmi,vmim -o wide >&2 || true
        kubectl get pods -o wide >&2 || true
        kubectl -n "$NS" logs deploy/mignet-manager --tail=60 >&2 2>&1 || true
    fi
    if [[ -n $NM ]]; then
        kubectl delete nodemaintenance "$NM" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    fi
    if [[ -n $node ]]; then
        kubectl uncordon "$node" >/dev/null 2>&1 || true
    fi
    kubectl delete vm "$VM" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    exit "$rc"
}
trap finish EXIT

nm_field() { kubectl get nodemaintenance "$NM" -o jsonpath="$1" 2>/dev/null; }
nm_is() { [[ $(nm_field "$1") == "$2" ]]; }
taint_keys() { # the NoSchedule taint keys of node $1, sorted, space-separated
    kubectl get node "$1" -o json | jq -r '[.spec.taints // [] | .[] | select(.effect == "NoSchedule") | .key] | sort | join(" ")'
}

# ---- mignet and the CRD ------------------------------------------------------------------
step "mignet deployed; NodeMaintenance served and readable by the manager"
if ! kubectl -n "$NS" get deploy mignet-manager >/dev/null 2>&1; then
    kubectl apply -k "$ROOT/deploy/overlays/bed" >/dev/null
    kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
    kubectl apply -k "$ROOT/deploy/examples" >/dev/null
fi
kubectl -n "$NS" rollout status deploy/mignet-manager --timeout=180s >/dev/null
kubectl -n "$NS" rollout status ds/mignet-agent --timeout=300s >/dev/null
kubectl wait --for=condition=Established crd/nodemaintenances.nodemaintenance.medik8s.io --timeout=60s >/dev/null ||
    fail "the NodeMaintenance CRD is not installed (deploy/crds/nodemaintenance.medik8s.io_nodemaintenances.yaml)"
for verb in list watch patch; do
    [[ $(kubectl auth can-i "$verb" nodemaintenances.nodemaintenance.medik8s.io --as="system:serviceaccount:$NS:mignet-manager") == yes ]] ||
        fail "the manager may not $verb nodemaintenances (deploy/base/rbac-manager.yaml)"
done
ok "CRD nodemaintenances.nodemaintenance.medik8s.io Established; the manager may list, watch and patch it"

# ---- the VM ------------------------------------------------------------------------------
step "$VM (no eviction strategy, diskless, 256Mi) boots"
kubectl apply -f - >/dev/null <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: $VM
  namespace: default
spec:
  runStrategy: Always
  template:
    metadata:
      labels:
        kubevirt.io/vm: $VM
    spec:
      domain:
        cpu:
          model: host-model
          cores: 1
        memory:
          guest: 256Mi
        resources:
          requests:
            memory: 256Mi
EOF
wait_until 240 "$VM Running" vmi_is "$VM" '{.status.phase}' Running
uid0=$(vmi_field "$VM" '{.metadata.uid}')
ok "$VM Running on $(vmi_field "$VM" '{.status.nodeName}') without an eviction strategy"

# ---- 10.7.1: edit, then restart ---------------------------------------------------------
step "kubectl patch $VM to evictionStrategy LiveMigrate; mignet restart vm $VM"
MIGNET=$ROOT/target/release/mignet
[[ -x $MIGNET ]] || MIGNET=$ROOT/target/debug/mignet
kubectl patch vm "$VM" --type merge -p '{"spec":{"template":{"spec":{"evictionStrategy":"LiveMigrate"}}}}' >/dev/null
sleep 3
[[ $(vmi_field "$VM" '{.metadata.uid}') == "$uid0" && -z $(vmi_field "$VM" '{.spec.evictionStrategy}') ]] ||
    fail "the edit alone changed the running VMI: uid $(vmi_field "$VM" '{.metadata.uid}'), evictionStrategy '$(vmi_field "$VM" '{.spec.evictionStrategy}')'"
out=$("$MIGNET" --kubeconfig "$KUBECONFIG" restart vm "$VM" -n default 2>&1) || fail "mignet restart vm: $out"
[[ $out == "VM $VM was scheduled to restart" ]] || fail "mignet restart vm printed '$out'"
restarted() {
    local uid
    uid=$(vmi_field "$VM" '{.metadata.uid}')
    [[ -n $uid && $uid != "$uid0" ]] && vmi_is "$VM" '{.status.phase}' Running
}
wait_until 240 "a new $VM VMI Running" restarted
[[ $(vmi_field "$VM" '{.spec.evictionStrategy}') == LiveMigrate ]] ||
    fail "the new VMI has evictionStrategy '$(vmi_field "$VM" '{.spec.evictionStrategy}')'"
ok "$out; VMI $uid0 replaced by $(vmi_field "$VM" '{.metadata.uid}') with evictionStrategy LiveMigrate"
node=$(vmi_field "$VM" '{.status.nodeName}')
pod1=$(launcher_pod "$VM")
[[ -n $pod1 ]] || fail "no running launcher pod of $VM on $node"
wait_until 180 "$VM's guest ticks" ticking_past "$pod1" 1
wait_until 60 "$VM LiveMigratable" vmi_is "$VM" '{.status.conditions[?(@.type=="LiveMigratable")].status}' True
uid1=$(vmi_field "$VM" '{.metadata.uid}')
ok "$VM Running on $node in $pod1, LiveMigratable"

# ---- maintenance on --------------------------------------------------------------------------
NM=nm-$node
step "kubectl apply NodeMaintenance $NM (nodeName $node)"
tick_before=$(last_tick "$pod1")
start=$SECONDS
kubectl apply -f - >/dev/null <<EOF
apiVersion: nodemaintenance.medik8s.io/v1beta1
kind: NodeMaintenance
metadata:
  name: $NM
spec:
  nodeName: $node
  reason: "e2e: maintenance mode"
EOF
node_in_maintenance() {
    [[ $(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}') == true &&
        $(taint_keys "$node") == *medik8s.io/drain* &&
        $(taint_keys "$node") == *node.kubernetes.io/unschedulable* ]]
}
wait_until 60 "$node cordoned and tainted" node_in_maintenance
[[ $(nm_field '{.metadata.finalizers[0]}') == foregroundDeleteNodeMaintenance ]] ||
    fail "$NM has no finalizer foregroundDeleteNodeMaintenance: $(nm_field '{.metadata.finalizers}')"
wait_until 60 "$NM has a phase" sh -c "[ -n \"\$(kubectl get nodemaintenance $NM -o jsonpath='{.status.phase}')\" ]"
evictions=$(nm_field '{.status.evictionPods}')
((${evictions:-0} >= 1)) || fail "$NM evictionPods = '${evictions}', want >= 1 ($VM's launcher pod)"
ok "$node: cordoned, taints [$(taint_keys "$node")]; $NM phase $(nm_field '{.status.phase}'), evictionPods $evictions, finalizer foregroundDeleteNodeMaintenance"

# ---- the VM leaves -----------------------------------------------------------------------------
step "$VM is live-migrated off $node"
left() { [[ $(vmi_field "$VM" '{.status.nodeName}') != "$node" ]] && vmi_is "$VM" '{.status.phase}' Running; }
wait_until 300 "$VM on another node" left
[[ $(vmi_field "$VM" '{.metadata.uid}') == "$uid1" ]] || fail "$VM is a new VMI: restarted, not migrated"
new_node=$(vmi_field "$VM" '{.status.nodeName}')
evac=$(kubectl get vmim -o json | jq -r --arg vm "$VM" --arg n "$node" \
    '.items[] | select(.spec.vmiName == $vm and .metadata.annotations["kubevirt.io/evacuationMigration"] == $n) | "\(.metadata.name) \(.status.phase)"')
[[ $evac == *" Succeeded" ]] || fail "evacuation VMIM of $VM from $node: '$evac'"
pod2=$(launcher_pod "$VM")
[[ -n $pod2 && $pod2 != "$pod1" ]] || fail "no new launcher pod of $VM on $new_node"
wait_until 60 "guest ticks on $new_node" ticking_past "$pod2" "$tick_before"
(($(boots "$pod2") == 0)) || fail "the guest booted again in $pod2: not a live migration"
ok "$VM: evacuation VMIM ${evac% *} Succeeded, Running on $new_node in $pod2, no reboot"

wait_until 120 "$NM Succeeded" nm_is '{.status.phase}' Succeeded
[[ $(nm_field '{.status.drainProgress}') == 100 ]] || fail "$NM drainProgress $(nm_field '{.status.drainProgress}')"
[[ -z $(nm_field '{.status.pendingPods}') ]] || fail "$NM pendingPods $(nm_field '{.status.pendingPods}')"
maint_s=$((SECONDS - start))
ok "$NM: phase Succeeded, drainProgress 100, no pendingPods, ${maint_s}s after the apply"

# ---- maintenance off ------------------------------------------------------------------------------
step "kubectl delete nodemaintenance $NM"
kubectl delete nodemaintenance "$NM" --timeout=60s >/dev/null || fail "$NM was not deleted (finalizer held?)"
NM_DONE=$NM
NM=
[[ $(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}') != true ]] || fail "$node still cordoned"
[[ $(taint_keys "$node") != *medik8s.io/drain* && $(taint_keys "$node") != *node.kubernetes.io/unschedulable* ]] ||
    fail "$node keeps maintenance taints: $(taint_keys "$node")"
ok "$NM_DONE gone; $node schedulable, taints [$(taint_keys "$node")]"
node=

no_refusals "NodeMaintenance on and off"
kubectl delete vm "$VM" --wait=false >/dev/null
kubectl delete vmim "${evac% *}" --ignore-not-found >/dev/null

echo "e2e-maintenance: maintenance ${maint_s}s" >>"${MIGNET_E2E_REPORT:-/dev/null}"
printf '\ne2e-maintenance: NodeMaintenance held on the bed in %ds\n' "$((SECONDS - t0))"
all_passed
