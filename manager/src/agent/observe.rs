//! What the agent reads each pass: the VMIs and VMIMs that concern its node,
//! selected by label where they are stored (the API server's
//! `labelSelector`, the lab store's filter), not every object of the
//! cluster.
//!
//! The controller keeps the labels equal to the status
//! ([`crate::backend::protocol`]): a VMI carries `kubevirt.io/nodeName` and
//! `kubevirt.io/migrationTargetNodeName` (virt-handler selects its VMIs by
//! the same two), a started VMIM its source and target node. One pass reads:
//! - the VMIs labelled with this node as their node or migration target;
//! - the VMIMs labelled with this node as their source or target;
//! - by name, each VMI the selection lacks that this node still needs: one
//!   whose VM runs here, and the VMI of each started, unfinished VMIM seen.
//!
//! # Why a label that lags is safe
//!
//! A label is written by the controller's pass after the status change it
//! follows: the controller wakes on the change (20 ms later) or at the
//! latest on its resync (5 s in a cluster, 1 s in the lab); its first pass
//! labels the objects from before the labels existed. Nearly every such
//! change is the controller's own (placing a VMI, starting a migration),
//! labelled in the same pass; the one an agent makes (the source moves
//! `nodeName` to the target on success) needs none to be seen, the VMI
//! already carries the target label. Until its label arrives the agent does
//! not see an object, and the loop only acts on what it sees, with one
//! exception: a VM
//! running here whose VMI is absent is stopped. The by-name reads close
//! that gap (a VM here is never stopped because its VMI is unlabelled, nor
//! a source left Running because its VMI was already relabelled to the
//! target). Every other step for a missed object (start a VM, prepare a
//! target, migrate, answer an abort) only happens later, when the label
//! arrives and its write wakes the agent.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::api::{MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration};
use crate::backend::protocol::agent_selectors;
use crate::backend::{Backend, BackendError, Kind};

/// What one observation returns: VMIs, VMIMs.
pub type Observation = (
    Vec<VirtualMachineInstance>,
    Vec<VirtualMachineInstanceMigration>,
);

/// The VMIs and VMIMs the agent on `node` decides on, each sorted by
/// namespace and name (the order a full list has). `local` are the VMs
/// running here, as `namespace/name`.
///
/// A node name that cannot be a label value (over 63 characters) has no
/// labels to select by: then everything is listed, as before the labels.
pub async fn observe<B: Backend>(
    backend: &B,
    node: &str,
    local: &[String],
) -> Result<Observation, BackendError> {
    let Some((vmi_selectors, vmim_selectors)) = agent_selectors(node) else {
        return Ok((backend.list(None).await?, backend.list(None).await?));
    };
    let mut vmis: Vec<VirtualMachineInstance> = backend.list_selected(None, &vmi_selectors).await?;
    let vmims: Vec<VirtualMachineInstanceMigration> =
        backend.list_selected(None, &vmim_selectors).await?;
    for (ns, name) in unseen(&vmis, &vmims, local) {
        if let Some(v) = backend.get::<VirtualMachineInstance>(&ns, &name).await? {
            vmis.push(v);
        }
    }
    Ok((unique_sorted(vmis), vmims))
}

/// Each object once (a VMI read by name may also have been selected),
/// sorted by namespace and name.
fn unique_sorted<K: Kind>(objects: Vec<K>) -> Vec<K> {
    let mut by_key = BTreeMap::new();
    for o in objects {
        by_key.insert((o.namespace().unwrap_or_default(), o.name_any()), o);
    }
    by_key.into_values().collect()
}

/// The VMIs (namespace, name) the selection lacks and the loop needs: those
/// of the VMs running here (`namespace/name`), and those of the started,
/// unfinished migrations in `vmims`. Pure.
fn unseen(
    vmis: &[VirtualMachineInstance],
    vmims: &[VirtualMachineInstanceMigration],
    local: &[String],
) -> BTreeSet<(String, String)> {
    let seen: BTreeSet<(String, String)> = vmis
        .iter()
        .map(|v| (v.namespace().unwrap_or_default(), v.name_any()))
        .collect();
    let of_local = local
        .iter()
        .filter_map(|k| k.split_once('/'))
        .map(|(ns, n)| (ns.to_owned(), n.to_owned()));
    let of_migrations = vmims
        .iter()
        .filter(|m| {
            let phase = m.status.as_ref().and_then(|s| s.phase);
            phase.is_some_and(|p| {
                !matches!(
                    p,
                    MigrationPhase::Pending | MigrationPhase::Succeeded | MigrationPhase::Failed
                )
            })
        })
        .map(|m| (m.namespace().unwrap_or_default(), m.spec.vmi_name.clone()));
    of_local
        .chain(of_migrations)
        .filter(|k| !seen.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationStatus,
        VirtualMachineInstanceSpec,
    };

    fn vmi(ns: &str, name: &str) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new(name, VirtualMachineInstanceSpec::default());
        v.metadata.namespace = Some(ns.into());
        v
    }

    fn vmim(ns: &str, vmi: &str, phase: Option<MigrationPhase>) -> VirtualMachineInstanceMigration {
        let mut m = VirtualMachineInstanceMigration::new(
            &format!("mig-{vmi}"),
            VirtualMachineInstanceMigrationSpec {
                vmi_name: vmi.into(),
            },
        );
        m.metadata.namespace = Some(ns.into());
        m.status = Some(VirtualMachineInstanceMigrationStatus {
            phase,
            ..Default::default()
        });
        m
    }

    fn key(ns: &str, n: &str) -> (String, String) {
        (ns.into(), n.into())
    }

    #[test]
    fn unique_sorted_keeps_each_object_once_in_namespace_name_order() {
        let out = unique_sorted(vec![
            vmi("b", "x"),
            vmi("a", "y"),
            vmi("a", "y"),
            vmi("a", "a"),
        ]);
        let names: Vec<_> = out
            .iter()
            .map(|v| (v.namespace().unwrap(), v.name_any()))
            .collect();
        assert_eq!(names, vec![key("a", "a"), key("a", "y"), key("b", "x")]);
    }

    #[test]
    fn a_node_name_that_cannot_be_a_label_value_selects_nothing() {
        assert!(agent_selectors(&"n".repeat(64)).is_none());
        assert!(agent_selectors("").is_none());
        let (vmi, vmim) = agent_selectors("node-a").unwrap();
        assert_eq!(
            vmi[1].to_string(),
            "kubevirt.io/migrationTargetNodeName=node-a"
        );
        assert_eq!(
            vmim[0].to_string(),
            "mignet.io/migration-source-node=node-a"
        );
    }

    #[test]
    fn unseen_names_local_vms_and_unfinished_migrations_not_selected() {
        let vmis = vec![vmi("ns", "here")];
        let vmims = vec![
            vmim("ns", "moving", Some(MigrationPhase::Running)),
            vmim("ns", "here", Some(MigrationPhase::TargetReady)),
            vmim("ns", "done", Some(MigrationPhase::Succeeded)),
            vmim("ns", "failed", Some(MigrationPhase::Failed)),
            vmim("ns", "waiting", Some(MigrationPhase::Pending)),
            vmim("ns", "new", None),
        ];
        let local = vec!["ns/here".to_owned(), "other/unlabelled".to_owned()];
        assert_eq!(
            unseen(&vmis, &vmims, &local),
            BTreeSet::from([key("ns", "moving"), key("other", "unlabelled")])
        );
    }
}
