//! The real node agent in the lab: the lab's kubelet emulation calls
//! [`InProcessAgents`] (its `AgentRuntime` hook) when an agent pod is up or
//! about to go, and one agent per node runs in this process on the local
//! backend, its sockets inside the agent pod's namespace.
//!
//! Per node the agent keeps its state directory across pod restarts (a
//! network rollout replaces the pod), so a new agent reattaches the node's
//! running VMs. Certificates: one lab CA, an agent certificate per node,
//! generated on first use (rcgen) under `<dir>/pki`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mignet_dataplane::certs::{self, ClusterCa, Role, Validity};

use super::agent_pods::{AgentPod, AgentRuntime};
use crate::agent::{self, AgentSettings, GuestBoot};
use crate::backend::Backend;
use crate::network::NetworkRef;

/// Runs one agent per agent pod on a tokio runtime owned by the caller.
pub struct InProcessAgents<B: Backend> {
    runtime: tokio::runtime::Handle,
    backend: B,
    /// `<dir>/pki`, `<dir>/agents/<node>`.
    dir: PathBuf,
    boot: GuestBoot,
    multifd_channels: Option<u8>,
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// The lab CA (created once, kept in `<dir>/pki`).
fn lab_ca(dir: &Path) -> Result<ClusterCa, String> {
    let pki = dir.join("pki");
    let (cert, key) = (pki.join("ca.crt"), pki.join("ca.key"));
    if let (Ok(c), Ok(k)) = (
        std::fs::read_to_string(&cert),
        std::fs::read_to_string(&key),
    ) {
        return ClusterCa::from_pem(&c, &k).map_err(|e| e.to_string());
    }
    let ca = ClusterCa::generate("mignet lab CA", Validity::days_from_now(3650))
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&pki).map_err(|e| format!("{}: {e}", pki.display()))?;
    certs::write_atomic(&key, ca.key_pem().as_bytes(), 0o600).map_err(|e| e.to_string())?;
    certs::write_atomic(&cert, ca.cert_pem().as_bytes(), 0o644).map_err(|e| e.to_string())?;
    Ok(ca)
}

/// The certificate directory of `node`'s agent role (`ca.crt`, `tls.crt`,
/// `tls.key`, as the agent's `--cert-dir`), issued by the lab CA if missing.
/// Everything on that node with the agent's identity uses it: the agent and
/// the pre-flight probe pods.
pub(crate) fn agent_cert_dir(lab_dir: &Path, node: &str) -> Result<PathBuf, String> {
    let cert_dir = lab_dir.join("agents").join(node).join("certs");
    if !cert_dir.join(certs::CERT_FILE).exists() {
        let ca = lab_ca(lab_dir)?;
        let leaf = ca
            .issue(Role::Agent, node, Validity::days_from_now(365))
            .map_err(|e| e.to_string())?;
        certs::write_tls_dir(&cert_dir, ca.cert_pem(), &leaf).map_err(|e| e.to_string())?;
    }
    Ok(cert_dir)
}

impl<B: Backend> InProcessAgents<B> {
    pub fn new(
        runtime: tokio::runtime::Handle,
        backend: B,
        dir: PathBuf,
        boot: GuestBoot,
        multifd_channels: Option<u8>,
    ) -> Self {
        InProcessAgents {
            runtime,
            backend,
            dir,
            boot,
            multifd_channels,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The settings of `pod`'s agent; its certificate is issued if missing.
    pub fn settings_for(&self, pod: &AgentPod) -> Result<AgentSettings, String> {
        let node_dir = self.dir.join("agents").join(&pod.node);
        let cert_dir = agent_cert_dir(&self.dir, &pod.node)?;
        let pod_ip: IpAddr = pod
            .pod_ip
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| {
                format!(
                    "agent pod {} has no usable IP {:?}",
                    pod.pod_name, pod.pod_ip
                )
            })?;
        // The kubelet says which NAD it attached as migration0, in the one
        // form a cluster's agent gets too (`namespace/name`).
        let migration_network = pod
            .migration_network
            .as_deref()
            .map(|n| NetworkRef::parse_qualified("the agent pod's migration network", n))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(AgentSettings {
            node_name: pod.node.clone(),
            pod_ip,
            migration_network,
            migration_interface: agent::default_interface(),
            prefer_family: None,
            netns: Some(pod.netns.clone()),
            cert_dir,
            allow_tls12: false,
            state_dir: node_dir.join("state"),
            boot: self.boot.clone(),
            multifd_channels: self.multifd_channels,
            shutdown_grace: Duration::from_secs(30),
            // The node's launcher pods run its VMs (the lab kubelet starts
            // them); the agent attaches, as in a cluster.
            launcher_root: Some(super::node_vms_dir(&self.dir, &pod.node)),
        })
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .is_some_and(|t| !t.is_finished())
    }
}

impl<B: Backend> AgentRuntime for InProcessAgents<B> {
    fn start(&self, pod: &AgentPod) -> Result<(), String> {
        let settings = self.settings_for(pod)?;
        let backend = self.backend.clone();
        let node = pod.node.clone();
        let metrics_file = super::agent_metrics_addr_file(&self.dir, &node);
        let task = self.runtime.spawn(async move {
            let core = match agent::AgentCore::start(settings).await {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::warn!(%node, error = %agent::error_chain(&e), "agent failed");
                    return;
                }
            };
            // The agent's /metrics, as its pod's `metrics` port serves it
            // in a cluster; it goes with the agent (this task).
            let metrics = Arc::new(crate::metrics::Metrics::default());
            metrics.set_agent(&node, core.migration_metrics.clone());
            let _http = match super::serve_metrics(metrics, metrics_file).await {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "agent /metrics not served");
                    None
                }
            };
            agent::run_with_core(backend, core, std::future::pending()).await;
        });
        let old = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod.node.clone(), task);
        if let Some(old) = old {
            old.abort();
        }
        Ok(())
    }

    fn is_running(&self, node: &str) -> bool {
        InProcessAgents::is_running(self, node)
    }

    fn stop(&self, pod: &AgentPod) {
        // The VMs outlive their agent; the next agent of this node reattaches.
        if let Some(t) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pod.node)
        {
            t.abort();
        }
    }
}

impl<B: Backend> Drop for InProcessAgents<B> {
    fn drop(&mut self) {
        for (_, t) in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[tokio::test]
    async fn settings_follow_the_pod_and_certs_are_issued_once() {
        let dir = std::env::temp_dir().join(format!("mga-labrt-{}", std::process::id()));
        let store = std::sync::Arc::new(crate::store::Store::open(dir.join("store")).unwrap());
        let agents = InProcessAgents::new(
            tokio::runtime::Handle::current(),
            LocalBackend::new(store),
            dir.clone(),
            GuestBoot::new("/k", "/i"),
            Some(4),
        );
        let mut pod = AgentPod {
            node: "node1".into(),
            pod_name: "mignet-agent-node1".into(),
            netns: "lab-agent-node1".into(),
            pod_ip: "10.244.1.2".into(),
            networks: vec![("migration0".into(), vec!["10.200.5.1/24".into()])],
            migration_network: Some("mignet-system/my-secondary-network".into()),
        };
        let s = agents.settings_for(&pod).unwrap();
        assert_eq!(
            s.migration_network.map(|n| n.to_string()).as_deref(),
            Some("mignet-system/my-secondary-network")
        );
        assert_eq!(s.netns.as_deref(), Some("lab-agent-node1"));
        assert_eq!(s.pod_ip, "10.244.1.2".parse::<IpAddr>().unwrap());
        let cert = std::fs::read(s.cert_dir.join(certs::CERT_FILE)).unwrap();
        // Loadable by the agent's TLS layer.
        mignet_dataplane::tls::ReloadingTls::load(
            mignet_dataplane::tls::TlsPaths::in_dir(&s.cert_dir),
            Default::default(),
        )
        .unwrap();
        // No network attached: the pod network, and the same certificate.
        pod.networks.clear();
        pod.migration_network = None;
        let s = agents.settings_for(&pod).unwrap();
        assert!(s.migration_network.is_none());
        assert_eq!(
            std::fs::read(s.cert_dir.join(certs::CERT_FILE)).unwrap(),
            cert
        );
        pod.pod_ip = "nonsense".into();
        assert!(agents.settings_for(&pod).is_err());
        drop(agents);
        let _ = std::fs::remove_dir_all(dir);
    }
}
