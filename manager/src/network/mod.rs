//! The migration network: which NAD carries migration traffic, and its
//! rollout onto the agent DaemonSet, in both modes.
//!
//! - the network reference ([`NetworkRef`], `api::network_ref`): the
//!   `liveMigrationConfig.network` value, parsed once.
//! - [`nad_config`]: what a NAD's CNI config says (pure).
//! - [`decide`]: the DaemonSet annotations and the condition (pure).
//! - [`conditions`]: the HyperConverged's conditions (pure).
//! - [`preflight`]: the probe round that proves a network before the
//!   rollout (its report format; the verdict is pure).
//! - [`probe`]: `mignet probe`, one node's side of a pre-flight round.
//! - [`switch`]: keeping migrations whole across the change (the hold and
//!   the drain; pure).
//! - [`reconcile`]: one rollout pass over [`crate::backend::Backend`].

pub mod conditions;
pub mod decide;
pub mod nad_config;
pub mod preflight;
pub mod probe;
pub mod reconcile;
pub mod switch;

pub use crate::api::network_ref::{NetworkRef, NetworkRefError};
pub use decide::{ClusterNetworks, Decision};
