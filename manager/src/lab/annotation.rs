//! Multus' `k8s.v1.cni.cncf.io/networks` pod annotation (pure).
//!
//! Two forms, as Multus reads them (`parsePodNetworkAnnotation`):
//! - text: comma-separated `[namespace/]name[@interface]`;
//! - JSON: a list of `{"name", "namespace", "interface", ...}` (a value
//!   starting with `[`).
//!
//! A missing namespace is the pod's; a missing interface is left to the
//! runtime (Multus names it `net<N>`, counting from 1).

use serde::Deserialize;

/// One network the pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSelection {
    pub namespace: String,
    pub name: String,
    /// Interface name in the pod; `net<N>` when the annotation gives none.
    pub interface: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("network annotation is not a valid JSON list: {0}")]
    Json(String),
    #[error("network annotation entry {entry:?}: {reason}")]
    Entry { entry: String, reason: &'static str },
}

#[derive(Deserialize)]
struct JsonElement {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    interface: Option<String>,
}

pub fn parse(value: &str, pod_namespace: &str) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let value = value.trim();
    let raw: Vec<(String, Option<String>, Option<String>)> = if value.starts_with('[') {
        serde_json::from_str::<Vec<JsonElement>>(value)
            .map_err(|e| AnnotationError::Json(e.to_string()))?
            .into_iter()
            .map(|e| (e.name, e.namespace, e.interface))
            .collect()
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (rest, iface) = match item.split_once('@') {
                    Some((r, i)) => (r, Some(i.to_owned())),
                    None => (item, None),
                };
                let (ns, name) = match rest.split_once('/') {
                    Some((ns, n)) => (Some(ns.to_owned()), n),
                    None => (None, rest),
                };
                (name.to_owned(), ns, iface)
            })
            .collect()
    };
    raw.into_iter()
        .enumerate()
        .map(|(i, (name, ns, iface))| {
            let entry_text = format!(
                "{}/{}@{}",
                ns.as_deref().unwrap_or(""),
                name,
                iface.as_deref().unwrap_or("")
            );
            let entry = || entry_text.clone();
            if name.trim().is_empty() || name.contains('/') || name.contains('@') {
                return Err(AnnotationError::Entry {
                    entry: entry(),
                    reason: "invalid network name",
                });
            }
            let namespace = ns
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| pod_namespace.to_owned());
            let interface = match iface {
                Some(i) if i.trim().is_empty() => {
                    return Err(AnnotationError::Entry {
                        entry: entry(),
                        reason: "empty interface name",
                    })
                }
                Some(i) if i.len() > 15 || i.contains('/') => {
                    return Err(AnnotationError::Entry {
                        entry: entry(),
                        reason: "interface name longer than 15 bytes or with '/'",
                    })
                }
                Some(i) => i,
                None => format!("net{}", i + 1),
            };
            Ok(NetworkSelection {
                namespace,
                name: name.trim().to_owned(),
                interface,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(ns: &str, name: &str, iface: &str) -> NetworkSelection {
        NetworkSelection {
            namespace: ns.into(),
            name: name.into(),
            interface: iface.into(),
        }
    }

    #[test]
    fn short_form_resolves_in_pod_namespace() {
        assert_eq!(
            parse("my-secondary-network@migration0", "mignet-system").unwrap(),
            vec![sel("mignet-system", "my-secondary-network", "migration0")]
        );
    }

    #[test]
    fn namespaced_form() {
        assert_eq!(
            parse("net-ns/nad1@migration0", "mignet-system").unwrap(),
            vec![sel("net-ns", "nad1", "migration0")]
        );
    }

    #[test]
    fn list_and_default_interface_names() {
        assert_eq!(
            parse(" a , other/b@eth9,c", "p").unwrap(),
            vec![
                sel("p", "a", "net1"),
                sel("other", "b", "eth9"),
                sel("p", "c", "net3")
            ]
        );
        assert_eq!(parse("", "p").unwrap(), vec![]);
    }

    #[test]
    fn json_form() {
        let v = r#"[{"name":"my-secondary-network","interface":"migration0"},
                    {"name":"n2","namespace":"ns2","interface":"m1"},
                    {"name":"n3"}]"#;
        assert_eq!(
            parse(v, "mignet-system").unwrap(),
            vec![
                sel("mignet-system", "my-secondary-network", "migration0"),
                sel("ns2", "n2", "m1"),
                sel("mignet-system", "n3", "net3"),
            ]
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            parse("[{\"nam\":1}]", "p"),
            Err(AnnotationError::Json(_))
        ));
        assert!(parse("a@", "p").is_err());
        assert!(parse("a@averyveryverylongname", "p").is_err());
        assert!(parse("ns/@x", "p").is_err());
    }

    #[test]
    fn round_trips_what_the_rollout_writes() {
        use crate::network::decide::{multus_selection, MIGRATION_INTERFACE};
        use crate::network::NetworkRef;
        let r = NetworkRef::parse("my-secondary-network").unwrap();
        let v = multus_selection(&r, "mignet-system", "mignet-system");
        assert_eq!(
            parse(&v, "mignet-system").unwrap(),
            vec![sel(
                "mignet-system",
                "my-secondary-network",
                MIGRATION_INTERFACE
            )]
        );
        let r = NetworkRef::parse("other/n").unwrap();
        let v = multus_selection(&r, "mignet-system", "mignet-system");
        assert_eq!(parse(&v, "mignet-system").unwrap()[0].namespace, "other");
    }
}
