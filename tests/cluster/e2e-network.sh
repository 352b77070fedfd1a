#!/usr/bin/env bash
# The seed's network story on the real cluster bed (issue 13, part 5):
# mignet deployed as a user deploys it, the migration network set, switched,
# removed and broken, each step observed through the API with the real
# kubectl. Run inside a bed's env:  tests/cluster/run.sh tests/cluster/e2e-network.sh
#
# What it proves:
#   - `kubectl apply -k deploy/overlays/bed` works in one pass on a fresh cluster;
#   - the manager annotates the agent DaemonSet; the real DaemonSet controller
#     replaces the agents one node at a time (never more than one unavailable,
#     from a watch on the DaemonSet's status);
#   - the seed's NAD verbatim (reference macvlan + `whereabouts`, which is our
#     mignet-ipam under that name reading the flat file the installer wrote, so
#     the Kubernetes store): every agent pod has migration0 with a distinct
#     address of the range, is Ready, and reports that address as its
#     migration IP;
#   - a second NAD, mignet-macvlan + mignet-ipam, rolls the agents onto it and
#     the first range's addresses are freed; removing `network` rolls them
#     back to the pod network;
#   - a NAD whose IPAM has no address to give stops the roll at the first agent,
#     which stays NotReady with the IPAM's reason; the others keep working.
set -euo pipefail
SUITE=e2e-network
# shellcheck source-path=SCRIPTDIR source=e2e-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/e2e-lib.sh"
WORK=$(mktemp -d /tmp/mignet-e2e.XXXXXX)
watch_pid=
finish() {
    local rc=$?
    [[ -z $watch_pid ]] || kill "$watch_pid" 2>/dev/null || true
    if ((rc != 0)); then
        echo "---- state at failure" >&2
        kubectl get nodes -o wide >&2 || true
        kubectl -n "$NS" get ds,deploy,pods -o wide >&2 || true
        kubectl -n "$NS" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 >&2 || true
        for p in $(kubectl -n "$NS" get pods -o name 2>/dev/null); do
            echo "---- logs $p" >&2
            kubectl -n "$NS" logs "$p" --all-containers --tail=15 >&2 2>&1 || true
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap finish EXIT

step() {
    printf '\n== [%4ds] %s\n' "$((SECONDS - t0))" "$*"
    # Marks in the DaemonSet watch's log say which step a status belongs to.
    [[ -z $watch_pid ]] || echo "# $*" >>"$WORK/ds-watch.log"
}

ds_field() { kubectl -n "$NS" get ds "$DS" -o jsonpath="$1"; }
network_annotation() { ds_field '{.spec.template.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}'; }
annotation_is() { [[ "$(network_annotation)" == "$1" ]]; }
# The roll is over when the controller has seen the newest template, every
# agent runs it and every agent is available.
rolled_out() {
    local s
    s=$(ds_field '{.metadata.generation} {.status.observedGeneration} {.status.desiredNumberScheduled} {.status.updatedNumberScheduled} {.status.numberAvailable}')
    read -r gen obs want upd avail <<<"$s"
    [[ $gen == "$obs" && $want == "$NODES" && $upd == "$NODES" && $avail == "$NODES" ]]
}
# One line per agent pod that is not being deleted: name, node, Ready,
# network-status (JSON). jsonpath cannot test for an absent field, so jq
# picks the live pods; show_network_status prints what an operator reads
# with `kubectl get pods -o jsonpath`.
agent_lines() {
    kubectl -n "$NS" get pods -l "$AGENTS" -o json | jq -r '.items[]
        | select(.metadata.deletionTimestamp == null)
        | [.metadata.name, .spec.nodeName,
           ((.status.conditions // []) | map(select(.type == "Ready"))[0].status // "Unknown"),
           (.metadata.annotations["k8s.v1.cni.cncf.io/network-status"] // "[]" | fromjson | tojson)]
        | @tsv'
}
show_network_status() {
    kubectl -n "$NS" get pods -l "$AGENTS" \
        -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}{"\n"}{end}' |
        tr -d '\n ' | sed 's/}]mignet/}]\nmignet/g; s/^/   /'
    echo
}
agent_pods() { kubectl -n "$NS" get pods -l "$AGENTS" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
# The agent's own word on readiness: its /readyz body through the API
# server's pod proxy (the control plane routes to every pod subnet).
agent_readyz() { kubectl get --raw "/api/v1/namespaces/$NS/pods/$1:8081/proxy/readyz" 2>&1 || true; }
hco_condition() {
    kubectl -n "$NS" get hyperconverged kubevirt-hyperconverged \
        -o jsonpath='{.status.conditions[?(@.type=="MigrationNetworkReady")].reason}{" "}{.status.conditions[?(@.type=="MigrationNetworkReady")].message}'
}

# Every agent: on migration0 with an address of CIDR (prefix /24 checked by
# its first three octets), addresses distinct, Ready, and the agent itself
# reporting that address as its migration IP. With CIDR "none": no migration0.
check_agents() { # check_agents PREFIX|none
    local want=$1 lines name node ready status ips n=0 seen=" "
    lines=$(agent_lines)
    echo "   kubectl get pods -o jsonpath (network-status):"
    show_network_status
    while IFS=$'\t' read -r name node ready status; do
        [[ -n $name ]] || continue
        n=$((n + 1))
        [[ $ready == True ]] || fail "agent $name on $node is not Ready"
        ips=$(jq -r '.[] | select(.interface == "migration0") | .ips[]' <<<"$status")
        if [[ $want == none ]]; then
            [[ -z $ips ]] || fail "agent $name still has migration0 ($ips) after the network was removed"
            continue
        fi
        [[ $(wc -w <<<"$ips") == 1 ]] || fail "agent $name: expected one migration0 address, network-status says '$ips'"
        [[ $ips == "$want".* ]] || fail "agent $name: migration0 address $ips is not in $want.0/24"
        [[ $seen != *" $ips "* ]] || fail "address $ips handed to two agents"
        seen+="$ips "
        local rz
        rz=$(agent_readyz "$name")
        [[ $rz == *"$ips"* ]] || fail "agent $name does not report $ips as its migration IP; /readyz says: $rz"
        ok "$name on $node: migration0 $ips, Ready, /readyz: $rz"
    done <<<"$lines"
    ((n == NODES)) || fail "expected $NODES agent pods, found $n"
}

# IPAM addresses of pool RANGE (whereabouts' IPPool, our Kubernetes store).
pool_count() { # pool_count RANGE_WITH_DASH
    kubectl -n "$NS" get ippools.whereabouts.cni.cncf.io "$1" -o json 2>/dev/null |
        jq '.spec.allocations // {} | length' || echo 0
}

nad() { # nad NAME CIDR [EXTRA_IPAM_JSON]
    local extra=${3:-}
    cat <<EOF
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: $1
  namespace: $NS
spec:
  config: '{"cniVersion":"0.3.1","name":"$1","type":"mignet-macvlan","master":"eth1","mode":"bridge","ipam":{"type":"mignet-ipam","range":"$2"$extra,"kubernetes":{"kubeconfig":"/etc/cni/net.d/mignet-ipam.d/mignet-ipam.kubeconfig"}}}'
EOF
}
set_network() { # set_network NAME|""
    if [[ -n $1 ]]; then
        kubectl -n "$NS" patch hyperconverged kubevirt-hyperconverged --type=merge \
            -p "{\"spec\":{\"liveMigrationConfig\":{\"network\":\"$1\"}}}" >/dev/null
    else
        kubectl -n "$NS" patch hyperconverged kubevirt-hyperconverged --type=json \
            -p '[{"op":"remove","path":"/spec/liveMigrationConfig/network"}]' >/dev/null
    fi
}

# ---- deploy ----------------------------------------------------------------------
step "kubectl apply -k deploy/overlays/bed (one pass on a fresh cluster)"
kubectl apply -k "$ROOT/deploy/overlays/bed" >"$WORK/apply.log" || {
    cat "$WORK/apply.log" >&2
    fail "kubectl apply -k deploy/overlays/bed"
}
ok "$(wc -l <"$WORK/apply.log") objects applied"
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl -n "$NS" rollout status ds/mignet-cni-installer --timeout=240s
kubectl -n "$NS" rollout status deploy/mignet-manager --timeout=180s
kubectl -n "$NS" rollout status ds/"$DS" --timeout=240s
check_agents none

# From here on, every change the DaemonSet controller makes to the agents'
# availability is recorded from a watch.
kubectl -n "$NS" get ds "$DS" -w --output-watch-events=false \
    -o jsonpath='{"unavailable="}{.status.numberUnavailable}{" updated="}{.status.updatedNumberScheduled}{" available="}{.status.numberAvailable}{"\n"}' \
    >>"$WORK/ds-watch.log" 2>&1 &
watch_pid=$!
# An absent field is a zero the API server omits: "unavailable=" is 0.
max_unavailable() {
    sed -n 's/^unavailable=\([0-9]*\) .*/\1/p' "$WORK/ds-watch.log" | awk '{ if ($1 + 0 > m) m = $1 + 0 } END { print m + 0 }'
}

# ---- the seed's network ----------------------------------------------------------
step "the seed's NAD and HyperConverged, verbatim: kubectl apply -k deploy/examples"
# The README's commands: CRDs established first, then the CRs in one pass.
# The NAD is the seed's: reference macvlan on eth1, "ipam": {"type":
# "whereabouts"}, which the installer's alias and flat file turn into our
# IPAM with the Kubernetes store.
kubectl apply -k "$ROOT/deploy/examples" >/dev/null || fail "kubectl apply -k deploy/examples"
ok "deploy/examples applied: $(kubectl -n "$NS" get net-attach-def my-secondary-network -o jsonpath='{.spec.config}')"
wait_until 60 "manager annotates the agent DaemonSet" annotation_is my-secondary-network@migration0
ok "DaemonSet template: k8s.v1.cni.cncf.io/networks=$(network_annotation)"
roll_start=$SECONDS
kubectl -n "$NS" rollout status ds/"$DS" --timeout=300s >/dev/null
wait_until 60 "rolled out" rolled_out
ok "rolled out in $((SECONDS - roll_start))s"
check_agents 10.200.5
pool_count_a=$(pool_count 10.200.5.0-24)
[[ $pool_count_a == "$NODES" ]] || fail "IPPool 10.200.5.0-24 holds $pool_count_a allocations, want $NODES"
ok "IPPool 10.200.5.0-24 holds $pool_count_a allocations"
wait_until 60 "condition RolledOut" sh -c "kubectl -n $NS get hyperconverged kubevirt-hyperconverged -o jsonpath='{.status.conditions[?(@.type==\"MigrationNetworkReady\")].reason}' | grep -qx RolledOut"
ok "MigrationNetworkReady: $(hco_condition)"

# ---- a second network ------------------------------------------------------------
step "switch to a second NAD (10.200.6.0/24)"
nad migration-net-b 10.200.6.0/24 | kubectl apply -f - >/dev/null
set_network migration-net-b
wait_until 60 "manager re-annotates" annotation_is migration-net-b@migration0
roll_start=$SECONDS
kubectl -n "$NS" rollout status ds/"$DS" --timeout=300s >/dev/null
wait_until 60 "rolled out" rolled_out
ok "rolled out in $((SECONDS - roll_start))s"
check_agents 10.200.6
wait_until 30 "first range's addresses freed" sh -c "[ \"\$(kubectl -n $NS get ippools.whereabouts.cni.cncf.io 10.200.5.0-24 -o json | jq '.spec.allocations // {} | length')\" = 0 ]"
ok "IPPool 10.200.5.0-24 is empty again"

# ---- back to the pod network -----------------------------------------------------
step "remove network: back to the pod network"
set_network ""
wait_until 60 "manager removes the annotation" annotation_is ""
roll_start=$SECONDS
kubectl -n "$NS" rollout status ds/"$DS" --timeout=300s >/dev/null
wait_until 60 "rolled out" rolled_out
ok "rolled out in $((SECONDS - roll_start))s"
check_agents none
wait_until 30 "second range's addresses freed" sh -c "[ \"\$(kubectl -n $NS get ippools.whereabouts.cni.cncf.io 10.200.6.0-24 -o json | jq '.spec.allocations // {} | length')\" = 0 ]"
ok "IPPool 10.200.6.0-24 is empty again"

# ---- a network that gives no address: the pre-flight refuses it ------------------
step "a NAD whose IPAM has no address to give: the pre-flight refuses it"
nad migration-net-empty 10.200.7.0/30 ',"exclude":["10.200.7.0/30"]' | kubectl apply -f - >/dev/null
gen_before=$(ds_field '{.metadata.generation}')
set_network migration-net-empty
# One probe pod per agent node, from the agent's template, asking Multus
# for the NAD as migration0; none can get an address.
wait_until 60 "pre-flight refused" sh -c "kubectl -n $NS get hyperconverged kubevirt-hyperconverged -o jsonpath='{.status.conditions[?(@.type==\"MigrationNetworkReady\")].reason}' | grep -qx PreflightFailed"
msg=$(kubectl -n "$NS" get hyperconverged kubevirt-hyperconverged -o jsonpath='{.status.conditions[?(@.type=="MigrationNetworkReady")].message}')
[[ $msg == "pre-flight of migration network $NS/migration-net-empty failed; the agents keep the current network: "* ]] ||
    fail "the refusal does not say what it refused: $msg"
for node in $(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}'); do
    [[ $msg == *"$node: NoAddress ("*10.200.7.0/30* ]] || fail "the refusal does not name $node's missing address: $msg"
done
ok "kubectl get hyperconverged -o yaml, the condition:"
kubectl -n "$NS" get hyperconverged kubevirt-hyperconverged -o yaml |
    awk '/^status:/{p=1} p' | sed 's/^/   /'
echo "   mignet describe hyperconverged:"
MIGNET=$ROOT/target/release/mignet
[[ -x $MIGNET ]] || MIGNET=$ROOT/target/debug/mignet
"$MIGNET" --kubeconfig "$KUBECONFIG" describe hco kubevirt-hyperconverged -n "$NS" | sed 's/^/   /'
[[ $(ds_field '{.metadata.generation}') == "$gen_before" ]] || fail "the DaemonSet was written although the pre-flight failed"
[[ $(network_annotation) == "" ]] || fail "the DaemonSet's network changed: $(network_annotation)"
ok "DaemonSet untouched (generation $gen_before); the agents stay on the pod network"
wait_until 60 "probe pods removed" sh -c "[ -z \"\$(kubectl -n $NS get pods -l mignet.io/preflight -o name)\" ]"
ok "probe pods removed; $(pool_count 10.200.7.0-30 2>/dev/null || echo 0) addresses held in 10.200.7.0/30"
check_agents none

step "repair: back to the seed's network"
set_network my-secondary-network
wait_until 60 "manager re-annotates" annotation_is my-secondary-network@migration0
kubectl -n "$NS" rollout status ds/"$DS" --timeout=300s >/dev/null
wait_until 60 "rolled out" rolled_out
check_agents 10.200.5

# ---- the watch ------------------------------------------------------------------
step "availability over every roll"
kill "$watch_pid" 2>/dev/null || true
watch_pid=
m=$(max_unavailable)
ok "$(wc -l <"$WORK/ds-watch.log") DaemonSet status updates watched, most agents unavailable at once: $m"
((m <= 1)) || fail "more than one agent was unavailable at once ($m); the DaemonSet status updates:
$(cat "$WORK/ds-watch.log")"
((m == 1)) || fail "the watch never saw an agent unavailable: it did not observe the rolls"

# ---- the console -------------------------------------------------------------------
# The console serves a cluster user: it checks the user's token with a
# TokenReview and lists VMs under its own ServiceAccount. Reached the way an
# operator without an Ingress would: kubectl port-forward (apiserver ->
# kubelet -> containerd).
step "console: a cluster user's token, the console's own identity"
kubectl -n "$NS" create serviceaccount e2e-viewer >/dev/null
token=$(kubectl -n "$NS" create token e2e-viewer)
kubectl -n "$NS" port-forward deploy/mignet-console :8443 >"$WORK/pf.log" 2>&1 &
pf_pid=$!
wait_until 30 "port-forward to the console" grep -q 'Forwarding from 127.0.0.1:' "$WORK/pf.log"
port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$WORK/pf.log" | head -n1)
session=$(curl -sS -m 10 -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/session")
[[ $session == *e2e-viewer* ]] || fail "console /api/session with a ServiceAccount token: $session"
ok "console knows the user: $session"
code=$(curl -sS -m 10 -o "$WORK/vms.json" -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/vms")
[[ $code == 200 ]] && jq -e . "$WORK/vms.json" >/dev/null || fail "console /api/vms: HTTP $code $(head -c 300 "$WORK/vms.json")"
ok "console lists VMs under its own identity (HTTP 200, $(jq -c . "$WORK/vms.json" | head -c 120))"
code=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer not-a-token" "http://127.0.0.1:$port/api/vms")
[[ $code == 401 ]] || fail "console accepted a bad token (HTTP $code)"
ok "a bad token gets 401"
kill "$pf_pid" 2>/dev/null || true

# ---- identities ------------------------------------------------------------------
# Every component ran under its own ServiceAccount the whole time; a request
# its role does not allow shows up as a 403 in its log (kube-rs watchers
# retry refused watches forever, so this is the only place they surface).
step "no component was refused by the API server"
no_refusals "manager, console, agents, installers"

printf '\ne2e-network: network story held on the bed in %ds\n' "$((SECONDS - t0))"
all_passed
