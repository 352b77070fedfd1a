#!/usr/bin/env bash
# `kubectl drain` on the real cluster bed: LiveMigrate VMs are live-migrated
# off the node, evictionStrategy None VMs are stopped, and the drain
# completes (KubeVirt's mechanism: the pods/eviction webhook of the manager,
# manager/src/kube_adapter/eviction.rs).
#
#   tests/cluster/run.sh bash -c 'tests/cluster/e2e-vm.sh && tests/cluster/e2e-drain.sh'
#
# Runs after e2e-vm.sh in the same bed (mignet deployed); deploys mignet
# itself when run alone. Makes its own VMs, diskless (the lab guest):
#   vm-drain  evictionStrategy LiveMigrate, 256Mi; kept off the manager's
#             node (node affinity), see below;
#   vm-stop   evictionStrategy None, runStrategy Once, pinned by nodeSelector
#             kubernetes.io/hostname to vm-drain's node.
# What it proves:
#   - the webhook configuration carries the manager's CA (caBundle = the
#     mignet-ca-bundle ConfigMap), set by the manager itself;
#   - `kubectl drain NODE --ignore-daemonsets --delete-emptydir-data
#     --timeout=300s` completes; on the way kubectl printed the webhook's
#     429 message "Eviction triggered evacuation of VMI default/vm-drain
#     from NODE" (drain retries it every 5 s);
#   - vm-drain: status.evacuationNodeName = NODE (cleared once it left), an evacuation VMIM
#     Succeeded, the VMI Running on another node in a new launcher pod, the
#     guest still ticking there (no reboot: no second "mignet: ready"), the
#     source pod gone;
#   - vm-stop: its launcher pod evicted, the VMI ended and not restarted;
#   - an eviction of a pod that is not a launcher is not touched by the
#     webhook (a plain pod on the node is evicted by the same drain);
#   - `kubectl uncordon NODE`.
# Why vm-drain avoids the manager's node: the webhook is the manager
# (failurePolicy Fail, deploy/base/eviction-webhook.yaml); draining the
# manager's own node evicts the manager too, and launcher evictions sent
# while it restarts fail, so kubectl drain exits and must be run again.
# Documented there; this test drains a node the manager does not run on.
set -euo pipefail
SUITE=e2e-drain
# shellcheck source-path=SCRIPTDIR source=e2e-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
# shellcheck source-path=SCRIPTDIR source=e2e-vms.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-vms.sh"
VM=vm-drain
STOP=vm-stop
WEBHOOK=mignet-eviction
WORK=$(mktemp -d /tmp/mignet-e2e-drain.XXXXXX)
drained=

finish() {
    local rc=$?
    if ((rc != 0)); then
        echo "---- state at failure" >&2
        kubectl get nodes >&2 || true
        kubectl get vm,vmi,vmim -o wide >&2 || true
        kubectl get vmi "$VM" -o yaml 2>/dev/null | sed -n '/^status:/,$p' >&2 || true
        kubectl get pods -o wide >&2 || true
        kubectl get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 >&2 || true
        [[ -f $WORK/drain.log ]] && { echo "---- kubectl drain" >&2; tail -n 30 "$WORK/drain.log" >&2; }
        kubectl -n "$NS" logs deploy/mignet-manager --tail=60 >&2 2>&1 || true
    fi
    [[ -n $drained ]] && kubectl uncordon "$drained" >/dev/null 2>&1 || true
    kubectl delete vm "$VM" "$STOP" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    kubectl delete job drain-bystander --ignore-not-found --wait=false >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap finish EXIT


# ---- mignet and its webhook --------------------------------------------------------
step "mignet deployed; the eviction webhook trusts the manager's CA"
if ! kubectl -n "$NS" get deploy mignet-manager >/dev/null 2>&1; then
    kubectl apply -k "$ROOT/deploy/overlays/bed" >/dev/null
    kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
    kubectl apply -k "$ROOT/deploy/examples" >/dev/null
fi
kubectl -n "$NS" rollout status deploy/mignet-manager --timeout=180s >/dev/null
kubectl -n "$NS" rollout status ds/mignet-agent --timeout=300s >/dev/null
ca_matches() {
    local want have
    want=$(kubectl -n "$NS" get configmap mignet-ca-bundle -o jsonpath='{.data.ca\.crt}')
    have=$(kubectl get validatingwebhookconfiguration "$WEBHOOK" -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | base64 -d)
    [[ -n $want && $want == "$have" ]]
}
wait_until 90 "caBundle of $WEBHOOK = the manager's CA" ca_matches
ok "$WEBHOOK: caBundle = ConfigMap mignet-ca-bundle (set by the manager), failurePolicy $(kubectl get validatingwebhookconfiguration "$WEBHOOK" -o jsonpath='{.webhooks[0].failurePolicy}')"
mgr_node=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=mignet-manager -o jsonpath='{.items[0].spec.nodeName}')

# ---- the VMs -------------------------------------------------------------------------
step "$VM (LiveMigrate, diskless, 256Mi) boots"
vm_yaml() { # vm_yaml NAME STRATEGY RUN_STRATEGY PLACEMENT_YAML
    cat <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: $1
  namespace: default
spec:
  runStrategy: $3
  template:
    metadata:
      labels:
        kubevirt.io/vm: $1
    spec:
      evictionStrategy: $2
$4
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
}
vm_yaml "$VM" LiveMigrate Always "      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions:
                  - {key: kubernetes.io/hostname, operator: NotIn, values: [$mgr_node]}" |
    kubectl apply -f - >/dev/null
boot_start=$SECONDS
wait_until 240 "$VM Running" vmi_is "$VM" '{.status.phase}' Running
node=$(vmi_field "$VM" '{.status.nodeName}')
pod1=$(launcher_pod "$VM")
[[ -n $pod1 ]] || fail "no running launcher pod of $VM on $node"
wait_until 180 "$VM's guest ticks" ticking_past "$pod1" 1
wait_until 60 "$VM LiveMigratable" vmi_is "$VM" '{.status.conditions[?(@.type=="LiveMigratable")].status}' True
uid1=$(vmi_field "$VM" '{.metadata.uid}')
ok "$VM Running on $node (manager on $mgr_node) in $pod1 after $((SECONDS - boot_start))s, LiveMigratable, guest at tick $(last_tick "$pod1")"

step "$STOP (evictionStrategy None, runStrategy Once) on the same node"
vm_yaml "$STOP" None Once "      nodeSelector:
        kubernetes.io/hostname: $node" | kubectl apply -f - >/dev/null
wait_until 240 "$STOP Running" vmi_is "$STOP" '{.status.phase}' Running
stop_pod=$(launcher_pod "$STOP")
stop_uid=$(vmi_field "$STOP" '{.metadata.uid}')
[[ $(vmi_field "$STOP" '{.status.nodeName}') == "$node" ]] || fail "$STOP runs on $(vmi_field "$STOP" '{.status.nodeName}'), not $node"
ok "$STOP Running on $node in $stop_pod"

# A pod that is not a launcher (a Job's) on the node: the drain evicts it as usual.
kubectl apply -f - >/dev/null <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: drain-bystander
  namespace: default
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      nodeSelector:
        kubernetes.io/hostname: $node
      terminationGracePeriodSeconds: 1
      containers:
        - name: sleep
          image: mignet:dev
          imagePullPolicy: Never
          command: ["sleep", "3600"]
EOF
bystander_running() {
    kubectl get pods -l job-name=drain-bystander --field-selector=status.phase=Running -o name | grep -q .
}
wait_until 60 "drain-bystander Running" bystander_running
bystander=$(kubectl get pods -l job-name=drain-bystander -o jsonpath='{.items[0].metadata.name}')

# ---- the drain -----------------------------------------------------------------------------
step "kubectl drain $node --ignore-daemonsets --delete-emptydir-data --timeout=300s"
tick_before=$(last_tick "$pod1")
drain_start=$SECONDS
drained=$node
# No --force: launcher pods have their VMI as controller.
if ! kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout=300s >"$WORK/drain.log" 2>&1; then
    fail "kubectl drain $node failed after $((SECONDS - drain_start))s: $(tail -n 5 "$WORK/drain.log")"
fi
drain_s=$((SECONDS - drain_start))
grep -q "drained" "$WORK/drain.log" || fail "kubectl drain did not report the node drained: $(tail -n 5 "$WORK/drain.log")"
ok "kubectl drain completed in ${drain_s}s"
msg="Eviction triggered evacuation of VMI default/$VM from $node"
grep -qF "$msg" "$WORK/drain.log" || fail "kubectl drain never printed the webhook's 429 message '$msg': $(grep -i 'error\|evict' "$WORK/drain.log" | head -n 5)"
retries=$(grep -cF "$msg" "$WORK/drain.log" || true)
ok "kubectl drain was answered 429 \"$msg\" ($retries times, retrying every 5 s)"
[[ $(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}') == true ]] || fail "$node is not cordoned"

# ---- vm-drain: live-migrated ---------------------------------------------------------------
step "$VM was live-migrated off $node"
[[ $(vmi_field "$VM" '{.metadata.uid}') == "$uid1" ]] || fail "$VM is a new VMI (uid $uid1 -> $(vmi_field "$VM" '{.metadata.uid}')): it was restarted, not migrated"
vmi_is "$VM" '{.status.phase}' Running || fail "$VM is $(vmi_field "$VM" '{.status.phase}')"
new_node=$(vmi_field "$VM" '{.status.nodeName}')
[[ $new_node != "$node" ]] || fail "$VM still on $node"
# The webhook's mark made the evacuation (the VMIM below names $node); once
# the VM has left $node the controller clears it, so a later cordon of
# $node alone does not evacuate the VM again should it come back.
evac_cleared() { [[ -z $(vmi_field "$VM" '{.status.evacuationNodeName}') ]]; }
wait_until 30 "evacuationNodeName cleared" evac_cleared
evac=$(kubectl get vmim -o json | jq -r --arg vm "$VM" --arg n "$node" \
    '.items[] | select(.spec.vmiName == $vm and .metadata.annotations["kubevirt.io/evacuationMigration"] == $n) | "\(.metadata.name) \(.status.phase)"')
[[ -n $evac ]] || fail "no evacuation VMIM of $VM from $node: $(kubectl get vmim -o wide)"
[[ $evac == *" Succeeded" ]] || fail "evacuation VMIM: $evac"
pod2=$(launcher_pod "$VM")
[[ -n $pod2 && $pod2 != "$pod1" ]] || fail "no new launcher pod of $VM on $new_node"
! kubectl get pod "$pod1" >/dev/null 2>&1 || fail "source launcher $pod1 still exists"
wait_until 60 "guest ticks on $new_node" ticking_past "$pod2" "$tick_before"
(($(boots "$pod2") == 0)) || fail "the guest booted again in $pod2: not a live migration"
ok "$VM: evacuated from $node (mark cleared after), VMIM ${evac% *} Succeeded, Running on $new_node in $pod2; guest tick $tick_before before, $(last_tick "$pod2") after, no reboot; $pod1 gone"

# ---- vm-stop: stopped ------------------------------------------------------------------------
step "$STOP (None) was stopped"
! kubectl get pod "$stop_pod" >/dev/null 2>&1 || fail "$STOP's launcher $stop_pod still exists"
stopped() {
    local uid phase
    uid=$(vmi_field "$STOP" '{.metadata.uid}')
    phase=$(vmi_field "$STOP" '{.status.phase}')
    [[ -z $uid || ($uid == "$stop_uid" && ($phase == Succeeded || $phase == Failed)) ]]
}
wait_until 60 "$STOP's VMI ended" stopped
sleep 5
stopped || fail "$STOP was restarted: VMI $(vmi_field "$STOP" '{.metadata.uid}') $(vmi_field "$STOP" '{.status.phase}')"
[[ -z $(kubectl get pods -l "vm.kubevirt.io/name=$STOP" -o name --field-selector=status.phase=Running) ]] ||
    fail "$STOP has a running launcher pod again"
ok "$STOP: launcher $stop_pod evicted, VMI $(vmi_field "$STOP" '{.status.phase}' || true)${stop_uid:+ (uid $stop_uid)} ended, not restarted (runStrategy Once)"
! kubectl get pod "$bystander" >/dev/null 2>&1 || fail "$bystander (not a launcher) was not evicted"
ok "$bystander (a Job's pod, not a launcher) evicted by the same drain, not held by the webhook"

# ---- uncordon --------------------------------------------------------------------------------
step "kubectl uncordon $node"
kubectl uncordon "$node" >/dev/null
drained=
[[ $(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}') != true ]] || fail "$node still cordoned"
ok "$node schedulable again"
kubectl delete vm "$VM" "$STOP" --wait=false >/dev/null
wait_until 120 "VMs' launcher pods gone" sh -c "[ -z \"\$(kubectl get pods -l 'vm.kubevirt.io/name in ($VM,$STOP)' -o name)\" ]"
kubectl delete vmim "${evac% *}" --ignore-not-found >/dev/null

echo "e2e-drain: drain ${drain_s}s" >>"${MIGNET_E2E_REPORT:-/dev/null}"
printf '\ne2e-drain: kubectl drain held on the bed in %ds\n' "$((SECONDS - t0))"
all_passed
