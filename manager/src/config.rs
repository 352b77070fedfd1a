//! The effective live-migration configuration: HCO's
//! `spec.liveMigrationConfig` with defaults filled in and every value
//! validated. Pure: no I/O, no clock.

use std::time::Duration;

pub use crate::api::network_ref::is_dns1123_label;
use crate::api::network_ref::NetworkRef;
use crate::api::{HyperConverged, LiveMigrationConfig, QuantityValue};

/// The seed's defaults (the pre-2024 HCO values, which the mission names).
pub const DEFAULT_PARALLEL_MIGRATIONS_PER_CLUSTER: u32 = 5;
pub const DEFAULT_PARALLEL_OUTBOUND_MIGRATIONS_PER_NODE: u32 = 2;
pub const DEFAULT_BANDWIDTH_PER_MIGRATION: u64 = 0;
pub const DEFAULT_COMPLETION_TIMEOUT_PER_GIB: u64 = 800;
pub const DEFAULT_PROGRESS_TIMEOUT: u64 = 150;

const GIB: u128 = 1 << 30;

/// One invalid field: which one, the value as the user wrote it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("liveMigrationConfig.{field}: invalid value {value:?}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

/// Every invalid field of a config, so one edit can fix them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigError(pub Vec<FieldError>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMigrationConfig {
    pub parallel_migrations_per_cluster: u32,
    pub parallel_outbound_migrations_per_node: u32,
    /// Bytes per second; 0 = unlimited (QEMU's max-bandwidth 0).
    pub bandwidth_per_migration: u64,
    pub completion_timeout_per_gib: u64,
    /// Seconds; 0 disables the no-progress check (as in KubeVirt).
    pub progress_timeout: u64,
    /// The migration network's NAD; None = pod network.
    pub network: Option<NetworkRef>,
    pub allow_auto_converge: bool,
    pub allow_post_copy: bool,
}

impl Default for EffectiveMigrationConfig {
    fn default() -> Self {
        Self {
            parallel_migrations_per_cluster: DEFAULT_PARALLEL_MIGRATIONS_PER_CLUSTER,
            parallel_outbound_migrations_per_node: DEFAULT_PARALLEL_OUTBOUND_MIGRATIONS_PER_NODE,
            bandwidth_per_migration: DEFAULT_BANDWIDTH_PER_MIGRATION,
            completion_timeout_per_gib: DEFAULT_COMPLETION_TIMEOUT_PER_GIB,
            progress_timeout: DEFAULT_PROGRESS_TIMEOUT,
            network: None,
            allow_auto_converge: false,
            allow_post_copy: false,
        }
    }
}

impl EffectiveMigrationConfig {
    /// Resolve the HCO's `liveMigrationConfig`; a missing section or key
    /// takes its default, so deleting a key restores the default.
    pub fn from_spec(spec: Option<&LiveMigrationConfig>) -> Result<Self, ConfigError> {
        let mut cfg = Self::default();
        let Some(spec) = spec else { return Ok(cfg) };
        let mut errors = Vec::new();

        if let Some(v) = spec.parallel_migrations_per_cluster {
            match count("parallelMigrationsPerCluster", v) {
                Ok(v) => cfg.parallel_migrations_per_cluster = v,
                Err(e) => errors.push(e),
            }
        }
        if let Some(v) = spec.parallel_outbound_migrations_per_node {
            match count("parallelOutboundMigrationsPerNode", v) {
                Ok(v) => cfg.parallel_outbound_migrations_per_node = v,
                Err(e) => errors.push(e),
            }
        }
        if let Some(q) = &spec.bandwidth_per_migration {
            match parse_quantity("bandwidthPerMigration", q) {
                Ok(v) => cfg.bandwidth_per_migration = v,
                Err(e) => errors.push(e),
            }
        }
        if let Some(v) = spec.completion_timeout_per_gib {
            // 0 would cancel every migration at once: a typo, not a policy.
            match seconds("completionTimeoutPerGiB", v, 1) {
                Ok(v) => cfg.completion_timeout_per_gib = v,
                Err(e) => errors.push(e),
            }
        }
        if let Some(v) = spec.progress_timeout {
            match seconds("progressTimeout", v, 0) {
                Ok(v) => cfg.progress_timeout = v,
                Err(e) => errors.push(e),
            }
        }
        match NetworkRef::from_setting(spec.network.as_deref()) {
            Ok(v) => cfg.network = v,
            Err(e) => errors.push(FieldError {
                field: "network",
                value: e.value,
                reason: e.reason,
            }),
        }
        cfg.allow_auto_converge = spec.allow_auto_converge.unwrap_or(false);
        cfg.allow_post_copy = spec.allow_post_copy.unwrap_or(false);

        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Budget for one migration: `completionTimeoutPerGiB` x the data size in
    /// GiB (memory, plus disks when block-migrating), rounded up to a second.
    /// Fractional GiB count as fractions: upstream rounds up to whole decimal
    /// GB (8 GiB -> 9), which over-grants; we do not copy that.
    pub fn completion_timeout_for(&self, memory_bytes: u64, disk_bytes: u64) -> Duration {
        let bytes = u128::from(memory_bytes) + u128::from(disk_bytes);
        let secs = (u128::from(self.completion_timeout_per_gib) * bytes).div_ceil(GIB);
        Duration::from_secs(u64::try_from(secs).unwrap_or(u64::MAX))
    }

    pub fn progress_timeout(&self) -> Option<Duration> {
        (self.progress_timeout > 0).then(|| Duration::from_secs(self.progress_timeout))
    }
}

fn count(field: &'static str, v: i64) -> Result<u32, FieldError> {
    if v < 1 {
        return Err(FieldError {
            field,
            value: v.to_string(),
            reason: "must be at least 1".into(),
        });
    }
    u32::try_from(v).map_err(|_| FieldError {
        field,
        value: v.to_string(),
        reason: format!("must be at most {}", u32::MAX),
    })
}

fn seconds(field: &'static str, v: i64, min: i64) -> Result<u64, FieldError> {
    u64::try_from(v)
        .ok()
        .filter(|_| v >= min)
        .ok_or_else(|| FieldError {
            field,
            value: v.to_string(),
            reason: format!("must be at least {min} seconds"),
        })
}

/// The migration config the controller and the agents both act on: the
/// first HyperConverged by (namespace, name), or the defaults without one.
/// An invalid `liveMigrationConfig` yields the defaults *and* the error:
/// the rollout controller reports it as `MigrationConfigValid=False` on the
/// CR, and every caller must surface it too (log, readiness detail), never
/// drop it. One function, so the controller's limits and the agents'
/// per-migration parameters can never come from different objects. Pure.
pub fn config_from_hyperconvergeds(
    hcos: &[HyperConverged],
) -> (EffectiveMigrationConfig, Option<ConfigError>) {
    use kube::ResourceExt;
    let first = hcos
        .iter()
        .min_by_key(|h| (h.namespace().unwrap_or_default(), h.name_any()));
    match first {
        None => (EffectiveMigrationConfig::default(), None),
        Some(h) => match EffectiveMigrationConfig::from_spec(h.spec.live_migration_config.as_ref())
        {
            Ok(c) => (c, None),
            Err(e) => (EffectiveMigrationConfig::default(), Some(e)),
        },
    }
}

/// Parse a Kubernetes quantity into a non-negative integer, rounding a
/// fractional result up (as resource.Quantity.Value() does).
///
/// Grammar (apimachinery `resource.ParseQuantity`): optional sign, digits with
/// an optional fraction, then a binary suffix (Ki..Ei), a decimal suffix
/// (m, k, M, G, T, P, E) or a decimal exponent (`e6`, `E-3`).
/// A VMI's guest memory in bytes (`domain.memory.guest`, else the memory
/// request; 0 when neither parses): what `completionTimeoutPerGiB` counts.
pub fn vmi_memory_bytes(vmi: &crate::api::VirtualMachineInstance) -> u64 {
    let d = &vmi.spec.domain;
    d.memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| d.resources.as_ref().and_then(|r| r.requests.get("memory")))
        .and_then(|q| parse_quantity("memory", q).ok())
        .unwrap_or(0)
}

pub fn parse_quantity(field: &'static str, q: &QuantityValue) -> Result<u64, FieldError> {
    let err = |reason: &str| FieldError {
        field,
        value: q.to_string(),
        reason: reason.to_owned(),
    };
    let s = match q {
        QuantityValue::Int(i) => {
            return u64::try_from(*i).map_err(|_| err("must not be negative"));
        }
        QuantityValue::String(s) => s.trim(),
    };
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("not a quantity (expected e.g. 64Mi, 1Gi, 100M)"));
    }
    if frac_part.contains('.') {
        return Err(err("not a quantity: more than one decimal point"));
    }
    let too_big = || err("out of range");
    let mut num: u128 = 0;
    for c in int_part.bytes().chain(frac_part.bytes()) {
        num = num
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(c - b'0')))
            .ok_or_else(too_big)?;
    }
    let mut den: u128 = pow10(frac_part.len() as u32).ok_or_else(too_big)?;

    let binary = |shift: u32| 1u128 << shift;
    match suffix {
        "" => {}
        "Ki" => num = num.checked_mul(binary(10)).ok_or_else(too_big)?,
        "Mi" => num = num.checked_mul(binary(20)).ok_or_else(too_big)?,
        "Gi" => num = num.checked_mul(binary(30)).ok_or_else(too_big)?,
        "Ti" => num = num.checked_mul(binary(40)).ok_or_else(too_big)?,
        "Pi" => num = num.checked_mul(binary(50)).ok_or_else(too_big)?,
        "Ei" => num = num.checked_mul(binary(60)).ok_or_else(too_big)?,
        "m" => den = den.checked_mul(1000).ok_or_else(too_big)?,
        "k" | "M" | "G" | "T" | "P" | "E" => {
            let e = match suffix {
                "k" => 3,
                "M" => 6,
                "G" => 9,
                "T" => 12,
                "P" => 15,
                _ => 18,
            };
            num = num
                .checked_mul(pow10(e).ok_or_else(too_big)?)
                .ok_or_else(too_big)?;
        }
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| err("not a quantity: bad decimal exponent"))?;
            let factor = pow10(exp.unsigned_abs()).ok_or_else(too_big)?;
            if exp >= 0 {
                num = num.checked_mul(factor).ok_or_else(too_big)?;
            } else {
                den = den.checked_mul(factor).ok_or_else(too_big)?;
            }
        }
        _ => return Err(err("not a quantity: unknown suffix")),
    }
    if negative && num != 0 {
        return Err(err("must not be negative"));
    }
    let value = num.div_ceil(den);
    // resource.Quantity caps at 2^63-1; so do we.
    if value > i64::MAX as u128 {
        return Err(too_big());
    }
    Ok(value as u64)
}

fn pow10(e: u32) -> Option<u128> {
    10u128.checked_pow(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<u64, FieldError> {
        parse_quantity("bandwidthPerMigration", &QuantityValue::from(s))
    }

    #[test]
    fn quantities() {
        assert_eq!(q("64Mi").unwrap(), 64 << 20);
        assert_eq!(q("1Gi").unwrap(), 1 << 30);
        assert_eq!(q("100M").unwrap(), 100_000_000);
        assert_eq!(q("1.5Gi").unwrap(), 1_610_612_736);
        assert_eq!(q("12345").unwrap(), 12345);
        assert_eq!(q("0").unwrap(), 0);
        assert_eq!(q("0Mi").unwrap(), 0);
        assert_eq!(q("1e6").unwrap(), 1_000_000);
        assert_eq!(q("1E3").unwrap(), 1000);
        assert_eq!(q("2.5e-1").unwrap(), 1, "fractions round up");
        assert_eq!(q("1500m").unwrap(), 2);
        assert_eq!(q("+1k").unwrap(), 1000);
        assert_eq!(q(".5Ki").unwrap(), 512);
        assert_eq!(q("-0").unwrap(), 0);
        assert_eq!(
            parse_quantity("bandwidthPerMigration", &QuantityValue::Int(4096)).unwrap(),
            4096
        );
    }

    #[test]
    fn bad_quantities_name_field_and_value() {
        for bad in ["-1Mi", "abc", "", "64MB", "1..2", "Mi", "1e", "99999999Ei"] {
            let e = q(bad).expect_err(bad);
            assert_eq!(e.field, "bandwidthPerMigration");
            assert_eq!(e.value, bad);
            let text = e.to_string();
            assert!(text.contains("bandwidthPerMigration"), "{text}");
            assert!(text.contains(&format!("{bad:?}")), "{text}");
        }
        let e = parse_quantity("bandwidthPerMigration", &QuantityValue::Int(-5)).unwrap_err();
        assert!(e.to_string().contains("\"-5\""), "{e}");
        assert!(e.reason.contains("negative"));
    }

    #[test]
    fn defaults_when_unset_or_removed() {
        let d = EffectiveMigrationConfig::from_spec(None).unwrap();
        assert_eq!(d.parallel_migrations_per_cluster, 5);
        assert_eq!(d.parallel_outbound_migrations_per_node, 2);
        assert_eq!(d.bandwidth_per_migration, 0);
        assert_eq!(d.completion_timeout_per_gib, 800);
        assert_eq!(d.progress_timeout, 150);
        assert_eq!(d.network, None);

        let set = LiveMigrationConfig {
            parallel_migrations_per_cluster: Some(9),
            bandwidth_per_migration: Some("64Mi".into()),
            network: Some("my-secondary-network".into()),
            ..Default::default()
        };
        let c = EffectiveMigrationConfig::from_spec(Some(&set)).unwrap();
        assert_eq!(c.parallel_migrations_per_cluster, 9);
        assert_eq!(c.bandwidth_per_migration, 64 << 20);
        assert_eq!(
            c.network.map(|n| n.to_string()).as_deref(),
            Some("my-secondary-network")
        );

        // Removing keys (as `kubectl edit` deleting the lines would) restores defaults.
        let removed = LiveMigrationConfig {
            parallel_migrations_per_cluster: Some(9),
            ..Default::default()
        };
        let c = EffectiveMigrationConfig::from_spec(Some(&removed)).unwrap();
        assert_eq!(c.bandwidth_per_migration, 0);
        assert_eq!(c.network, None);
        assert_eq!(c.progress_timeout, 150);
    }

    #[test]
    fn from_yaml_with_int_and_string_quantities() {
        let spec: LiveMigrationConfig = serde_yaml::from_str(
            "bandwidthPerMigration: 0\ncompletionTimeoutPerGiB: 20\nprogressTimeout: 0\n",
        )
        .unwrap();
        let c = EffectiveMigrationConfig::from_spec(Some(&spec)).unwrap();
        assert_eq!(c.bandwidth_per_migration, 0);
        assert_eq!(c.completion_timeout_per_gib, 20);
        assert_eq!(c.progress_timeout(), None, "0 disables the progress check");
    }

    #[test]
    fn validation_reports_every_bad_field() {
        let spec = LiveMigrationConfig {
            parallel_migrations_per_cluster: Some(0),
            parallel_outbound_migrations_per_node: Some(-2),
            bandwidth_per_migration: Some("fast".into()),
            completion_timeout_per_gib: Some(-1),
            progress_timeout: Some(-10),
            network: Some("Not_A_Name".into()),
            ..Default::default()
        };
        let e = EffectiveMigrationConfig::from_spec(Some(&spec)).unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            [
                "parallelMigrationsPerCluster",
                "parallelOutboundMigrationsPerNode",
                "bandwidthPerMigration",
                "completionTimeoutPerGiB",
                "progressTimeout",
                "network"
            ]
        );
        let text = e.to_string();
        for needle in [
            "\"0\"",
            "\"-2\"",
            "\"fast\"",
            "\"-1\"",
            "\"-10\"",
            "\"Not_A_Name\"",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn network_forms() {
        let mk = |n: &str| LiveMigrationConfig {
            network: Some(n.into()),
            ..Default::default()
        };
        let ok = |n: &str| {
            EffectiveMigrationConfig::from_spec(Some(&mk(n)))
                .map(|c| c.network.map(|r| r.to_string()))
        };
        assert_eq!(ok("other-ns/nad").unwrap().as_deref(), Some("other-ns/nad"));
        assert_eq!(ok("  ").unwrap(), None);
        assert!(ok("a/b/c").is_err());
        assert!(ok("-bad").is_err());
        // A NAD name is a DNS-1123 subdomain, as the rollout reads it.
        assert_eq!(ok("mig.net").unwrap().as_deref(), Some("mig.net"));
        let e = ok("Mig.Net").unwrap_err().to_string();
        assert!(e.contains("liveMigrationConfig.network"), "{e}");
        assert!(e.contains("\"Mig.Net\""), "{e}");
    }

    #[test]
    fn completion_budget() {
        let c = EffectiveMigrationConfig::default();
        assert_eq!(
            c.completion_timeout_for(6 << 30, 0),
            Duration::from_secs(4800)
        );
        assert_eq!(
            c.completion_timeout_for(4 << 30, 2 << 30),
            Duration::from_secs(4800)
        );
        assert_eq!(
            c.completion_timeout_for(512 << 20, 0),
            Duration::from_secs(400)
        );
        assert_eq!(
            c.completion_timeout_for(1, 0),
            Duration::from_secs(1),
            "rounds up"
        );
        assert_eq!(c.completion_timeout_for(0, 0), Duration::ZERO);
    }
}
