//! The typed `query-migrate` reply the monitor decides on. It lives with the
//! monitor, not with the QMP driver (`qemu::migration`) that fetches it, so
//! the pure decision does not depend on the code that talks to QEMU.

use serde::Deserialize;
use serde_json::Value;

/// `query-migrate`'s `status`. Unknown values are a decode error rather than a
/// guess (the list is QEMU 7.2's `MigrationStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    PostcopyActive,
    PostcopyPaused,
    PostcopyRecover,
    Completed,
    Failed,
    Colo,
    PreSwitchover,
    Device,
    WaitUnplug,
}

impl MigrationStatus {
    /// The migration is over (successfully or not).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        )
    }
}

/// `query-migrate`'s `ram` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    /// Bytes sent so far; monotonic.
    pub transferred: u64,
    /// Dirty bytes still to send in this pass: a sawtooth across passes.
    pub remaining: u64,
    /// Guest RAM size.
    pub total: u64,
    /// Number of dirty-bitmap syncs, i.e. passes started.
    #[serde(default)]
    pub dirty_sync_count: u64,
    /// Throughput in megabits (10^6) per second, as QEMU reports it.
    #[serde(default)]
    pub mbps: f64,
    #[serde(default)]
    pub dirty_pages_rate: u64,
}

/// One `query-migrate` reply, typed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationSample {
    pub status: MigrationStatus,
    #[serde(default)]
    pub error_desc: Option<String>,
    #[serde(default)]
    pub ram: Option<RamStats>,
    #[serde(default, rename = "expected-downtime")]
    pub expected_downtime_ms: Option<u64>,
    #[serde(default, rename = "downtime")]
    pub downtime_ms: Option<u64>,
    #[serde(default, rename = "total-time")]
    pub total_time_ms: Option<u64>,
    #[serde(default, rename = "setup-time")]
    pub setup_time_ms: Option<u64>,
}

impl MigrationSample {
    /// Decodes a `query-migrate` return value. Before any migration QEMU
    /// returns `{}`: that is status `none`.
    pub fn from_value(v: &Value) -> Result<MigrationSample, serde_json::Error> {
        if v.as_object().is_some_and(|o| !o.contains_key("status")) {
            return Ok(MigrationSample {
                status: MigrationStatus::None,
                error_desc: None,
                ram: None,
                expected_downtime_ms: None,
                downtime_ms: None,
                total_time_ms: None,
                setup_time_ms: None,
            });
        }
        MigrationSample::deserialize(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_active_sample() {
        let v = json!({
            "expected-downtime": 300, "status": "active", "setup-time": 2,
            "total-time": 1234,
            "ram": {"total": 268435456, "postcopy-requests": 0, "dirty-sync-count": 2,
                    "multifd-bytes": 0, "pages-per-second": 1000, "downtime-bytes": 0,
                    "page-size": 4096, "remaining": 1000, "postcopy-bytes": 0,
                    "mbps": 800.5, "transferred": 555, "dirty-sync-missed-zero-copy": 0,
                    "precopy-bytes": 555, "duplicate": 3, "dirty-pages-rate": 12,
                    "skipped": 0, "normal-bytes": 40960, "normal": 10}
        });
        let s = MigrationSample::from_value(&v).unwrap();
        assert_eq!(s.status, MigrationStatus::Active);
        let ram = s.ram.unwrap();
        assert_eq!(
            (ram.remaining, ram.transferred, ram.dirty_sync_count),
            (1000, 555, 2)
        );
        assert_eq!(ram.mbps, 800.5);
        assert_eq!(s.expected_downtime_ms, Some(300));
        assert_eq!(s.total_time_ms, Some(1234));
    }

    #[test]
    fn decodes_empty_failed_and_rejects_unknown_status() {
        let s = MigrationSample::from_value(&json!({})).unwrap();
        assert_eq!(s.status, MigrationStatus::None);
        let s = MigrationSample::from_value(
            &json!({"status": "failed", "error-desc": "Unable to write to socket"}),
        )
        .unwrap();
        assert_eq!(s.status, MigrationStatus::Failed);
        assert_eq!(s.error_desc.as_deref(), Some("Unable to write to socket"));
        assert!(MigrationSample::from_value(&json!({"status": "teleporting"})).is_err());
        let s = MigrationSample::from_value(&json!({"status": "postcopy-active"})).unwrap();
        assert_eq!(s.status, MigrationStatus::PostcopyActive);
    }
}
