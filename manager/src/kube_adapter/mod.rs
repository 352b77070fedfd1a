//! The kube adapter: moves objects between a real API server and the pure
//! decisions. Thin by design; every decision lives in a pure module.

pub mod eviction;
pub mod ipam;
pub mod network_watch;
pub mod signer;

pub use crate::backend::kube::{is_transient, patch_params, FIELD_MANAGER};
