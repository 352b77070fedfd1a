#!/usr/bin/env bash
# Start a multi-node Kubernetes cluster on this one machine (see README.md):
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler in a
# control-plane network namespace, and $MIGNET_CLUSTER_NODES (3) nodes, each a
# network namespace plus a private mount namespace running its own containerd
# and a real kubelet. The pod network is the reference bridge + host-local
# (pod subnets routed between nodes); Multus (thin plugin) is every node's
# first CNI config, so pods can ask for NetworkAttachmentDefinitions.
#
#   env=$(tests/cluster/up.sh [STATE_DIR]) && source "$env"; ...; tests/cluster/down.sh "$MIGNET_CLUSTER_STATE"
#
# Prints the env file's path (the only stdout line). Needs the binaries of
# tests/cluster/build.sh (run first; up.sh calls it, which is fast when warm).
# Images: the mignet and pause archives of build.sh are imported into every
# node's containerd.
# On any failure the partial bed is torn down and the logs' tails printed.
set -euo pipefail
CLUSTER_SCRIPT=up
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# free_port from the apiserver bed's helpers; ours (sourced after) keep
# their own log/die.
# shellcheck source=../k8s/lib.sh
source "$HERE/../k8s/lib.sh"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

[[ $(id -u) == 0 ]] || die "must run as root (namespaces, mounts, cgroups)"
t_start=$SECONDS

# ---- binaries ----------------------------------------------------------------
# MIGNET_CLUSTER_PREBUILT=1: the caller exported what `build.sh --env` prints.
if [[ ${MIGNET_CLUSTER_PREBUILT:-0} != 1 ]]; then
    built=$("$HERE/build.sh" --env) || die "tests/cluster/build.sh failed"
    eval "$built"
fi
: "${K8S_BIN:?}" "${MULTUS:?}" "${PAUSE_ARCHIVE:?}" "${PAUSE_IMAGE:?}"
for b in containerd containerd-shim-runc-v2 runc ctr socat iptables jq openssl nsenter unshare; do
    command -v "$b" >/dev/null || die "missing $b (tests/setup.sh installs it)"
done
RUNC=$(command -v runc)

# ---- state -------------------------------------------------------------------
REQ_STATE=${1:-${MIGNET_CLUSTER_STATE:-}}
if [[ -n $REQ_STATE ]]; then
    STATE=$(mkdir -p "$REQ_STATE" && cd "$REQ_STATE" && pwd)
    [[ -z "$(ls -A "$STATE")" ]] || die "state dir $STATE is not empty; run down.sh on it first"
else
    STATE=$(mktemp -d /tmp/mignet-cluster.XXXXXX)
fi
chmod 711 "$STATE"
case $STATE in /run/* | /var/run/*) die "state dir must not be under /run (each node mounts its own /run)" ;; esac
ID=$(openssl rand -hex 2)
echo "$ID" >"$STATE/id"
echo "mignet-cluster" >"$STATE/.mignet-cluster"
mkdir -p "$STATE/pki" "$STATE/logs" "$STATE/cp" "$STATE/nodes"
SW=mgc$ID-sw
CP=mgc$ID-cp
node_ns() { echo "mgc$ID-n$1"; }
log "bed $ID in $STATE ($NODES nodes)"

cleanup_on_error() {
    local rc=$?
    ((rc != 0)) || return 0
    log "start-up failed (exit $rc); log tails follow, then teardown"
    for f in "$STATE"/logs/*.log; do
        [[ -f $f ]] || continue
        echo "----- $f" >&2
        tail -n 25 "$f" >&2
    done
    [[ ${MIGNET_CLUSTER_KEEP_ON_ERROR:-0} == 1 ]] || "$HERE/down.sh" "$STATE" >&2 || true
    exit "$rc"
}
trap cleanup_on_error EXIT
trap 'exit 130' INT TERM

# ---- certificates ------------------------------------------------------------
PKI=$STATE/pki
ossl() { openssl "$@" 2>>"$PKI/openssl.log"; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=mignet-bed-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
issue() { # issue NAME SUBJECT EKU [SAN]
    local name=$1 subj=$2 eku=$3 san=${4:-}
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        [[ -z $san ]] || echo "subjectAltName=$san"
    } >"$PKI/$name.ext"
    ossl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj"
    ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 3 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt"
    rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
log "certificates"
issue apiserver /CN=kube-apiserver serverAuth \
    "IP:127.0.0.1,IP:$CP_IP,IP:$API_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
issue admin "/O=system:masters/CN=mignet-bed-admin" clientAuth
issue controller-manager /CN=system:kube-controller-manager clientAuth
issue scheduler /CN=system:kube-scheduler clientAuth
issue multus /CN=mignet-bed:multus clientAuth
for i in $(seq 1 "$NODES"); do
    issue "kubelet-$i" "/O=system:nodes/CN=system:node:$(node_name "$i")" clientAuth
done
ossl genrsa -out "$PKI/sa.key" 2048
ossl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
chmod 600 "$PKI"/*.key

kubeconfig() { # kubeconfig FILE SERVER CERTNAME
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bed
  cluster:
    server: $2
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$3.crt")
    client-key-data: $(base64 -w0 <"$PKI/$3.key")
contexts:
- name: $3@bed
  context:
    cluster: bed
    user: $3
    namespace: default
current-context: $3@bed
EOF
    chmod 600 "$1"
}

# ---- network: switch, control plane, nodes -------------------------------------
log "network namespaces"
ip netns add "$SW"
ip -n "$SW" link set lo up
for br in br-node br-mig; do
    ip -n "$SW" link add "$br" type bridge
    ip -n "$SW" link set "$br" up
done
# attach NS IFNAME PORT BRIDGE: a veth whose IFNAME end is in NS and whose
# PORT end is a port of BRIDGE in the switch.
attach() {
    ip -n "$SW" link add "$3" type veth peer name "$2" netns "$1"
    ip -n "$SW" link set "$3" master "$4" up
    ip -n "$1" link set "$2" up
}
ip netns add "$CP"
ip -n "$CP" link set lo up
attach "$CP" eth0 cp-eth0 br-node
ip -n "$CP" addr add "$CP_IP/24" dev eth0
for i in $(seq 1 "$NODES"); do
    ns=$(node_ns "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    attach "$ns" eth0 "n$i-eth0" br-node
    attach "$ns" eth1 "n$i-eth1" br-mig
    ip -n "$ns" addr add "$(node_ip "$i")/24" dev eth0
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    # The `kubernetes` Service without kube-proxy: one DNAT rule per node
    # namespace sends 10.96.0.1:443 to the apiserver (see README.md).
    ip netns exec "$ns" iptables -w -t nat -A PREROUTING -d "$API_SERVICE_IP/32" -p tcp --dport 443 \
        -j DNAT --to-destination "$CP_IP:$API_PORT_IN_CP"
    ip netns exec "$ns" iptables -w -t nat -A OUTPUT -d "$API_SERVICE_IP/32" -p tcp --dport 443 \
        -j DNAT --to-destination "$CP_IP:$API_PORT_IN_CP"
    # Local processes (the CNI plugins: mignet-ipam's Kubernetes store)
    # need a route to the Service range before OUTPUT's DNAT applies;
    # without it connect() fails with ENETUNREACH.
    ip -n "$ns" route add "$SERVICE_CIDR" via "$CP_IP"
    ip -n "$CP" route add "$(node_pod_cidr "$i")" via "$(node_ip "$i")"
done
for i in $(seq 1 "$NODES"); do
    for j in $(seq 1 "$NODES"); do
        [[ $i == "$j" ]] || ip -n "$(node_ns "$i")" route add "$(node_pod_cidr "$j")" via "$(node_ip "$j")"
    done
done

# in_cp CMD...: run in the control plane's network namespace, detached.
in_cp() { nsenter --net="/run/netns/$CP" -- "$@"; }

# ---- etcd + apiserver ---------------------------------------------------------
log "etcd"
in_cp setsid "$K8S_BIN/etcd" --name bed --data-dir "$STATE/cp/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bed=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn \
    </dev/null >"$STATE/logs/etcd.log" 2>&1 &
echo $! >"$STATE/cp/etcd.pid"
wait_until 30 etcd in_cp curl -sf http://127.0.0.1:2379/health

# --enable-aggregator-routing=true: the apiserver calls webhook Services (the
# manager's pods/eviction webhook) at an endpoint (pod) IP, which this
# namespace routes to, instead of the ClusterIP, which nothing serves here
# (no kube-proxy). Admission webhooks use the same resolver as the
# aggregator (v1.35 cmd/kube-apiserver/app/server.go: buildServiceResolver
# -> NewEndpointServiceResolver over EndpointSlices).
log "kube-apiserver"
in_cp setsid "$K8S_BIN/kube-apiserver" \
    --bind-address=0.0.0.0 --advertise-address="$CP_IP" --secure-port="$API_PORT_IN_CP" \
    --etcd-servers=http://127.0.0.1:2379 \
    --cert-dir="$STATE/cp/apiserver-certs" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --enable-admission-plugins=NodeRestriction \
    --enable-aggregator-routing=true \
    --allow-privileged=true --profiling=false --v=1 \
    </dev/null >"$STATE/logs/kube-apiserver.log" 2>&1 &
echo $! >"$STATE/cp/kube-apiserver.pid"
kubeconfig "$STATE/cp/admin-local.kubeconfig" "https://127.0.0.1:$API_PORT_IN_CP" admin
wait_until 90 kube-apiserver in_cp "$K8S_BIN/kubectl" --kubeconfig "$STATE/cp/admin-local.kubeconfig" get --raw /readyz

# The root namespace reaches the apiserver through a unix socket: a TCP
# listener on the root's loopback, a socket file, and a relay inside the
# control-plane namespace (nothing gets an address in the root namespace).
API_PORT=$(free_port)
in_cp setsid socat UNIX-LISTEN:"$STATE/cp/api-mgc$ID.sock",fork,mode=600 TCP:127.0.0.1:$API_PORT_IN_CP \
    </dev/null >"$STATE/logs/api-relay-cp.log" 2>&1 &
echo $! >"$STATE/cp/relay-cp.pid"
setsid socat TCP-LISTEN:"$API_PORT",bind=127.0.0.1,reuseaddr,fork UNIX-CONNECT:"$STATE/cp/api-mgc$ID.sock" \
    </dev/null >"$STATE/logs/api-relay-root.log" 2>&1 &
echo $! >"$STATE/cp/relay-root.pid"
kubeconfig "$STATE/kubeconfig" "https://127.0.0.1:$API_PORT" admin
KC=("$K8S_BIN/kubectl" --kubeconfig "$STATE/kubeconfig")
wait_until 30 "apiserver relay" "${KC[@]}" get --raw /readyz

log "kube-controller-manager, kube-scheduler"
kubeconfig "$STATE/cp/controller-manager.kubeconfig" "https://127.0.0.1:$API_PORT_IN_CP" controller-manager
kubeconfig "$STATE/cp/scheduler.kubeconfig" "https://127.0.0.1:$API_PORT_IN_CP" scheduler
# One instance each, so no leader election (it would write a Lease every
# 2 s for nothing); the bed's idle CPU is a budget.
in_cp setsid "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$STATE/cp/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/cp/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/cp/controller-manager.kubeconfig" \
    --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --allocate-node-cidrs=false --bind-address=127.0.0.1 --profiling=false --v=1 \
    </dev/null >"$STATE/logs/kube-controller-manager.log" 2>&1 &
echo $! >"$STATE/cp/kube-controller-manager.pid"
in_cp setsid "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$STATE/cp/scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/cp/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/cp/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --profiling=false --v=1 \
    </dev/null >"$STATE/logs/kube-scheduler.log" 2>&1 &
echo $! >"$STATE/cp/kube-scheduler.pid"

# Multus reads pods and NADs and writes the network-status annotation with
# its own identity (upstream's ClusterRole, less what the thin plugin never does).
"${KC[@]}" apply -f - >>"$STATE/logs/bootstrap.log" <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: mignet-bed:multus
rules:
  - apiGroups: ["k8s.cni.cncf.io"]
    resources: ["*"]
    verbs: ["get", "list", "watch"]
  - apiGroups: [""]
    resources: ["pods", "pods/status"]
    verbs: ["get", "list", "update", "patch"]
  - apiGroups: ["", "events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: mignet-bed:multus
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "mignet-bed:multus"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: "mignet-bed:multus"}
EOF

# ---- nodes ---------------------------------------------------------------------
# A runc for the bed only: this machine withholds CAP_SYS_RESOURCE, so the
# negative oom_score_adj the kubelet asks for every sandbox, and an
# RLIMIT_NOFILE above the hard limit, make runc fail ("can't get final
# child's PID from pipe: EOF"). Clamp both in the bundle, then run runc.
NOFILE_HARD=$(ulimit -Hn)
cat >"$STATE/runc-bed" <<EOF
#!/bin/sh
# Written by tests/cluster/up.sh for bed $ID.
bundle=.
spec=
prev=
for a in "\$@"; do
    case \$prev in --bundle | -b) bundle=\$a ;; --process | -p) spec=\$a ;; esac
    case \$a in --bundle=*) bundle=\${a#--bundle=} ;; esac
    prev=\$a
done
clamp() {
    [ -f "\$1" ] || return 0
    jq --argjson h $NOFILE_HARD '
        def fix: (if (.oomScoreAdj // 0) < 0 then .oomScoreAdj = 0 else . end)
          | (if .rlimits then .rlimits |= map(.hard = ([.hard, \$h] | min) | .soft = ([.soft, \$h] | min)) else . end);
        if .process then .process |= fix else fix end' "\$1" >"\$1.clamped" && mv -f "\$1.clamped" "\$1"
}
clamp "\$bundle/config.json"
[ -z "\$spec" ] || clamp "\$spec"
exec $RUNC "\$@"
EOF
chmod 755 "$STATE/runc-bed"

# The host's CNI plugins every node uses for its pod network.
REF_CNI=/usr/lib/cni
for p in bridge host-local loopback portmap macvlan; do
    [[ -x $REF_CNI/$p ]] || die "missing $REF_CNI/$p (Debian's containernetworking-plugins)"
done

start_node() { # start_node I
    local i=$1 ns name S cg h
    ns=$(node_ns "$i")
    name=$(node_name "$i")
    S=$STATE/nodes/$name
    mkdir -p "$S"/{containerd,kubelet,etc,opt,varlib,varlog}/ "$S"/ovl
    # The node's mount namespace: held by a sleeping process so containerd
    # and the kubelet can be (re)started into it; private, so nothing it
    # mounts (pod volumes, netns files) reaches the root namespace, and
    # shared inside, as the kubelet's mount propagation needs. /etc, /opt,
    # /var/lib and /var/log are overlays whose upper layers are this node's
    # (so /etc/cni/net.d, /opt/cni/bin and the CNI stores are per node and
    # nothing is created on the host); /run is the node's own tmpfs;
    # containerd's and the kubelet's roots are plain directories (overlayfs
    # cannot be the upper layer of the snapshotter's overlays).
    nsenter --net="/run/netns/$ns" -- unshare --mount --propagation private -- \
        setsid bash -c '
            set -e
            S=$1
            for d in etc opt var/lib var/log; do
                key=${d//\//}
                mkdir -p "$S/ovl/$key/upper" "$S/ovl/$key/work"
                mount -t overlay "mgc-$key" -o "lowerdir=/$d,upperdir=$S/ovl/$key/upper,workdir=$S/ovl/$key/work" "/$d"
            done
            mount -t tmpfs -o mode=755 mgc-run /run
            mkdir -p /var/lib/containerd /var/lib/kubelet /etc/cni/net.d /opt/cni/bin /var/log/pods
            mount --bind "$S/containerd" /var/lib/containerd
            mount --bind "$S/kubelet" /var/lib/kubelet
            mount --make-rshared /
            echo ready >"$S/holder.ready"
            # No exec: this shell'"'"'s command line (naming $S) is how down.sh
            # tells the holder from a recycled pid.
            trap "exit 0" TERM
            while :; do sleep 3600 & wait $!; done
        ' mignet-cluster-holder "$S" </dev/null >"$STATE/logs/holder-$name.log" 2>&1 &
    echo $! >"$S/holder.pid"
    wait_until 10 "mount namespace of $name" test -f "$S/holder.ready"
    h=$(cat "$S/holder.pid")
    # in_node_<i> CMD...: run inside node i's network and mount namespaces.
    local enter=(nsenter --net="/run/netns/$ns" --mount="/proc/$h/ns/mnt" --)
    eval "in_node_$i() { ${enter[*]} \"\$@\"; }"

    # cgroups: the kubelet's cgroupRoot must exist in every hierarchy, and
    # cpuset needs its cpus/mems before anything can join it.
    cg=/mgc$ID-n$i
    local hier
    while read -r hier; do
        mkdir -p "$hier$cg"
        if [[ -f $hier/cpuset.cpus ]]; then
            cat "$hier/cpuset.cpus" >"$hier$cg/cpuset.cpus"
            cat "$hier/cpuset.mems" >"$hier$cg/cpuset.mems"
        fi
    done < <(cgroup_hierarchies)

    # CNI: Multus first (its one delegate is the pod network), then the
    # reference plugins it and containerd call.
    # macvlan too: a node with containernetworking-plugins has the reference
    # macvlan the seed's NAD names.
    "in_node_$i" sh -c "cp $REF_CNI/bridge $REF_CNI/host-local $REF_CNI/loopback $REF_CNI/portmap $REF_CNI/macvlan /opt/cni/bin/ &&
        cp '$MULTUS' /opt/cni/bin/multus && mkdir -p /etc/cni/net.d/multus.d"
    kubeconfig "$S/multus.kubeconfig" "https://$CP_IP:$API_PORT_IN_CP" multus
    "in_node_$i" cp "$S/multus.kubeconfig" /etc/cni/net.d/multus.d/multus.kubeconfig
    "in_node_$i" sh -c 'cat >/etc/cni/net.d/00-multus.conf' <<EOF
{
  "cniVersion": "0.3.1",
  "name": "multus-cni-network",
  "type": "multus",
  "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
  "delegates": [{
    "cniVersion": "0.3.1",
    "name": "bed-pod-network",
    "plugins": [
      {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
       "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(node_pod_cidr "$i")"}]],
                "routes": [{"dst": "0.0.0.0/0"}]}},
      {"type": "portmap", "capabilities": {"portMappings": true}}
    ]
  }]
}
EOF

    # containerd: its own root, state and socket inside the node's mounts.
    cat >"$S/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$STATE/runc-bed"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
EOF
    # Started without a function in between, so $! is the daemon itself
    # (nsenter and setsid exec).
    "${enter[@]}" setsid containerd --config "$S/containerd.toml" \
        </dev/null >"$STATE/logs/containerd-$name.log" 2>&1 &
    echo $! >"$S/containerd.pid"

    # kubelet
    kubeconfig "$S/kubelet.kubeconfig" "https://$CP_IP:$API_PORT_IN_CP" "kubelet-$i"
    cat >"$S/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host, PID 1 is not systemd.
cgroupDriver: cgroupfs
cgroupRoot: $cg
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# Three kubelets share one disk: evict only when it is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
EOF
    "${enter[@]}" setsid "$K8S_BIN/kubelet" --config="$S/kubelet.yaml" \
        --kubeconfig="$S/kubelet.kubeconfig" --hostname-override="$name" \
        --node-ip="$(node_ip "$i")" --v=1 \
        </dev/null >"$STATE/logs/kubelet-$name.log" 2>&1 &
    echo $! >"$S/kubelet.pid"
}

log "nodes: containerd + kubelet x $NODES"
for i in $(seq 1 "$NODES"); do
    start_node "$i"
done

# Images: imported into each node's containerd (no registry is reachable).
for i in $(seq 1 "$NODES"); do
    wait_until 30 "containerd of $(node_name "$i")" "in_node_$i" ctr --address /run/containerd/containerd.sock version
    "in_node_$i" "$ROOT/deploy/image/import.sh" /run/containerd/containerd.sock "$PAUSE_ARCHIVE" ${MIGNET_ARCHIVE:+"$MIGNET_ARCHIVE"} \
        >>"$STATE/logs/images.log" 2>&1 || die "importing images into $(node_name "$i") (see logs/images.log)"
done

log "waiting for $NODES nodes Ready"
all_ready() {
    local n
    n=$("${KC[@]}" get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)
    ((n == NODES))
}
wait_until 180 "all nodes" all_ready

cat >"$STATE/env" <<EOF
# Written by tests/cluster/up.sh; source it. Tear down: tests/cluster/down.sh "\$MIGNET_CLUSTER_STATE"
export MIGNET_CLUSTER_STATE=$STATE
export MIGNET_CLUSTER_ID=$ID
export MIGNET_CLUSTER_NODES=$NODES
export MIGNET_K8S_BIN=$K8S_BIN
export MIGNET_KUBECTL=$K8S_BIN/kubectl
export MIGNET_KUBECONFIG=$STATE/kubeconfig
export KUBECONFIG=$STATE/kubeconfig
export MIGNET_K8S_SERVER=https://127.0.0.1:$API_PORT
export MIGNET_K8S_CA=$PKI/ca.crt
export MIGNET_CLUSTER_POD_CIDR=$POD_CIDR
export MIGNET_CLUSTER_SERVICE_CIDR=$SERVICE_CIDR
EOF
trap - EXIT INT TERM
log "up: $NODES nodes Ready in $((SECONDS - t_start))s; kubeconfig $STATE/kubeconfig"
echo "$STATE/env"
