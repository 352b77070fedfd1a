//! kubelet + Multus for the agent DaemonSet, in the lab.
//!
//! For each Node in the store there is one agent pod `mignet-agent-<node>`:
//! a Pod object in the store and a network namespace `<prefix>-agent-<node>`
//! with `eth0` on the pod network (a veth from the node, 10.244.<i>.2/24) and
//! one interface per network in the pod's `k8s.v1.cni.cncf.io/networks`
//! annotation, made by exec'ing the CNI plugin the NAD names (ADD on start,
//! DEL on stop). Results go to the pod's `k8s.v1.cni.cncf.io/network-status`
//! annotation, as Multus writes them.
//!
//! When the DaemonSet's pod-template annotations change, pods are replaced
//! one node at a time (stop, start, Ready) and the roll stops at the first
//! pod that does not come up (maxUnavailable = 1). VMs are not touched: they
//! live in the node namespaces, not in the agent pods.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::annotation;
use super::cni::CniCall;
use super::history::{self, PodStep};
use super::inventory::LabInventory;
use super::topology::add_namespace;
use super::{ip, netns_exists, netns_path, plan, LabConfig, LabError};
use super::{AGENT_DAEMONSET, LAB_NAMESPACE, NETNS_ANNOTATION};
use crate::api::NetworkAttachmentDefinition;
use crate::network::decide::{MIGRATION_INTERFACE, NETWORKS_ANNOTATION, NETWORK_HASH_ANNOTATION};
use crate::store::Store;

pub use crate::network::decide::NETWORK_STATUS_ANNOTATION;
/// Our record of the CNI calls to undo (config included, so DEL works after
/// the NAD changed or went away). Written before each ADD.
pub const ATTACHMENTS_ANNOTATION: &str = "mignet.io/cni-attachments";
/// Name of the node end of an agent pod's veth.
pub const AGENT_VETH: &str = "agent0";
/// Wait this long before retrying a pod that failed to start.
pub const RETRY_AFTER: Duration = Duration::from_secs(3);

/// One CNI attachment of a pod, as recorded for its DEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    /// `namespace/name` of the NAD.
    pub network: String,
    pub interface: String,
    pub container_id: String,
    pub config: String,
}

/// What an agent process needs to know about its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    pub node: String,
    pub pod_name: String,
    /// Network namespace name of the pod (under /var/run/netns).
    pub netns: String,
    pub pod_ip: String,
    /// (interface, addresses in CIDR form) per secondary network.
    pub networks: Vec<(String, Vec<String>)>,
    /// The NAD attached as the migration interface, `namespace/name`: what
    /// a cluster's agent gets as `--migration-network` (the manager's
    /// `mignet.io/migration-network` annotation, through the downward API).
    pub migration_network: Option<String>,
}

/// The `namespace/name` of the network attached as the migration
/// interface, among (interface, network) pairs.
fn migration_network_of<'a>(
    mut attached: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    attached
        .find(|(ifname, _)| *ifname == MIGRATION_INTERFACE)
        .map(|(_, network)| network.to_owned())
}

/// The agent process inside an agent pod. The lab calls `start` once the
/// pod's networks are attached and `stop` before it detaches them.
/// [`NoAgent`] runs nothing (the network plumbing alone).
pub trait AgentRuntime: Send + Sync {
    fn start(&self, pod: &AgentPod) -> Result<(), String>;
    fn stop(&self, pod: &AgentPod);
    /// Whether the agent of `node`'s pod runs in this runtime. False after
    /// the lab daemon restarted (its agents died with the old one) or the
    /// agent ended: the kubelet then restarts the container in its pod.
    fn is_running(&self, _node: &str) -> bool {
        true
    }
}

pub struct NoAgent;

impl AgentRuntime for NoAgent {
    fn start(&self, _pod: &AgentPod) -> Result<(), String> {
        Ok(())
    }
    fn stop(&self, _pod: &AgentPod) {}
}

/// The lab kubelet's finalizer on agent pods (see `start_pod`).
pub const KUBELET_FINALIZER: &str = "mignet.io/lab-kubelet";

pub fn pod_name(node: &str) -> String {
    format!("{AGENT_DAEMONSET}-{node}")
}

type Wanted = (Option<String>, Option<String>);

fn wanted_of(annotations: Option<&BTreeMap<String, String>>) -> Wanted {
    let get = |k: &str| annotations.and_then(|a| a.get(k)).cloned();
    (get(NETWORKS_ANNOTATION), get(NETWORK_HASH_ANNOTATION))
}

fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Multus' network-status entry of one attached secondary network
/// (`namespace/name`): its addresses without prefix length, its MAC.
pub(crate) fn network_status_entry(
    network: &str,
    interface: &str,
    att: &super::cni::Attached,
) -> serde_json::Value {
    let bare: Vec<&str> = att
        .ips
        .iter()
        .map(|a| a.split('/').next().unwrap_or(a))
        .collect();
    let mut entry = json!({
        "name": network,
        "interface": interface,
        "ips": bare,
        "dns": {},
    });
    if let Some(mac) = &att.mac {
        entry["mac"] = json!(mac);
    }
    entry
}

pub fn attachments_of(pod: &Pod) -> Vec<AttachmentRecord> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ATTACHMENTS_ANNOTATION))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// One node's agent pod, as the roll sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodState {
    /// Exists and carries the DaemonSet template's networks + hash annotations.
    pub up_to_date: bool,
    /// Ready, with its namespace present: serving.
    pub available: bool,
    /// It failed to come up a moment ago; retried after [`RETRY_AFTER`].
    pub backing_off: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollStep {
    /// Up to date and serving.
    Keep,
    /// Down and waiting for its retry: look again later. It is already
    /// unavailable, so this moves on to the other nodes (a missing or
    /// broken pod elsewhere may still be started).
    Later,
    /// (Re)start it: missing, broken, or outdated while all others serve.
    Replace,
    /// Outdated and serving, but another node's pod is unavailable: taking
    /// this one down would make two unavailable (maxUnavailable = 1), so
    /// the roll stops here for this pass.
    Hold,
}

/// The DaemonSet rolling update (maxUnavailable = 1) for one node, pure.
/// A pod that is already unavailable may always be (re)started: that costs
/// no availability. A serving pod is only replaced when every other pod
/// serves.
pub fn roll_step(pod: PodState, others_unavailable: bool) -> RollStep {
    match pod {
        PodState {
            up_to_date: true,
            available: true,
            ..
        } => RollStep::Keep,
        PodState {
            up_to_date: true,
            backing_off: true,
            ..
        } => RollStep::Later,
        PodState {
            available: false, ..
        } => RollStep::Replace,
        // Serving and outdated.
        _ if others_unavailable => RollStep::Hold,
        _ => RollStep::Replace,
    }
}

pub struct Kubelet<'a> {
    cfg: &'a LabConfig,
    store: &'a Store,
    runtime: &'a dyn AgentRuntime,
    retry_at: HashMap<String, Instant>,
}

impl<'a> Kubelet<'a> {
    pub fn new(cfg: &'a LabConfig, store: &'a Store, runtime: &'a dyn AgentRuntime) -> Self {
        Self {
            cfg,
            store,
            runtime,
            retry_at: HashMap::new(),
        }
    }

    /// One pass: bring every node's agent pod to the DaemonSet's template,
    /// one node at a time, and publish the DaemonSet's status.
    pub fn sync(&mut self) -> Result<(), LabError> {
        let Some(ds) = self
            .store
            .get::<DaemonSet>(LAB_NAMESPACE, AGENT_DAEMONSET)?
        else {
            return Ok(());
        };
        let template = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone());
        let want = wanted_of(template.as_ref());
        let nodes = self.store.list::<Node>(None)?;
        // Each node's pod as it is now; `available` is kept current as pods
        // go down and come back during this pass.
        let mut pods = Vec::new();
        let mut available = BTreeMap::new();
        for node in nodes.iter().filter_map(|n| n.metadata.name.as_deref()) {
            let pod = self.store.get::<Pod>(LAB_NAMESPACE, &pod_name(node))?;
            let healthy = pod
                .as_ref()
                .is_some_and(|p| pod_is_ready(p) && netns_exists(&self.cfg.agent_ns(node)));
            available.insert(node.to_owned(), healthy);
            pods.push((node, pod));
        }
        let mut result = Ok(());
        for (node, pod) in &pods {
            let node: &str = node;
            let state = PodState {
                up_to_date: pod
                    .as_ref()
                    .is_some_and(|p| wanted_of(p.metadata.annotations.as_ref()) == want),
                available: available[node],
                backing_off: self.retry_at.get(node).is_some_and(|t| Instant::now() < *t),
            };
            // The pod is there and ready but its agent is not running (the
            // daemon restarted): restart the container in place, as a
            // kubelet does, keeping the pod, its namespace and addresses.
            if let Some(p) = pod.as_ref().filter(|p| {
                available[node]
                    && p.metadata.deletion_timestamp.is_none()
                    && !self.runtime.is_running(node)
            }) {
                self.restart_container(node, p);
                continue;
            }
            let others_unavailable = available.iter().any(|(n, ok)| n != node && !ok);
            // A pod someone deleted is stopped and replaced at once, as the
            // kubelet and the DaemonSet controller do: no rollout budget.
            let deleted = pod
                .as_ref()
                .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
            if !deleted {
                match roll_step(state, others_unavailable) {
                    RollStep::Keep | RollStep::Later => continue,
                    RollStep::Hold => break,
                    RollStep::Replace => {}
                }
            }
            available.insert(node.to_owned(), false);
            if let Some(p) = &pod {
                self.stop_pod(node, p);
            }
            match self.start_pod(node, &want) {
                Ok(true) => {
                    self.retry_at.remove(node);
                    available.insert(node.to_owned(), true);
                }
                Ok(false) => {
                    self.retry_at
                        .insert(node.to_owned(), Instant::now() + RETRY_AFTER);
                    self.publish_status(&ds, &want)?;
                    // maxUnavailable = 1: do not take down the next node
                    // while this one is not back.
                    break;
                }
                Err(e) => {
                    self.retry_at
                        .insert(node.to_owned(), Instant::now() + RETRY_AFTER);
                    history::record(
                        &self.cfg.dir,
                        node,
                        &pod_name(node),
                        PodStep::NotReady,
                        want.0.as_deref(),
                        Some(crate::agent::error_chain(&e)),
                    );
                    result = Err(e);
                    break;
                }
            }
            self.publish_status(&ds, &want)?;
        }
        self.publish_status(&ds, &want)?;
        result
    }

    /// DaemonSet status as the DaemonSet controller would report it.
    fn publish_status(&self, ds: &DaemonSet, want: &Wanted) -> Result<(), LabError> {
        let nodes = self.store.list::<Node>(None)?;
        let pods = self.store.list::<Pod>(Some(LAB_NAMESPACE))?;
        let ours: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .is_some_and(|a| a == AGENT_DAEMONSET)
            })
            .collect();
        let updated = ours
            .iter()
            .filter(|p| wanted_of(p.metadata.annotations.as_ref()) == *want)
            .count() as i32;
        let ready = ours.iter().filter(|p| pod_is_ready(p)).count() as i32;
        let desired = nodes.len() as i32;
        let status = json!({
            "currentNumberScheduled": ours.len() as i32,
            "desiredNumberScheduled": desired,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": (desired - ready).max(0),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds.metadata.generation.unwrap_or(0),
        });
        // Fresh read: the rollout may have patched the template since.
        let Some(current) = self
            .store
            .get::<DaemonSet>(LAB_NAMESPACE, AGENT_DAEMONSET)?
        else {
            return Ok(());
        };
        let mut v = serde_json::to_value(&current).expect("DaemonSet serialises");
        if v.get("status") == Some(&status) {
            return Ok(());
        }
        // Observed generation must be of what we acted on, not newer.
        v["status"] = status;
        match self.store.update_status_value(v) {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => Ok(()), // next pass
            Err(e) => Err(e.into()),
        }
    }

    /// Start the agent pod of `node`. Ok(false): created but not Ready (the
    /// reason is in its status).
    fn start_pod(&self, node: &str, want: &Wanted) -> Result<bool, LabError> {
        let index = plan::node_index(node).ok_or_else(|| LabError::UnknownNode {
            node: node.to_owned(),
        })?;
        let name = pod_name(node);
        let agent_ns = self.cfg.agent_ns(node);
        let node_ns = self.cfg.node_ns(node);
        let mut annotations = BTreeMap::new();
        if let Some(n) = &want.0 {
            annotations.insert(NETWORKS_ANNOTATION.to_owned(), n.clone());
        }
        if let Some(h) = &want.1 {
            annotations.insert(NETWORK_HASH_ANNOTATION.to_owned(), h.clone());
        }
        annotations.insert(
            NETNS_ANNOTATION.to_owned(),
            netns_path(&agent_ns).display().to_string(),
        );
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": LAB_NAMESPACE,
                "labels": {"app": AGENT_DAEMONSET},
                "annotations": annotations,
                // The lab store deletes a pod without finalizers at once,
                // and its attachment records go with it. This one holds a
                // `delete pod` until stop_pod has run CNI DEL (a kubelet's
                // graceful deletion); without it the pod's IPAM address leaked.
                "finalizers": [KUBELET_FINALIZER],
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "DaemonSet",
                    "name": AGENT_DAEMONSET, "uid": "", "controller": true
                }],
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "agent", "image": "mignet"}],
            },
        }))
        .expect("static pod shape");
        history::record(
            &self.cfg.dir,
            node,
            &name,
            PodStep::Starting,
            want.0.as_deref(),
            None,
        );
        let mut pod = self.store.create(&pod)?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        info!(%node, pod = %name, networks = ?want.0, "starting agent pod");

        // A namespace left by a crashed lab process is ours (the record
        // says so): replace it.
        if netns_exists(&agent_ns) {
            let ours = LabInventory::load(&self.cfg.dir)?
                .is_some_and(|s| s.namespaces.iter().any(|n| n == &agent_ns));
            if !ours {
                return Err(LabError::NamespaceExists { name: agent_ns });
            }
            ip(&["netns", "del", &agent_ns])?;
        }
        add_namespace(self.cfg, &agent_ns)?;
        // agent0 can outlive its pod's namespace for a moment (the kernel
        // tears a namespace down asynchronously) or a crash; it is ours.
        if link_present(&node_ns, AGENT_VETH) {
            ip(&["-n", &node_ns, "link", "del", AGENT_VETH])?;
        }
        let gw = plan::pod_gateway(index).to_string();
        let pod_ip = plan::agent_ip(index).to_string();
        LabInventory::record_link(&self.cfg.dir, &node_ns, AGENT_VETH)?;
        ip(&[
            "-n", &node_ns, "link", "add", AGENT_VETH, "type", "veth", "peer", "name", "eth0",
            "netns", &agent_ns,
        ])?;
        ip(&[
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            AGENT_VETH,
        ])?;
        ip(&["-n", &node_ns, "link", "set", AGENT_VETH, "up"])?;
        ip(&[
            "-n",
            &agent_ns,
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &agent_ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &agent_ns, "route", "add", "default", "via", &gw])?;

        let mut network_status = vec![json!({
            "name": "lab-pod-network",
            "interface": "eth0",
            "ips": [pod_ip],
            "default": true,
        })];
        let mut networks = Vec::new();
        let mut attached: Vec<(String, String)> = Vec::new();
        let mut failure: Option<(&'static str, String)> = None;
        let selections = match want.0.as_deref() {
            None => Vec::new(),
            Some(v) => match annotation::parse(v, LAB_NAMESPACE) {
                Ok(s) => s,
                Err(e) => {
                    failure = Some(("InvalidNetworkAnnotation", e.to_string()));
                    Vec::new()
                }
            },
        };
        let mut records: Vec<AttachmentRecord> = Vec::new();
        for sel in &selections {
            let network = format!("{}/{}", sel.namespace, sel.name);
            let nad = self
                .store
                .get::<NetworkAttachmentDefinition>(&sel.namespace, &sel.name)?;
            let Some(config) = nad.and_then(|n| n.spec.config) else {
                failure = Some((
                    "NetworkAttachmentNotFound",
                    format!("NetworkAttachmentDefinition {network} not found or has no config"),
                ));
                break;
            };
            records.push(AttachmentRecord {
                network: network.clone(),
                interface: sel.interface.clone(),
                container_id: uid.clone(),
                config: config.clone(),
            });
            // Record before ADD: a crash during ADD still gets its DEL.
            pod = self.set_annotation(
                &pod,
                ATTACHMENTS_ANNOTATION,
                &serde_json::to_string(&records).expect("records serialise"),
            )?;
            let call = self.cni_call(node, &agent_ns, &name, &uid, &sel.interface, &config, &uid);
            match call.add() {
                Ok(att) => {
                    info!(%node, %network, interface = %sel.interface, ips = ?att.ips, "attached");
                    network_status.push(network_status_entry(&network, &sel.interface, &att));
                    networks.push((sel.interface.clone(), att.ips));
                    attached.push((sel.interface.clone(), network.clone()));
                }
                Err(e) => {
                    warn!(%node, %network, error = %e, "CNI ADD failed");
                    failure = Some(("CNIAddFailed", format!("{network}: {e}")));
                    break;
                }
            }
        }
        pod = self.set_annotation(
            &pod,
            NETWORK_STATUS_ANNOTATION,
            &serde_json::to_string(&network_status).expect("status serialises"),
        )?;
        let agent = AgentPod {
            node: node.to_owned(),
            pod_name: name.clone(),
            netns: agent_ns.clone(),
            pod_ip: pod_ip.clone(),
            networks,
            migration_network: migration_network_of(
                attached.iter().map(|(i, n)| (i.as_str(), n.as_str())),
            ),
        };
        if failure.is_none() {
            if let Err(e) = self.runtime.start(&agent) {
                failure = Some(("AgentStartFailed", e));
            }
        }
        let host_ip = plan::node_ip(index).to_string();
        let (phase, ready, reason, message) = match &failure {
            None => ("Running", "True", None, None),
            Some((r, m)) => ("Pending", "False", Some(*r), Some(m.clone())),
        };
        let mut v = serde_json::to_value(&pod).expect("pod serialises");
        v["status"] = json!({
            "phase": phase,
            "hostIP": host_ip,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": crate::store::now_rfc3339(),
            "conditions": [{
                "type": "Ready",
                "status": ready,
                "reason": reason,
                "message": message,
                "lastTransitionTime": crate::store::now_rfc3339(),
            }],
        });
        self.store.update_status_value(v)?;
        let step = if failure.is_none() {
            PodStep::Ready
        } else {
            PodStep::NotReady
        };
        history::record(
            &self.cfg.dir,
            node,
            &name,
            step,
            want.0.as_deref(),
            failure.as_ref().map(|(r, m)| format!("{r}: {m}")),
        );
        Ok(failure.is_none())
    }

    fn set_annotation(&self, pod: &Pod, key: &str, value: &str) -> Result<Pod, LabError> {
        let mut p = pod.clone();
        p.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        Ok(self.store.update(&p)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn cni_call<'c>(
        &'c self,
        node: &str,
        agent_ns: &'c str,
        pod_name: &'c str,
        pod_uid: &'c str,
        ifname: &'c str,
        config: &'c str,
        container_id: &'c str,
    ) -> CniCallOwned<'c> {
        CniCallOwned {
            bin_dir: self.cfg.cni_bin_dir(),
            ipam_dir: self.cfg.ipam_dir(),
            node_ns: self.cfg.node_ns(node),
            agent_ns,
            pod_name,
            pod_uid,
            ifname,
            config,
            container_id,
        }
    }

    /// Start the agent of a running pod again (a container restart): the
    /// pod's addresses come from its status and network-status annotation.
    fn restart_container(&self, node: &str, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status: Vec<serde_json::Value> = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let secondary = || status.iter().filter(|e| e["default"] != json!(true));
        let networks = secondary()
            .filter_map(|e| {
                let ifname = e["interface"].as_str()?.to_owned();
                let ips = e["ips"]
                    .as_array()?
                    .iter()
                    .filter_map(|ip| ip.as_str().map(str::to_owned))
                    .collect();
                Some((ifname, ips))
            })
            .collect();
        let migration_network = migration_network_of(
            secondary().filter_map(|e| Some((e["interface"].as_str()?, e["name"].as_str()?))),
        );
        let agent = AgentPod {
            node: node.to_owned(),
            pod_name: name.clone(),
            netns: self.cfg.agent_ns(node),
            pod_ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            networks,
            migration_network,
        };
        info!(%node, pod = %name, "agent not running in its pod; restarting the container");
        if let Err(e) = self.runtime.start(&agent) {
            warn!(%node, pod = %name, error = %e, "restarting the agent failed");
            history::record(&self.cfg.dir, node, &name, PodStep::NotReady, None, Some(e));
        }
    }

    /// Drop [`KUBELET_FINALIZER`] from pod `name` (a pod being deleted then
    /// goes).
    fn release(&self, name: &str) -> Result<(), crate::store::StoreError> {
        release_finalizer(self.store, LAB_NAMESPACE, name, None)
    }

    /// Stop a pod: agent, CNI DEL of every recorded attachment, namespace,
    /// object. Errors are logged and the stop goes on: a DEL that fails
    /// must not keep the old pod (and its node) down forever.
    pub fn stop_pod(&self, node: &str, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let agent_ns = self.cfg.agent_ns(node);
        info!(%node, pod = %name, "stopping agent pod");
        history::record(&self.cfg.dir, node, &name, PodStep::Stopping, None, None);
        self.runtime.stop(&AgentPod {
            node: node.to_owned(),
            pod_name: name.clone(),
            netns: agent_ns.clone(),
            pod_ip: String::new(),
            networks: Vec::new(),
            migration_network: None,
        });
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for rec in attachments_of(pod) {
            let call = self.cni_call(
                node,
                &agent_ns,
                &name,
                &uid,
                &rec.interface,
                &rec.config,
                &rec.container_id,
            );
            if let Err(e) = call.del() {
                warn!(%node, network = %rec.network, error = %e, "CNI DEL failed");
            }
        }
        // The node end of the pod's veth goes first, which removes the pair
        // at once. Left to `netns del`, the kernel destroys the pod end (and
        // agent0 with it) asynchronously, and a quick restart found agent0
        // still there ("RTNETLINK answers: File exists").
        let node_ns = self.cfg.node_ns(node);
        if link_present(&node_ns, AGENT_VETH) {
            if let Err(e) = ip(&["-n", &node_ns, "link", "del", AGENT_VETH]) {
                warn!(%node, error = %e, "removing the agent pod's veth failed");
            }
        }
        if netns_exists(&agent_ns) {
            match ip(&["netns", "del", &agent_ns]) {
                Ok(_) => {
                    let _ = LabInventory::forget_namespace(&self.cfg.dir, &agent_ns);
                }
                Err(e) => warn!(%node, error = %e, "removing agent namespace failed"),
            }
        } else {
            let _ = LabInventory::forget_namespace(&self.cfg.dir, &agent_ns);
        }
        if let Err(e) = self.release(&name) {
            warn!(pod = %name, error = %e, "removing the kubelet's finalizer failed");
        }
        if let Err(e) = self.store.delete_typed::<Pod>(LAB_NAMESPACE, &name) {
            if !e.is_not_found() {
                warn!(pod = %name, error = %e, "deleting pod object failed");
            }
        }
        history::record(&self.cfg.dir, node, &name, PodStep::Stopped, None, None);
    }
}

/// A [`CniCall`] with owned paths.
struct CniCallOwned<'c> {
    bin_dir: std::path::PathBuf,
    ipam_dir: std::path::PathBuf,
    node_ns: String,
    agent_ns: &'c str,
    pod_name: &'c str,
    pod_uid: &'c str,
    ifname: &'c str,
    config: &'c str,
    container_id: &'c str,
}

impl CniCallOwned<'_> {
    fn call(&self) -> CniCall<'_> {
        CniCall {
            bin_dir: &self.bin_dir,
            ipam_store_dir: &self.ipam_dir,
            node_ns: &self.node_ns,
            pod_netns: self.agent_ns,
            container_id: self.container_id,
            ifname: self.ifname,
            pod_namespace: LAB_NAMESPACE,
            pod_name: self.pod_name,
            pod_uid: self.pod_uid,
            config: self.config,
        }
    }
    fn add(&self) -> Result<super::cni::Attached, super::cni::CniCallError> {
        self.call().add()
    }
    fn del(&self) -> Result<(), super::cni::CniCallError> {
        self.call().del()
    }
}

fn link_present(ns: &str, link: &str) -> bool {
    ip(&["-n", ns, "link", "show", "dev", link]).is_ok()
}

/// Drop [`KUBELET_FINALIZER`] from pod `namespace/name`, the one with `uid`
/// when given (a pod of the same name made since is left alone): the lab
/// kubelet's last step for a pod it stopped, so a deleted pod then goes.
pub(crate) fn release_finalizer(
    store: &Store,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<(), crate::store::StoreError> {
    loop {
        let Some(mut pod) = store.get::<Pod>(namespace, name)? else {
            return Ok(());
        };
        if uid.is_some() && pod.metadata.uid.as_deref() != uid {
            return Ok(());
        }
        let Some(f) = pod.metadata.finalizers.as_mut() else {
            return Ok(());
        };
        if !f.iter().any(|x| x == KUBELET_FINALIZER) {
            return Ok(());
        }
        f.retain(|x| x != KUBELET_FINALIZER);
        match store.update(&pod) {
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Ok(()),
            r => return r.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_the_migration_nad_as_namespace_slash_name() {
        // As start_pod records each attachment: `namespace/name` per interface.
        let attached = [
            ("net1", "mignet-system/other"),
            ("migration0", "mignet-system/mig.net"),
        ];
        let emitted = migration_network_of(attached.into_iter()).unwrap();
        let r = crate::network::NetworkRef::parse_qualified("test", &emitted).unwrap();
        assert_eq!(
            (r.namespace(), r.name()),
            (Some("mignet-system"), "mig.net")
        );
        assert_eq!(migration_network_of([("net1", "a/b")].into_iter()), None);
    }

    fn pod(up_to_date: bool, available: bool, backing_off: bool) -> PodState {
        PodState {
            up_to_date,
            available,
            backing_off,
        }
    }

    #[test]
    fn serving_pods_are_replaced_only_when_all_others_serve() {
        use RollStep::*;
        // Up to date and serving: kept, whatever the others do.
        assert_eq!(roll_step(pod(true, true, false), true), Keep);
        // Outdated and serving.
        assert_eq!(roll_step(pod(false, true, false), false), Replace);
        assert_eq!(roll_step(pod(false, true, false), true), Hold);
        // Already down: restarting it costs nothing.
        assert_eq!(roll_step(pod(false, false, false), true), Replace);
        assert_eq!(roll_step(pod(true, false, false), true), Replace);
        let missing = PodState {
            up_to_date: false,
            available: false,
            backing_off: false,
        };
        assert_eq!(roll_step(missing, true), Replace);
        // Failed a moment ago: wait for the retry, without touching others
        // (the next serving, outdated node then Holds on it).
        assert_eq!(roll_step(pod(true, false, true), false), Later);
        assert_eq!(roll_step(pod(false, true, false), true), Hold);
    }
}
