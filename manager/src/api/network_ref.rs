//! The migration network's reference, `liveMigrationConfig.network`: which
//! NetworkAttachmentDefinition carries migration traffic. Parsed and
//! validated here, once, by the rules the API server applies to the objects
//! it names (a NAD name is a DNS-1123 subdomain, a namespace a DNS-1123
//! label); the config validation, the rollout decision, the watch wiring
//! and the agent's `--migration-network` all take the parsed [`NetworkRef`].
//! Pure.

use crate::api::LiveMigrationConfig;

/// Where the value comes from, for messages.
pub const FIELD: &str = "liveMigrationConfig.network";

/// A NAD reference as written: `name` (resolved in the manager's namespace)
/// or `namespace/name`. Only [`NetworkRef::parse`] makes one, so holding
/// one means the names are valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkRef {
    namespace: Option<String>,
    name: String,
}

/// Why a value is not a NAD reference; names where it came from, the value
/// and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid value {value:?}: {reason}")]
pub struct NetworkRefError {
    /// [`FIELD`], or the flag that carried it.
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

impl NetworkRef {
    /// Parse `name` or `namespace/name`. Surrounding whitespace is ignored
    /// (YAML editors leave it); anything else that Kubernetes would refuse
    /// as a NAD's name or namespace is an error.
    pub fn parse(value: &str) -> Result<Self, NetworkRefError> {
        Self::parse_field(FIELD, value)
    }

    /// [`NetworkRef::parse`] of a value that came from `field` (errors name it).
    pub fn parse_field(field: &'static str, value: &str) -> Result<Self, NetworkRefError> {
        let err = |reason: String| NetworkRefError {
            field,
            value: value.to_owned(),
            reason,
        };
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(err("is empty".into()));
        }
        let (namespace, name) = match trimmed.split_once('/') {
            None => (None, trimmed),
            Some((_, rest)) if rest.contains('/') => {
                return Err(err(
                    "must be a NetworkAttachmentDefinition name or namespace/name".into(),
                ))
            }
            Some((ns, name)) => (Some(ns), name),
        };
        if let Some(ns) = namespace {
            if !is_dns1123_label(ns) {
                return Err(err(format!(
                    "namespace {ns:?} is not a DNS-1123 label (lowercase letters, digits and '-', \
                     at most 63, starting and ending with a letter or digit)"
                )));
            }
        }
        if !is_dns1123_subdomain(name) {
            return Err(err(format!(
                "NetworkAttachmentDefinition name {name:?} is not a DNS-1123 subdomain \
                 (lowercase letters, digits, '-' and '.', at most 253, each dot-separated part \
                 starting and ending with a letter or digit)"
            )));
        }
        Ok(Self {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The HyperConverged's setting: unset, empty or blank means "no
    /// migration network" (an emptied field is how some UIs remove it).
    pub fn from_setting(value: Option<&str>) -> Result<Option<Self>, NetworkRefError> {
        match value.map(str::trim) {
            None | Some("") => Ok(None),
            Some(_) => value.map(Self::parse).transpose(),
        }
    }

    /// [`NetworkRef::from_setting`] of a `liveMigrationConfig`.
    pub fn of_config(
        config: Option<&LiveMigrationConfig>,
    ) -> Result<Option<Self>, NetworkRefError> {
        Self::from_setting(config.and_then(|c| c.network.as_deref()))
    }

    /// The one form the agent is given (`--migration-network`, both modes):
    /// `namespace/name`, as [`NetworkRef::resolved`] prints it. A bare name
    /// is refused: the agent does not know which namespace it would mean.
    pub fn parse_qualified(field: &'static str, value: &str) -> Result<Self, NetworkRefError> {
        let r = Self::parse_field(field, value)?;
        if r.namespace.is_none() {
            return Err(NetworkRefError {
                field,
                value: value.to_owned(),
                reason: "must be namespace/name".into(),
            });
        }
        Ok(r)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace as written; `None` for a bare name.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The NAD's namespace: as written, else `default` (the manager's).
    pub fn namespace_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default)
    }

    /// This reference with a bare name resolved in `default`: the form the
    /// rollout writes for the agents, and the NAD the watch looks for.
    pub fn resolved(&self, default: &str) -> Self {
        Self {
            namespace: Some(self.namespace_or(default).to_owned()),
            name: self.name.clone(),
        }
    }

    /// Whether this names the NAD `namespace/name`.
    pub fn names(&self, default: &str, namespace: &str, name: &str) -> bool {
        self.namespace_or(default) == namespace && self.name == name
    }
}

/// As written: `name` or `namespace/name`; [`NetworkRef::parse`] reads it
/// back to the same value.
impl std::fmt::Display for NetworkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl std::str::FromStr for NetworkRef {
    type Err = NetworkRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// RFC 1123 label as Kubernetes checks namespaces (`IsDNS1123Label`).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain as Kubernetes checks most object names, NADs among
/// them (`IsDNS1123Subdomain`): dot-separated labels, 253 bytes at most.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    // A part may be longer than 63 here: Kubernetes' regex bounds only the
    // whole name.
    let part_ok = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    !s.is_empty() && s.len() <= 253 && s.split('.').all(part_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kubernetes_rules() {
        let ok = |v: &str| NetworkRef::parse(v).map(|r| r.to_string());
        assert_eq!(ok("mig-net").unwrap(), "mig-net");
        assert_eq!(
            ok("mig.net").unwrap(),
            "mig.net",
            "a NAD name is a subdomain"
        );
        assert_eq!(ok("net-ns/mig.net").unwrap(), "net-ns/mig.net");
        assert_eq!(
            ok("  my-secondary-network ").unwrap(),
            "my-secondary-network"
        );
        assert_eq!(ok(&"a".repeat(253)).unwrap().len(), 253);
        for bad in [
            "",
            "   ",
            "a/b/c",
            "Mig-Net",
            "NS/net",
            "mig_net",
            "-mig",
            "mig-",
            "mig.",
            ".mig",
            "mig..net",
            "mig.-net",
            "my.ns/net",
            "/net",
            "ns/",
            "net@migration0",
        ] {
            assert!(ok(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ok(&"a".repeat(254)).is_err());
        assert!(ok(&format!("{}/n", "a".repeat(64))).is_err());
        assert!(ok(&format!("{}/n", "a".repeat(63))).is_ok());
    }

    #[test]
    fn an_error_names_the_field_and_the_value() {
        for bad in ["", "a/b/c", "Mig-Net"] {
            let e = NetworkRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains("liveMigrationConfig.network"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn unset_and_blank_settings_mean_the_pod_network() {
        assert_eq!(NetworkRef::from_setting(None), Ok(None));
        assert_eq!(NetworkRef::from_setting(Some("  ")), Ok(None));
        assert_eq!(
            NetworkRef::from_setting(Some("n")).unwrap().unwrap().name(),
            "n"
        );
        assert!(NetworkRef::from_setting(Some("a/b/c")).is_err());
    }

    #[test]
    fn a_bare_name_resolves_in_the_default_namespace() {
        let bare = NetworkRef::parse("n").unwrap();
        assert_eq!(bare.namespace(), None);
        assert_eq!(
            bare.resolved("mignet-system").to_string(),
            "mignet-system/n"
        );
        assert!(bare.names("mignet-system", "mignet-system", "n"));
        let other = NetworkRef::parse("other/n").unwrap();
        assert_eq!(other.resolved("mignet-system").to_string(), "other/n");
        assert!(!other.names("mignet-system", "mignet-system", "n"));
    }

    #[test]
    fn the_agent_form_is_namespace_slash_name() {
        let r =
            NetworkRef::parse_qualified("--migration-network", "mignet-system/mig.net").unwrap();
        assert_eq!(
            (r.namespace(), r.name()),
            (Some("mignet-system"), "mig.net")
        );
        let e = NetworkRef::parse_qualified("--migration-network", "mig-net").unwrap_err();
        assert!(e.to_string().starts_with("--migration-network: "), "{e}");
        // The Multus form (what the agent used to be given) is not a reference.
        assert!(NetworkRef::parse_qualified(
            "--migration-network",
            "my-secondary-network@migration0"
        )
        .is_err());
    }

    #[test]
    fn display_parses_back_to_the_same_reference() {
        for v in ["n", "ns/n.x"] {
            let r = NetworkRef::parse(v).unwrap();
            assert_eq!(NetworkRef::parse(&r.to_string()).unwrap(), r);
        }
    }
}
