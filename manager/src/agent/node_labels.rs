//! The labels an agent puts on its node, so that Kubernetes places launcher
//! pods only where they can run (KubeVirt's virt-handler does the same):
//! - `kubevirt.io/schedulable=true`: an agent runs here (the migration
//!   endpoint every VM needs);
//! - `mignet.io/kvm=true|false`: whether KVM really works here (tried, not
//!   read from `/dev/kvm`'s presence);
//! - `host-model-cpu.node.kubevirt.io/<model>=true`: the CPU model a
//!   `host-model` VM gets here. Under TCG that is QEMU's default model; under
//!   KVM the host's CPU model name (a target of a host-model migration must
//!   offer the same).
//!
//! Pure ([`desired`], [`patch`]); `run_agent` applies the patch with the
//! agent's own identity.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::backend::protocol::{KVM_LABEL, SCHEDULABLE_LABEL};
use mignet_policy::migratable::HOST_MODEL_CPU_LABEL;

/// The model name as a label-name segment: `[A-Za-z0-9._-]`, at most 63
/// characters, starting and ending alphanumeric.
pub fn label_segment(model: &str) -> String {
    let s: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The labels this node should carry.
pub fn desired(kvm_usable: bool, host_model: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (SCHEDULABLE_LABEL.to_owned(), "true".to_owned()),
        (KVM_LABEL.to_owned(), kvm_usable.to_string()),
    ]);
    let seg = label_segment(host_model);
    if !seg.is_empty() {
        l.insert(format!("{HOST_MODEL_CPU_LABEL}{seg}"), "true".into());
    }
    l
}

/// The merge patch from the node's `current` labels to `want`: changed
/// labels set, host-model labels of another model removed; `None` when
/// nothing changes. Labels of other owners are never touched.
pub fn patch(current: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> Option<Value> {
    let mut labels = serde_json::Map::new();
    for (k, v) in want {
        if current.get(k) != Some(v) {
            labels.insert(k.clone(), json!(v));
        }
    }
    for k in current.keys() {
        if k.starts_with(HOST_MODEL_CPU_LABEL) && !want.contains_key(k) {
            labels.insert(k.clone(), Value::Null);
        }
    }
    (!labels.is_empty()).then(|| json!({ "metadata": { "labels": labels } }))
}

/// The CPU model name of this machine (`/proc/cpuinfo`), for KVM nodes.
pub fn host_cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_say_schedulable_kvm_and_the_host_model() {
        let l = desired(false, "qemu64");
        assert_eq!(l[SCHEDULABLE_LABEL], "true");
        assert_eq!(l[KVM_LABEL], "false");
        assert_eq!(l["host-model-cpu.node.kubevirt.io/qemu64"], "true");
        let l = desired(true, "Intel(R) Xeon(R) CPU @ 2.20GHz");
        assert!(l.contains_key("host-model-cpu.node.kubevirt.io/Intel-R--Xeon-R--CPU---2.20GHz"));
    }

    #[test]
    fn patch_sets_changes_drops_stale_models_and_keeps_other_labels() {
        let current = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), "node1".to_owned()),
            (
                "host-model-cpu.node.kubevirt.io/old".to_owned(),
                "true".to_owned(),
            ),
            (KVM_LABEL.to_owned(), "false".to_owned()),
        ]);
        let want = desired(false, "qemu64");
        let p = patch(&current, &want).unwrap();
        let labels = p["metadata"]["labels"].as_object().unwrap();
        assert_eq!(labels["host-model-cpu.node.kubevirt.io/old"], Value::Null);
        assert_eq!(labels[SCHEDULABLE_LABEL], "true");
        assert!(!labels.contains_key(KVM_LABEL) && !labels.contains_key("kubernetes.io/hostname"));
        let mut done = current.clone();
        done.remove("host-model-cpu.node.kubevirt.io/old");
        done.extend(want.clone());
        assert_eq!(patch(&done, &want), None);
    }
}
