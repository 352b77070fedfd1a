//! Per-migration parameters: the effective migration configuration turned
//! into what QEMU and the monitor take. Pure.

use std::time::Duration;

use mignet_dataplane::monitor::MonitorConfig;
use mignet_dataplane::qemu::MigrationSettings;

use crate::config::EffectiveMigrationConfig;

/// Everything that shapes one migration, from the config plus agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationParams {
    /// `bandwidthPerMigration` in bytes/s, held by the source proxy's pacing
    /// limiter ([`Self::proxy_rate_limit`]); 0 = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    /// Multifd channels; `None` = one connection.
    pub multifd_channels: Option<u8>,
    pub downtime_limit_ms: u64,
    /// `progressTimeout`; zero disables.
    pub progress_timeout: Duration,
    /// `completionTimeoutPerGiB`; zero disables.
    pub completion_timeout_per_gib: Duration,
    /// A migration still in `setup` after this is aborted (parameter mismatch).
    pub setup_timeout: Duration,
    /// How often `query-migrate` is sampled.
    pub sample_interval: Duration,
}

impl Default for MigrationParams {
    fn default() -> Self {
        MigrationParams::from_config(&EffectiveMigrationConfig::default(), Some(4))
    }
}

impl MigrationParams {
    /// The cluster config's limits with the agent's channel count.
    pub fn from_config(cfg: &EffectiveMigrationConfig, multifd_channels: Option<u8>) -> Self {
        MigrationParams {
            bandwidth_bytes_per_sec: cfg.bandwidth_per_migration,
            multifd_channels,
            downtime_limit_ms: 300,
            progress_timeout: Duration::from_secs(cfg.progress_timeout),
            completion_timeout_per_gib: Duration::from_secs(cfg.completion_timeout_per_gib),
            setup_timeout: Duration::from_secs(30),
            sample_interval: Duration::from_millis(250),
        }
    }

    /// QEMU capabilities and parameters, identical on both ends.
    ///
    /// QEMU's own `max-bandwidth` stays 0 (sent explicitly, so its 128 MiB/s
    /// default never applies): QEMU 7.2 admits whole multifd packets per
    /// 100 ms window and forgets the excess, so a cap of 8Mi carried about
    /// 10 MiB/s and 32Mi about 34-35 MiB/s on the wire (issue 16). Every byte
    /// of the stream passes the source proxy, whose limiter books each
    /// batch on one clock shared by all connections of the migration.
    pub fn settings(&self) -> MigrationSettings {
        MigrationSettings {
            multifd_channels: self.multifd_channels,
            max_bandwidth: 0,
            downtime_limit_ms: self.downtime_limit_ms,
        }
    }

    /// The source proxy's cap in bytes/s of migration stream (plaintext,
    /// before TLS and TCP framing), `None` for unlimited.
    pub fn proxy_rate_limit(&self) -> Option<u64> {
        (self.bandwidth_bytes_per_sec > 0).then_some(self.bandwidth_bytes_per_sec)
    }

    /// Monitor limits for a VM with `memory_bytes` of RAM (no block migration).
    pub fn monitor(&self, memory_bytes: u64) -> MonitorConfig {
        MonitorConfig {
            progress_timeout: self.progress_timeout,
            completion_timeout_per_gib: self.completion_timeout_per_gib,
            data_size_bytes: memory_bytes,
            setup_timeout: self.setup_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_to_qemu_and_monitor() {
        let cfg = EffectiveMigrationConfig {
            bandwidth_per_migration: 64 << 20,
            completion_timeout_per_gib: 800,
            progress_timeout: 150,
            ..Default::default()
        };
        let p = MigrationParams::from_config(&cfg, Some(4));
        let s = p.settings();
        // The cap is the proxy's, never QEMU's overshooting limiter.
        assert_eq!(p.proxy_rate_limit(), Some(64 << 20));
        assert_eq!(s.max_bandwidth, 0);
        assert_eq!(s.multifd_channels, Some(4));
        let m = p.monitor(6 << 30);
        assert_eq!(m.completion_budget(), Some(Duration::from_secs(4800)));
        assert_eq!(m.progress_timeout, Duration::from_secs(150));
    }

    #[test]
    fn unlimited_bandwidth_is_sent_as_zero() {
        let p = MigrationParams::default();
        assert_eq!(p.proxy_rate_limit(), None);
        assert_eq!(p.settings().max_bandwidth, 0);
        assert_eq!(p.settings().parameters_args()["max-bandwidth"], 0);
    }
}
