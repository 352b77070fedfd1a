//! Byte and connection counters of one migration's proxy, shared (atomics)
//! between the relay tasks that count and whoever reports status; kept out
//! of `proxy` so the record layer (`session`) can count without depending on
//! the proxy that drives it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-migration counters, shared with whoever reports status.
#[derive(Debug, Default)]
pub struct MigrationCounters {
    /// Plaintext bytes carried from the source QEMU towards the target QEMU.
    pub to_target: AtomicU64,
    /// Plaintext bytes carried back from the target QEMU to the source QEMU.
    pub from_target: AtomicU64,
    /// Connections fully established (TLS up and, on the target, QEMU connected).
    pub connections: AtomicU64,
    /// Target side: peers refused during the TLS handshake (or timed out in it).
    pub refused: AtomicU64,
    /// Connections that failed after being accepted (connect, backend, relay errors).
    pub failed: AtomicU64,
}

impl MigrationCounters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            to_target: self.to_target.load(Ordering::Relaxed),
            from_target: self.from_target.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountersSnapshot {
    pub to_target: u64,
    pub from_target: u64,
    pub connections: u64,
    pub refused: u64,
    pub failed: u64,
}
