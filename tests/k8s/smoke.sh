#!/usr/bin/env bash
# End-to-end check of a running test bed (source the env file from up.sh
# first, or use run.sh). Each step fails loudly with what it expected.
#
# Proves: the server reports the pinned version; system namespaces and the
# bootstrap objects exist; a CRD with a status subresource can be created,
# established, filled and read back with `-o jsonpath`; RBAC is enforced (the
# non-admin token is authenticated but forbidden); TokenRequest works; a
# privileged DaemonSet passes server-side dry-run; a watch with
# sendInitialEvents streams; nothing listens off
# loopback.
set -euo pipefail
K8S_SCRIPT=smoke
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

for v in MIGNET_KUBECONFIG MIGNET_KUBECTL MIGNET_K8S_VERSION MIGNET_K8S_STATE MIGNET_NONADMIN_KUBECONFIG; do
    [[ -n ${!v:-} ]] || die "$v is unset: run 'source \"\$(tests/k8s/up.sh)\"' or 'tests/k8s/run.sh tests/k8s/smoke.sh'"
done
kc() { "$MIGNET_KUBECTL" --kubeconfig "$MIGNET_KUBECONFIG" "$@"; }
expect_eq() { # <what> <want> <got>
    [[ $2 == "$3" ]] || die "$1: want '$2', got '$3'"
    log "ok: $1 = '$3'"
}

# ---- version --------------------------------------------------------------------
kc version >&2
expect_eq "server gitVersion" "$MIGNET_K8S_VERSION" \
    "$(kc version -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | tail -n1)"
expect_eq "client gitVersion" "$MIGNET_K8S_VERSION" \
    "$(kc version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | head -n1)"

# ---- namespaces and bootstrap objects ----------------------------------------------
kc get ns >&2
for ns in default kube-system kube-public kube-node-lease; do
    expect_eq "namespace $ns phase" Active "$(kc get ns "$ns" -o jsonpath='{.status.phase}')"
    expect_eq "serviceaccount $ns/default" default "$(kc -n "$ns" get sa default -o jsonpath='{.metadata.name}')"
done
expect_eq "kubernetes service clusterIP" 10.96.0.1 \
    "$(kc -n default get svc kubernetes -o jsonpath='{.spec.clusterIP}')"

# ---- CRD + custom object + status subresource + jsonpath ----------------------------
NS=smoke-$$
kc create namespace "$NS" >&2
cleanup() {
    kc delete crd widgets.smoke.mignet.test --ignore-not-found --wait=false >/dev/null 2>&1 || true
    # Without a controller-manager the namespace stays Terminating forever;
    # that is harmless in a throwaway bed.
    kc delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT
kc apply -f - >&2 <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.mignet.test
spec:
  group: smoke.mignet.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              network: {type: string}
          status:
            type: object
            properties:
              migrationState:
                type: object
                properties:
                  targetNodeAddress: {type: string}
EOF
kc wait --for=condition=Established --timeout=30s crd/widgets.smoke.mignet.test >&2
kc -n "$NS" apply -f - >&2 <<'EOF'
apiVersion: smoke.mignet.test/v1
kind: Widget
metadata: {name: w1}
spec: {network: my-secondary-network}
EOF
expect_eq "custom object spec via jsonpath" my-secondary-network \
    "$(kc -n "$NS" get widget w1 -o jsonpath='{.spec.network}')"
# Status goes through the subresource only: a main-resource patch drops it.
kc -n "$NS" patch widget w1 --type=merge -p '{"status":{"migrationState":{"targetNodeAddress":"1.2.3.4"}}}' >&2
expect_eq "status ignored on main resource" "" \
    "$(kc -n "$NS" get widget w1 -o jsonpath='{.status.migrationState.targetNodeAddress}')"
kc -n "$NS" patch widget w1 --subresource=status --type=merge \
    -p '{"status":{"migrationState":{"targetNodeAddress":"10.200.5.7"}}}' >&2
expect_eq "status via subresource + jsonpath" 10.200.5.7 \
    "$(kc -n "$NS" get wg w1 -o jsonpath='{.status.migrationState.targetNodeAddress}')"

# ---- streaming list (WatchList) ---------------------------------------------------------
# kube-rs watchers with streaming lists and client-go informers use
# sendInitialEvents; Debian's etcd 3.4 breaks this, the etcd we build must not.
events=$(kc get --raw "/apis/smoke.mignet.test/v1/namespaces/$NS/widgets?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=3")
grep -q '"type":"ADDED".*"name":"w1"' <<<"$events" || die "watch-list: no ADDED event for w1 in: $events"
grep -q '"type":"BOOKMARK".*"k8s.io/initial-events-end":"true"' <<<"$events" ||
    die "watch-list: no initial-events-end bookmark in: $events"
log "ok: watch with sendInitialEvents streams w1 and the initial-events-end bookmark"

# ---- RBAC is on ----------------------------------------------------------------------
nonadmin() { "$MIGNET_KUBECTL" --kubeconfig "$MIGNET_NONADMIN_KUBECONFIG" "$@"; }
expect_eq "non-admin identity" "$MIGNET_NONADMIN_USER" \
    "$(nonadmin auth whoami -o jsonpath='{.status.userInfo.username}')"
if out=$(nonadmin get namespaces 2>&1); then die "non-admin could list namespaces: $out"; fi
grep -q Forbidden <<<"$out" || die "non-admin list namespaces failed, but not with Forbidden: $out"
log "ok: non-admin is Forbidden to list namespaces"
expect_eq "can-i list secrets (as non-admin)" no \
    "$(kc auth can-i list secrets --as="$MIGNET_NONADMIN_USER" 2>/dev/null || true)"

# ---- TokenRequest (service-account signing key) ----------------------------------------
kc -n "$NS" create serviceaccount smoke >&2
sa_token=$(kc -n "$NS" create token smoke --duration=10m)
expect_eq "service account token identity" "system:serviceaccount:$NS:smoke" \
    "$("$MIGNET_KUBECTL" --kubeconfig "$MIGNET_NONADMIN_KUBECONFIG" --token "$sa_token" \
        auth whoami -o jsonpath='{.status.userInfo.username}')"

# ---- a privileged DaemonSet is admitted (server-side dry run) ----------------------------
kc -n "$NS" apply --dry-run=server -f - >&2 <<'EOF'
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: priv}
spec:
  selector: {matchLabels: {app: priv}}
  template:
    metadata: {labels: {app: priv}}
    spec:
      hostNetwork: true
      containers:
      - name: c
        image: example.invalid/agent:1
        securityContext: {privileged: true}
EOF
log "ok: privileged DaemonSet passes --dry-run=server"

# ---- loopback only -------------------------------------------------------------------
for name in etcd kube-apiserver; do
    pid=$(cat "$MIGNET_K8S_STATE/$name.pid")
    listeners=$(ss -Hltnp | grep "pid=$pid," | awk '{print $4}')
    [[ -n $listeners ]] || die "$name (pid $pid) has no listening sockets?"
    while read -r addr; do
        [[ $addr == 127.0.0.1:* ]] || die "$name listens on $addr, not loopback"
    done <<<"$listeners"
    log "ok: $name listens only on $(tr '\n' ' ' <<<"$listeners")"
done

log "smoke test passed"
