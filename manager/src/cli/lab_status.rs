//! `mignet lab status`: nodes, agents, VMs, the rollout condition.

use std::fmt::Write as _;
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::table::Table;
use crate::api::{HyperConverged, VirtualMachineInstance};
use crate::lab::agent_pods::NETWORK_STATUS_ANNOTATION;
use crate::lab::inventory::{is_alive, LabInventory};
use crate::lab::{netns_exists, open_store, LabError, HYPERCONVERGED, LAB_NAMESPACE};

pub fn render(dir: &Path) -> Result<String, LabError> {
    let state = LabInventory::load(dir)?.ok_or_else(|| LabError::NotUp {
        dir: dir.to_owned(),
    })?;
    let store = open_store(dir)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Lab:      {} (namespaces {}-*)",
        dir.display(),
        state.config.prefix
    );
    for p in &state.processes {
        let _ = writeln!(
            out,
            "Process:  {} pid {} ({})",
            p.what,
            p.pid,
            if is_alive(p) {
                "running"
            } else {
                "not running"
            }
        );
    }
    if let Some(hco) = store.get::<HyperConverged>(LAB_NAMESPACE, HYPERCONVERGED)? {
        let network = hco
            .spec
            .live_migration_config
            .as_ref()
            .and_then(|c| c.network.clone())
            .unwrap_or_else(|| "<pod network>".into());
        let _ = writeln!(out, "Network:  {network}");
        for c in hco.status.map(|s| s.conditions).unwrap_or_default() {
            let _ = writeln!(
                out,
                "  {}={} ({}): {}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }

    out.push_str("\nNODES\n");
    let mut t = Table::new(&["NAME", "NETNS", "UP", "INTERNAL-IP", "SCHEDULABLE"]);
    for n in store.list::<Node>(None)? {
        let name = n.metadata.name.clone().unwrap_or_default();
        let ns = state.config.node_ns(&name);
        let ip = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .unwrap_or_default();
        let unschedulable = n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        t.row(vec![
            name,
            ns.clone(),
            yes_no(netns_exists(&ns)),
            ip,
            yes_no(!unschedulable),
        ]);
    }
    out.push_str(&t.render());

    out.push_str("\nAGENTS\n");
    let mut t = Table::new(&["POD", "NODE", "READY", "POD-IP", "NETWORKS"]);
    for p in store.list::<Pod>(Some(LAB_NAMESPACE))? {
        t.row(vec![
            p.metadata.name.clone().unwrap_or_default(),
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            pod_ready(&p),
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            secondary_ips(&p),
        ]);
    }
    out.push_str(&t.render());

    out.push_str("\nVMS\n");
    let mut t = Table::new(&["NAMESPACE", "NAME", "PHASE", "NODE"]);
    for v in store.list::<VirtualMachineInstance>(None)? {
        let st = v.status.clone().unwrap_or_default();
        t.row(vec![
            v.metadata.namespace.clone().unwrap_or_default(),
            v.metadata.name.clone().unwrap_or_default(),
            st.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
            st.node_name.unwrap_or_default(),
        ]);
    }
    out.push_str(&t.render());
    Ok(out)
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn pod_ready(p: &Pod) -> String {
    let c = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned());
    match c {
        Some(c) if c.status == "True" => "True".into(),
        Some(c) => format!("False ({})", c.reason.unwrap_or_default()),
        None => "Unknown".into(),
    }
}

/// `interface=ip,...` for every non-default network of the pod.
pub fn secondary_ips(p: &Pod) -> String {
    let Some(v) = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
    else {
        return String::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.get("default").and_then(|d| d.as_bool()) != Some(true))
        .map(|e| {
            let iface = e.get("interface").and_then(|i| i.as_str()).unwrap_or("?");
            let ips: Vec<&str> = e
                .get("ips")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_str())
                .collect();
            format!("{iface}={}", ips.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
