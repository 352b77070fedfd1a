//! Driving QEMU: the VM process (`process`), its QMP monitor connection (`qmp`)
//! and live migration on top of both (`migration`).
//!
//! QEMU 7.2 (Debian bookworm) is the reference version; everything here was
//! checked against it under TCG.

pub mod migration;
pub mod process;
pub mod qmp;
pub mod testbed;

pub use migration::{
    MigrationError, MigrationSample, MigrationSettings, MigrationStatus, RamStats,
};
pub use process::{VmError, VmProcess, VmSpec};
pub use qmp::{QmpClient, QmpError, QmpEvent};
