//! mignet-cni: a CNI 1.1 macvlan plugin and a whereabouts-compatible IPAM.

pub mod error;
pub mod ipam;
pub mod skel;
pub mod types;

pub use error::{CniError, CniResult, Code};
pub use types::CniOutput;
