//! A migration's rate as the wire carries it: an interface's transmit
//! counters, sampled while the migration runs, net of framing. Shared by
//! the lab cap test (`manager/tests/lab_bandwidth.rs`) and the cap sweep in
//! `benches/migration_cpu.rs`, so both state the same thing.
//!
//! Framing taken off the counters:
//! - per packet the kernel counts (a GSO super-packet counts once, with one
//!   set of headers): Ethernet 14 + IPv4 20 + TCP 32 (20 and the 12-byte
//!   timestamp option Linux sends by default) = [`FRAME_BYTES`];
//! - TLS 1.3 records: 5 header + 1 content type + 16 AEAD tag = 22 bytes
//!   per record of up to 16 KiB the proxy seals ([`TLS_RECORD_OVERHEAD`]);
//!   the proxy fills whole 16 KiB records whenever QEMU has sent that much.
//!
//! What remains is the migration stream QEMU wrote, which is what
//! `bandwidthPerMigration` caps.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

pub const FRAME_BYTES: u64 = 14 + 20 + 32;
pub const TLS_RECORD_PAYLOAD: f64 = 16384.0;
pub const TLS_RECORD_OVERHEAD: f64 = 22.0;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub bytes: u64,
    pub packets: u64,
}

/// Transmit counters of `dev` in network namespace `ns`.
pub fn sample(ns: &str, dev: &str) -> Option<Sample> {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", "dev", dev])
        .output()
        .ok()?;
    let at = Instant::now();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let tx = &v.get(0)?.get("stats64")?.get("tx")?;
    Some(Sample {
        at,
        bytes: tx.get("bytes")?.as_u64()?,
        packets: tx.get("packets")?.as_u64()?,
    })
}

/// Stream bytes in a wire delta of `bytes` over `packets` packets.
pub fn stream_bytes(bytes: u64, packets: u64, tls: bool) -> f64 {
    let ip_payload = bytes.saturating_sub(packets * FRAME_BYTES) as f64;
    if tls {
        ip_payload * TLS_RECORD_PAYLOAD / (TLS_RECORD_PAYLOAD + TLS_RECORD_OVERHEAD)
    } else {
        ip_payload
    }
}

/// The steady part of a transfer in `samples` (taken every few hundred ms):
/// from the first to the last interval that carried more than `idle_bytes`,
/// less `trim` at each end (start-up, the final stop-and-copy, a cancel).
/// Returns (stream bytes/s, wire bytes/s, the window's length), or `None`
/// when less than `min_window` is left.
pub fn steady_rate(
    samples: &[Sample],
    idle_bytes: u64,
    trim: Duration,
    min_window: Duration,
    tls: bool,
) -> Option<(f64, f64, Duration)> {
    let active: Vec<usize> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1].bytes.saturating_sub(w[0].bytes) > idle_bytes)
        .map(|(i, _)| i)
        .collect();
    let (first, last) = (*active.first()?, *active.last()? + 1);
    let from = samples[first].at + trim;
    let to = samples[last].at.checked_sub(trim)?;
    let a = samples[first..=last].iter().find(|s| s.at >= from)?;
    let b = samples[first..=last].iter().rev().find(|s| s.at <= to)?;
    let span = b.at.checked_duration_since(a.at)?;
    if span < min_window {
        return None;
    }
    let secs = span.as_secs_f64();
    let (db, dp) = (
        b.bytes.saturating_sub(a.bytes),
        b.packets.saturating_sub(a.packets),
    );
    Some((stream_bytes(db, dp, tls) / secs, db as f64 / secs, span))
}

/// Samples `ns`/`dev` every `every` until `done()` says stop.
pub fn sample_until(
    ns: &str,
    dev: &str,
    every: Duration,
    mut done: impl FnMut(&[Sample]) -> bool,
) -> Vec<Sample> {
    let mut out = Vec::new();
    loop {
        if let Some(s) = sample(ns, dev) {
            out.push(s);
        }
        if done(&out) {
            return out;
        }
        std::thread::sleep(every);
    }
}
