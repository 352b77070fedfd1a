//! The checks behind every fuzz target. Each module's `check(data)` feeds
//! one parser of hostile input and asserts its properties (a failed
//! assertion is a crash for AFL++ and a failed test for `cargo test`, which
//! replays `corpus/` and `regressions/` through the same functions).
//!
//! Targets and what they feed:
//! - `cni_config`: the network config on a CNI plugin's stdin (macvlan ADD
//!   and DEL, the IPAM's `ipam` object).
//! - `cni_args`: the `CNI_ARGS` environment variable.
//! - `ipam_store`: one pool file of the IPAM's node-local file store.
//! - `ipam_flatfile`: whereabouts' flat file (`whereabouts.conf`).
//! - `ipam_pool`: an IPPool object read from the Kubernetes API.
//! - `stream_header`: what a target agent reads from a migration connection
//!   before the payload (TLS record framing, post-handshake messages, the
//!   stream header).
//! - `qmp`: the lines QEMU writes to the QMP socket.
//! - `quantity`: Kubernetes quantities (and the migration config holding them).
//! - `console_api`: HTTP requests to the web console's router.

pub mod alloc_guard;
pub mod cni_args;
pub mod cni_config;
pub mod console_api;
pub mod ipam_flatfile;
pub mod ipam_pool;
pub mod ipam_store;
pub mod qmp;
pub mod quantity;
pub mod stream_header;

/// A target's checks: panics when a property fails.
pub type Check = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("cni_config", cni_config::check),
    ("cni_args", cni_args::check),
    ("ipam_store", ipam_store::check),
    ("ipam_flatfile", ipam_flatfile::check),
    ("ipam_pool", ipam_pool::check),
    ("stream_header", stream_header::check),
    ("qmp", qmp::check),
    ("quantity", quantity::check),
    ("console_api", console_api::check),
];
