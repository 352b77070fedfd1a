//! Helpers for IPAM tests and the benchmark against the real kube-apiserver
//! of tests/k8s/run.sh: namespaces, kubeconfigs (admin and per-"node"
//! ServiceAccounts bound to deploy/base/ipam-rbac.yaml), pool inspection and
//! the apiserver's request counter. Uses kubectl so the checks do not share
//! code with the store under test.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The test bed's environment; panics (fails the test) when it is missing.
pub struct Bed {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub server: String,
    pub ca: PathBuf,
    pub nonadmin_kubeconfig: PathBuf,
}

pub fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: run these tests through the Kubernetes test bed, e.g. \
                     `tests/k8s/run.sh cargo test -p mignet-cni --test ipam_k8s`"
                )
            })
        };
        Bed {
            kubeconfig: var("MIGNET_KUBECONFIG").into(),
            kubectl: var("MIGNET_KUBECTL").into(),
            server: var("MIGNET_K8S_SERVER"),
            ca: var("MIGNET_K8S_CA").into(),
            nonadmin_kubeconfig: var("MIGNET_NONADMIN_KUBECONFIG").into(),
        }
    })
}

/// The repository root (cni-plugin/..).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run kubectl as admin; panics with stderr on failure.
pub fn kubectl(args: &[&str]) -> String {
    kubectl_in(args, None)
}

pub fn kubectl_in(args: &[&str], stdin: Option<&str>) -> String {
    let b = bed();
    let mut c = Command::new(&b.kubectl);
    c.arg("--kubeconfig")
        .arg(&b.kubeconfig)
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn kubectl");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Install whereabouts' CRDs (our copies in deploy/crds) once per process.
pub fn ensure_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let files = [
            "deploy/crds/whereabouts.cni.cncf.io_ippools.yaml",
            "deploy/crds/whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
        ];
        for f in files {
            kubectl(&["apply", "--server-side", "--force-conflicts", "-f", f]);
        }
        for f in files {
            kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                f,
            ]);
        }
        // The ClusterRoles the node identities are bound to; the
        // ServiceAccount objects in it need the product namespace.
        kubectl(&["apply", "-f", "deploy/base/namespace.yaml"]);
        kubectl(&["apply", "-f", "deploy/base/ipam-rbac.yaml"]);
    });
}

/// A namespace of our own, emptied and deleted on drop (also on panic).
/// Without a controller-manager a deleted namespace stays Terminating with
/// its objects, so the pools and reservations are deleted first.
pub struct TestNs {
    pub name: String,
    dir: PathBuf,
}

impl TestNs {
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        ensure_crds();
        kubectl(&["create", "namespace", &name]);
        // Pods need the default ServiceAccount (no controller-manager here).
        kubectl(&["create", "serviceaccount", "default", "-n", &name]);
        let dir = std::env::temp_dir().join(format!("mignet-ipam-k8s-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestNs { name, dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An admin kubeconfig whose context namespace is this namespace, so
    /// the store (like whereabouts) keeps its pools here.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        let p = self.dir.join("admin.kubeconfig");
        std::fs::copy(&bed().kubeconfig, &p).unwrap();
        let out = Command::new(&bed().kubectl)
            .args([
                "config",
                "set-context",
                "--current",
                "--namespace",
                &self.name,
            ])
            .arg("--kubeconfig")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    /// A "node" identity: ServiceAccount `sa` bound to the mignet-ipam
    /// ClusterRole in this namespace, with a token kubeconfig whose context
    /// namespace is this namespace.
    pub fn node_kubeconfig(&self, sa: &str) -> PathBuf {
        kubectl(&["create", "serviceaccount", sa, "-n", &self.name]);
        kubectl(&[
            "create",
            "rolebinding",
            sa,
            "-n",
            &self.name,
            "--clusterrole=mignet-ipam",
            &format!("--serviceaccount={}:{sa}", self.name),
        ]);
        let token = kubectl(&["create", "token", sa, "-n", &self.name, "--duration=2h"]);
        self.token_kubeconfig(sa, token.trim(), &bed().server)
    }

    /// A kubeconfig with `token` for `server` and this namespace.
    pub fn token_kubeconfig(&self, tag: &str, token: &str, server: &str) -> PathBuf {
        let p = self.dir.join(format!("{tag}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {tag}\n  user:\n    token: {token}\ncontexts:\n- name: {tag}\n  context:\n    cluster: bed\n    user: {tag}\n    namespace: {}\ncurrent-context: {tag}\n",
            bed().ca.display(),
            self.name
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Allocations of IPPool `name`: offset -> entry (empty if absent).
    pub fn pool(&self, name: &str) -> BTreeMap<u128, Value> {
        let out = kubectl(&[
            "get",
            "ippools.whereabouts.cni.cncf.io",
            "-n",
            &self.name,
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let Some(item) = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == name)
        else {
            return BTreeMap::new();
        };
        item["spec"]["allocations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.parse().expect("decimal offset"), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reservations: name -> spec.
    pub fn orips(&self) -> BTreeMap<String, Value> {
        let out = kubectl(&[
            "get",
            "overlappingrangeipreservations.whereabouts.cni.cncf.io",
            "-n",
            &self.name,
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().unwrap().to_string(),
                    i["spec"].clone(),
                )
            })
            .collect()
    }

    /// A Pod object (nothing runs it: there is no kubelet).
    pub fn create_pod(&self, name: &str) {
        let y = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n  containers:\n  - name: c\n    image: registry.invalid/none:0\n",
            self.name
        );
        kubectl_in(&["apply", "-f", "-"], Some(&y));
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let b = bed();
        for what in [
            "ippools.whereabouts.cni.cncf.io",
            "overlappingrangeipreservations.whereabouts.cni.cncf.io",
            "pods",
            "leases",
        ] {
            let _ = Command::new(&b.kubectl)
                .arg("--kubeconfig")
                .arg(&b.kubeconfig)
                .args([
                    "delete",
                    what,
                    "--all",
                    "-n",
                    &self.name,
                    "--wait=false",
                    "--grace-period=0",
                    "--force",
                ])
                .output();
        }
        let _ = Command::new(&b.kubectl)
            .arg("--kubeconfig")
            .arg(&b.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sum of the apiserver's `apiserver_request_total` counters: every request
/// it served, so a before/after difference counts a run's requests (plus
/// the bed's own background traffic, a few per second at most).
pub fn apiserver_requests() -> u64 {
    apiserver_requests_by_kind().values().sum()
}

/// `apiserver_request_total` per "VERB resource code" (e.g. "PUT ippools
/// 409"), to tell where a run's requests went.
pub fn apiserver_requests_by_kind() -> BTreeMap<String, u64> {
    let m = kubectl(&["get", "--raw", "/metrics"]);
    let mut out = BTreeMap::new();
    for l in m
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        let label = |k: &str| {
            let pat = format!("{k}=\"");
            labels
                .split_once(pat.as_str())
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(v, _)| v.to_string())
                .unwrap_or_default()
        };
        let key = format!("{} {} {}", label("verb"), label("resource"), label("code"));
        *out.entry(key).or_default() += v as u64;
    }
    out
}

/// CPU seconds (user + system) the bed's kube-apiserver and etcd have used
/// so far, from /proc and the pid files in $MIGNET_K8S_STATE; None when
/// not available.
pub fn server_cpu_secs() -> Option<(f64, f64)> {
    let state = PathBuf::from(std::env::var("MIGNET_K8S_STATE").ok()?);
    let cpu = |name: &str| -> Option<f64> {
        let pid = std::fs::read_to_string(state.join(format!("{name}.pid"))).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
        // Fields after the ")" that ends the command name: utime and stime
        // are the 12th and 13th.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        // USER_HZ is 100 on Linux for every architecture we run on.
        let hz = 100.0;
        Some(ticks / hz)
    };
    Some((cpu("kube-apiserver")?, cpu("etcd")?))
}
