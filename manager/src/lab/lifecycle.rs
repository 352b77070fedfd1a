//! `lab up` and `lab down`.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::state::LabState;
use super::topology::{self, DownReport};
use super::{cni, netns_path, plan, rollout, LabConfig, LabError};
use super::{AGENT_DAEMONSET, LAB_NAMESPACE, NETNS_ANNOTATION};
use crate::store::Store;

/// Label a node carries for each CPU model it supports as host-model
/// (KubeVirt's `host-model-cpu.node.kubevirt.io/<model>`). Lab nodes all run
/// QEMU's TCG `qemu64`.
pub const HOST_MODEL_LABEL: &str = "host-model-cpu.node.kubevirt.io/qemu64";

fn node_object(cfg: &LabConfig, index: u32, name: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                HOST_MODEL_LABEL: "true",
            },
            "annotations": {
                NETNS_ANNOTATION: netns_path(&cfg.node_ns(name)).display().to_string(),
            },
        },
        "spec": {"podCIDR": plan::pod_subnet(index)},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": plan::node_ip(index).to_string()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "LabNodeUp"}],
        },
    }))
    .expect("static node shape")
}

/// Create the lab: record, CNI path, topology, seed objects (Nodes, the
/// agent DaemonSet). On failure, everything created so far is removed.
pub fn create(cfg: &LabConfig) -> Result<(), LabError> {
    LabState::create(cfg)?;
    let result = (|| {
        cni::install_plugins(cfg)?;
        topology::up(cfg)?;
        let store = Store::open(cfg.store_dir())?;
        for (i, name) in (1u32..).zip(cfg.node_names()) {
            let node = node_object(cfg, i, &name);
            let created = store.create(&node)?;
            let mut with_status = node;
            with_status.metadata = created.metadata;
            store.update_status(&with_status)?;
        }
        store.create(&rollout::agent_daemonset())?;
        Ok(())
    })();
    if let Err(e) = result {
        let report = topology::down(&cfg.dir);
        return Err(match report {
            Ok(r) if r.errors.is_empty() => e,
            Ok(r) => LabError::Teardown(format!(
                "{e}; cleaning up also failed: {}",
                r.errors.join("; ")
            )),
            Err(e2) => LabError::Teardown(format!("{e}; cleaning up also failed: {e2}")),
        });
    }
    Ok(())
}

/// Wait until the agent DaemonSet reports every pod updated and ready.
pub fn wait_for_agents(cfg: &LabConfig, timeout: Duration) -> Result<bool, LabError> {
    let store = Store::open(cfg.store_dir())?;
    let deadline = Instant::now() + timeout;
    loop {
        let rev = store.revision()?;
        if let Some(ds) = store.get::<DaemonSet>(LAB_NAMESPACE, AGENT_DAEMONSET)? {
            let st = ds.status.unwrap_or_default();
            let done = st.desired_number_scheduled == cfg.nodes as i32
                && st.number_ready == st.desired_number_scheduled
                && st.updated_number_scheduled == Some(st.desired_number_scheduled)
                && st.observed_generation == ds.metadata.generation;
            if done {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        store.wait_for_change(rev, Duration::from_millis(500))?;
    }
}

pub fn destroy(dir: &std::path::Path) -> Result<DownReport, LabError> {
    topology::down(dir)
}
