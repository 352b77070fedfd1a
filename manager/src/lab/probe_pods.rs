//! The lab kubelet + Multus for pre-flight probe pods
//! ([`crate::network::preflight`]): every Pod labelled [`ROUND_LABEL`] and
//! bound to a lab node (`spec.nodeName`) runs here, as a kubelet with
//! Multus would run it.
//!
//! - Sandbox: a network namespace of its own (`<prefix>-probe-<node>-<uid>`,
//!   recorded in the lab inventory before it exists), `lo` up, no pod-network
//!   `eth0` (the probe reaches the lab store by path). Each network of the
//!   pod's `k8s.v1.cni.cncf.io/networks` annotation is attached with the
//!   NAD's CNI config, exactly as for agent pods (the plugin runs in the
//!   node's namespace, where the macvlan master `eth1` is), and Multus'
//!   `network-status` annotation is written.
//! - An ADD that fails leaves no trace (every recorded attachment gets its
//!   DEL, the namespace goes) and the pod `Pending`, with what a kubelet
//!   records: a `FailedCreatePodSandBox` Event on the pod, and the same
//!   message in the condition `PodReadyToStartContainers=False`. It is
//!   retried after [`RETRY_AFTER`].
//! - Container [`PROBE_CONTAINER`]: its `args` run by this `mignet` binary
//!   in the pod's namespace, detached (the launcher pods' wrapper), with
//!   `MIGNET_LAB_DIR` set and the lab's mapping of its flags ([`lab_args`]).
//!   Status as for launcher pods: `Running`, then `Succeeded`/`Failed` with
//!   the exit code and the termination log as message. Never restarted
//!   (`restartPolicy: Never`).
//! - A deleted pod (gone, or `deletionTimestamp` set: the kubelet's
//!   finalizer holds it until here) gets SIGTERM, SIGKILL after its grace
//!   period; then CNI DEL of each attachment (its address is freed), the
//!   namespace and the state go, and the object with them.
//!
//! Per pod the state is `<dir>/probes/<node>/<namespace>_<name>/`:
//! `probe.json` ([`ProbeRecord`], written before anything it names is
//! made, so a crash at any point is undone by the next pass) and the
//! container's files (pid, exit code, termination log, output).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Instant;

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus, Pod};
use k8s_openapi::api::core::v1::{EnvVar, PodCondition};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::agent_pods::{
    network_status_entry, release_finalizer, AttachmentRecord, KUBELET_FINALIZER,
    NETWORK_STATUS_ANNOTATION, RETRY_AFTER,
};
use super::cni::CniCall;
use super::inventory::{self, LabInventory, ProcessRecord};
use super::launcher_pods::{self as pods, find_mignet, signal, spawn_container};
use super::topology::add_namespace;
use super::{annotation, ip, netns_exists, netns_path, plan, LabConfig, LabError};
use crate::api::NetworkAttachmentDefinition;
use crate::network::decide::NETWORKS_ANNOTATION;
use crate::network::preflight::{PROBE_CONTAINER, ROUND_LABEL};
use crate::store::{fs as sfs, Store};

/// The Event reason (and condition reason) of a sandbox whose network
/// could not be set up, as the kubelet writes it.
pub const FAILED_SANDBOX: &str = "FailedCreatePodSandBox";
/// The condition that carries it.
pub const SANDBOX_CONDITION: &str = "PodReadyToStartContainers";

const RECORD: &str = "probe.json";
/// Set in every probe container's environment to its state directory: how
/// `lab down`'s leftovers check finds a container whatever its args.
pub const POD_ENV: &str = "MIGNET_LAB_POD";

/// What the lab kubelet made for one probe pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub netns: String,
    /// Each written before its ADD: a crash during ADD still gets its DEL.
    #[serde(default)]
    pub attachments: Vec<AttachmentRecord>,
    /// The wrapper around the container; `None` until it started.
    #[serde(default)]
    pub wrapper: Option<ProcessRecord>,
    pub grace_seconds: u64,
    /// Unix seconds when SIGTERM was sent (the pod was deleted).
    #[serde(default)]
    pub terminating_since: Option<u64>,
    /// The final status was written (or the container could not start).
    #[serde(default)]
    pub reported: bool,
    /// RFC 3339.
    #[serde(default)]
    pub started_at: String,
}

/// Where the probe pods of every node keep their state.
pub fn probes_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("probes")
}

fn state_dir(lab_dir: &Path, node: &str, namespace: &str, name: &str) -> PathBuf {
    probes_dir(lab_dir)
        .join(node)
        .join(format!("{namespace}_{name}"))
}

/// The pod's network namespace: unique per pod instance, under the lab's
/// prefix (so `lab down` and the leftovers check know it).
pub fn netns_name(prefix: &str, node: &str, uid: &str) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(8).collect();
    format!("{prefix}-probe-{node}-{short}")
}

/// The container's environment as a kubelet resolves it: literal values
/// and the downward API's pod fields (others are left out).
pub fn container_env(pod: &Pod, env: &[EnvVar]) -> Vec<(String, String)> {
    let field = |path: &str| -> Option<String> {
        match path {
            "metadata.name" => pod.metadata.name.clone(),
            "metadata.namespace" => pod.metadata.namespace.clone(),
            "metadata.uid" => pod.metadata.uid.clone(),
            "spec.nodeName" => pod.spec.as_ref()?.node_name.clone(),
            "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
            _ => None,
        }
    };
    env.iter()
        .filter_map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(from)) => field(&from.field_ref.as_ref()?.field_path),
                (None, None) => Some(String::new()),
            }?;
            Some((e.name.clone(), v))
        })
        .collect()
}

/// Kubernetes' `$(VAR)` expansion of an argument: a known variable is
/// replaced, an unknown one kept as written, `$$` is a literal `$`.
pub fn expand(arg: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = tail
            .strip_prefix("$(")
            .and_then(|t| t.split_once(')'))
            .filter(|(n, _)| !n.is_empty())
        {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..name.len() + 3]),
            }
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The probe container's args mapped onto the lab node (pure): `$(VAR)`s
/// expanded; the certificate flags pointed at the node's agent
/// certificates (`--cert-source files`, `--cert-dir`, `--ca-bundle` its
/// `ca.crt`; what a cluster mounts or requests, the lab has on disk);
/// `--termination-log` at the file the kubelet reads back. A `probe`
/// subcommand also gets `--lab` (the store, through `MIGNET_LAB_DIR`) and
/// any of those flags it lacks. Other args run as written.
pub fn lab_args(
    args: &[String],
    env: &[(String, String)],
    cert_dir: &Path,
    termination_log: &Path,
) -> Vec<String> {
    let mapped = [
        ("--cert-source", "files".to_owned()),
        ("--cert-dir", cert_dir.display().to_string()),
        (
            "--ca-bundle",
            cert_dir
                .join(mignet_dataplane::certs::CA_FILE)
                .display()
                .to_string(),
        ),
        ("--termination-log", termination_log.display().to_string()),
    ];
    let mut out: Vec<String> = Vec::with_capacity(args.len() + 9);
    let mut seen = BTreeSet::new();
    let mut it = args.iter().map(|a| expand(a, env));
    while let Some(a) = it.next() {
        let hit = mapped.iter().find(|(flag, _)| {
            a == *flag
                || a.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        });
        match hit {
            Some((flag, value)) => {
                seen.insert(*flag);
                if a == *flag {
                    it.next();
                }
                out.push(format!("{flag}={value}"));
            }
            None => out.push(a),
        }
    }
    if out.first().is_some_and(|a| a == "probe") {
        if !out.iter().any(|a| a == "--lab") {
            out.push("--lab".into());
        }
        for (flag, value) in &mapped {
            if !seen.contains(flag) {
                out.push(format!("{flag}={value}"));
            }
        }
    }
    out
}

/// The kubelet's words for a sandbox whose network failed (with Multus'
/// part naming the pod and the network), so an operator sees the plugin's
/// own error at the end, e.g. the macvlan master that does not exist.
pub fn sandbox_message(pod: &Pod, network: &str, error: &str) -> String {
    format!(
        "Failed to create pod sandbox: failed to set up the network of pod {}/{}: \
         [{}/{}/{}:{}]: error adding container to network {:?}: {}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
        network,
        network.rsplit('/').next().unwrap_or(network),
        error
    )
}

/// Why a start stopped.
#[derive(Debug)]
enum StartError {
    /// The sandbox (namespace, networks) could not be made: undone, pod
    /// `Pending`, retried.
    Sandbox(String),
    /// The sandbox is up but the container could not start: `Failed`.
    Container(String),
}

fn read_record(dir: &Path) -> Option<ProbeRecord> {
    serde_json::from_value(sfs::read_json(&dir.join(RECORD)).ok()??).ok()
}

fn write_record(dir: &Path, rec: &ProbeRecord) -> Result<(), LabError> {
    let v = serde_json::to_value(rec).expect("record serialises");
    sfs::write_json(&dir.join(RECORD), &v).map_err(|e| LabError::Store(e.into()))
}

/// The container's pid, if that process is still the container of this
/// pod: the wrapper's child, in the wrapper's process group (a recycled
/// pid is in another group, and is never signalled).
fn container_pid(dir: &Path, rec: &ProbeRecord) -> Option<i32> {
    let wrapper = rec.wrapper.as_ref()?;
    let pid: i32 = std::fs::read_to_string(dir.join(pods::PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    let pgrp: i32 = fields.nth(1)?.parse().ok()?;
    (pgrp == wrapper.pid && state != "Z").then_some(pid)
}

/// SIGKILL every probe container and wrapper the records name (`lab
/// down`, after the daemon stopped; the namespaces and addresses go with
/// the lab).
pub fn kill_all(lab_dir: &Path) {
    use nix::sys::signal::Signal;
    for dir in pod_dirs(lab_dir) {
        let Some(rec) = read_record(&dir) else {
            continue;
        };
        if let Some(pid) = container_pid(&dir, &rec) {
            signal(pid, Signal::SIGKILL);
        }
        if let Some(w) = rec.wrapper.as_ref().filter(|w| inventory::is_alive(w)) {
            signal(w.pid, Signal::SIGKILL);
        }
    }
}

/// Every probe pod's state directory, of every node.
fn pod_dirs(lab_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(probes_dir(lab_dir))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|node| {
            std::fs::read_dir(node.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|pod| pod.path())
        .collect()
}

/// The lab kubelet's probe-pod half. Keeps the wrappers it started (to
/// reap them) and when to retry a failed sandbox; everything else is on
/// disk, so a new instance adopts the pods.
pub struct ProbePods<'a> {
    cfg: &'a LabConfig,
    store: &'a Store,
    children: HashMap<PathBuf, Child>,
    /// Pod uid -> when its sandbox may be tried again.
    retry_at: HashMap<String, Instant>,
}

impl<'a> ProbePods<'a> {
    pub fn new(cfg: &'a LabConfig, store: &'a Store) -> Self {
        ProbePods {
            cfg,
            store,
            children: HashMap::new(),
            retry_at: HashMap::new(),
        }
    }

    fn records(&self) -> Vec<(PathBuf, ProbeRecord)> {
        let mut out = Vec::new();
        for dir in pod_dirs(&self.cfg.dir) {
            match read_record(&dir) {
                Some(r) => out.push((dir, r)),
                // The record is written before anything it names.
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        out
    }

    fn alive(&self, dir: &Path, rec: &ProbeRecord) -> bool {
        rec.wrapper.as_ref().is_some_and(inventory::is_alive) || container_pid(dir, rec).is_some()
    }

    /// One pass: reap, stop and clean deleted pods, report ends, start
    /// bound ones (and retry failed sandboxes that are due).
    pub fn sync(&mut self) -> Result<(), LabError> {
        self.children
            .retain(|_, c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        let all = self.store.list::<Pod>(None)?;
        let pods: Vec<&Pod> = all
            .iter()
            .filter(|p| p.labels().contains_key(ROUND_LABEL))
            .collect();
        let by_key: BTreeMap<(String, String), &Pod> = pods
            .iter()
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), *p))
            .collect();
        let mut known = BTreeSet::new();
        for (dir, mut rec) in self.records() {
            let key = (rec.namespace.clone(), rec.name.clone());
            let pod = by_key
                .get(&key)
                .copied()
                .filter(|p| p.metadata.uid.as_deref() == Some(rec.uid.as_str()));
            let deleted = pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            let alive = self.alive(&dir, &rec);
            if deleted {
                if alive {
                    self.terminate(&dir, &mut rec)?;
                } else {
                    self.teardown(&dir, &rec);
                    if let Some(p) = pod {
                        self.release(p)?;
                    }
                }
                known.insert(key);
                continue;
            }
            let pod = pod.expect("not deleted");
            if rec.wrapper.is_none() && !rec.reported {
                // A start that stopped half-way (the daemon died): undo it
                // and start again below.
                self.teardown(&dir, &rec);
                continue;
            }
            known.insert(key);
            if alive {
                if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                    pods::write_running(
                        self.store,
                        pod,
                        PROBE_CONTAINER,
                        &rec.node,
                        &rec.started_at,
                    )?;
                }
                continue;
            }
            if !rec.reported {
                self.children.remove(&dir);
                pods::write_terminated(self.store, pod, PROBE_CONTAINER, &dir, &rec.started_at)?;
                rec.reported = true;
                write_record(&dir, &rec)?;
            }
        }
        for p in &pods {
            let key = (p.namespace().unwrap_or_default(), p.name_any());
            if known.contains(&key) {
                continue;
            }
            if p.metadata.deletion_timestamp.is_some() {
                // Nothing runs for it (its sandbox failed): let it go.
                self.release(p)?;
                continue;
            }
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let Some(node) = node else { continue };
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if matches!(phase, Some("Succeeded" | "Failed"))
                || plan::node_index(&node).is_none_or(|i| i > self.cfg.nodes)
                || self.retry_at.get(&uid).is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            match self.start(p, &node) {
                Ok(()) => {
                    self.retry_at.remove(&uid);
                }
                Err(StartError::Sandbox(message)) => {
                    warn!(pod = %key.1, %node, %message, "probe pod sandbox failed");
                    self.retry_at.insert(uid, Instant::now() + RETRY_AFTER);
                    self.record_sandbox_failure(p, &node, &message)?;
                }
                Err(StartError::Container(why)) => {
                    warn!(pod = %key.1, %node, %why, "probe container could not start");
                    pods::write_failed_to_start(self.store, p, PROBE_CONTAINER, &why)?;
                }
            }
        }
        self.collect_events()?;
        Ok(())
    }

    /// Make the sandbox and start the container.
    fn start(&mut self, pod: &Pod, node: &str) -> Result<(), StartError> {
        let sandbox = |e: LabError| StartError::Sandbox(e.to_string());
        let Some(pod) = self.hold(pod).map_err(sandbox)? else {
            return Ok(());
        };
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = state_dir(&self.cfg.dir, node, &ns, &name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StartError::Sandbox(format!("{}: {e}", dir.display())))?;
        let mut rec = ProbeRecord {
            namespace: ns.clone(),
            name: name.clone(),
            uid: uid.clone(),
            node: node.to_owned(),
            netns: netns_name(&self.cfg.prefix, node, &uid),
            attachments: Vec::new(),
            wrapper: None,
            grace_seconds: super::launcher_pods::grace_seconds(&pod),
            terminating_since: None,
            reported: false,
            started_at: String::new(),
        };
        write_record(&dir, &rec).map_err(sandbox)?;
        info!(pod = %name, %node, netns = %rec.netns, "starting probe pod");
        let network_status = match self.make_sandbox(&pod, &dir, &mut rec) {
            Ok(s) => s,
            Err(message) => {
                self.teardown(&dir, &rec);
                return Err(StartError::Sandbox(message));
            }
        };
        let status = serde_json::to_string(&network_status).expect("status serialises");
        if let Err(e) = self.store.modify::<Pod>(&ns, &name, |p| {
            p.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(NETWORK_STATUS_ANNOTATION.to_owned(), status.clone());
        }) {
            self.teardown(&dir, &rec);
            return Err(StartError::Sandbox(e.to_string()));
        }
        // The sandbox is up: a failure of an earlier try is over.
        let t = pods::now_time();
        let ready = pods::patch_status(self.store, &pod, |p| {
            let conds = p
                .status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new);
            conds.retain(|c| c.type_ != SANDBOX_CONDITION);
            conds.push(PodCondition {
                type_: SANDBOX_CONDITION.into(),
                status: "True".into(),
                last_transition_time: Some(t.clone()),
                ..Default::default()
            });
        });
        if let Err(e) = ready {
            warn!(pod = %name, error = %e, "writing the pod's sandbox condition failed");
        }
        self.start_container(&pod, &dir, &mut rec).inspect_err(|_| {
            rec.reported = true;
            let _ = write_record(&dir, &rec);
        })
    }

    /// Add the kubelet's finalizer (a delete then waits for the CNI DEL);
    /// the pod as it is now, `None` when it went or is going.
    fn hold(&self, pod: &Pod) -> Result<Option<Pod>, LabError> {
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        loop {
            let Some(mut cur) = self.store.get::<Pod>(&ns, &name)? else {
                return Ok(None);
            };
            if cur.metadata.uid != pod.metadata.uid || cur.metadata.deletion_timestamp.is_some() {
                return Ok(None);
            }
            let f = cur.metadata.finalizers.get_or_insert_with(Vec::new);
            if f.iter().any(|x| x == KUBELET_FINALIZER) {
                return Ok(Some(cur));
            }
            f.push(KUBELET_FINALIZER.to_owned());
            match self.store.update(&cur) {
                Ok(p) => return Ok(Some(p)),
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The namespace and every network of the pod; Multus' network-status.
    fn make_sandbox(
        &self,
        pod: &Pod,
        dir: &Path,
        rec: &mut ProbeRecord,
    ) -> Result<Vec<serde_json::Value>, String> {
        let fail = |e: LabError| e.to_string();
        if netns_exists(&rec.netns) {
            // Left by a crash: ours if the inventory says so.
            let ours = LabInventory::load(&self.cfg.dir)
                .map_err(fail)?
                .is_some_and(|s| s.namespaces.iter().any(|n| n == &rec.netns));
            if !ours {
                return Err(LabError::NamespaceExists {
                    name: rec.netns.clone(),
                }
                .to_string());
            }
            ip(&["netns", "del", &rec.netns]).map_err(fail)?;
        }
        add_namespace(self.cfg, &rec.netns).map_err(fail)?;
        let wanted = pod
            .annotations()
            .get(NETWORKS_ANNOTATION)
            .map(String::as_str)
            .unwrap_or_default();
        let selections = annotation::parse(wanted, &rec.namespace)
            .map_err(|e| format!("Failed to create pod sandbox: {e}"))?;
        let mut status = Vec::new();
        for sel in &selections {
            let network = format!("{}/{}", sel.namespace, sel.name);
            let nad = self
                .store
                .get::<NetworkAttachmentDefinition>(&sel.namespace, &sel.name)
                .map_err(|e| e.to_string())?;
            let Some(config) = nad.and_then(|n| n.spec.config) else {
                return Err(sandbox_message(
                    pod,
                    &network,
                    &format!(
                        "network-attachment-definitions.k8s.cni.cncf.io {:?} not found",
                        sel.name
                    ),
                ));
            };
            rec.attachments.push(AttachmentRecord {
                network: network.clone(),
                interface: sel.interface.clone(),
                container_id: rec.uid.clone(),
                config,
            });
            write_record(dir, rec).map_err(fail)?;
            let att = rec.attachments.last().expect("just pushed");
            match self.cni(rec, att).add() {
                Ok(a) => {
                    info!(pod = %rec.name, node = %rec.node, %network, ips = ?a.ips, "probe attached");
                    status.push(network_status_entry(&network, &sel.interface, &a));
                }
                Err(e) => return Err(sandbox_message(pod, &network, &e.to_string())),
            }
        }
        Ok(status)
    }

    fn start_container(
        &mut self,
        pod: &Pod,
        dir: &Path,
        rec: &mut ProbeRecord,
    ) -> Result<(), StartError> {
        let c = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == PROBE_CONTAINER))
            .ok_or_else(|| {
                StartError::Container(format!("the pod has no container {PROBE_CONTAINER:?}"))
            })?;
        let env = container_env(pod, c.env.as_deref().unwrap_or_default());
        let cert_dir = super::in_process_agents::agent_cert_dir(&self.cfg.dir, &rec.node)
            .map_err(|e| StartError::Container(format!("the node's agent certificate: {e}")))?;
        let args = lab_args(
            c.args.as_deref().unwrap_or_default(),
            &env,
            &cert_dir,
            &pods::termination_log(dir),
        );
        let exe = find_mignet().map_err(StartError::Container)?;
        let os_args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let lab_dir = self.cfg.dir.clone();
        let child = spawn_container(&exe, &os_args, dir, &netns_path(&rec.netns), |cmd| {
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd.env("MIGNET_LAB_DIR", &lab_dir).env(POD_ENV, dir);
        })
        .map_err(StartError::Container)?;
        let pid = child.id() as i32;
        rec.wrapper = Some(ProcessRecord {
            pid,
            start_time: inventory::process_start_time(pid).unwrap_or(0),
            what: format!("probe pod {}", rec.name),
        });
        rec.started_at = pods::now_time().0.to_string();
        self.children.insert(dir.to_owned(), child);
        write_record(dir, rec).map_err(|e| StartError::Container(e.to_string()))?;
        info!(pod = %rec.name, node = %rec.node, ?args, pid, "probe container started");
        pods::write_running(self.store, pod, PROBE_CONTAINER, &rec.node, &rec.started_at)
            .map_err(|e| StartError::Container(e.to_string()))
    }

    fn cni<'c>(&'c self, rec: &'c ProbeRecord, att: &'c AttachmentRecord) -> CniCallOwned<'c> {
        CniCallOwned {
            bin_dir: self.cfg.cni_bin_dir(),
            ipam_dir: self.cfg.ipam_dir(),
            node_ns: self.cfg.node_ns(&rec.node),
            rec,
            att,
        }
    }

    /// SIGTERM once, SIGKILL after the grace period.
    fn terminate(&mut self, dir: &Path, rec: &mut ProbeRecord) -> Result<(), LabError> {
        use nix::sys::signal::Signal;
        let pid = container_pid(dir, rec);
        let wrapper = rec.wrapper.clone().filter(inventory::is_alive);
        match rec.terminating_since {
            None => {
                info!(pod = %rec.name, node = %rec.node, "probe pod deleted: SIGTERM");
                match (pid, &wrapper) {
                    (Some(p), _) => signal(p, Signal::SIGTERM),
                    // Not started yet: the wrapper, before it starts it.
                    (None, Some(w)) => signal(w.pid, Signal::SIGTERM),
                    (None, None) => {}
                }
                rec.terminating_since = Some(pods::now_secs());
                write_record(dir, rec)
            }
            Some(t) if pods::now_secs() >= t + rec.grace_seconds => {
                warn!(pod = %rec.name, "probe did not stop within its grace period: SIGKILL");
                if let Some(p) = pid {
                    signal(p, Signal::SIGKILL);
                }
                if let Some(w) = wrapper {
                    signal(w.pid, Signal::SIGKILL);
                }
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }

    /// Undo a sandbox: CNI DEL of every recorded attachment (newest first;
    /// its address goes back to the pool), the namespace, the state.
    /// Errors are logged and the rest goes on.
    fn teardown(&mut self, dir: &Path, rec: &ProbeRecord) {
        for att in rec.attachments.iter().rev() {
            if let Err(e) = self.cni(rec, att).del() {
                warn!(pod = %rec.name, network = %att.network, error = %e, "CNI DEL failed");
            }
        }
        let gone = !netns_exists(&rec.netns)
            || match ip(&["netns", "del", &rec.netns]) {
                Ok(_) => true,
                Err(e) => {
                    warn!(pod = %rec.name, error = %e, "removing the probe's namespace failed");
                    false
                }
            };
        if gone {
            let _ = LabInventory::forget_namespace(&self.cfg.dir, &rec.netns);
        }
        self.children.remove(dir);
        let _ = std::fs::remove_dir_all(dir);
        info!(pod = %rec.name, node = %rec.node, "probe pod sandbox removed");
    }

    /// Drop [`KUBELET_FINALIZER`] (a pod being deleted then goes).
    fn release(&self, pod: &Pod) -> Result<(), LabError> {
        let ns = pod.namespace().unwrap_or_default();
        release_finalizer(
            self.store,
            &ns,
            &pod.name_any(),
            pod.metadata.uid.as_deref(),
        )
        .map_err(Into::into)
    }

    /// What a kubelet records of a failed sandbox: an Event on the pod (its
    /// count goes up on each retry), and the pod `Pending` with the message
    /// in `PodReadyToStartContainers`.
    fn record_sandbox_failure(&self, pod: &Pod, node: &str, message: &str) -> Result<(), LabError> {
        let ns = pod.namespace().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let short: String = uid.chars().filter(|c| *c != '-').take(16).collect();
        let event_name = format!("{}.{short}", pod.name_any());
        let now = crate::store::now_rfc3339();
        let existing = self
            .store
            .get_value(&crate::store::Key::new("Event", &ns, &event_name))?;
        let result = match existing {
            Some(mut e) => {
                let count = e["count"].as_i64().unwrap_or(1) + 1;
                e["count"] = json!(count);
                e["lastTimestamp"] = json!(now);
                e["message"] = json!(message);
                self.store.update_value(e).map(|_| ())
            }
            None => self
                .store
                .create_value(json!({
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": event_name, "namespace": ns},
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "namespace": ns,
                        "name": pod.name_any(),
                        "uid": uid,
                    },
                    "reason": FAILED_SANDBOX,
                    "message": message,
                    "type": "Warning",
                    "count": 1,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "source": {"component": "kubelet", "host": node},
                    "reportingComponent": "kubelet",
                    "reportingInstance": node,
                }))
                .map(|_| ()),
        };
        if let Err(e) = result {
            // The condition below says the same.
            warn!(pod = %pod.name_any(), error = %e, "recording the sandbox event failed");
        }
        let t = pods::now_time();
        let host_ip = plan::node_index(node).map(|i| plan::node_ip(i).to_string());
        pods::patch_status(self.store, pod, |p| {
            let st = p.status.get_or_insert_with(Default::default);
            st.phase = Some("Pending".into());
            st.host_ip = host_ip.clone();
            let conds = st.conditions.get_or_insert_with(Vec::new);
            let same = conds
                .iter()
                .any(|c| c.type_ == SANDBOX_CONDITION && c.message.as_deref() == Some(message));
            if !same {
                conds.retain(|c| c.type_ != SANDBOX_CONDITION);
                conds.push(PodCondition {
                    type_: SANDBOX_CONDITION.into(),
                    status: "False".into(),
                    reason: Some(FAILED_SANDBOX.into()),
                    message: Some(message.to_owned()),
                    last_transition_time: Some(t.clone()),
                    ..Default::default()
                });
            }
            for type_ in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
                let status = if type_ == "PodScheduled" || type_ == "Initialized" {
                    "True"
                } else {
                    "False"
                };
                if !conds.iter().any(|c| c.type_ == type_) {
                    conds.push(PodCondition {
                        type_: type_.into(),
                        status: status.into(),
                        last_transition_time: Some(t.clone()),
                        ..Default::default()
                    });
                }
            }
            st.container_statuses = Some(vec![ContainerStatus {
                name: PROBE_CONTAINER.into(),
                image: p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.iter().find(|c| c.name == PROBE_CONTAINER))
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ContainerCreating".into()),
                        message: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
        })
    }

    /// The lab store keeps Events forever (an API server drops them after
    /// an hour): those this kubelet wrote about pods that are gone go.
    fn collect_events(&self) -> Result<(), LabError> {
        // Listed now: this pass may have let pods go.
        let pods = self.store.list::<Pod>(None)?;
        let uids: BTreeSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        for e in self.store.list_values("Event", None)? {
            let ours = e["reason"] == FAILED_SANDBOX
                && e["source"]["component"] == "kubelet"
                && e["involvedObject"]["kind"] == "Pod";
            let pod_uid = e["involvedObject"]["uid"].as_str().unwrap_or_default();
            if !ours || uids.contains(pod_uid) {
                continue;
            }
            let key = crate::store::Key::of(&e)?;
            match self.store.delete(&key) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// A [`CniCall`] for one recorded attachment of a probe pod.
struct CniCallOwned<'c> {
    bin_dir: PathBuf,
    ipam_dir: PathBuf,
    node_ns: String,
    rec: &'c ProbeRecord,
    att: &'c AttachmentRecord,
}

impl CniCallOwned<'_> {
    fn call(&self) -> CniCall<'_> {
        CniCall {
            bin_dir: &self.bin_dir,
            ipam_store_dir: &self.ipam_dir,
            node_ns: &self.node_ns,
            pod_netns: &self.rec.netns,
            container_id: &self.att.container_id,
            ifname: &self.att.interface,
            pod_namespace: &self.rec.namespace,
            pod_name: &self.rec.name,
            pod_uid: &self.rec.uid,
            config: &self.att.config,
        }
    }
    fn add(&self) -> Result<super::cni::Attached, super::cni::CniCallError> {
        self.call().add()
    }
    fn del(&self) -> Result<(), super::cni::CniCallError> {
        self.call().del()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn probe_args_get_the_nodes_certificates_the_lab_and_the_termination_log() {
        let env = vec![("NODE_NAME".to_owned(), "node2".to_owned())];
        let certs = Path::new("/lab/agents/node2/certs");
        let tl = Path::new("/lab/probes/node2/x/termination-log");
        let args = s(&[
            "probe",
            "--node=$(NODE_NAME)",
            "--cert-source",
            "csr",
            "--cert-dir=/etc/mignet/certs",
            "--ca-bundle",
            "/etc/mignet/ca/ca.crt",
            "--interface",
            "migration0",
        ]);
        assert_eq!(
            lab_args(&args, &env, certs, tl),
            s(&[
                "probe",
                "--node=node2",
                "--cert-source=files",
                "--cert-dir=/lab/agents/node2/certs",
                "--ca-bundle=/lab/agents/node2/certs/ca.crt",
                "--interface",
                "migration0",
                "--lab",
                "--termination-log=/lab/probes/node2/x/termination-log",
            ])
        );
        // Another subcommand runs as written (no flag is added).
        assert_eq!(
            lab_args(&s(&["--version"]), &env, certs, tl),
            s(&["--version"])
        );
    }

    #[test]
    fn dollar_paren_expands_known_variables_only() {
        let env = vec![("A".to_owned(), "x".to_owned())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(", &env), "x-$(B)-$(A)-$-$(");
    }

    #[test]
    fn namespace_names_are_unique_per_pod_instance_under_the_prefix() {
        let a = netns_name("lab", "node1", "0a1b2c3d-4e5f-4000-8000-000000000000");
        assert_eq!(a, "lab-probe-node1-0a1b2c3d");
        assert_ne!(
            a,
            netns_name("lab", "node1", "1a1b2c3d-4e5f-4000-8000-000000000000")
        );
    }
}
