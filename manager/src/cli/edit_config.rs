//! `mignet edit-config KEY=VALUE KEY-`: change the HyperConverged's
//! `spec.liveMigrationConfig` one key at a time. Unsetting a key removes it,
//! which restores its default (the config module fills defaults in).

use serde_json::{json, Map, Value};

use super::CliError;
use crate::api::{HyperConverged, LiveMigrationConfig};
use crate::config::EffectiveMigrationConfig;
use crate::store::{Key, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueType {
    Int,
    Quantity,
    Text,
    Bool,
}

const KEYS: &[(&str, ValueType)] = &[
    ("bandwidthPerMigration", ValueType::Quantity),
    ("completionTimeoutPerGiB", ValueType::Int),
    ("parallelMigrationsPerCluster", ValueType::Int),
    ("parallelOutboundMigrationsPerNode", ValueType::Int),
    ("progressTimeout", ValueType::Int),
    ("network", ValueType::Text),
    ("allowAutoConverge", ValueType::Bool),
    ("allowPostCopy", ValueType::Bool),
];

/// One requested change: Some(value) sets, None unsets.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: &'static str,
    pub value: Option<Value>,
}

/// Parse `key=value` / `key-` (kubectl label syntax). Keys match
/// case-insensitively but are written in HCO's spelling.
pub fn parse_change(arg: &str) -> Result<Change, CliError> {
    let known = || KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    let lookup = |k: &str| {
        KEYS.iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k.trim()))
            .copied()
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "unknown liveMigrationConfig key {k:?} (known: {})",
                    known()
                ))
            })
    };
    if let Some((k, v)) = arg.split_once('=') {
        let (key, ty) = lookup(k)?;
        let v = v.trim();
        let value = match ty {
            ValueType::Int => json!(v
                .parse::<i64>()
                .map_err(|_| CliError::Usage(format!("{key}: {v:?} is not an integer")))?),
            // An all-digit quantity is stored as a number, as YAML would.
            ValueType::Quantity => match v.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => json!(v),
            },
            ValueType::Text => json!(v),
            ValueType::Bool => json!(v
                .parse::<bool>()
                .map_err(|_| CliError::Usage(format!("{key}: {v:?} is not true or false")))?),
        };
        if ty == ValueType::Text && v.is_empty() {
            return Ok(Change { key, value: None });
        }
        return Ok(Change {
            key,
            value: Some(value),
        });
    }
    if let Some(k) = arg.strip_suffix('-') {
        let (key, _) = lookup(k)?;
        return Ok(Change { key, value: None });
    }
    Err(CliError::Usage(format!(
        "{arg:?}: expected KEY=VALUE to set or KEY- to unset"
    )))
}

/// Apply the changes to `spec.liveMigrationConfig` of a HyperConverged
/// object (pure).
pub fn apply_changes(hco: &mut Value, changes: &[Change]) {
    let spec = hco
        .as_object_mut()
        .expect("an object")
        .entry("spec")
        .or_insert_with(|| json!({}));
    let lmc = spec
        .as_object_mut()
        .expect("spec is an object")
        .entry("liveMigrationConfig")
        .or_insert_with(|| json!({}));
    if !lmc.is_object() {
        *lmc = Value::Object(Map::new());
    }
    let lmc = lmc.as_object_mut().expect("just made an object");
    for c in changes {
        match &c.value {
            Some(v) => lmc.insert(c.key.to_owned(), v.clone()),
            None => lmc.remove(c.key),
        };
    }
}

pub fn edit(
    store: &Store,
    namespace: &str,
    name: &str,
    args: &[String],
) -> Result<String, CliError> {
    let changes = args
        .iter()
        .map(|a| parse_change(a))
        .collect::<Result<Vec<_>, _>>()?;
    let key = Key::for_type::<HyperConverged>(namespace, name);
    loop {
        let existing = store.get_value(&key)?;
        let mut hco = existing.clone().unwrap_or_else(|| {
            json!({
                "apiVersion": "hco.kubevirt.io/v1beta1",
                "kind": "HyperConverged",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {},
            })
        });
        apply_changes(&mut hco, &changes);
        // Refuse what the manager would reject, naming the field.
        let lmc: Option<LiveMigrationConfig> = hco
            .pointer("/spec/liveMigrationConfig")
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .map_err(|e| CliError::Usage(format!("liveMigrationConfig: {e}")))?;
        let effective = EffectiveMigrationConfig::from_spec(lmc.as_ref())?;
        let result = match existing {
            None => store.create_value(hco),
            Some(_) => store.update_value(hco),
        };
        match result {
            Ok(_) => {
                return Ok(format!(
                    "hyperconverged.hco.kubevirt.io/{name} edited\n{}\n",
                    summary(&effective)
                ))
            }
            // Someone else wrote in between: apply to the fresh object.
            Err(e)
                if e.is_conflict()
                    || matches!(e, crate::store::StoreError::AlreadyExists { .. }) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn summary(c: &EffectiveMigrationConfig) -> String {
    format!(
        "effective: parallelMigrationsPerCluster={} parallelOutboundMigrationsPerNode={} bandwidthPerMigration={} completionTimeoutPerGiB={} progressTimeout={} network={}",
        c.parallel_migrations_per_cluster,
        c.parallel_outbound_migrations_per_node,
        c.bandwidth_per_migration,
        c.completion_timeout_per_gib,
        c.progress_timeout,
        c.network
            .as_ref()
            .map_or_else(|| "<pod network>".to_owned(), ToString::to_string)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_unset() {
        let mut hco =
            json!({"spec": {"liveMigrationConfig": {"progressTimeout": 150, "network": "a"}}});
        let changes = vec![
            parse_change("bandwidthPerMigration=64Mi").unwrap(),
            parse_change("progresstimeout=30").unwrap(),
            parse_change("network-").unwrap(),
            parse_change("parallelMigrationsPerCluster=0").unwrap(),
        ];
        apply_changes(&mut hco, &changes);
        assert_eq!(
            hco["spec"]["liveMigrationConfig"],
            json!({"bandwidthPerMigration": "64Mi", "progressTimeout": 30, "parallelMigrationsPerCluster": 0})
        );
        assert_eq!(
            parse_change("bandwidthPerMigration=0").unwrap().value,
            Some(json!(0))
        );
        assert_eq!(parse_change("network=").unwrap().value, None);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(parse_change("nope=1").is_err());
        assert!(parse_change("progressTimeout=abc").is_err());
        assert!(parse_change("progressTimeout").is_err());
        assert!(parse_change("allowPostCopy=maybe").is_err());
    }
}
