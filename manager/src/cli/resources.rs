//! The kinds the CLI knows: names and short names as kubectl accepts them.

use serde_json::Value;

use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub kind: &'static str,
    /// `plural.group`, as kubectl prints it (`virtualmachineinstancemigration.kubevirt.io`
    /// uses the singular; we follow kubectl: lower-case kind + group).
    pub group: &'static str,
    pub namespaced: bool,
    /// Users may create/apply/delete it (nodes, pods and the DaemonSet
    /// belong to the lab).
    pub user_writable: bool,
    names: &'static [&'static str],
}

pub const RESOURCES: &[Resource] = &[
    Resource {
        kind: "VirtualMachineInstance",
        group: "kubevirt.io",
        namespaced: true,
        user_writable: true,
        names: &[
            "vmi",
            "vmis",
            "virtualmachineinstance",
            "virtualmachineinstances",
        ],
    },
    Resource {
        kind: "VirtualMachineInstanceMigration",
        group: "kubevirt.io",
        namespaced: true,
        user_writable: true,
        names: &[
            "vmim",
            "vmims",
            "virtualmachineinstancemigration",
            "virtualmachineinstancemigrations",
        ],
    },
    Resource {
        kind: "VirtualMachine",
        group: "kubevirt.io",
        namespaced: true,
        user_writable: true,
        names: &["vm", "vms", "virtualmachine", "virtualmachines"],
    },
    Resource {
        kind: "NetworkAttachmentDefinition",
        group: "k8s.cni.cncf.io",
        namespaced: true,
        user_writable: true,
        names: &[
            "nad",
            "nads",
            "net-attach-def",
            "network-attachment-definition",
            "network-attachment-definitions",
            "networkattachmentdefinition",
            "networkattachmentdefinitions",
        ],
    },
    Resource {
        kind: "HyperConverged",
        group: "hco.kubevirt.io",
        namespaced: true,
        user_writable: true,
        names: &["hco", "hcos", "hyperconverged", "hyperconvergeds"],
    },
    Resource {
        kind: "NodeMaintenance",
        group: "nodemaintenance.medik8s.io",
        namespaced: false,
        user_writable: true,
        names: &["nm", "nodemaintenance", "nodemaintenances"],
    },
    Resource {
        kind: "Node",
        group: "",
        namespaced: false,
        user_writable: false,
        names: &["no", "node", "nodes"],
    },
    Resource {
        kind: "Pod",
        group: "",
        namespaced: true,
        user_writable: false,
        names: &["po", "pod", "pods"],
    },
    Resource {
        kind: "DaemonSet",
        group: "apps",
        namespaced: true,
        user_writable: false,
        names: &["ds", "daemonset", "daemonsets"],
    },
];

impl Resource {
    /// `kind.group` as kubectl prints it in `created` / `deleted` lines.
    pub fn qualified(&self) -> String {
        let k = self.kind.to_ascii_lowercase();
        if self.group.is_empty() {
            k
        } else {
            format!("{k}.{}", self.group)
        }
    }
}

/// Look a resource up by any of its names, or by kind (`VirtualMachine`).
pub fn lookup(name: &str) -> Option<&'static Resource> {
    let lower = name.to_ascii_lowercase();
    // kubectl also accepts `vmi.kubevirt.io`.
    let base = lower.split('.').next().unwrap_or(&lower);
    RESOURCES
        .iter()
        .find(|r| r.names.contains(&base) || r.kind.eq_ignore_ascii_case(base))
}

pub fn by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// Check that a user-supplied object has the shape of its type (required
/// fields, enum spellings), with the type's own error message.
pub fn validate(kind: &str, v: &Value) -> Result<(), StoreError> {
    fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(v.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    use crate::api::*;
    let r = match kind {
        "VirtualMachineInstance" => check::<VirtualMachineInstance>(v),
        "VirtualMachineInstanceMigration" => check::<VirtualMachineInstanceMigration>(v),
        "VirtualMachine" => check::<VirtualMachine>(v),
        "NetworkAttachmentDefinition" => check::<NetworkAttachmentDefinition>(v),
        "HyperConverged" => check::<HyperConverged>(v),
        "NodeMaintenance" => check::<NodeMaintenance>(v),
        other => Err(format!("kind {other} cannot be created in the lab")),
    };
    r.map_err(|reason| StoreError::Invalid {
        reason: format!("{kind}: {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve() {
        assert_eq!(
            lookup("vmim").unwrap().kind,
            "VirtualMachineInstanceMigration"
        );
        assert_eq!(lookup("VMI").unwrap().kind, "VirtualMachineInstance");
        assert_eq!(
            lookup("vmi.kubevirt.io").unwrap().kind,
            "VirtualMachineInstance"
        );
        assert_eq!(
            lookup("net-attach-def").unwrap().kind,
            "NetworkAttachmentDefinition"
        );
        assert_eq!(lookup("nodes").unwrap().kind, "Node");
        assert_eq!(lookup("VirtualMachine").unwrap().kind, "VirtualMachine");
        assert!(lookup("deployment").is_none());
        assert_eq!(
            lookup("vmim").unwrap().qualified(),
            "virtualmachineinstancemigration.kubevirt.io"
        );
    }
}
