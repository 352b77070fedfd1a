//! The lab plays kube-scheduler for launcher pods: a pod labelled
//! [`LAUNCHER_LABEL`] without `spec.nodeName` gets a node (written to
//! `spec.nodeName`, as the scheduler's binding does), or, when no node fits,
//! the condition kube-scheduler writes (`PodScheduled=False`, reason
//! `Unschedulable`, a message naming why), which the migration controller
//! copies to the VMI. The lab kubelet ([`super::launcher_pods`]) then runs the
//! bound pod.
//!
//! What a node must offer ([`place`], pure): the pod's `nodeSelector`, its
//! required node affinity (`In`, `NotIn`, `Exists`, `DoesNotExist` on
//! labels, `metadata.name` fields; a target pod's `NotIn` on
//! `kubernetes.io/hostname`), not cordoned, every `NoSchedule`/`NoExecute`
//! taint tolerated; among those the one running the fewest launcher pods
//! (ties: first in natural name order, so a fresh lab's first VM lands on
//! node1).
//!
//! The lab has no storage: its VMs boot the lab's guest image (kernel +
//! initramfs) and get no disks. A pod with a persistentVolumeClaim volume
//! (the seed's `examples/vm.yaml` names one) is never placed; the message
//! says so, rather than running the VM without its disk.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, Pod, PodCondition, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::LabError;
use crate::control::launcher_pod::LAUNCHER_LABEL;
use crate::store::Store;

/// The node label kube-scheduler's hostname affinity names.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What placing a pod needs to know of a node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
}

impl NodeInfo {
    pub fn of(n: &Node) -> Self {
        let spec = n.spec.clone().unwrap_or_default();
        NodeInfo {
            name: n.name_any(),
            labels: n.labels().clone(),
            unschedulable: spec.unschedulable == Some(true),
            taints: spec.taints.unwrap_or_default(),
        }
    }
}

/// The claims a pod's volumes name, in order.
pub fn claims(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
        .collect()
}

/// Why a pod with claims cannot run in the lab (`None` without claims).
pub fn no_storage_message(pod: &Pod) -> Option<String> {
    let claims = claims(pod);
    if claims.is_empty() {
        return None;
    }
    let ns = pod.namespace().unwrap_or_default();
    let names: Vec<String> = claims.iter().map(|c| format!("{ns}/{c}")).collect();
    Some(format!(
        "PVC {} cannot be mounted: the lab has no storage (its VMs boot the lab guest image \
         without disks); remove the volumes, as examples/lab/vm.yaml does",
        names.join(", ")
    ))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// The pod's required node affinity: terms ORed, requirements ANDed.
fn affinity_matches(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(sel) = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    if sel.node_selector_terms.is_empty() {
        return false;
    }
    sel.node_selector_terms.iter().any(|t| {
        let exprs: Vec<_> = t.match_expressions.iter().flatten().collect();
        let fields: Vec<_> = t.match_fields.iter().flatten().collect();
        // An empty term matches nothing (as in Kubernetes).
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs
            .iter()
            .all(|r| requirement_matches(r, node.labels.get(&r.key)))
            && fields
                .iter()
                .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&node.name)))
    })
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => {
                t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
            }
        };
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        key_ok && value_ok && effect_ok
    })
}

/// Why `node` cannot take `pod` (`None`: it can). The reasons are
/// kube-scheduler's words.
pub fn unfit(pod: &Pod, node: &NodeInfo) -> Option<&'static str> {
    let spec = pod.spec.clone().unwrap_or_default();
    if node.unschedulable {
        return Some("node(s) were unschedulable");
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    if node
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .any(|t| !tolerates(&tolerations, t))
    {
        return Some("node(s) had untolerated taint");
    }
    let selector_ok = spec
        .node_selector
        .unwrap_or_default()
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    if !selector_ok || !affinity_matches(pod, node) {
        return Some("node(s) didn't match Pod's node affinity/selector");
    }
    None
}

/// Pure choice: the fitting node running the fewest launcher pods (`load`),
/// ties to the first in natural order (node2 before node10); else the
/// message kube-scheduler would write.
pub fn place(
    pod: &Pod,
    nodes: &[NodeInfo],
    load: &BTreeMap<String, usize>,
) -> Result<String, String> {
    if let Some(m) = no_storage_message(pod) {
        return Err(m);
    }
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fit: Vec<&NodeInfo> = Vec::new();
    for n in nodes {
        match unfit(pod, n) {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => fit.push(n),
        }
    }
    fit.sort_by_key(|n| (n.name.len(), n.name.clone()));
    if let Some(n) = fit
        .into_iter()
        .min_by_key(|n| load.get(&n.name).copied().unwrap_or(0))
    {
        return Ok(n.name.clone());
    }
    let why: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        if why.is_empty() {
            "no nodes".to_owned()
        } else {
            why.join(", ")
        }
    ))
}

fn is_launcher(p: &Pod) -> bool {
    p.labels().contains_key(LAUNCHER_LABEL)
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The `PodScheduled` condition `pod` carries, as (status, reason, message).
fn scheduled_condition(pod: &Pod) -> Option<(String, Option<String>, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Place every unbound launcher pod; returns how many were bound.
pub fn schedule(store: &Store) -> Result<u32, LabError> {
    let pods: Vec<Pod> = store
        .list::<Pod>(None)?
        .into_iter()
        .filter(is_launcher)
        .collect();
    let pending: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !finished(p))
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_none()
        })
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let nodes: Vec<NodeInfo> = store.list::<Node>(None)?.iter().map(NodeInfo::of).collect();
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods.iter().filter(|p| !finished(p)) {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *load.entry(n).or_default() += 1;
        }
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut bound = 0;
    for p in pending {
        match place(p, &nodes, &load) {
            Ok(node) => {
                // The binding: spec.nodeName, then PodScheduled=True.
                let mut next = p.clone();
                next.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
                let written = match store.update(&next) {
                    Ok(w) => w,
                    // Changed or gone under us: the next pass looks again.
                    Err(e) if e.is_conflict() || e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                };
                *load.entry(node).or_default() += 1;
                bound += 1;
                let mut next = written;
                set_scheduled(&mut next, "True", None, None, &now);
                match store.update_status(&next) {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() || e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(why) => {
                let want = (
                    "False".to_owned(),
                    Some("Unschedulable".to_owned()),
                    Some(why.clone()),
                );
                // Written once: the daemon loop repeats until a pass writes nothing.
                if scheduled_condition(p) == Some(want) {
                    continue;
                }
                let mut next = p.clone();
                set_scheduled(&mut next, "False", Some("Unschedulable"), Some(why), &now);
                match store.update_status(&next) {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() || e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(bound)
}

fn set_scheduled(
    pod: &mut Pod,
    status: &str,
    reason: Option<&str>,
    message: Option<String>,
    now: &Time,
) {
    let st = pod.status.get_or_insert_with(Default::default);
    if st.phase.is_none() {
        st.phase = Some("Pending".into());
    }
    let conds = st.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != "PodScheduled");
    conds.push(PodCondition {
        type_: "PodScheduled".into(),
        status: status.into(),
        reason: reason.map(Into::into),
        message,
        last_transition_time: Some(now.clone()),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        PersistentVolumeClaimVolumeSource, VirtualMachineInstance, VirtualMachineInstanceSpec,
        Volume,
    };
    use crate::control::launcher_pod::{launcher_pod, LauncherSettings, Role};

    fn settings() -> LauncherSettings {
        LauncherSettings {
            image: "mignet:lab".into(),
            image_pull_policy: None,
            emulation_allowed: true,
        }
    }

    fn vmi() -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("vm-fedora", VirtualMachineInstanceSpec::default());
        v.metadata.namespace = Some("mignet-system".into());
        v.metadata.uid = Some("abcdef12".into());
        v
    }

    /// A lab node as `lab up` makes it.
    fn node(name: &str) -> NodeInfo {
        let mut labels = crate::agent::node_labels::desired(false, "qemu64");
        labels.insert(HOSTNAME_LABEL.into(), name.into());
        NodeInfo {
            name: name.into(),
            labels,
            ..Default::default()
        }
    }

    fn nodes() -> Vec<NodeInfo> {
        ["node10", "node2", "node1"].into_iter().map(node).collect()
    }

    #[test]
    fn least_loaded_fitting_node_first_by_name() {
        let pod = launcher_pod(&vmi(), &Role::Source, &settings()).unwrap();
        let mut load = BTreeMap::new();
        assert_eq!(place(&pod, &nodes(), &load).as_deref(), Ok("node1"));
        load.insert("node1".to_string(), 1);
        assert_eq!(place(&pod, &nodes(), &load).as_deref(), Ok("node2"));
        // Cordoned nodes take nothing.
        let mut ns = nodes();
        for n in &mut ns {
            n.unschedulable = n.name != "node10";
        }
        assert_eq!(place(&pod, &ns, &load).as_deref(), Ok("node10"));
        ns[0].unschedulable = true;
        assert_eq!(
            place(&pod, &ns, &load),
            Err("0/3 nodes are available: 3 node(s) were unschedulable.".into())
        );
    }

    #[test]
    fn a_target_pod_never_lands_on_its_source_and_needs_the_labels() {
        let role = Role::Target {
            migration_uid: "m1",
            source_node: "node1",
            required_labels: vec!["host-model-cpu.node.kubevirt.io/qemu64".into()],
        };
        let pod = launcher_pod(&vmi(), &role, &settings()).unwrap();
        let ns: Vec<NodeInfo> = ["node1", "node2"].into_iter().map(node).collect();
        assert_eq!(place(&pod, &ns, &BTreeMap::new()).as_deref(), Ok("node2"));
        let only_source = vec![node("node1")];
        assert_eq!(
            place(&pod, &only_source, &BTreeMap::new()),
            Err(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
                    .into()
            )
        );
        // A node without the agent's labels (no migration endpoint) is no target.
        let mut bare = node("node2");
        bare.labels
            .remove(crate::control::launcher_pod::SCHEDULABLE_LABEL);
        assert!(place(&pod, &[node("node1"), bare], &BTreeMap::new()).is_err());
    }

    #[test]
    fn taints_need_tolerations() {
        let mut v = vmi();
        let pod = launcher_pod(&v, &Role::Source, &settings()).unwrap();
        let mut n = node("node1");
        n.taints.push(Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        let e = place(&pod, std::slice::from_ref(&n), &BTreeMap::new()).unwrap_err();
        assert!(e.contains("1 node(s) had untolerated taint"), "{e}");
        v.spec.tolerations.push(Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("db".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
        let pod = launcher_pod(&v, &Role::Source, &settings()).unwrap();
        assert_eq!(place(&pod, &[n], &BTreeMap::new()).as_deref(), Ok("node1"));
    }

    #[test]
    fn claims_cannot_run_in_the_lab() {
        let mut v = vmi();
        v.spec.volumes.push(Volume {
            name: "rootdisk".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: "fedora-rwx".into(),
                read_only: None,
            }),
            ..Default::default()
        });
        let pod = launcher_pod(&v, &Role::Source, &settings()).unwrap();
        let m = place(&pod, &nodes(), &BTreeMap::new()).unwrap_err();
        assert!(
            m.contains("mignet-system/fedora-rwx") && m.contains("the lab has no storage"),
            "{m}"
        );
    }
}
