//! Driving QEMU: the VM process (`process`), its QMP monitor connection (`qmp`)
//! and live migration on top of both (`migration`); the lab's guest image and
//! serial ticks (`lab_guest`); helpers for tests and benchmarks (`testbed`).
//!
//! QEMU 7.2 (Debian bookworm) is the reference version; everything here was
//! checked against it under TCG.

pub mod lab_guest;
pub mod migration;
pub mod process;
pub mod qmp;
pub mod testbed;

pub use migration::{
    MigrationError, MigrationSample, MigrationSettings, MigrationStatus, RamStats,
};
pub use process::{VmError, VmProcess, VmSpec};
pub use qmp::{QmpClient, QmpError, QmpEvent};
