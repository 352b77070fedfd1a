//! NodeMaintenance (`nodemaintenance.medik8s.io/v1beta1`, the
//! node-maintenance-operator's CR): the controller step that puts a node
//! into maintenance and takes it out again, in both modes over the same
//! [`Backend`]. [`decide`] is pure; [`step`] is its I/O edge.
//!
//! What the operator does (`internal/controller/nodemaintenance_controller.go`,
//! `taint.go`, webhook `nodemaintenance_webhook.go`) and we follow:
//! - its finalizer `foregroundDeleteNodeMaintenance` goes on first, and
//!   comes off only once the node is out of maintenance again;
//! - it cordons the node and adds the taints `node.kubernetes.io/unschedulable`
//!   and `medik8s.io/drain` (both NoSchedule); it does not add
//!   `kubevirt.io/drain`;
//! - it evicts the node's pods as `kubectl drain` does. For a launcher pod
//!   that is what KubeVirt's eviction webhook answers: a LiveMigrate VMI is
//!   marked with `status.evacuationNodeName` (so the drain step,
//!   [`super::drain`], live-migrates it within the migration limits) and
//!   its pod stays until the VM left; a non-migratable LiveMigrate VMI is
//!   refused (it blocks, named in `lastError`); `None` (and
//!   `LiveMigrateIfPossible` that cannot migrate) lets the pod go, so the
//!   VM stops; `External` is marked and left to an external controller.
//!   Other pods are not mignet's: they are neither evicted nor counted;
//! - status: `phase` Running while pods remain, Succeeded (drainProgress
//!   100, no pendingPods) once none do; `evictionPods`/`totalpods` counted
//!   once, when the maintenance begins; a missing node is Failed with the
//!   operator's `nodes "X" not found`;
//! - deletion: taints removed and the node uncordoned, *even if an admin
//!   had cordoned it before* (the operator keeps no record of that and
//!   always uncordons; we do the same so both behave alike), then the
//!   finalizer goes. A missing node does not hold the deletion.
//!
//! Where we differ, because there is no webhook in front of the CR here: a
//! second NodeMaintenance of a node already in maintenance, which the
//! operator's webhook refuses ("invalid nodeName, a NodeMaintenance for
//! node X already exists"), is set Failed with that message and touches
//! nothing; deleting it leaves the node alone. On deletion we also clear
//! `evacuationNodeName` where it names the node, so the node stops counting
//! as draining and the drain step cancels the evacuations still Pending
//! (started ones finish, as on an uncordon).

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use mignet_policy as policy;
use policy::{EvictionStrategy, ObjectKey};

use super::evict::{self, VmiEviction};
use super::{launcher_pod, settle, views, write_status, ControlError, Pass, World};
use crate::api::node_maintenance::PodReference;
use crate::api::{
    MaintenancePhase, NodeMaintenance, NodeMaintenanceStatus, VirtualMachineInstance, VmiPhase,
    NODE_MAINTENANCE_FINALIZER,
};
use crate::backend::{self as be, Backend};

/// The operator's own drain taint (`medik8sDrainTaintKey`).
pub const MEDIK8S_DRAIN_TAINT_KEY: &str = "medik8s.io/drain";
/// The taint the operator adds with the cordon (`nodeUnschedulableTaintKey`).
pub const UNSCHEDULABLE_TAINT_KEY: &str = "node.kubernetes.io/unschedulable";
const TAINT_KEYS: [&str; 2] = [UNSCHEDULABLE_TAINT_KEY, MEDIK8S_DRAIN_TAINT_KEY];

/// What to do with the node of a NodeMaintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChange {
    /// Cordon and add the maintenance taints.
    Enter,
    /// Remove the maintenance taints and uncordon.
    Leave,
}

/// How a VM leaves (stops) when its eviction is allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Launcher mode: delete the VM's launcher pod on the node.
    Pod(ObjectKey),
    /// No launcher pods: delete the VMI.
    Vmi(ObjectKey),
}

/// One NodeMaintenance's decision for this pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub add_finalizer: bool,
    pub node: Option<NodeChange>,
    /// VMIs to mark with `status.evacuationNodeName` = the node.
    pub mark: Vec<ObjectKey>,
    /// VMIs whose `evacuationNodeName` names the node, to clear.
    pub unmark: Vec<ObjectKey>,
    pub stop: Vec<Stop>,
    /// The status to have (`None`: leave it as it is).
    pub status: Option<NodeMaintenanceStatus>,
    /// Take the finalizer off, after the node changes were written.
    pub remove_finalizer: bool,
}

/// What [`decide`] looks at.
pub struct Inputs<'a> {
    pub nm: &'a NodeMaintenance,
    /// Every NodeMaintenance (including `nm`), to find a second one of
    /// the same node.
    pub all: &'a [NodeMaintenance],
    /// The node named by `spec.nodeName`, if it exists.
    pub node: Option<&'a Node>,
    pub vmis: &'a [&'a VirtualMachineInstance],
    /// Launcher pods, in launcher mode; `None` when VMs run without them.
    pub pods: Option<&'a [Pod]>,
    pub cluster_default: Option<EvictionStrategy>,
    pub now: &'a Time,
}

/// The operator's message for a node that does not exist
/// (`expectedNodeNotFoundErrorMsg`).
pub fn node_not_found(node: &str) -> String {
    format!("nodes \"{node}\" not found")
}

/// The operator webhook's message for a second NodeMaintenance
/// (`errorNodeMaintenanceExists`).
pub fn already_exists(node: &str) -> String {
    format!("invalid nodeName, a NodeMaintenance for node {node} already exists")
}

fn has_finalizer(nm: &NodeMaintenance) -> bool {
    nm.finalizers()
        .iter()
        .any(|f| f == NODE_MAINTENANCE_FINALIZER)
}

/// The NodeMaintenance that holds `node`: the oldest one not being deleted
/// (creation time, then name). The others of the same node are the
/// duplicates the operator's webhook would have refused.
pub fn holder<'a>(all: &'a [NodeMaintenance], node: &str) -> Option<&'a NodeMaintenance> {
    all.iter()
        .filter(|m| m.spec.node_name == node && m.metadata.deletion_timestamp.is_none())
        .min_by(|a, b| {
            let t = |m: &NodeMaintenance| m.metadata.creation_timestamp.clone().map(|t| t.0);
            (t(a), a.name_any()).cmp(&(t(b), b.name_any()))
        })
}

/// What the eviction of a VMI's pod would do (KubeVirt's pod-eviction
/// admitter, as `crate::kube_adapter::eviction::decide` answers it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Eviction {
    /// Marked for evacuation; it leaves by live migration.
    Evacuate,
    /// Marked, left to an external controller: blocks, with a message.
    External(String),
    /// Refused: the VMI blocks the maintenance.
    Blocked(String),
    /// Allowed: the VM stops.
    Stop,
}

/// The webhook's decision ([`evict::vmi_eviction`]), in the operator's
/// terms: what blocks goes to `lastError`.
fn eviction(vmi: &VirtualMachineInstance, default: Option<EvictionStrategy>) -> Eviction {
    let key = views::vmi_key(vmi);
    match evict::vmi_eviction(vmi, default) {
        VmiEviction::Evacuate => Eviction::Evacuate,
        VmiEviction::Stop { .. } => Eviction::Stop,
        VmiEviction::External => Eviction::External(format!(
            "VMI {key} has evictionStrategy External: it is left to an external controller"
        )),
        VmiEviction::NotRunning(phase) => Eviction::Blocked(format!(
            "VMI {key} has evictionStrategy LiveMigrate but is not running (phase {phase:?})"
        )),
        VmiEviction::NotMigratable(why) => Eviction::Blocked(format!(
            "VMI {key} has evictionStrategy LiveMigrate but is not live-migratable ({why})"
        )),
    }
}

fn pod_node(p: &Pod) -> Option<&str> {
    p.spec.as_ref()?.node_name.as_deref()
}

fn pod_finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_key(p: &Pod) -> ObjectKey {
    ObjectKey::new(p.namespace().unwrap_or_default(), p.name_any())
}

/// Decide one NodeMaintenance. Pure.
pub fn decide(i: &Inputs<'_>) -> Plan {
    let nm = i.nm;
    let node = nm.spec.node_name.as_str();
    let mut plan = Plan::default();
    let held_by_other =
        |me: &NodeMaintenance| holder(i.all, node).is_some_and(|h| h.name_any() != me.name_any());

    if nm.metadata.deletion_timestamp.is_some() {
        if !has_finalizer(nm) {
            return plan;
        }
        // Another NodeMaintenance holds (or takes over) the node: it stays
        // in maintenance.
        if i.node.is_some() && !held_by_other(nm) {
            plan.node = Some(NodeChange::Leave);
            plan.unmark = i
                .vmis
                .iter()
                .filter(|v| {
                    v.status
                        .as_ref()
                        .and_then(|s| s.evacuation_node_name.as_deref())
                        == Some(node)
                })
                .map(|v| views::vmi_key(v))
                .collect();
        }
        plan.remove_finalizer = true;
        return plan;
    }

    plan.add_finalizer = !has_finalizer(nm);
    let old = nm.status.clone().unwrap_or_default();
    let failed = |error: String| NodeMaintenanceStatus {
        phase: Some(MaintenancePhase::Failed),
        last_error: Some(error),
        ..old.clone()
    };
    if held_by_other(nm) {
        plan.status = Some(stamp(&old, failed(already_exists(node)), i.now));
        return plan;
    }
    if i.node.is_none() {
        plan.status = Some(stamp(&old, failed(node_not_found(node)), i.now));
        return plan;
    }
    plan.node = Some(NodeChange::Enter);

    let on_node: Vec<&VirtualMachineInstance> = i
        .vmis
        .iter()
        .copied()
        .filter(|v| {
            let st = v.status.as_ref();
            st.and_then(|s| s.node_name.as_deref()) == Some(node)
                && !matches!(
                    st.and_then(|s| s.phase),
                    Some(VmiPhase::Succeeded | VmiPhase::Failed)
                )
        })
        .collect();
    let mut errors = Vec::new();
    for v in &on_node {
        let key = views::vmi_key(v);
        let marked = v
            .status
            .as_ref()
            .and_then(|s| s.evacuation_node_name.as_deref())
            == Some(node);
        match eviction(v, i.cluster_default) {
            Eviction::Evacuate => {
                if !marked {
                    plan.mark.push(key);
                }
            }
            Eviction::External(msg) => {
                if !marked {
                    plan.mark.push(key);
                }
                errors.push(msg);
            }
            Eviction::Blocked(msg) => errors.push(msg),
            Eviction::Stop => match i.pods {
                Some(pods) => plan.stop.extend(
                    pods.iter()
                        .filter(|p| {
                            p.namespace().as_deref() == Some(key.namespace.as_str())
                                && p.labels().get(launcher_pod::VMI_NAME_LABEL) == Some(&key.name)
                                && pod_node(p) == Some(node)
                                && p.metadata.deletion_timestamp.is_none()
                                && !pod_finished(p)
                        })
                        .map(|p| Stop::Pod(pod_key(p))),
                ),
                None if v.metadata.deletion_timestamp.is_none() => plan.stop.push(Stop::Vmi(key)),
                None => {}
            },
        }
    }
    plan.stop.sort();

    // What still has to leave: the launcher pods on the node, or (without
    // launcher pods) the VMIs standing in for them.
    let pending: Vec<PodReference> = match i.pods {
        Some(pods) => pods
            .iter()
            .filter(|p| pod_node(p) == Some(node) && !pod_finished(p))
            .map(|p| PodReference {
                namespace: p.namespace(),
                name: Some(p.name_any()),
            })
            .collect(),
        None => on_node
            .iter()
            .map(|v| PodReference {
                namespace: v.namespace(),
                name: Some(v.name_any()),
            })
            .collect(),
    };
    let mut pending = pending;
    pending.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let count = pending.len() as i64;
    // Counted once, when the maintenance begins (the operator's
    // initMaintenanceStatus); a Failed one that recovers starts over.
    let begins = old.phase.is_none() || old.phase == Some(MaintenancePhase::Failed);
    let eviction_pods = if begins {
        count
    } else {
        old.eviction_pods.unwrap_or(count)
    };
    let total_pods = if begins {
        count
    } else {
        old.total_pods.unwrap_or(count)
    };
    let done = pending.is_empty();
    let progress = if done {
        100
    } else if eviction_pods > 0 {
        ((eviction_pods - count).max(0) * 100) / eviction_pods
    } else {
        0
    };
    errors.sort();
    let next = NodeMaintenanceStatus {
        phase: Some(if done {
            MaintenancePhase::Succeeded
        } else {
            MaintenancePhase::Running
        }),
        drain_progress: Some(progress),
        last_update: old.last_update.clone(),
        last_error: (!errors.is_empty()).then(|| errors.join("; ")),
        pending_pods: pending.iter().filter_map(|p| p.name.clone()).collect(),
        pending_pods_refs: pending,
        total_pods: Some(total_pods),
        eviction_pods: Some(eviction_pods),
        error_on_lease_count: old.error_on_lease_count,
    };
    plan.status = Some(stamp(&old, next, i.now));
    plan
}

/// `next` with `lastUpdate` = now when anything else changed, so an
/// unchanged status is not rewritten every pass.
fn stamp(
    old: &NodeMaintenanceStatus,
    mut next: NodeMaintenanceStatus,
    now: &Time,
) -> NodeMaintenanceStatus {
    next.last_update = old.last_update.clone();
    if &next != old {
        next.last_update = Some(now.clone());
    }
    next
}

/// Cordon `node` and add the maintenance taints; whether anything changed.
pub fn enter(node: &mut Node) -> bool {
    let spec = node.spec.get_or_insert_with(Default::default);
    let mut changed = spec.unschedulable != Some(true);
    spec.unschedulable = Some(true);
    let taints = spec.taints.get_or_insert_with(Vec::new);
    for key in TAINT_KEYS {
        if !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.to_owned(),
                effect: "NoSchedule".to_owned(),
                value: None,
                time_added: None,
            });
            changed = true;
        }
    }
    changed
}

/// Remove the maintenance taints and uncordon `node`; whether anything
/// changed.
pub fn leave(node: &mut Node) -> bool {
    let spec = node.spec.get_or_insert_with(Default::default);
    let mut changed = spec.unschedulable.is_some();
    spec.unschedulable = None;
    if let Some(taints) = spec.taints.as_mut() {
        let before = taints.len();
        taints.retain(|t| !(TAINT_KEYS.contains(&t.key.as_str()) && t.effect == "NoSchedule"));
        changed |= taints.len() != before;
        if taints.is_empty() {
            spec.taints = None;
        }
    }
    changed
}

// ------------------------------------------------------------ I/O edge

/// The NodeMaintenance step of a controller pass: decide each one and
/// write. Node and VMI changes land in `w`, so the drain step after it
/// acts on them in the same pass.
pub(super) async fn step<B: Backend>(
    backend: &B,
    settings: &super::Settings,
    w: &mut World,
    pass: &mut Pass,
    t: &Time,
) -> Result<(), ControlError> {
    let nms = w.node_maintenances.clone();
    for nm in &nms {
        let name = nm.name_any();
        let node_name = nm.spec.node_name.clone();
        let plan = {
            let vmis: Vec<&VirtualMachineInstance> = w.vmis.values().collect();
            let node = w.nodes.iter().find(|n| n.name_any() == node_name);
            decide(&Inputs {
                nm,
                all: &nms,
                node,
                vmis: &vmis,
                pods: settings.launchers.as_ref().map(|_| w.pods.as_slice()),
                cluster_default: settings.default_eviction_strategy,
                now: t,
            })
        };
        let mut nm = nm.clone();
        if plan.add_finalizer {
            let r = be::add_finalizer::<B, NodeMaintenance>(
                backend,
                "",
                &name,
                NODE_MAINTENANCE_FINALIZER,
            )
            .await;
            match settle(r, pass, "NodeMaintenance finalizer", &name)? {
                Some(Some(n)) => nm = n,
                _ => continue,
            }
        }
        if let Some(change) = plan.node {
            let f = match change {
                NodeChange::Enter => enter,
                NodeChange::Leave => leave,
            };
            let needed = w
                .nodes
                .iter()
                .find(|n| n.name_any() == node_name)
                .is_some_and(|n| f(&mut n.clone()));
            if needed {
                let r = be::modify::<B, Node>(backend, "", &node_name, f).await;
                match settle(r, pass, "Node (maintenance)", &node_name)? {
                    Some(Some(n)) => {
                        tracing::info!(nodemaintenance = %name, node = %node_name, ?change, "node maintenance");
                        pass.maintenance_node_writes += 1;
                        if let Some(slot) = w.nodes.iter_mut().find(|x| x.name_any() == node_name) {
                            *slot = n;
                        }
                    }
                    // Lost a race: the finalizer must wait for the next pass.
                    _ => continue,
                }
            }
        }
        for (keys, value) in [(&plan.mark, Some(node_name.clone())), (&plan.unmark, None)] {
            for key in keys {
                let Some(vmi) = w.vmis.get(key) else { continue };
                let mut next = vmi.clone();
                next.status
                    .get_or_insert_with(Default::default)
                    .evacuation_node_name = value.clone();
                if let Some(v) =
                    write_status(backend, vmi, &next, pass, "VMI evacuation mark", key).await?
                {
                    w.vmis.insert(key.clone(), v);
                }
            }
        }
        for s in &plan.stop {
            let (what, key, r) = match s {
                Stop::Pod(k) => (
                    "launcher pod (maintenance)",
                    k,
                    backend.delete::<Pod>(&k.namespace, &k.name).await,
                ),
                Stop::Vmi(k) => (
                    "VMI (maintenance)",
                    k,
                    backend
                        .delete::<VirtualMachineInstance>(&k.namespace, &k.name)
                        .await,
                ),
            };
            if settle(r, pass, what, key)?.is_some() {
                tracing::info!(nodemaintenance = %name, object = %key, "evictionStrategy lets it stop: deleted");
                pass.maintenance_stops += 1;
            }
        }
        if let Some(status) = plan.status.filter(|s| nm.status.as_ref() != Some(s)) {
            let mut next = nm.clone();
            next.status = Some(status);
            if write_status(backend, &nm, &next, pass, "NodeMaintenance status", &name)
                .await?
                .is_some()
            {
                pass.maintenance_statuses_written += 1;
            }
        }
        if plan.remove_finalizer {
            let r = be::remove_finalizer::<B, NodeMaintenance>(
                backend,
                "",
                &name,
                NODE_MAINTENANCE_FINALIZER,
            )
            .await;
            if settle(r, pass, "NodeMaintenance finalizer", &name)?.is_some() {
                tracing::info!(nodemaintenance = %name, node = %node_name, "maintenance ended");
            }
        }
    }
    Ok(())
}

/// NodeMaintenances of this controller: all of them, or, when the
/// controller only sees labelled nodes (tests sharing an API server),
/// those carrying the same label.
pub(super) fn select(nms: &mut Vec<NodeMaintenance>, selector: Option<&(String, String)>) {
    if let Some((k, v)) = selector {
        nms.retain(|m| m.labels().get(k) == Some(v));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::backend::protocol::LIVE_MIGRATABLE;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff;

    use super::*;
    use crate::api::{
        EvictionStrategy as Strategy, NodeMaintenanceSpec, VirtualMachineInstanceSpec,
        VirtualMachineInstanceStatus, VmiCondition,
    };

    fn t(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).unwrap())
    }

    fn nm(name: &str, node: &str, created: i64) -> NodeMaintenance {
        let mut m = NodeMaintenance::new(
            name,
            NodeMaintenanceSpec {
                node_name: node.into(),
                reason: None,
            },
        );
        m.metadata.creation_timestamp = Some(t(created));
        m.metadata.finalizers = Some(vec![NODE_MAINTENANCE_FINALIZER.into()]);
        m
    }

    fn deleting(mut m: NodeMaintenance) -> NodeMaintenance {
        m.metadata.deletion_timestamp = Some(t(50));
        m
    }

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: None,
        }
    }

    /// A VMI on `node`: strategy, phase, LiveMigratable (None = not written).
    fn vmi(
        name: &str,
        node: &str,
        strategy: Option<Strategy>,
        phase: VmiPhase,
        migratable: Option<bool>,
    ) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new(
            name,
            VirtualMachineInstanceSpec {
                eviction_strategy: strategy,
                ..Default::default()
            },
        );
        v.metadata.namespace = Some("ns".into());
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            phase: Some(phase),
            conditions: migratable
                .map(|m| VmiCondition {
                    type_: LIVE_MIGRATABLE.into(),
                    status: if m { "True" } else { "False" }.into(),
                    reason: (!m).then(|| "DisksNotLiveMigratable".into()),
                    message: (!m).then(|| "RWO".into()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        v
    }

    fn pod(name: &str, vmi: &str, node: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([(
                    launcher_pod::VMI_NAME_LABEL.to_owned(),
                    vmi.to_owned(),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new("ns", n)
    }

    fn run(
        me: &NodeMaintenance,
        all: &[NodeMaintenance],
        node: Option<&Node>,
        vmis: &[VirtualMachineInstance],
        pods: Option<&[Pod]>,
    ) -> Plan {
        let refs: Vec<&VirtualMachineInstance> = vmis.iter().collect();
        decide(&Inputs {
            nm: me,
            all,
            node,
            vmis: &refs,
            pods,
            cluster_default: None,
            now: &t(100),
        })
    }

    #[test]
    fn each_eviction_strategy_is_handled_as_the_eviction_webhook_answers() {
        use VmiPhase::Running;
        let m = nm("nm", "n1", 1);
        let vmis = [
            vmi("live", "n1", Some(Strategy::LiveMigrate), Running, None),
            vmi(
                "rwo",
                "n1",
                Some(Strategy::LiveMigrate),
                Running,
                Some(false),
            ),
            vmi("plain", "n1", Some(Strategy::None), Running, Some(true)),
            vmi("default", "n1", None, Running, Some(true)),
            vmi("ext", "n1", Some(Strategy::External), Running, Some(true)),
            vmi(
                "maybe",
                "n1",
                Some(Strategy::LiveMigrateIfPossible),
                Running,
                Some(false),
            ),
            vmi(
                "other",
                "n2",
                Some(Strategy::LiveMigrate),
                Running,
                Some(true),
            ),
            vmi(
                "done",
                "n1",
                Some(Strategy::LiveMigrate),
                VmiPhase::Succeeded,
                None,
            ),
        ];
        let p = run(&m, std::slice::from_ref(&m), Some(&node("n1")), &vmis, None);
        assert!(!p.add_finalizer);
        assert_eq!(p.node, Some(NodeChange::Enter));
        assert_eq!(p.mark, vec![key("live"), key("ext")]);
        assert_eq!(
            p.stop,
            vec![
                Stop::Vmi(key("default")),
                Stop::Vmi(key("maybe")),
                Stop::Vmi(key("plain"))
            ]
        );
        let st = p.status.unwrap();
        assert_eq!(st.phase, Some(MaintenancePhase::Running));
        assert_eq!(
            st.pending_pods,
            vec!["default", "ext", "live", "maybe", "plain", "rwo"]
        );
        assert_eq!((st.eviction_pods, st.total_pods), (Some(6), Some(6)));
        assert_eq!(st.drain_progress, Some(0));
        let err = st.last_error.unwrap();
        assert!(
            err.contains("ns/rwo") && err.contains("DisksNotLiveMigratable"),
            "{err}"
        );
        assert!(err.contains("ns/ext") && err.contains("External"), "{err}");
        assert_eq!(st.last_update, Some(t(100)));
    }

    #[test]
    fn launcher_mode_stops_by_deleting_the_pod_and_counts_pods() {
        use VmiPhase::Running;
        let mut m = nm("nm", "n1", 1);
        m.metadata.finalizers = None;
        let vmis = [
            vmi(
                "live",
                "n1",
                Some(Strategy::LiveMigrate),
                Running,
                Some(true),
            ),
            vmi("plain", "n1", Some(Strategy::None), Running, None),
        ];
        let pods = [
            pod("virt-launcher-live-a", "live", "n1", "Running"),
            pod("virt-launcher-plain-b", "plain", "n1", "Running"),
            // The live VM's migration target elsewhere; an ended pod.
            pod("virt-launcher-live-c", "live", "n2", "Running"),
            pod("virt-launcher-old-d", "old", "n1", "Succeeded"),
        ];
        let p = run(
            &m,
            std::slice::from_ref(&m),
            Some(&node("n1")),
            &vmis,
            Some(&pods),
        );
        assert!(p.add_finalizer, "the operator's finalizer goes on first");
        assert_eq!(p.stop, vec![Stop::Pod(key("virt-launcher-plain-b"))]);
        let st = p.status.unwrap();
        assert_eq!(
            st.pending_pods,
            vec!["virt-launcher-live-a", "virt-launcher-plain-b"]
        );
        assert_eq!(st.pending_pods_refs[0].namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn progress_counts_from_the_start_and_ends_succeeded() {
        let mut m = nm("nm", "n1", 1);
        m.status = Some(NodeMaintenanceStatus {
            phase: Some(MaintenancePhase::Running),
            eviction_pods: Some(4),
            total_pods: Some(4),
            last_update: Some(t(10)),
            ..Default::default()
        });
        let one = [vmi(
            "live",
            "n1",
            Some(Strategy::LiveMigrate),
            VmiPhase::Running,
            Some(true),
        )];
        let st = run(&m, std::slice::from_ref(&m), Some(&node("n1")), &one, None)
            .status
            .unwrap();
        assert_eq!((st.eviction_pods, st.drain_progress), (Some(4), Some(75)));
        let st = run(&m, std::slice::from_ref(&m), Some(&node("n1")), &[], None)
            .status
            .unwrap();
        assert_eq!(st.phase, Some(MaintenancePhase::Succeeded));
        assert_eq!(st.drain_progress, Some(100));
        assert!(st.pending_pods.is_empty() && st.last_error.is_none());
    }

    #[test]
    fn an_unchanged_status_keeps_its_last_update() {
        let mut m = nm("nm", "n1", 1);
        let first = run(&m, std::slice::from_ref(&m), Some(&node("n1")), &[], None)
            .status
            .unwrap();
        m.status = Some(NodeMaintenanceStatus {
            last_update: Some(t(7)),
            ..first
        });
        let again = run(&m, std::slice::from_ref(&m), Some(&node("n1")), &[], None)
            .status
            .unwrap();
        assert_eq!(again.last_update, Some(t(7)));
        assert_eq!(Some(&again), m.status.as_ref());
    }

    #[test]
    fn missing_node_and_second_maintenance_fail_without_touching_the_node() {
        let m = nm("nm", "ghost", 1);
        let p = run(&m, std::slice::from_ref(&m), None, &[], None);
        let st = p.status.unwrap();
        assert_eq!(st.phase, Some(MaintenancePhase::Failed));
        assert_eq!(st.last_error.as_deref(), Some("nodes \"ghost\" not found"));
        assert_eq!(p.node, None);

        let first = nm("b-first", "n1", 1);
        let second = nm("a-second", "n1", 2);
        let all = [first.clone(), second.clone()];
        let vmis = [vmi(
            "plain",
            "n1",
            Some(Strategy::None),
            VmiPhase::Running,
            None,
        )];
        let p = run(&second, &all, Some(&node("n1")), &vmis, None);
        let st = p.status.unwrap();
        assert_eq!(st.phase, Some(MaintenancePhase::Failed));
        assert_eq!(
            st.last_error.as_deref(),
            Some("invalid nodeName, a NodeMaintenance for node n1 already exists")
        );
        assert_eq!((p.node, p.stop.len()), (None, 0));
        // The older one holds the node, whatever the names.
        assert_eq!(
            run(&first, &all, Some(&node("n1")), &vmis, None).node,
            Some(NodeChange::Enter)
        );
    }

    #[test]
    fn deletion_leaves_maintenance_unless_another_holds_the_node() {
        let mut marked = vmi(
            "live",
            "n1",
            Some(Strategy::LiveMigrate),
            VmiPhase::Running,
            None,
        );
        marked.status.as_mut().unwrap().evacuation_node_name = Some("n1".into());
        let vmis = [marked];
        let gone = deleting(nm("nm", "n1", 1));
        let p = run(
            &gone,
            std::slice::from_ref(&gone),
            Some(&node("n1")),
            &vmis,
            None,
        );
        assert_eq!(p.node, Some(NodeChange::Leave));
        assert_eq!(p.unmark, vec![key("live")]);
        assert!(p.remove_finalizer && p.status.is_none() && p.mark.is_empty());

        let other = nm("nm2", "n1", 2);
        let all = [gone.clone(), other];
        let p = run(&gone, &all, Some(&node("n1")), &vmis, None);
        assert_eq!((p.node, p.unmark.len()), (None, 0));
        assert!(p.remove_finalizer);

        // A missing node does not hold the deletion.
        let p = run(&gone, std::slice::from_ref(&gone), None, &vmis, None);
        assert_eq!(p.node, None);
        assert!(p.remove_finalizer);

        let mut released = gone.clone();
        released.metadata.finalizers = None;
        assert_eq!(
            run(
                &released,
                std::slice::from_ref(&released),
                Some(&node("n1")),
                &vmis,
                None
            ),
            Plan::default()
        );
    }

    #[test]
    fn a_marked_vmi_is_not_marked_again() {
        let mut v = vmi(
            "live",
            "n1",
            Some(Strategy::LiveMigrate),
            VmiPhase::Running,
            Some(true),
        );
        v.status.as_mut().unwrap().evacuation_node_name = Some("n1".into());
        let m = nm("nm", "n1", 1);
        let p = run(&m, std::slice::from_ref(&m), Some(&node("n1")), &[v], None);
        assert!(p.mark.is_empty());
    }

    #[test]
    fn enter_and_leave_touch_only_the_cordon_and_the_maintenance_taints() {
        let mut n = node("n1");
        n.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "example.com/keep".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        }]);
        assert!(enter(&mut n));
        assert!(!enter(&mut n), "idempotent");
        let keys: Vec<_> = n
            .spec
            .as_ref()
            .unwrap()
            .taints
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.key.as_str())
            .collect();
        assert_eq!(
            keys,
            vec![
                "example.com/keep",
                UNSCHEDULABLE_TAINT_KEY,
                MEDIK8S_DRAIN_TAINT_KEY
            ]
        );
        assert_eq!(n.spec.as_ref().unwrap().unschedulable, Some(true));
        assert!(leave(&mut n));
        assert!(!leave(&mut n), "idempotent");
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.unschedulable, None);
        assert_eq!(spec.taints.as_ref().unwrap().len(), 1);
    }
}
