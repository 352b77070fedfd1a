#!/usr/bin/env bash
# Start a throwaway etcd + kube-apiserver on 127.0.0.1 for integration tests.
#
#   env_file=$(tests/k8s/up.sh [STATE_DIR]) && source "$env_file"  # ... tests ...
#   tests/k8s/down.sh "$MIGNET_K8S_STATE"
#
# Prints the path of the env file ($STATE/env; the only line on stdout);
# everything else goes to stderr. The state dir (certs, tokens, etcd data,
# logs, pids) is STATE_DIR or $MIGNET_K8S_STATE if given (created if missing,
# must be empty), else a fresh temp dir.
# On any failure the partial bed is torn down and the logs' tails printed.
#
# There is no controller-manager, scheduler or kubelet: nothing creates Pods
# from workloads, nothing runs them, no garbage collection, no namespace
# finalisation. Tests set the status they need themselves.
set -euo pipefail
K8S_SCRIPT=up
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

BIN=$("$HERE/build.sh")
K8S_VERSION=$(basename "$(dirname "$BIN")")

REQ_STATE=${1:-${MIGNET_K8S_STATE:-}}
if [[ -n $REQ_STATE ]]; then
    # A caller-made dir (e.g. from mktemp -d) is fine as long as it is empty.
    STATE=$(mkdir -p "$REQ_STATE" && cd "$REQ_STATE" && pwd)
    [[ -z "$(ls -A "$STATE")" ]] || die "state dir $STATE is not empty; run down.sh on it first"
else
    STATE=$(mktemp -d /tmp/mignet-k8s.XXXXXX)
fi
chmod 700 "$STATE"
# Marks this as a bed down.sh may delete (it refuses other directories).
echo "$K8S_VERSION" >"$STATE/.mignet-k8s"
mkdir -p "$STATE/pki" "$STATE/logs"

cleanup_on_error() {
    local rc=$?
    ((rc != 0)) || return 0
    log "start-up failed (exit $rc); log tails follow, then teardown"
    for f in "$STATE"/logs/*.log; do
        [[ -f $f ]] || continue
        echo "----- $f" >&2
        tail -n 30 "$f" >&2
    done
    "$HERE/down.sh" "$STATE" >&2 || true
    exit "$rc"
}
# EXIT, not ERR: die() exits without tripping an ERR trap.
trap cleanup_on_error EXIT
# Ctrl-C or a CI timeout during start-up: leave through EXIT with rc != 0.
trap 'exit 130' INT TERM

# ---- certificates and credentials --------------------------------------------
PKI=$STATE/pki
log "generating certificates in $PKI"
openssl_q() { openssl "$@" 2>>"$PKI/openssl.log"; }
openssl_q req -x509 -newkey rsa:2048 -nodes -days 2 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=mignet-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
# Serving cert: loopback names, plus the in-cluster service names a real
# apiserver certificate carries (10.96.0.1 is the first IP of the range).
cat >"$PKI/serving.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
openssl_q req -newkey rsa:2048 -nodes -keyout "$PKI/serving.key" \
    -out "$PKI/serving.csr" -subj "/CN=kube-apiserver"
openssl_q x509 -req -in "$PKI/serving.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 2 -extfile "$PKI/serving.ext" -out "$PKI/serving.crt"
# Service-account token signing key pair (for TokenRequest / `kubectl create token`).
openssl_q genrsa -out "$PKI/sa.key" 2048
openssl_q rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

ADMIN_TOKEN=$(openssl rand -hex 24)
NONADMIN_TOKEN=$(openssl rand -hex 24)
NONADMIN_USER=mignet-user
# token,user,uid,"groups". The non-admin user only gets system:authenticated
# (added by the apiserver), i.e. the discovery-level default RBAC roles.
cat >"$PKI/tokens.csv" <<EOF
$ADMIN_TOKEN,mignet-admin,mignet-admin-uid,"system:masters"
$NONADMIN_TOKEN,$NONADMIN_USER,$NONADMIN_USER-uid
EOF
chmod 600 "$PKI"/*.key "$PKI/tokens.csv"

# ---- etcd ------------------------------------------------------------------------
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port "$ETCD_PORT")
API_PORT=$(free_port "$ETCD_PORT" "$ETCD_PEER_PORT")
log "etcd on 127.0.0.1:$ETCD_PORT (peer $ETCD_PEER_PORT), apiserver on 127.0.0.1:$API_PORT"

# setsid: the servers outlive this script and must not get the terminal's
# SIGINT meant for a test run; down.sh stops them by recorded pid.
# --unsafe-no-fsync: throwaway data, and fsync latency on a shared VM disk
# otherwise dominates every write the tests make.
setsid "$BIN/etcd" \
    --name mignet-test \
    --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "mignet-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --log-level warn \
    </dev/null >"$STATE/logs/etcd.log" 2>&1 &
echo $! >"$STATE/etcd.pid"

wait_for() { # wait_for <seconds> <what> <pidfile> <command...>
    local secs=$1 what=$2 pidfile=$3
    shift 3
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        # Our own background child, so kill -0 is exact here; the cmdline
        # check down.sh needs reads empty while the child is still inside
        # execve (setsid -> server), which once failed a CI start-up.
        kill -0 "$(cat "$pidfile")" 2>/dev/null || die "$what exited during start-up"
        ((SECONDS < deadline)) || die "$what not ready after ${secs}s"
        sleep 0.2
    done
}
wait_for 30 etcd "$STATE/etcd.pid" \
    sh -c "curl -sf http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"
log "etcd healthy"

# ---- kube-apiserver ------------------------------------------------------------------
# Admission: the default set (NamespaceLifecycle, ServiceAccount, PodSecurity,
# ResourceQuota, webhooks, ...) needs no controller-manager to admit objects;
# NodeRestriction is added as in real clusters. --allow-privileged because the
# node agent and CNI installer DaemonSets are privileged.
setsid "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$API_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --cert-dir="$STATE/apiserver-certs" \
    --tls-cert-file="$PKI/serving.crt" \
    --tls-private-key-file="$PKI/serving.key" \
    --client-ca-file="$PKI/ca.crt" \
    --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=10.96.0.0/12 \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --profiling=false \
    --v=1 \
    </dev/null >"$STATE/logs/kube-apiserver.log" 2>&1 &
echo $! >"$STATE/kube-apiserver.pid"

wait_for 90 kube-apiserver "$STATE/kube-apiserver.pid" \
    sh -c "curl -sf --cacert '$PKI/ca.crt' -H 'Authorization: Bearer $ADMIN_TOKEN' \
        https://127.0.0.1:$API_PORT/readyz | grep -qx ok"
log "kube-apiserver ready"

# ---- kubeconfigs and env file ---------------------------------------------------------
write_kubeconfig() { # <file> <user> <token>
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mignet-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: $2@mignet-test
  context:
    cluster: mignet-test
    user: $2
    namespace: default
current-context: $2@mignet-test
EOF
    chmod 600 "$1"
}
write_kubeconfig "$STATE/kubeconfig" mignet-admin "$ADMIN_TOKEN"
write_kubeconfig "$STATE/kubeconfig-nonadmin" "$NONADMIN_USER" "$NONADMIN_TOKEN"

cat >"$STATE/env" <<EOF
# Written by tests/k8s/up.sh; source it. Tear down: tests/k8s/down.sh "\$MIGNET_K8S_STATE"
export MIGNET_K8S_STATE=$STATE
export MIGNET_K8S_VERSION=$K8S_VERSION
export MIGNET_K8S_BIN=$BIN
export MIGNET_KUBECTL=$BIN/kubectl
export MIGNET_KUBECONFIG=$STATE/kubeconfig
export MIGNET_K8S_SERVER=https://127.0.0.1:$API_PORT
export MIGNET_K8S_CA=$PKI/ca.crt
export MIGNET_ADMIN_TOKEN=$ADMIN_TOKEN
export MIGNET_NONADMIN_USER=$NONADMIN_USER
export MIGNET_NONADMIN_TOKEN=$NONADMIN_TOKEN
export MIGNET_NONADMIN_KUBECONFIG=$STATE/kubeconfig-nonadmin
export MIGNET_ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
EOF

# ---- objects a real cluster has that only the controller-manager would create --------
kc() { "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }
# The apiserver's system-namespaces controller creates these shortly after
# readiness; wait instead of racing it with our own create.
for ns in default kube-system kube-public kube-node-lease; do
    wait_for 30 "namespace $ns" "$STATE/kube-apiserver.pid" kc get namespace "$ns"
done
# The `default` ServiceAccount (the ServiceAccount admission plugin rejects
# Pods without one) and the kube-root-ca.crt ConfigMap, in the namespaces that
# exist now. Namespaces created later by tests do not get them.
{
    for ns in default kube-system kube-public kube-node-lease; do
        cat <<EOF
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: default
  namespace: $ns
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-root-ca.crt
  namespace: $ns
data:
  ca.crt: |
$(sed 's/^/    /' "$PKI/ca.crt")
EOF
    done
} | kc apply -f - >>"$STATE/logs/bootstrap.log"

trap - EXIT INT TERM
log "up: $K8S_VERSION at https://127.0.0.1:$API_PORT, state $STATE"
echo "$STATE/env"
