//! mignet-cni: a CNI 1.1 macvlan plugin and a whereabouts-compatible IPAM.

pub mod delegate;
pub mod error;
pub mod ipam;
pub mod macvlan;
pub mod netlink;
pub mod netns;
pub mod skel;
pub mod types;
pub mod version;

pub use error::{CniError, CniResult, Code};
pub use types::CniOutput;
