//! Kubernetes quantities (`64Mi`, `1.5Gi`, `100m`, `1e6`) as the manager
//! reads them from HCO's `liveMigrationConfig` and VMIs' memory; an input
//! starting with `{` is a whole `liveMigrationConfig` object instead.
//!
//! Properties:
//! - a parsed value is at most 2^63-1 and reads back the same from its
//!   plain decimal form, as a JSON integer, with surrounding whitespace and
//!   with an explicit `+`;
//! - suffixes scale: an integer `N` gives `N * 1024` with `Ki` and
//!   `ceil(N / 1000)` with `m`, whenever that fits;
//! - an error names the field and the value as written;
//! - a whole config is accepted or refused with every error naming a
//!   `liveMigrationConfig` field;
//! - allocation stays proportional to the input.

use mignet::api::{LiveMigrationConfig, QuantityValue};
use mignet::config::parse_quantity;
use mignet::EffectiveMigrationConfig;

const FIELD: &str = "bandwidthPerMigration";

fn q(s: &str) -> Result<u64, mignet::FieldError> {
    parse_quantity(FIELD, &QuantityValue::String(s.to_owned()))
}

pub fn check(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return; // Kubernetes objects are JSON text
    };
    if s.starts_with('{') {
        return check_config(s);
    }
    match crate::alloc_guard::bounded("parse_quantity", s.len(), || q(s)) {
        Ok(v) => {
            assert!(v <= i64::MAX as u64);
            assert_eq!(q(&v.to_string()), Ok(v), "{s:?}: plain form");
            assert_eq!(
                parse_quantity(FIELD, &QuantityValue::Int(v as i64)),
                Ok(v),
                "{s:?}: integer form"
            );
            assert_eq!(q(&format!(" {s}\t")), Ok(v), "{s:?}: whitespace");
            let t = s.trim();
            if !t.starts_with(['+', '-']) {
                assert_eq!(q(&format!("+{t}")), Ok(v), "{s:?}: explicit +");
            }
            if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                if let Some(k) = v.checked_mul(1024).filter(|k| *k <= i64::MAX as u64) {
                    assert_eq!(q(&format!("{t}Ki")), Ok(k), "{s:?}: Ki");
                }
                assert_eq!(q(&format!("{t}m")), Ok(v.div_ceil(1000)), "{s:?}: m");
            }
        }
        Err(e) => {
            assert_eq!(e.field, FIELD);
            assert_eq!(e.value, s, "the value as written");
            assert!(!e.reason.is_empty());
        }
    }
}

const CONFIG_FIELDS: &[&str] = &[
    "bandwidthPerMigration",
    "completionTimeoutPerGiB",
    "parallelMigrationsPerCluster",
    "parallelOutboundMigrationsPerNode",
    "progressTimeout",
    "network",
    "allowAutoConverge",
    "allowPostCopy",
];

fn check_config(s: &str) {
    let Ok(spec) = serde_json::from_str::<LiveMigrationConfig>(s) else {
        return; // the API server's schema refuses it
    };
    match crate::alloc_guard::bounded("from_spec", s.len(), || {
        EffectiveMigrationConfig::from_spec(Some(&spec))
    }) {
        Ok(c) => {
            assert!(c.bandwidth_per_migration <= i64::MAX as u64);
            if let Some(b) = &spec.bandwidth_per_migration {
                assert_eq!(parse_quantity(FIELD, b), Ok(c.bandwidth_per_migration));
            }
        }
        Err(e) => {
            assert!(!e.0.is_empty());
            for f in &e.0 {
                assert!(CONFIG_FIELDS.contains(&f.field), "{f:?}");
                assert!(e
                    .to_string()
                    .contains(&format!("liveMigrationConfig.{}", f.field)));
            }
        }
    }
}
