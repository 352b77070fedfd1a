//! mignet's migration-control policy: pure decisions shared by the cluster
//! (kube) adapter and the lab adapter.
//!
//! - [`lifecycle`]: VMIM phases as a consuming state machine with phase
//!   transition timestamps.
//! - [`admission`]: refuse a migration of a VMI that is missing, not
//!   running, not live-migratable or already migrating.
//! - [`migratable`] + [`index::ClusterIndex::live_migratable`]: the
//!   `LiveMigratable` condition (non-shared disks, host-model CPU).
//! - [`index`]: target selection (schedulable, not the source, matching
//!   host CPU model, enough memory; most free memory then name).
//! - [`scheduler`]: which Pending migrations start under the cluster and
//!   per-node limits, and why the others wait.
//! - [`drain`]: what a drained node does with each VMI, and which pending
//!   evacuations an uncordon cancels.
//! - [`vm`]: VirtualMachine -> VirtualMachineInstance by run strategy, the
//!   VM's printable status, and VMIs whose VM is gone.
//! - [`cancel`]: the steps of cancelling a deleted VMIM (finalizer, abort
//!   request, abort status) and the evacuation retry backoff.
//! - [`backoff`]: the one exponential retry backoff every retry loop uses.
//!
//! No I/O and no clock: the adapters pass [`model`] views and `now`. The
//! in-flight abort decision (progress / completion timeouts) lives with the
//! monitor in `mignet-dataplane`.

pub mod admission;
pub mod backoff;
pub mod cancel;
pub mod drain;
pub mod index;
pub mod lifecycle;
pub mod migratable;
pub mod model;
pub mod scheduler;
pub mod vm;

pub use admission::{admit, Refusal};
pub use backoff::Backoff;
pub use cancel::{evacuation_not_before, on_delete, AbortStatus, CancelStep};
pub use drain::{plan_evacuations, BlockReason, DrainAction, DrainEntry, EvacuationPlan};
pub use index::{ClusterIndex, NoTarget};
pub use lifecycle::{step, Event, FailureReason, IllegalTransition, Lifecycle, Phase};
pub use migratable::{
    HostModelRequirement, Migratability, MigrationMethod, NotMigratable, NotMigratableReason,
};
pub use model::{
    AccessMode, CpuModel, EvictionStrategy, Limits, MigrationView, NodeView, ObjectKey, Origin,
    Snapshot, Taint, TaintEffect, Timestamp, VmiPhase, VmiView, VolumeSource, VolumeView,
};
pub use scheduler::{decide, decide_with, Decision, Refused, Start, WaitReason, Waiting};
