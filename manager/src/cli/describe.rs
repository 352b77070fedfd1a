//! Tables for `get` and prose for `describe`, per kind.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::resources::Resource;
use super::table::{human_duration, Table};

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn age(v: &Value) -> String {
    let created = s(v, "/metadata/creationTimestamp");
    match created.parse::<Timestamp>() {
        Ok(t) => human_duration(Timestamp::now().as_second() - t.as_second()),
        Err(_) => "<unknown>".into(),
    }
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn condition_status(v: &Value, type_: &str) -> String {
    condition(v, type_)
        .map(|c| text(c.get("status")))
        .unwrap_or_default()
}

/// Column headers and the function that fills one row.
type Columns = (&'static [&'static str], fn(&Value) -> Vec<String>);

/// kubectl-style table of `items` (all of kind `r`).
pub fn table(r: &Resource, items: &[Value], with_namespace: bool) -> String {
    let (headers, row): Columns = match r.kind {
        // KubeVirt's printer columns.
        "VirtualMachineInstance" => (&["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"], |v| {
            vec![
                s(v, "/metadata/name").into(),
                age(v),
                s(v, "/status/phase").into(),
                s(v, "/status/interfaces/0/ipAddress").into(),
                s(v, "/status/nodeName").into(),
                condition_status(v, "Ready"),
            ]
        }),
        "VirtualMachineInstanceMigration" => (&["NAME", "PHASE", "VMI"], |v| {
            vec![
                s(v, "/metadata/name").into(),
                s(v, "/status/phase").into(),
                s(v, "/spec/vmiName").into(),
            ]
        }),
        "VirtualMachine" => (&["NAME", "AGE", "STATUS", "READY"], |v| {
            vec![
                s(v, "/metadata/name").into(),
                age(v),
                s(v, "/status/printableStatus").into(),
                condition_status(v, "Ready"),
            ]
        }),
        "Node" => (&["NAME", "STATUS", "AGE", "INTERNAL-IP"], |v| {
            let mut status = match condition_status(v, "Ready").as_str() {
                "True" => "Ready".to_owned(),
                _ => "NotReady".to_owned(),
            };
            if v.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let ip = v
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
                })
                .map(|a| text(a.get("address")))
                .unwrap_or_default();
            vec![s(v, "/metadata/name").into(), status, age(v), ip]
        }),
        // The node-maintenance-operator's CR has no printer columns; these
        // say what a user asks first.
        "NodeMaintenance" => (&["NAME", "NODE", "PHASE", "PROGRESS", "AGE"], |v| {
            vec![
                s(v, "/metadata/name").into(),
                s(v, "/spec/nodeName").into(),
                s(v, "/status/phase").into(),
                text(v.pointer("/status/drainProgress")),
                age(v),
            ]
        }),
        "Pod" => (&["NAME", "READY", "STATUS", "AGE", "IP", "NODE"], |v| {
            let ready = if condition_status(v, "Ready") == "True" {
                "1/1"
            } else {
                "0/1"
            };
            vec![
                s(v, "/metadata/name").into(),
                ready.into(),
                s(v, "/status/phase").into(),
                age(v),
                s(v, "/status/podIP").into(),
                s(v, "/spec/nodeName").into(),
            ]
        }),
        "DaemonSet" => (
            &[
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
            ],
            |v| {
                let n = |p: &str| text(v.pointer(p)).parse::<i64>().unwrap_or(0).to_string();
                vec![
                    s(v, "/metadata/name").into(),
                    n("/status/desiredNumberScheduled"),
                    n("/status/currentNumberScheduled"),
                    n("/status/numberReady"),
                    n("/status/updatedNumberScheduled"),
                    n("/status/numberAvailable"),
                    age(v),
                ]
            },
        ),
        _ => (&["NAME", "AGE"], |v| {
            vec![s(v, "/metadata/name").into(), age(v)]
        }),
    };
    let mut all: Vec<&str> = Vec::new();
    if with_namespace {
        all.push("NAMESPACE");
    }
    all.extend_from_slice(headers);
    let mut t = Table::new(&all);
    for v in items {
        let mut cells = Vec::new();
        if with_namespace {
            cells.push(s(v, "/metadata/namespace").to_owned());
        }
        cells.extend(row(v));
        t.row(cells);
    }
    t.render()
}

/// `describe`: the object's identity, then per kind the seed's blocks; for
/// kinds without prose, the spec and status as YAML.
pub fn describe(r: &Resource, v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", s(v, "/metadata/name"));
    if r.namespaced {
        let _ = writeln!(out, "Namespace:    {}", s(v, "/metadata/namespace"));
    }
    let _ = writeln!(out, "API Version:  {}", s(v, "/apiVersion"));
    let _ = writeln!(out, "Kind:         {}", s(v, "/kind"));
    let _ = writeln!(out, "UID:          {}", s(v, "/metadata/uid"));
    let _ = writeln!(out, "Created:      {}", s(v, "/metadata/creationTimestamp"));
    if let Some(d) = v.pointer("/metadata/deletionTimestamp") {
        let _ = writeln!(out, "Deleting:     since {}", text(Some(d)));
    }
    match r.kind {
        "VirtualMachineInstance" => describe_vmi(v, &mut out),
        "HyperConverged" => describe_hco(v, &mut out),
        "VirtualMachineInstanceMigration" => {
            let _ = writeln!(out, "VMI:          {}", s(v, "/spec/vmiName"));
            let _ = writeln!(out, "Phase:        {}", s(v, "/status/phase"));
            if let Some(ms) = v.pointer("/status/migrationState") {
                out.push_str("Migration State:\n");
                migration_state(ms, &mut out);
            }
        }
        _ => {
            for part in ["spec", "status"] {
                if let Some(p) = v.get(part) {
                    let _ = writeln!(out, "{}:", capitalise(part));
                    for line in serde_yaml::to_string(p).unwrap_or_default().lines() {
                        let _ = writeln!(out, "  {line}");
                    }
                }
            }
        }
    }
    out
}

/// The HyperConverged: the migration config as set, then its conditions as
/// `kubectl describe` lays them out. A pre-flight refusal's findings each
/// get a line of their own (the condition carries them as one message).
fn describe_hco(v: &Value, out: &mut String) {
    out.push_str("Live Migration Config:\n");
    match v
        .pointer("/spec/liveMigrationConfig")
        .and_then(Value::as_object)
    {
        Some(cfg) if !cfg.is_empty() => {
            for (k, val) in cfg {
                let _ = writeln!(out, "  {k}: {}", text(Some(val)));
            }
        }
        _ => out.push_str("  (defaults)\n"),
    }
    let conditions = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if conditions.is_empty() {
        out.push_str("Conditions:   <none>\n");
        return;
    }
    out.push_str("Conditions:\n");
    let mut t = Table::new(&["  TYPE", "STATUS", "REASON", "LAST TRANSITION"]);
    for c in &conditions {
        t.row(vec![
            format!("  {}", s(c, "/type")),
            s(c, "/status").to_owned(),
            s(c, "/reason").to_owned(),
            s(c, "/lastTransitionTime").to_owned(),
        ]);
    }
    out.push_str(&t.render());
    for c in &conditions {
        let message = s(c, "/message");
        if message.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {}:", s(c, "/type"));
        const FINDINGS_AFTER: &str = "the agents keep the current network: ";
        match message.split_once(FINDINGS_AFTER) {
            Some((head, findings)) => {
                let _ = writeln!(out, "    {head}{}", FINDINGS_AFTER.trim_end());
                for f in findings.split("; ") {
                    let _ = writeln!(out, "      {f}");
                }
            }
            None => {
                let _ = writeln!(out, "    {message}");
            }
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn describe_vmi(v: &Value, out: &mut String) {
    let _ = writeln!(out, "Phase:        {}", s(v, "/status/phase"));
    let _ = writeln!(out, "Node Name:    {}", s(v, "/status/nodeName"));
    if let Some(e) = v.pointer("/spec/evictionStrategy") {
        let _ = writeln!(out, "Eviction Strategy: {}", text(Some(e)));
    }
    let conditions: Vec<String> = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let mut line = format!("{}={}", text(c.get("type")), text(c.get("status")));
            if let Some(reason) = c
                .get("reason")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
            {
                line.push_str(&format!(" ({reason})"));
            }
            line
        })
        .collect();
    let _ = writeln!(out, "Conditions: {}", conditions.join(", "));
    if let Some(m) = v.pointer("/status/migrationMethod") {
        let _ = writeln!(out, "Migration Method: {}", text(Some(m)));
    }
    if let Some(e) = v.pointer("/status/evacuationNodeName") {
        let _ = writeln!(out, "Evacuation Node Name: {}", text(Some(e)));
    }
    if let Some(ms) = v.pointer("/status/migrationState") {
        out.push_str("Migration State:\n");
        migration_state(ms, out);
    }
}

/// The seed's block: `Key Name: value`, keys in the order the seed shows
/// them (alphabetical, as kubectl describe prints maps), fields we have
/// beyond the seed's after them.
fn migration_state(ms: &Value, out: &mut String) {
    let fields = [
        ("abortRequested", "Abort Requested"),
        ("abortStatus", "Abort Status"),
        ("completed", "Completed"),
        ("endTimestamp", "End Timestamp"),
        ("failed", "Failed"),
        ("failureReason", "Failure Reason"),
        ("migrationUid", "Migration UID"),
        ("mode", "Mode"),
        ("sourceNode", "Source Node"),
        ("sourcePod", "Source Pod"),
        ("startTimestamp", "Start Timestamp"),
        ("targetNode", "Target Node"),
        ("targetNodeAddress", "Target Node Address"),
        ("targetNodeDomainDetected", "Target Node Domain Detected"),
        ("targetPod", "Target Pod"),
    ];
    for (key, label) in fields {
        if let Some(v) = ms.get(key).filter(|v| !v.is_null()) {
            let _ = writeln!(out, "  {label}: {}", text(Some(v)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vmi_block_matches_the_seed() {
        let v = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "vmi-fedora", "namespace": "mignet-system"},
            "status": {
                "phase": "Running",
                "nodeName": "node1",
                "conditions": [{"type": "LiveMigratable", "status": "True"}],
                "migrationMethod": "LiveMigration",
                "migrationState": {
                    "completed": true,
                    "endTimestamp": "2018-12-24T06:19:42Z",
                    "migrationUid": "d78c8962-0743-11e9-a540-fa163e0c69f1",
                    "sourceNode": "node2",
                    "startTimestamp": "2018-12-24T06:19:35Z",
                    "targetNode": "node1",
                    "targetNodeAddress": "10.200.5.18:43891",
                    "targetNodeDomainDetected": true
                }
            }
        });
        let r = super::super::resources::lookup("vmi").unwrap();
        let out = describe(r, &v);
        let want = "Conditions: LiveMigratable=True
Migration Method: LiveMigration
Migration State:
  Completed: true
  End Timestamp: 2018-12-24T06:19:42Z
  Migration UID: d78c8962-0743-11e9-a540-fa163e0c69f1
  Source Node: node2
  Start Timestamp: 2018-12-24T06:19:35Z
  Target Node: node1
  Target Node Address: 10.200.5.18:43891
  Target Node Domain Detected: true
";
        assert!(out.ends_with(want), "{out}");
    }

    #[test]
    fn hco_block_lists_a_preflight_refusals_findings_one_per_line() {
        let v = json!({
            "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
            "metadata": {"name": "kubevirt-hyperconverged", "namespace": "mignet-system"},
            "spec": {"liveMigrationConfig": {"network": "jumbo"}},
            "status": {"conditions": [{
                "type": "MigrationNetworkReady", "status": "False", "reason": "PreflightFailed",
                "lastTransitionTime": "2026-12-06T07:00:00Z",
                "message": "pre-flight of migration network mignet-system/jumbo failed; the agents keep the current network: node1 -> node2: MTU (a 8972-byte UDP payload got no echo); node3: NoAddress (no migration0)"
            }]}
        });
        let out = describe(super::super::resources::lookup("hco").unwrap(), &v);
        assert!(out.contains("  network: jumbo\n"), "{out}");
        assert!(out.contains("MigrationNetworkReady"), "{out}");
        assert!(out.contains("PreflightFailed"), "{out}");
        assert!(
            out.contains("\n      node1 -> node2: MTU (a 8972-byte UDP payload got no echo)\n      node3: NoAddress (no migration0)\n"),
            "{out}"
        );
    }
}
