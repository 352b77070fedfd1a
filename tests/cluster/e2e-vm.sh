#!/usr/bin/env bash
# The seed's VM on the real cluster bed (issue 14): launcher pods placed by
# kube-scheduler, the seed's RWX claim, migrations over migration0, cancel,
# agents restarted and rolled under running VMs. Everything through the API
# with the real kubectl, as an operator would.
#
#   tests/cluster/run.sh bash -c 'tests/cluster/e2e-network.sh && tests/cluster/e2e-vm.sh'
#
# Runs after e2e-network.sh in the same bed (mignet deployed on the seed's
# network; its second NAD migration-net-b exists); deploys both itself when
# run alone.
#
# What it proves:
#   - examples/vm.yaml verbatim: the VM controller makes the VMI, the manager
#     makes its launcher pod (requests = guest memory + overhead), the real
#     scheduler places it, QEMU runs in it (TCG: the bed's manager has
#     --use-emulation) and boots from disk.img on the ReadWriteMany claim
#     fedora-rwx (a hostPath PV every node shares);
#   - examples/vmim.yaml (vmiName set to the VM) migrates it: a target pod on
#     another node, targetNodeAddress = the target agent's migration0 address
#     in 10.200.5.0/24, the pod network carried < 1 % of the bytes, the
#     source pod ends, the guest goes on ticking with its disk marker;
#   - a second migration; a cancel (VMIM deleted mid-transfer) leaves the VM
#     on its source with the same QEMU;
#   - `kubectl rollout restart` of the agents and a network change (which
#     rolls them) leave the VM's launcher pod, QEMU and guest untouched, and
#     the restarted agents migrate it again.
set -euo pipefail
SUITE=e2e-vm
# shellcheck source-path=SCRIPTDIR source=e2e-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
VM=vm-fedora
WORK=$(mktemp -d /tmp/mignet-e2e-vm.XXXXXX)
PV_DIR=$MIGNET_CLUSTER_STATE/pv/fedora-rwx


finish() {
    local rc=$?
    if ((rc != 0)); then
        echo "---- state at failure" >&2
        kubectl get vm,vmi,vmim -o wide >&2 || true
        kubectl get vmi "$VM" -o yaml 2>/dev/null | sed -n '/^status:/,$p' >&2 || true
        kubectl get pods -o wide -l kubevirt.io=virt-launcher >&2 || true
        kubectl get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 >&2 || true
        for p in $(kubectl get pods -l kubevirt.io=virt-launcher -o name 2>/dev/null); do
            echo "---- logs $p" >&2
            kubectl logs "$p" --tail=15 >&2 2>&1 || true
        done
        kubectl -n "$NS" logs deploy/mignet-manager --tail=40 >&2 2>&1 || true
        for p in $(kubectl -n "$NS" get pods -l "$AGENTS" -o name 2>/dev/null); do
            echo "---- logs $p" >&2
            kubectl -n "$NS" logs "$p" --tail=20 >&2 2>&1 || true
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap finish EXIT

vmi_field() { kubectl get vmi "$VM" -o jsonpath="$1"; }
vmim_phase() { kubectl get vmim "$1" -o jsonpath='{.status.phase}' 2>/dev/null; }
# The launcher pod running the VM now: the one on the VMI's node.
launcher_pod() {
    local node
    node=$(vmi_field '{.status.nodeName}')
    kubectl get pods -l "vm.kubevirt.io/name=$VM" -o json |
        jq -r --arg n "$node" '.items[] | select(.spec.nodeName == $n and .metadata.deletionTimestamp == null and .status.phase == "Running") | .metadata.name' | head -n1
}
# The guest's newest "disk: marker=M tick=N" line, from the launcher's log
# (the launcher copies the serial console to its stdout).
guest_line() { # guest_line POD
    kubectl logs "$1" 2>/dev/null | tr -d '\r' | grep '^disk: marker=' | tail -n1
}
tick_of() { sed -n 's/.* tick=\([0-9]*\).*/\1/p' <<<"$1"; }
marker_of() { sed -n 's/^disk: marker=\([^ ]*\) .*/\1/p' <<<"$1"; }
ticking_past() { # ticking_past POD N: the guest in POD printed a tick > N
    local l
    l=$(guest_line "$1")
    [[ -n $l ]] && (($(tick_of "$l") > $2))
}
agent_on() { # agent_on NODE: the agent pod serving NODE
    kubectl -n "$NS" get pods -l "$AGENTS" -o json |
        jq -r --arg n "$1" '.items[] | select(.spec.nodeName == $n and .metadata.deletionTimestamp == null) | .metadata.name' | head -n1
}
migration0_of() { # migration0_of AGENT_POD
    kubectl -n "$NS" get pod "$1" -o jsonpath='{.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}' |
        jq -r '.[] | select(.interface == "migration0") | .ips[0]'
}
counter() { # counter AGENT_POD IFACE: rx+tx bytes
    kubectl -n "$NS" exec "$1" -- sh -c "echo \$((\$(cat /sys/class/net/$2/statistics/rx_bytes) + \$(cat /sys/class/net/$2/statistics/tx_bytes)))"
}
# Pod UID, container restarts and the guest's boot count of the VM's
# launcher: equal before and after = the same QEMU process ran throughout
# (a restarted container or a rebooted guest changes them).
identity() { # identity POD
    local boots
    boots=$(kubectl logs "$1" 2>/dev/null | grep -c 'mignet: ready' || true)
    kubectl get pod "$1" -o jsonpath="{.metadata.uid} restarts={.status.containerStatuses[0].restartCount} boots=$boots"
}
set_network() {
    kubectl -n "$NS" patch hyperconverged kubevirt-hyperconverged --type=merge \
        -p "{\"spec\":{\"liveMigrationConfig\":{\"network\":\"$1\"}}}" >/dev/null
}
ds_rolled_out() {
    local s
    s=$(kubectl -n "$NS" get ds "$DS" -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.desiredNumberScheduled} {.status.updatedNumberScheduled} {.status.numberAvailable}')
    read -r gen obs want upd avail <<<"$s"
    [[ $gen == "$obs" && $want == "$NODES" && $upd == "$NODES" && $avail == "$NODES" ]]
}
# A hostPath PersistentVolume on DIR (a directory every node of the bed sees)
# and the claim in default bound to it, both named NAME.
volume_and_claim() { # volume_and_claim NAME ACCESS_MODE DIR
    cat <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $1
spec:
  capacity: {storage: 1Gi}
  accessModes: [$2]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: default, name: $1}
  hostPath: {path: $3, type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $1
  namespace: default
spec:
  accessModes: [$2]
  storageClassName: ""
  volumeName: $1
  resources: {requests: {storage: 1Gi}}
EOF
}
migrate() { # migrate NAME: create the seed's VMIM for the VM under NAME
    sed -e "s/^  name: migration-job$/  name: $1/" -e "s/vmiName: vmi-fedora/vmiName: $VM/" \
        "$ROOT/examples/vmim.yaml" | kubectl create -f - >/dev/null
}

# ---- mignet and the migration network ------------------------------------------
step "mignet on the seed's migration network"
if ! kubectl -n "$NS" get deploy mignet-manager >/dev/null 2>&1; then
    kubectl apply -k "$ROOT/deploy/overlays/bed" >/dev/null
    kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
    kubectl apply -k "$ROOT/deploy/examples" >/dev/null
fi
wait_until 60 "the seed's network on the agent DaemonSet" sh -c \
    "kubectl -n $NS get ds $DS -o jsonpath='{.spec.template.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}' | grep -qx my-secondary-network@migration0"
kubectl -n "$NS" rollout status ds/"$DS" --timeout=300s >/dev/null
kubectl -n "$NS" rollout status deploy/mignet-manager --timeout=180s >/dev/null
wait_until 60 "agents rolled out" ds_rolled_out
for n in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
    labels=$(kubectl get node "$n" -o jsonpath='{.metadata.labels}')
    [[ $(jq -r '."kubevirt.io/schedulable"' <<<"$labels") == true ]] || fail "node $n: its agent did not label it kubevirt.io/schedulable=true: $labels"
    kvm=$(jq -r '."mignet.io/kvm"' <<<"$labels")
    [[ $kvm == true || $kvm == false ]] || fail "node $n: no mignet.io/kvm label"
done
ok "every node labelled by its agent: kubevirt.io/schedulable=true, mignet.io/kvm=$kvm, $(jq -r 'keys[] | select(startswith("host-model-cpu"))' <<<"$labels")"

# ---- storage ---------------------------------------------------------------------
step "the seed's claim fedora-rwx: a ReadWriteMany hostPath volume every node shares"
eval "$("$ROOT/tests/guest/build-disk.sh")"
mkdir -p "$PV_DIR"
cp --sparse=always "$DISK_IMAGE" "$PV_DIR/disk.img"
volume_and_claim fedora-rwx ReadWriteMany "$PV_DIR" | kubectl apply -f - >/dev/null
wait_until 60 "claim bound" sh -c "kubectl get pvc fedora-rwx -o jsonpath='{.status.phase}' | grep -qx Bound"
ok "fedora-rwx Bound to $PV_DIR ($(du -h --apparent-size "$PV_DIR/disk.img" | cut -f1) disk.img from tests/guest/build-disk.sh)"

# ---- the VM ----------------------------------------------------------------------
step "kubectl apply -f examples/vm.yaml: the VM boots in a launcher pod"
boot_start=$SECONDS
kubectl apply -f "$ROOT/examples/vm.yaml" >/dev/null
wait_until 240 "VMI Running" sh -c "kubectl get vmi $VM -o jsonpath='{.status.phase}' 2>/dev/null | grep -qx Running"
node1=$(vmi_field '{.status.nodeName}')
pod1=$(launcher_pod)
[[ -n $pod1 ]] || fail "no running launcher pod on $node1"
owner=$(kubectl get pod "$pod1" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')
[[ $owner == "VirtualMachineInstance/$VM" ]] || fail "launcher $pod1 is owned by $owner"
mem=$(kubectl get pod "$pod1" -o jsonpath='{.spec.containers[0].resources.requests.memory}')
[[ $mem =~ ^([0-9]+)Mi$ ]] && ((BASH_REMATCH[1] > 2048)) || fail "launcher $pod1 requests memory $mem, not the guest's 2Gi plus overhead"
ok "VMI Running on $node1 (scheduler's choice) in $pod1, owned by $owner, requests memory $mem cpu $(kubectl get pod "$pod1" -o jsonpath='{.spec.containers[0].resources.requests.cpu}')"
wait_until 240 "guest writes its disk marker" ticking_past "$pod1" 1
line=$(guest_line "$pod1")
marker=$(marker_of "$line")
ok "guest booted from the claim in $((SECONDS - boot_start))s: '$line'"
host_marker=$("$ROOT/tests/guest/disk-marker.sh" "$PV_DIR/disk.img" | sed -n 's/^MARKER=//p')
[[ $host_marker == "$marker" ]] || fail "disk.img on the volume holds marker '$host_marker', the guest read '$marker'"
ok "the marker is on the shared volume: $host_marker"
wait_until 60 "LiveMigratable" sh -c "kubectl get vmi $VM -o jsonpath='{.status.conditions[?(@.type==\"LiveMigratable\")].status}' | grep -qx True"
ok "LiveMigratable=True (claim ReadWriteMany: $(vmi_field '{.status.volumeStatus[0].persistentVolumeClaimInfo.accessModes}'))"

# ---- migration over migration0 -----------------------------------------------------
step "kubectl create -f examples/vmim.yaml (vmiName: $VM)"
src_agent=$(agent_on "$node1")
m0_before=$(counter "$src_agent" migration0)
eth0_before=$(counter "$src_agent" eth0)
tick_before=$(tick_of "$(guest_line "$pod1")")
mig_start=$SECONDS
migrate migration-job
wait_until 300 "migration-job Succeeded" sh -c "[ \"\$(kubectl get vmim migration-job -o jsonpath='{.status.phase}')\" = Succeeded ]"
mig_s=$((SECONDS - mig_start))
m0_delta=$(($(counter "$src_agent" migration0) - m0_before))
eth0_delta=$(($(counter "$src_agent" eth0) - eth0_before))
node2=$(vmi_field '{.status.nodeName}')
[[ $node2 != "$node1" ]] || fail "the VMI is still on $node1 after a successful migration"
addr=$(kubectl get vmi "$VM" -o jsonpath='{.status.migrationState.targetNodeAddress}')
tgt_ip=$(migration0_of "$(agent_on "$node2")")
[[ ${addr%:*} == 10.200.5.* ]] || fail "targetNodeAddress $addr is not in 10.200.5.0/24"
[[ ${addr%:*} == "$tgt_ip" ]] || fail "targetNodeAddress $addr is not the target agent's migration0 address $tgt_ip"
ok "$node1 -> $node2 in ${mig_s}s; kubectl get vmi $VM -o jsonpath='{.status.migrationState.targetNodeAddress}' = $addr = migration0 of the agent on $node2"
((m0_delta > 100 * 1024 * 1024)) || fail "migration0 of the source agent carried only $m0_delta bytes"
((eth0_delta * 100 < m0_delta)) || fail "the pod network carried $eth0_delta bytes against $m0_delta on migration0 (>= 1 %)"
ok "source agent: migration0 carried $((m0_delta / 1048576)) MiB, the pod network $((eth0_delta / 1024)) KiB ($(awk -v a="$eth0_delta" -v b="$m0_delta" 'BEGIN{printf "%.3f", 100*a/b}') %)"
st=$(kubectl get vmim migration-job -o json)
# Time from Running to Succeeded: the transfer itself, whole seconds.
xfer=$(jq -r '[.status.phaseTransitionTimestamps[] | {(.phase): (.phaseTransitionTimestamp | fromdateiso8601)}] | add | (.Succeeded - .Running)' <<<"$st")
((xfer > 0)) || xfer=1
ok "throughput: $((m0_delta / 1048576)) MiB in ${xfer}s = $((m0_delta / 1048576 / xfer)) MiB/s on migration0 (whole seconds, Running -> Succeeded)"
echo "e2e-vm: migration $((m0_delta / 1048576)) MiB in ${xfer}s over migration0" >>"${MIGNET_E2E_REPORT:-/dev/null}"
pod2=$(launcher_pod)
[[ -n $pod2 && $pod2 != "$pod1" ]] || fail "no new launcher pod on $node2 (found '$pod2')"
wait_until 60 "source launcher pod gone" sh -c "! kubectl get pod $pod1 >/dev/null 2>&1"
ok "source launcher $pod1 ended and was removed; the VM runs in $pod2 on $node2"
wait_until 60 "guest ticks on the target" ticking_past "$pod2" "$tick_before"
line=$(guest_line "$pod2")
[[ $(marker_of "$line") == "$marker" ]] || fail "after the migration the guest reads marker '$(marker_of "$line")', before '$marker'"
ok "guest continued (tick $tick_before before, '$line' after): the disk marker written before the migration is read back after"
boots=$(kubectl logs "$pod2" | grep -c 'mignet: ready' || true)
((boots == 0)) || fail "the guest booted again on the target ($boots times): not a live migration"

# ---- a second migration -------------------------------------------------------------
step "a second migration"
migrate migration-job-2
wait_until 300 "migration-job-2 Succeeded" sh -c "[ \"\$(kubectl get vmim migration-job-2 -o jsonpath='{.status.phase}')\" = Succeeded ]"
node3=$(vmi_field '{.status.nodeName}')
[[ $node3 != "$node2" ]] || fail "still on $node2"
pod3=$(launcher_pod)
wait_until 60 "guest ticks after the second migration" ticking_past "$pod3" "$(tick_of "$line")"
ok "$node2 -> $node3; guest: '$(guest_line "$pod3")'"

# ---- cancel ---------------------------------------------------------------------------
step "cancel: delete the VMIM mid-transfer (bandwidthPerMigration 1Mi keeps it running)"
kubectl -n "$NS" patch hyperconverged kubevirt-hyperconverged --type=merge \
    -p '{"spec":{"liveMigrationConfig":{"bandwidthPerMigration":"1Mi"}}}' >/dev/null
idc=$(identity "$pod3")
migrate migration-cancel
wait_until 120 "migration-cancel Running" sh -c "[ \"\$(kubectl get vmim migration-cancel -o jsonpath='{.status.phase}')\" = Running ]"
target_pod=$(kubectl get vmi "$VM" -o jsonpath='{.status.migrationState.targetPod}')
sleep 3
kubectl delete vmim migration-cancel --wait=false >/dev/null
wait_until 60 "migration-cancel gone" sh -c "! kubectl get vmim migration-cancel >/dev/null 2>&1"
abort=$(vmi_field '{.status.migrationState.abortStatus}')
[[ $abort == Succeeded ]] || fail "abortStatus is '$abort'"
[[ $(vmi_field '{.status.nodeName}') == "$node3" ]] || fail "after the cancel the VMI is on $(vmi_field '{.status.nodeName}'), not its source $node3"
wait_until 60 "target pod $target_pod removed" sh -c "! kubectl get pod $target_pod >/dev/null 2>&1"
[[ $(identity "$pod3") == "$idc" ]] || fail "the VM's launcher changed across the cancel: $idc -> $(identity "$pod3")"
t=$(tick_of "$(guest_line "$pod3")")
wait_until 30 "guest still ticking on $node3" ticking_past "$pod3" "$t"
ok "cancelled: abortStatus=$abort, VM still on $node3 in $pod3 ($(identity "$pod3")), target pod $target_pod removed"
kubectl -n "$NS" patch hyperconverged kubevirt-hyperconverged --type=json \
    -p '[{"op":"remove","path":"/spec/liveMigrationConfig/bandwidthPerMigration"}]' >/dev/null

# ---- agents restart under the VM -----------------------------------------------------
step "kubectl rollout restart ds/$DS: the VM keeps its QEMU"
id_before=$(identity "$pod3")
t=$(tick_of "$(guest_line "$pod3")")
kubectl -n "$NS" rollout restart ds/"$DS" >/dev/null
kubectl -n "$NS" rollout status ds/"$DS" --timeout=300s >/dev/null
wait_until 60 "agents rolled out" ds_rolled_out
[[ $(identity "$pod3") == "$id_before" ]] || fail "restarting the agents touched the VM: $id_before -> $(identity "$pod3")"
wait_until 30 "guest ticking" ticking_past "$pod3" "$t"
ok "every agent restarted; $pod3 unchanged ($id_before), guest at '$(guest_line "$pod3")'"

step "the agent of the VM's node killed outright (kubectl delete --force --grace-period=0)"
t=$(tick_of "$(guest_line "$pod3")")
victim=$(agent_on "$node3")
kubectl -n "$NS" delete pod "$victim" --force --grace-period=0 >/dev/null 2>&1
replaced() { local a; a=$(agent_on "$node3"); [[ -n $a && $a != "$victim" ]]; }
wait_until 120 "a new agent on $node3" replaced
kubectl -n "$NS" rollout status ds/"$DS" --timeout=180s >/dev/null
[[ $(identity "$pod3") == "$id_before" ]] || fail "killing the agent touched the VM: $id_before -> $(identity "$pod3")"
wait_until 30 "guest ticking" ticking_past "$pod3" "$t"
ok "agent $victim killed and replaced by $(agent_on "$node3"); $pod3 unchanged ($id_before)"

step "a network change while the VM runs: the agents roll onto migration-net-b"
kubectl -n "$NS" get net-attach-def migration-net-b >/dev/null 2>&1 || kubectl apply -f - >/dev/null <<EOF
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: migration-net-b
  namespace: $NS
spec:
  config: '{"cniVersion":"0.3.1","name":"migration-net-b","type":"mignet-macvlan","master":"eth1","mode":"bridge","ipam":{"type":"mignet-ipam","range":"10.200.6.0/24","kubernetes":{"kubeconfig":"/etc/cni/net.d/mignet-ipam.d/mignet-ipam.kubeconfig"}}}'
EOF
t=$(tick_of "$(guest_line "$pod3")")
set_network migration-net-b
wait_until 60 "manager re-annotates" sh -c \
    "kubectl -n $NS get ds $DS -o jsonpath='{.spec.template.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}' | grep -qx migration-net-b@migration0"
kubectl -n "$NS" rollout status ds/"$DS" --timeout=300s >/dev/null
wait_until 60 "agents rolled out" ds_rolled_out
[[ $(identity "$pod3") == "$id_before" ]] || fail "the network roll touched the VM: $id_before -> $(identity "$pod3")"
wait_until 30 "guest ticking" ticking_past "$pod3" "$t"
ok "agents on migration-net-b; $pod3 unchanged ($id_before)"
step "the re-attached agents migrate the VM over the new network"
migrate migration-job-3
wait_until 300 "migration-job-3 Succeeded" sh -c "[ \"\$(kubectl get vmim migration-job-3 -o jsonpath='{.status.phase}')\" = Succeeded ]"
addr=$(kubectl get vmi "$VM" -o jsonpath='{.status.migrationState.targetNodeAddress}')
[[ ${addr%:*} == 10.200.6.* ]] || fail "targetNodeAddress $addr is not on migration-net-b (10.200.6.0/24)"
pod4=$(launcher_pod)
wait_until 60 "guest ticks" ticking_past "$pod4" "$t"
[[ $(marker_of "$(guest_line "$pod4")") == "$marker" ]] || fail "marker changed"
ok "$node3 -> $(vmi_field '{.status.nodeName}') over $addr; guest: '$(guest_line "$pod4")'"
set_network my-secondary-network

# ---- what cannot migrate or cannot run --------------------------------------------------
step "a ReadWriteOnce claim: the VM runs, LiveMigratable=False with the reason, a migration is refused"
mkdir -p "$MIGNET_CLUSTER_STATE/pv/rwo"
cp --sparse=always "$DISK_IMAGE" "$MIGNET_CLUSTER_STATE/pv/rwo/disk.img"
volume_and_claim e2e-rwo ReadWriteOnce "$MIGNET_CLUSTER_STATE/pv/rwo" | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vmi-rwo
  namespace: default
spec:
  domain:
    cpu: {model: host-model}
    memory: {guest: 512Mi}
    devices:
      disks: [{name: rootdisk, disk: {bus: virtio}}]
  volumes:
    - name: rootdisk
      persistentVolumeClaim: {claimName: e2e-rwo}
EOF
vmi_is() { [[ $(kubectl get vmi "$1" -o jsonpath="$2" 2>/dev/null) == "$3" ]]; }
wait_until 180 "vmi-rwo Running" vmi_is vmi-rwo '{.status.phase}' Running
wait_until 60 "vmi-rwo LiveMigratable=False" vmi_is vmi-rwo '{.status.conditions[?(@.type=="LiveMigratable")].status}' False
lm=$(kubectl get vmi vmi-rwo -o jsonpath='{.status.conditions[?(@.type=="LiveMigratable")].reason}: {.status.conditions[?(@.type=="LiveMigratable")].message}')
kubectl create -f - >/dev/null <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceMigration
metadata: {name: migration-rwo, namespace: default}
spec: {vmiName: vmi-rwo}
EOF
vmim_is() { [[ $(vmim_phase "$1") == "$2" ]]; }
wait_until 60 "migration-rwo Failed" vmim_is migration-rwo Failed
ok "vmi-rwo: LiveMigratable $lm; migration-rwo refused: $(kubectl get vmim migration-rwo -o jsonpath='{.status.conditions[0].message}')"
kubectl delete vmim migration-rwo >/dev/null
kubectl delete vmi vmi-rwo --wait=false >/dev/null

step "a VM no node can hold: the scheduler's reason on the VMI"
kubectl create -f - >/dev/null <<EOF
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vmi-huge, namespace: default}
spec:
  domain:
    memory: {guest: 4000Gi}
EOF
wait_until 60 "PodScheduled=False on vmi-huge" vmi_is vmi-huge '{.status.conditions[?(@.type=="PodScheduled")].status}' False
why=$(kubectl get vmi vmi-huge -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')
[[ $why == *"Insufficient memory"* ]] || fail "vmi-huge: PodScheduled message does not give the scheduler's reason: $why"
ok "vmi-huge: PodScheduled=False: $why (phase $(kubectl get vmi vmi-huge -o jsonpath='{.status.phase}'))"
kubectl delete vmi vmi-huge --wait=false >/dev/null

# ---- identities -------------------------------------------------------------------------
step "no component was refused by the API server"
no_refusals "the manager making and deleting launcher pods, agents labelling their nodes"

# ---- cleanup ---------------------------------------------------------------------------
step "delete the VM: its VMI and launcher pods go"
kubectl delete -f "$ROOT/examples/vm.yaml" --wait=false >/dev/null
wait_until 120 "VMI gone" sh -c "! kubectl get vmi $VM >/dev/null 2>&1"
wait_until 120 "launcher pods gone" sh -c "[ -z \"\$(kubectl get pods -l vm.kubevirt.io/name=$VM -o name)\" ]"
kubectl delete vmim --all >/dev/null
wait_until 120 "other VMIs gone" sh -c "[ -z \"\$(kubectl get vmi -o name)\" ]"
kubectl delete pvc fedora-rwx e2e-rwo --wait=false >/dev/null
kubectl delete pv fedora-rwx e2e-rwo --wait=false >/dev/null
ok "VM, VMI and launcher pods deleted"

printf '\ne2e-vm: the seed VM story held on the bed in %ds\n' "$((SECONDS - t0))"
all_passed
