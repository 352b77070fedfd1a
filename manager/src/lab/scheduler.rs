//! The lab plays the scheduler: a new VMI (no `status.nodeName`) is placed
//! on the least-loaded schedulable node, and marked `Scheduled`; the node's
//! agent then starts it and marks it `Running` (see `crate::agent::control`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use super::LabError;
use crate::api::{VirtualMachineInstance, VmiPhase};
use crate::store::Store;

/// Pure choice: the schedulable node running the fewest VMIs; ties go to the
/// first by name (so the first VM of a fresh lab lands on node1).
pub fn pick_node(nodes: &[(String, bool)], load: &BTreeMap<String, usize>) -> Option<String> {
    let mut ready: Vec<&(String, bool)> = nodes.iter().filter(|(_, ok)| *ok).collect();
    // Natural order: node2 before node10.
    ready.sort_by_key(|(n, _)| (n.len(), n.clone()));
    ready
        .into_iter()
        .min_by_key(|(n, _)| load.get(n).copied().unwrap_or(0))
        .map(|(n, _)| n.clone())
}

/// Place every unscheduled VMI; returns how many were placed.
pub fn schedule(store: &Store) -> Result<u32, LabError> {
    let vmis = store.list::<VirtualMachineInstance>(None)?;
    let pending: Vec<&VirtualMachineInstance> = vmis
        .iter()
        .filter(|v| v.metadata.deletion_timestamp.is_none())
        .filter(|v| {
            let st = v.status.as_ref();
            st.and_then(|s| s.node_name.as_deref()).is_none()
                && matches!(
                    st.and_then(|s| s.phase),
                    None | Some(VmiPhase::Pending) | Some(VmiPhase::Scheduling)
                )
        })
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let nodes: Vec<(String, bool)> = store
        .list::<Node>(None)?
        .into_iter()
        .map(|n| {
            let ok = n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true);
            (n.metadata.name.unwrap_or_default(), ok)
        })
        .collect();
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for v in &vmis {
        if let Some(n) = v.status.as_ref().and_then(|s| s.node_name.clone()) {
            *load.entry(n).or_default() += 1;
        }
    }
    let mut placed = 0;
    for v in pending {
        let Some(node) = pick_node(&nodes, &load) else {
            return Ok(placed);
        };
        let mut v = v.clone();
        let st = v.status.get_or_insert_with(Default::default);
        st.node_name = Some(node.clone());
        st.phase = Some(VmiPhase::Scheduled);
        match store.update_status(&v) {
            Ok(_) => {
                *load.entry(node).or_default() += 1;
                placed += 1;
            }
            // Changed under us: the next pass looks again.
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(n, ok)| (n.to_string(), *ok)).collect()
    }

    #[test]
    fn least_loaded_schedulable_node_first_by_name() {
        let ns = nodes(&[("node10", true), ("node2", true), ("node1", true)]);
        let mut load = BTreeMap::new();
        assert_eq!(pick_node(&ns, &load).as_deref(), Some("node1"));
        load.insert("node1".to_string(), 1);
        assert_eq!(pick_node(&ns, &load).as_deref(), Some("node2"));
        let ns = nodes(&[("node1", false), ("node2", false)]);
        assert_eq!(pick_node(&ns, &load), None);
        let ns = nodes(&[("node1", false), ("node2", true)]);
        assert_eq!(pick_node(&ns, &BTreeMap::new()).as_deref(), Some("node2"));
    }
}
