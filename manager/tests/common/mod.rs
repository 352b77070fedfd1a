//! Shared plumbing for the tests that run against the real kube-apiserver
//! started by `tests/k8s/up.sh`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use mignet::kube_adapter::network_watch::RolloutSettings;
use mignet::ClusterNetworks;
use serde_json::json;

pub struct Env {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

/// The test bed's coordinates. Missing variables are a failure, not a skip:
/// these tests are the proof that the manager works against a real apiserver.
pub fn env() -> Env {
    let get = |k: &str| {
        std::env::var_os(k).map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "{k} is not set: these tests need the real kube-apiserver test bed. Run \
                 `env_file=$(tests/k8s/up.sh) && source \"$env_file\"` (or wrap the command in \
                 `tests/k8s/run.sh cargo test -p mignet --test k8s`), then re-run."
            )
        })
    };
    Env {
        kubeconfig: get("MIGNET_KUBECONFIG"),
        kubectl: get("MIGNET_KUBECTL"),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run kubectl against the bed; returns the raw output.
pub fn kubectl(args: &[&str]) -> Output {
    let e = env();
    Command::new(&e.kubectl)
        .arg("--kubeconfig")
        .arg(&e.kubeconfig)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", e.kubectl.display()))
}

/// Run kubectl with `input` on stdin.
pub fn kubectl_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let e = env();
    let mut child = Command::new(&e.kubectl)
        .arg("--kubeconfig")
        .arg(&e.kubeconfig)
        .args(args)
        .current_dir(repo_root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

/// Run kubectl and require success; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Apply deploy/crds for real (once per test process) and wait until they
/// are served: server-side dry runs and CR writes need them.
pub fn ensure_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=mignet-tests",
            "-k",
            "deploy/crds",
        ]);
        // Right after the apply a CRD may have no status yet, and kubectl
        // wait then fails at once ("accessor error: <nil>") instead of
        // waiting: retry that for a few seconds.
        let args = [
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "-f",
            "deploy/crds/hco.kubevirt.io_hyperconvergeds.yaml",
            "-f",
            "deploy/crds/kubevirt.io_virtualmachineinstances.yaml",
            "-f",
            "deploy/crds/kubevirt.io_virtualmachineinstancemigrations.yaml",
            "-f",
            "deploy/crds/kubevirt.io_virtualmachines.yaml",
            "-f",
            "deploy/crds/k8s.cni.cncf.io_network-attachment-definitions.yaml",
            "-f",
            "deploy/crds/nodemaintenance.medik8s.io_nodemaintenances.yaml",
        ];
        for _ in 0..20 {
            if kubectl(&args).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        kubectl_ok(&args);
    });
}

pub async fn client() -> Client {
    let e = env();
    let kc = Kubeconfig::read_from(&e.kubeconfig).expect("reading MIGNET_KUBECONFIG");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("client")
}

/// A client acting as `user` (impersonation by the bed's admin), so a test
/// exercises our RBAC rather than cluster-admin.
pub async fn client_as(user: &str) -> Client {
    let e = env();
    let kc = Kubeconfig::read_from(&e.kubeconfig).expect("reading MIGNET_KUBECONFIG");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    cfg.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(cfg).expect("client")
}

/// deploy/base's RBAC, rewritten for a test namespace: the namespace becomes
/// `ns` and every `mignet-manager`/`mignet-agent` object name gets the
/// namespace as suffix, so cluster-scoped roles of parallel tests do not
/// collide. Applied for real; the cluster-scoped part is deleted on drop.
pub struct TestRbac {
    pub manager_sa: String,
    pub agent_sa: String,
    yaml: String,
}

impl TestRbac {
    pub fn apply(ns: &str) -> Self {
        let root = repo_root().join("deploy/base");
        let mut yaml = String::new();
        for f in ["rbac-manager.yaml", "rbac-agent.yaml"] {
            let text = std::fs::read_to_string(root.join(f)).expect("read RBAC yaml");
            yaml.push_str(&text);
            yaml.push_str("\n---\n");
        }
        let yaml = yaml
            .replace("mignet-system", ns)
            .replace(
                "name: mignet-manager",
                &format!("name: mignet-manager-{ns}"),
            )
            .replace(
                "name: mignet-agent\n",
                &format!("name: mignet-agent-{ns}\n"),
            );
        let out = kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "applying RBAC: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            manager_sa: format!("system:serviceaccount:{ns}:mignet-manager-{ns}"),
            agent_sa: format!("system:serviceaccount:{ns}:mignet-agent-{ns}"),
            yaml,
        }
    }
}

impl Drop for TestRbac {
    fn drop(&mut self) {
        let _ = kubectl_stdin(&["delete", "--ignore-not-found", "-f", "-"], &self.yaml);
    }
}

/// A Kubernetes namespace of this test's own, deleted on drop (also on
/// panic). Without a controller-manager the deletion only marks it
/// Terminating; names are unique, so that never collides.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn new(prefix: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{prefix}-{}-{}-{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff
        );
        kubectl_ok(&["create", "namespace", &name]);
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// The rollout controller running in-process; stopped on drop.
pub struct RunningController {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

pub fn settings(namespace: &str) -> RolloutSettings {
    RolloutSettings {
        namespace: namespace.to_owned(),
        hyperconverged: "kubevirt-hyperconverged".into(),
        agent_daemonset: "mignet-agent".into(),
        cluster: ClusterNetworks {
            pod: vec![POD_CIDR.parse().unwrap()],
            service: vec![SERVICE_CIDR.parse().unwrap()],
        },
        resync: Duration::from_secs(300),
        // No kubelet runs beside the test API server: no agent pods, so
        // the round has no nodes and the network goes straight through.
        preflight: mignet::network::preflight::PreflightSettings {
            hold_settle: Duration::ZERO,
            ..Default::default()
        },
        // Other tests share the API server: only this namespace's migrations.
        migrations_namespace: Some(namespace.to_owned()),
    }
}

impl RunningController {
    pub fn start(client: Client, settings: RolloutSettings) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            let metrics = std::sync::Arc::new(mignet::metrics::Metrics::default());
            if let Err(e) =
                mignet::kube_adapter::network_watch::run(client, settings, metrics, shutdown).await
            {
                panic!("controller failed: {e:?}");
            }
        });
        Self {
            stop: Some(tx),
            handle,
        }
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.abort();
    }
}

/// The agent DaemonSet as deploy/ ships it, reduced to what the apiserver
/// validates, plus a foreign annotation the manager must never touch.
pub async fn create_agent_daemonset(client: &Client, ns: &str) -> DaemonSet {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "mignet-agent", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "mignet-agent"}},
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/name": "mignet-agent"},
                    "annotations": {"example.com/keep": "yes"}
                },
                "spec": {"containers": [{"name": "agent", "image": "mignet:dev"}]}
            }
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &ds)
        .await
        .expect("create DaemonSet")
}

/// Poll `f` every few milliseconds until it returns Some, or panic with
/// `what` after `timeout`. Returns the value and how long it took.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, start.elapsed());
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub const SEED_NAD_CONFIG: &str = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

/// A minimal blocking HTTP/1.0 GET of a component's /healthz, /readyz or
/// /metrics; the raw response, or "" while nothing listens yet (callers poll).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Kills the child process on drop (also on panic).
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
