//! Pure: the console's Nodes table, computed from the Nodes, the
//! NodeMaintenances and the VMIs. No I/O here.
//!
//! The words follow OpenShift's console for a node with a NodeMaintenance:
//! "Starting maintenance" while the operator still drains it (phase
//! Running), "Under maintenance" once it is empty (Succeeded), and
//! "Maintenance failed" (Failed, with the operator's `lastError`). A
//! NodeMaintenance being deleted shows "Stopping maintenance" until its
//! finalizer has uncordoned the node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::VirtualMachineInstance;

/// What the console reads of one NodeMaintenance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceFacts {
    pub name: String,
    pub node: String,
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub pending_pods: Vec<String>,
    pub last_error: Option<String>,
    pub deleting: bool,
}

/// One line of the Nodes table.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub name: String,
    /// `Ready`, `NotReady` or `Unknown` (the Ready condition).
    pub status: String,
    /// False when cordoned (`spec.unschedulable`).
    pub schedulable: bool,
    pub maintenance: Option<MaintenanceView>,
    /// The VMs running on the node (`namespace/name`), sorted.
    pub vms: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceView {
    /// The NodeMaintenance's name.
    pub name: String,
    /// "Starting maintenance", "Under maintenance", "Maintenance failed"
    /// or "Stopping maintenance".
    pub state: String,
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub pending_pods: Vec<String>,
    pub last_error: Option<String>,
}

fn ready(node: &Node) -> String {
    let cond = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    match cond.map(|c| c.status.as_str()) {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
    .to_owned()
}

fn state(m: &MaintenanceFacts) -> &'static str {
    if m.deleting {
        return "Stopping maintenance";
    }
    match m.phase.as_deref() {
        Some("Succeeded") => "Under maintenance",
        Some("Failed") => "Maintenance failed",
        _ => "Starting maintenance",
    }
}

fn maintenance_view(m: &MaintenanceFacts) -> MaintenanceView {
    MaintenanceView {
        name: m.name.clone(),
        state: state(m).to_owned(),
        phase: m.phase.clone(),
        reason: m.reason.clone(),
        pending_pods: m.pending_pods.clone(),
        last_error: m.last_error.clone(),
    }
}

/// The Nodes table, sorted by name. A NodeMaintenance of a node that does
/// not exist gets no row (the operator marks it Failed; the object is in
/// `mignet get nodemaintenance`). Of two NodeMaintenances of one node (the
/// operator's webhook refuses the second) the one that is not Failed shows.
pub fn node_rows(
    nodes: &[Node],
    maintenances: &[MaintenanceFacts],
    vmis: &[VirtualMachineInstance],
) -> Vec<NodeRow> {
    let mut by_node: BTreeMap<&str, &MaintenanceFacts> = BTreeMap::new();
    for m in maintenances {
        let failed = |m: &MaintenanceFacts| m.phase.as_deref() == Some("Failed");
        match by_node.get(m.node.as_str()) {
            Some(have) if !failed(have) || failed(m) => {}
            _ => {
                by_node.insert(m.node.as_str(), m);
            }
        }
    }
    let mut vms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in vmis {
        if let Some(node) = v.status.as_ref().and_then(|s| s.node_name.clone()) {
            vms.entry(node).or_default().push(format!(
                "{}/{}",
                v.namespace().unwrap_or_default(),
                v.name_any()
            ));
        }
    }
    let mut rows: Vec<NodeRow> = nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            let mut on = vms.remove(&name).unwrap_or_default();
            on.sort();
            NodeRow {
                status: ready(n),
                schedulable: !n
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
                maintenance: by_node.get(name.as_str()).map(|m| maintenance_view(m)),
                vms: on,
                name,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VirtualMachineInstanceStatus;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};

    fn node(name: &str, ready: &str, cordoned: bool) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: cordoned.then_some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn vmi(name: &str, node: &str) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new(name, Default::default());
        v.metadata.namespace = Some("lab".into());
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            ..Default::default()
        });
        v
    }

    fn nm(name: &str, node: &str, phase: Option<&str>) -> MaintenanceFacts {
        MaintenanceFacts {
            name: name.into(),
            node: node.into(),
            phase: phase.map(Into::into),
            reason: Some("kernel update".into()),
            ..Default::default()
        }
    }

    #[test]
    fn maintenance_words_follow_the_phase() {
        for (phase, deleting, want) in [
            (None, false, "Starting maintenance"),
            (Some("Running"), false, "Starting maintenance"),
            (Some("Succeeded"), false, "Under maintenance"),
            (Some("Failed"), false, "Maintenance failed"),
            (Some("Succeeded"), true, "Stopping maintenance"),
        ] {
            let mut m = nm("nm", "n1", phase);
            m.deleting = deleting;
            assert_eq!(maintenance_view(&m).state, want, "{phase:?} {deleting}");
        }
    }

    #[test]
    fn rows_carry_readiness_cordon_maintenance_and_vms() {
        let rows = node_rows(
            &[node("n2", "True", true), node("n1", "False", false)],
            &[nm("nm-n2", "n2", Some("Running")), nm("gone", "n9", None)],
            &[vmi("b", "n2"), vmi("a", "n2"), vmi("c", "n1")],
        );
        assert_eq!(rows.len(), 2, "no row for a NodeMaintenance of no node");
        assert_eq!(
            (
                rows[0].name.as_str(),
                rows[0].status.as_str(),
                rows[0].schedulable
            ),
            ("n1", "NotReady", true)
        );
        assert_eq!(rows[0].maintenance, None);
        assert_eq!(rows[0].vms, ["lab/c"]);
        assert_eq!((rows[1].name.as_str(), rows[1].schedulable), ("n2", false));
        let m = rows[1].maintenance.as_ref().unwrap();
        assert_eq!(
            (m.name.as_str(), m.state.as_str(), m.reason.as_deref()),
            ("nm-n2", "Starting maintenance", Some("kernel update"))
        );
        assert_eq!(rows[1].vms, ["lab/a", "lab/b"]);
    }

    #[test]
    fn a_refused_second_maintenance_does_not_hide_the_first() {
        for order in [[0, 1], [1, 0]] {
            let ms = [
                nm("first", "n1", Some("Running")),
                nm("second", "n1", Some("Failed")),
            ];
            let ms: Vec<_> = order.iter().map(|&i| ms[i].clone()).collect();
            let rows = node_rows(&[node("n1", "True", true)], &ms, &[]);
            assert_eq!(rows[0].maintenance.as_ref().unwrap().name, "first");
        }
    }
}
