//! Keeps the node labels of VMIs and VMIMs equal to what their status says
//! ([`protocol::vmi_node_labels`], [`protocol::vmim_node_labels`]), so each
//! agent can list only its own objects by label selector.
//!
//! Run every pass over every VMI and VMIM, so objects written before these
//! labels existed, or whose status another writer moved (the source agent
//! writes `nodeName` on success; the lab's scheduler places VMIs), are
//! labelled on the controller's next pass; that pass follows the change at
//! once (the controller wakes on every change), or within its resync.
//!
//! [`protocol::vmi_node_labels`]: crate::backend::protocol::vmi_node_labels
//! [`protocol::vmim_node_labels`]: crate::backend::protocol::vmim_node_labels

use mignet_policy::ObjectKey;

use super::{settle, views, ControlError, Pass, World};
use crate::backend::{protocol, Backend};

/// Write the node labels that differ from the derived ones: a merge patch
/// of the changed labels, conditional on the resourceVersion as listed (a
/// lost race is redone next pass).
pub(super) async fn node_labels<B: Backend>(
    backend: &B,
    w: &mut World,
    pass: &mut Pass,
) -> Result<(), ControlError> {
    let keys: Vec<ObjectKey> = w.vmis.keys().cloned().collect();
    for key in keys {
        let before = &w.vmis[&key];
        let mut after = before.clone();
        let wanted = protocol::vmi_node_labels(before);
        if !protocol::set_labels(&mut after.metadata.labels, &wanted) {
            continue;
        }
        let r = backend.patch_object(before, &after).await;
        if let Some(v) = settle(r, pass, "VMI node labels", &key)? {
            pass.labels_written += 1;
            w.vmis.insert(key, v);
        }
    }
    for i in 0..w.vmims.len() {
        let before = &w.vmims[i];
        let mut after = before.clone();
        let wanted = protocol::vmim_node_labels(before);
        if !protocol::set_labels(&mut after.metadata.labels, &wanted) {
            continue;
        }
        let key = views::vmim_key(before);
        let r = backend.patch_object(before, &after).await;
        if let Some(m) = settle(r, pass, "VMIM node labels", &key)? {
            pass.labels_written += 1;
            w.vmims[i] = m;
        }
    }
    Ok(())
}
