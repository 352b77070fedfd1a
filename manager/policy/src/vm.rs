//! VirtualMachine -> VirtualMachineInstance: what KubeVirt's VM controller
//! (virt-controller `pkg/virt-controller/watch/vm.go`) decides for one VM,
//! from the VM's run strategy and the state of the VMI of the same name.
//!
//! - Run strategy: `spec.runStrategy`, else `spec.running` (true = Always,
//!   false = Halted), else Halted (KubeVirt's webhook requires one of them;
//!   a VM with neither never starts rather than starting by surprise).
//! - Always: a VMI must exist; a final one (Succeeded / Failed) is deleted,
//!   and the next pass creates a new one (a restart).
//! - RerunOnFailure: as Always, except that a VMI that Succeeded (the guest
//!   shut down cleanly) is left stopped; only a Failed one is restarted.
//! - Halted: no VMI; an existing one is deleted.
//! - Manual: the VMI is left alone (started/stopped by the user).
//! - Once: a VMI is created for a VM that never ran (no status yet) and is
//!   never restarted.
//! - WaitAsReceiver: left alone (the target of a cross-cluster migration).
//! - A VM being deleted deletes its VMI.
//!
//! State change requests (`status.stateChangeRequests`, written by
//! `mignet start|stop|restart`), as KubeVirt's VM controller handles them
//! (`pkg/virt-controller/watch/vm/vm.go` at v1.9.0-beta.0+, commit
//! d923fdb: `syncRunStrategy`, `hasStopRequestForVMI`, `hasStartRequest`,
//! `isTrimFirstChangeRequestNeeded`, `addStartRequest`). Only the first
//! request counts; one is removed per pass, from what was observed:
//! - Stop{uid}: the VMI with that uid is deleted (under every strategy
//!   that has one running); once no VMI has that uid (gone, or already
//!   replaced) the request is removed. A Stop without a uid cannot be acted
//!   on and is removed.
//! - Start: Manual and RerunOnFailure create the VMI (from the VM's
//!   current template) when none exists; Always needs no request to do so.
//!   The request is removed once a live (not final, not deleting) VMI
//!   exists. Restart is [Stop{uid}, Start].
//! - RerunOnFailure creates a missing VMI only on a Start request or for a
//!   VM that never ran: a VM stopped by request stays stopped. Its own
//!   restart of a Failed VMI goes through an appended Start request, as
//!   KubeVirt's does.
//!
//! Ownership: only a VMI whose controller owner reference is this VM (same
//! uid) is the VM's; a VMI of the same name with no controller is adopted,
//! one controlled by something else is never touched. [`collect_orphans`]
//! finds VMIs whose owning VM is gone (the lab store has no garbage
//! collector; in a cluster the API server's GC would also remove them).
//!
//! The status follows `kubectl get vm`: `created` (a VMI exists), `ready`
//! (it is Running and not reported unready), and `printableStatus`, chosen
//! in KubeVirt's order: Terminating, Stopping, Migrating, Running, the
//! error statuses (ErrorPvcNotFound, ErrorUnschedulable), Starting, Stopped.

use crate::model::{ObjectKey, VmiPhase};

/// `spec.runStrategy` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStrategy {
    Always,
    RerunOnFailure,
    Halted,
    Manual,
    Once,
    WaitAsReceiver,
}

impl RunStrategy {
    /// KubeVirt's spelling; unknown strings give `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Always" => Self::Always,
            "RerunOnFailure" => Self::RerunOnFailure,
            "Halted" => Self::Halted,
            "Manual" => Self::Manual,
            "Once" => Self::Once,
            "WaitAsReceiver" => Self::WaitAsReceiver,
            _ => return None,
        })
    }

    /// The strategy in effect: `runStrategy`, else `running`, else Halted.
    pub fn effective(run_strategy: Option<RunStrategy>, running: Option<bool>) -> RunStrategy {
        match (run_strategy, running) {
            (Some(s), _) => s,
            (None, Some(true)) => RunStrategy::Always,
            (None, Some(false) | None) => RunStrategy::Halted,
        }
    }
}

/// What the VM controller reads from a VirtualMachine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmView {
    pub key: ObjectKey,
    pub strategy: RunStrategy,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The VM has a status already (it was reconciled before); `Once` and
    /// `RerunOnFailure` use it to start on their own only a VM that never ran.
    pub has_status: bool,
    /// `status.stateChangeRequests`, oldest first.
    pub requests: Vec<ChangeRequest>,
}

/// One entry of `status.stateChangeRequests`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRequest {
    Start,
    /// Stop the VMI with this uid.
    Stop {
        uid: Option<String>,
    },
}

/// Why a VMI cannot start, from its conditions (what virt-controller
/// reports when the launcher pod cannot be made or placed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartBlocker {
    /// `Synchronized=False`, reason `FailedPvcNotFound`: a claim the VMI
    /// names does not exist (in the lab: there is no storage at all).
    PvcNotFound { message: String },
    /// `PodScheduled=False`, reason `Unschedulable`.
    Unschedulable { message: String },
}

/// The VMI of the VM's name, as the VM controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmiState {
    Missing,
    /// Same name, controlled by something else (another VM uid, or another
    /// kind): never touched.
    Foreign,
    Present(VmiFacts),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiFacts {
    /// `metadata.uid`: what a Stop request names.
    pub uid: String,
    /// Controlled by this VM (false: no controller reference yet; adopted).
    pub owned: bool,
    pub phase: VmiPhase,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// A migration has started and not ended (migrationState has a start
    /// and neither an end, completed nor failed).
    pub migrating: bool,
    /// The VMI's `Ready` condition, if it has one.
    pub ready_condition: Option<bool>,
    pub blocked: Option<StartBlocker>,
}

/// What to do with the VMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmiAction {
    None,
    /// Create a VMI from the VM's template, owned by the VM.
    Create,
    /// Delete the VMI (stop, restart after a final phase, or VM deleted).
    Delete,
    /// Set this VM as the controller of the existing, unowned VMI.
    Adopt,
}

/// `status.printableStatus`, KubeVirt's spellings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrintableStatus {
    Stopped,
    Starting,
    Running,
    Migrating,
    Stopping,
    Terminating,
    ErrorPvcNotFound,
    ErrorUnschedulable,
    Unknown,
}

impl PrintableStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "Stopped",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Migrating => "Migrating",
            Self::Stopping => "Stopping",
            Self::Terminating => "Terminating",
            Self::ErrorPvcNotFound => "ErrorPvcNotFound",
            Self::ErrorUnschedulable => "ErrorUnschedulable",
            Self::Unknown => "Unknown",
        }
    }
}

/// The VM's status fields the controller owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStatus {
    pub created: bool,
    pub ready: bool,
    pub printable: PrintableStatus,
    /// The `Ready` condition: reason and message when not ready.
    pub not_ready: Option<(&'static str, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDecision {
    pub action: VmiAction,
    pub status: VmStatus,
    /// What happens to `status.stateChangeRequests`.
    pub requests: RequestEdit,
}

/// The change to `status.stateChangeRequests` a decision makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestEdit {
    /// The first request is done (or stale): remove it.
    pub remove_first: bool,
    /// Append a Start request (RerunOnFailure restarting a failed VMI).
    pub append_start: bool,
}

/// The first request, read against the VMI: a Stop of exactly this VMI,
/// a Start, or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum First {
    StopThis,
    Start,
    Other,
}

fn first_request(vm: &VmView, vmi: &VmiState) -> First {
    match (vm.requests.first(), vmi) {
        (Some(ChangeRequest::Stop { uid: Some(u) }), VmiState::Present(f)) if *u == f.uid => {
            First::StopThis
        }
        (Some(ChangeRequest::Start), _) => First::Start,
        _ => First::Other,
    }
}

/// `isTrimFirstChangeRequestNeeded`: whether the first request is done.
fn first_done(vm: &VmView, vmi: &VmiState) -> bool {
    let live = |f: &VmiFacts| !f.deleting && !f.phase.is_final();
    match (vm.requests.first(), vmi) {
        (None, _) => false,
        // No VMI of ours, no uid, or another VMI: stopped already (or
        // never actionable).
        (Some(ChangeRequest::Stop { uid }), VmiState::Present(f)) => {
            uid.as_deref() != Some(f.uid.as_str())
        }
        (Some(ChangeRequest::Stop { .. }), _) => true,
        (Some(ChangeRequest::Start), VmiState::Present(f)) => live(f),
        (Some(ChangeRequest::Start), _) => false,
    }
}

/// Whether `strategy` wants a VMI to exist, given the current one and the
/// first request.
fn wants_running(vm: &VmView, vmi: &VmiState, first: First) -> bool {
    let phase = match vmi {
        VmiState::Present(f) => Some(f.phase),
        _ => None,
    };
    match vm.strategy {
        // A restart: this VMI goes, the next pass makes a new one.
        _ if first == First::StopThis => false,
        RunStrategy::Always => true,
        RunStrategy::RerunOnFailure => match phase {
            Some(p) => p != VmiPhase::Succeeded,
            None => first == First::Start || !vm.has_status,
        },
        RunStrategy::Halted => false,
        RunStrategy::Manual if phase.is_none() => first == First::Start,
        RunStrategy::Once => match phase {
            Some(p) => !p.is_final(),
            None => !vm.has_status,
        },
        // Left to the user / another cluster: "wanted" is whatever is there.
        RunStrategy::Manual | RunStrategy::WaitAsReceiver => phase.is_some_and(|p| !p.is_final()),
    }
}

/// Decide for one VM. Pure.
pub fn decide_vm(vm: &VmView, vmi: &VmiState) -> VmDecision {
    let first = first_request(vm, vmi);
    let want = !vm.deleting && wants_running(vm, vmi, first);
    // Manual acts only on requests; WaitAsReceiver never (another
    // cluster's migration owns it).
    let manages = vm.deleting
        || match vm.strategy {
            RunStrategy::WaitAsReceiver => false,
            RunStrategy::Manual => first != First::Other,
            _ => true,
        };
    let action = match vmi {
        VmiState::Foreign => VmiAction::None,
        VmiState::Missing if want && manages => VmiAction::Create,
        VmiState::Missing => VmiAction::None,
        VmiState::Present(f) if !f.owned && !vm.deleting => VmiAction::Adopt,
        VmiState::Present(f) if f.deleting => VmiAction::None,
        // A VMI we never owned is not deleted with the VM.
        VmiState::Present(f) if !f.owned => VmiAction::None,
        VmiState::Present(_) if vm.deleting => VmiAction::Delete,
        VmiState::Present(_) if !manages => VmiAction::None,
        // A requested stop deletes even a final VMI (KubeVirt's stopVMI).
        VmiState::Present(_) if first == First::StopThis => VmiAction::Delete,
        // Not wanted (Halted; Once or RerunOnFailure after a clean stop
        // keep a final VMI as the record of the run).
        VmiState::Present(f) if !want => {
            if f.phase.is_final() {
                VmiAction::None
            } else {
                VmiAction::Delete
            }
        }
        // Wanted and final: restart (delete now, create on the next pass).
        VmiState::Present(f) if f.phase.is_final() => VmiAction::Delete,
        VmiState::Present(_) => VmiAction::None,
    };
    let failed_restart = !vm.deleting
        && vm.strategy == RunStrategy::RerunOnFailure
        && action == VmiAction::Delete
        && first != First::StopThis
        && matches!(vmi, VmiState::Present(f) if f.phase == VmiPhase::Failed);
    VmDecision {
        action,
        status: status(vm, vmi, want, action),
        requests: RequestEdit {
            remove_first: first_done(vm, vmi),
            append_start: failed_restart,
        },
    }
}

fn status(vm: &VmView, vmi: &VmiState, want: bool, action: VmiAction) -> VmStatus {
    let facts = match vmi {
        VmiState::Present(f) => Some(f),
        _ => None,
    };
    let created = facts.is_some_and(|f| !f.phase.is_final());
    let running = facts.is_some_and(|f| f.phase == VmiPhase::Running && !f.deleting);
    let ready = running && facts.and_then(|f| f.ready_condition) != Some(false);
    let stopping = facts.is_some_and(|f| {
        !f.phase.is_final() && (f.deleting || action == VmiAction::Delete || !want)
    });
    let printable = if vm.deleting {
        PrintableStatus::Terminating
    } else if matches!(vmi, VmiState::Foreign) {
        PrintableStatus::Unknown
    } else if stopping {
        PrintableStatus::Stopping
    } else if facts.is_some_and(|f| f.migrating && f.phase == VmiPhase::Running) {
        PrintableStatus::Migrating
    } else if running {
        PrintableStatus::Running
    } else if let Some(b) = facts.and_then(|f| f.blocked.as_ref()) {
        match b {
            StartBlocker::PvcNotFound { .. } => PrintableStatus::ErrorPvcNotFound,
            StartBlocker::Unschedulable { .. } => PrintableStatus::ErrorUnschedulable,
        }
    } else if want
        && facts.is_none_or(|f| !f.phase.is_final() || f.deleting || action == VmiAction::Delete)
    {
        PrintableStatus::Starting
    } else {
        PrintableStatus::Stopped
    };
    let not_ready = if ready {
        None
    } else {
        Some(match (vmi, facts) {
            (VmiState::Foreign, _) => (
                "VMINotOwned",
                "a VMI of this name is controlled by another object".to_owned(),
            ),
            (_, None) => ("VMINotExists", "VMI does not exist".to_owned()),
            (_, Some(f)) => match &f.blocked {
                Some(StartBlocker::PvcNotFound { message }) => {
                    ("FailedPvcNotFound", message.clone())
                }
                Some(StartBlocker::Unschedulable { message }) => ("Unschedulable", message.clone()),
                None if f.phase == VmiPhase::Running => {
                    ("NotReady", "the VMI reports itself not ready".to_owned())
                }
                None => ("NotRunning", format!("VMI is {:?}", f.phase)),
            },
        })
    };
    VmStatus {
        created,
        ready,
        printable,
        not_ready,
    }
}

/// An existing VMI controlled by a VirtualMachine (its owner reference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedVmi {
    pub key: ObjectKey,
    /// Name and uid of the controlling VM (same namespace).
    pub owner_name: String,
    pub owner_uid: String,
    pub deleting: bool,
}

/// VMIs whose controlling VM no longer exists (no VM of that name, or one
/// with another uid: the VM was deleted and re-created), not already being
/// deleted. `vms` are the existing VMs as (key, uid). Pure; sorted.
pub fn collect_orphans(vms: &[(ObjectKey, String)], owned: &[OwnedVmi]) -> Vec<ObjectKey> {
    let mut out: Vec<ObjectKey> = owned
        .iter()
        .filter(|o| !o.deleting)
        .filter(|o| {
            let owner = ObjectKey::new(o.key.namespace.clone(), o.owner_name.clone());
            !vms.iter()
                .any(|(k, uid)| *k == owner && *uid == o.owner_uid)
        })
        .map(|o| o.key.clone())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(strategy: RunStrategy) -> VmView {
        VmView {
            key: ObjectKey::new("ns", "vm"),
            strategy,
            deleting: false,
            has_status: false,
            requests: Vec::new(),
        }
    }

    fn present(phase: VmiPhase) -> VmiState {
        VmiState::Present(VmiFacts {
            uid: "uid-1".into(),
            owned: true,
            phase,
            deleting: false,
            migrating: false,
            ready_condition: None,
            blocked: None,
        })
    }

    fn with(state: VmiState, f: impl FnOnce(&mut VmiFacts)) -> VmiState {
        match state {
            VmiState::Present(mut x) => {
                f(&mut x);
                VmiState::Present(x)
            }
            s => s,
        }
    }

    fn d(vm: &VmView, vmi: &VmiState) -> (VmiAction, &'static str) {
        let r = decide_vm(vm, vmi);
        (r.action, r.status.printable.as_str())
    }

    #[test]
    fn effective_strategy() {
        use RunStrategy::*;
        assert_eq!(RunStrategy::effective(Some(Manual), Some(true)), Manual);
        assert_eq!(RunStrategy::effective(None, Some(true)), Always);
        assert_eq!(RunStrategy::effective(None, Some(false)), Halted);
        assert_eq!(RunStrategy::effective(None, None), Halted);
        assert_eq!(RunStrategy::parse("RerunOnFailure"), Some(RerunOnFailure));
        assert_eq!(RunStrategy::parse("always"), None);
    }

    #[test]
    fn always_creates_runs_and_restarts() {
        use VmiPhase::*;
        let v = vm(RunStrategy::Always);
        assert_eq!(d(&v, &VmiState::Missing), (VmiAction::Create, "Starting"));
        for p in [Pending, Scheduling, Scheduled] {
            assert_eq!(d(&v, &present(p)), (VmiAction::None, "Starting"), "{p:?}");
        }
        let r = decide_vm(&v, &present(Running));
        assert_eq!(
            (r.action, r.status.printable),
            (VmiAction::None, PrintableStatus::Running)
        );
        assert!(r.status.created && r.status.ready && r.status.not_ready.is_none());
        // Final: deleted now, re-created on the next pass.
        for p in [Succeeded, Failed] {
            assert_eq!(d(&v, &present(p)), (VmiAction::Delete, "Starting"), "{p:?}");
        }
        // Being deleted (the restart in progress): wait for it to go.
        let going = with(present(Failed), |f| f.deleting = true);
        assert_eq!(d(&v, &going), (VmiAction::None, "Starting"));
    }

    #[test]
    fn rerun_on_failure_restarts_only_failures() {
        let v = vm(RunStrategy::RerunOnFailure);
        assert_eq!(d(&v, &VmiState::Missing), (VmiAction::Create, "Starting"));
        assert_eq!(d(&v, &present(VmiPhase::Running)).1, "Running");
        assert_eq!(
            d(&v, &present(VmiPhase::Failed)),
            (VmiAction::Delete, "Starting")
        );
        // The restart of a failure goes through a Start request, so that
        // after the delete a VM that ran before is started again...
        let r = decide_vm(&v, &present(VmiPhase::Failed));
        assert!(r.requests.append_start);
        let ran = VmView {
            has_status: true,
            ..v.clone()
        };
        assert_eq!(d(&ran, &VmiState::Missing), (VmiAction::None, "Stopped"));
        let asked = VmView {
            requests: vec![ChangeRequest::Start],
            ..ran
        };
        assert_eq!(
            d(&asked, &VmiState::Missing),
            (VmiAction::Create, "Starting")
        );
        assert_eq!(
            d(&v, &present(VmiPhase::Succeeded)),
            (VmiAction::None, "Stopped")
        );
    }

    #[test]
    fn halted_and_running_false_stop() {
        for v in [
            vm(RunStrategy::Halted),
            vm(RunStrategy::effective(None, Some(false))),
        ] {
            assert_eq!(d(&v, &VmiState::Missing), (VmiAction::None, "Stopped"));
            let r = decide_vm(&v, &present(VmiPhase::Running));
            assert_eq!(
                (r.action, r.status.printable),
                (VmiAction::Delete, PrintableStatus::Stopping)
            );
            // As in KubeVirt: ready until the VMI actually stops.
            assert!(r.status.ready && r.status.created);
            assert_eq!(
                d(&v, &present(VmiPhase::Succeeded)),
                (VmiAction::None, "Stopped")
            );
            let r = decide_vm(&v, &VmiState::Missing);
            assert!(!r.status.created);
            assert_eq!(r.status.not_ready.unwrap().0, "VMINotExists");
        }
    }

    #[test]
    fn manual_and_wait_as_receiver_leave_the_vmi_alone() {
        for s in [RunStrategy::Manual, RunStrategy::WaitAsReceiver] {
            let v = vm(s);
            assert_eq!(d(&v, &VmiState::Missing), (VmiAction::None, "Stopped"));
            assert_eq!(
                d(&v, &present(VmiPhase::Running)),
                (VmiAction::None, "Running")
            );
            assert_eq!(
                d(&v, &present(VmiPhase::Failed)),
                (VmiAction::None, "Stopped")
            );
            assert_eq!(
                d(&v, &present(VmiPhase::Scheduled)),
                (VmiAction::None, "Starting")
            );
        }
    }

    #[test]
    fn once_starts_a_new_vm_only() {
        let mut v = vm(RunStrategy::Once);
        assert_eq!(d(&v, &VmiState::Missing), (VmiAction::Create, "Starting"));
        v.has_status = true;
        assert_eq!(d(&v, &VmiState::Missing), (VmiAction::None, "Stopped"));
        assert_eq!(
            d(&v, &present(VmiPhase::Running)),
            (VmiAction::None, "Running")
        );
        assert_eq!(
            d(&v, &present(VmiPhase::Failed)),
            (VmiAction::None, "Stopped")
        );
    }

    #[test]
    fn deleting_the_vm_deletes_its_vmi_only() {
        let mut v = vm(RunStrategy::Always);
        v.deleting = true;
        assert_eq!(
            d(&v, &present(VmiPhase::Running)),
            (VmiAction::Delete, "Terminating")
        );
        assert_eq!(d(&v, &VmiState::Missing), (VmiAction::None, "Terminating"));
        let unowned = with(present(VmiPhase::Running), |f| f.owned = false);
        assert_eq!(d(&v, &unowned).0, VmiAction::None);
        assert_eq!(d(&v, &VmiState::Foreign).0, VmiAction::None);
        v.strategy = RunStrategy::Manual;
        assert_eq!(d(&v, &present(VmiPhase::Running)).0, VmiAction::Delete);
    }

    #[test]
    fn ownership() {
        let v = vm(RunStrategy::Always);
        let unowned = with(present(VmiPhase::Running), |f| f.owned = false);
        assert_eq!(d(&v, &unowned).0, VmiAction::Adopt);
        let r = decide_vm(&v, &VmiState::Foreign);
        assert_eq!(
            (r.action, r.status.printable),
            (VmiAction::None, PrintableStatus::Unknown)
        );
        assert_eq!(r.status.not_ready.unwrap().0, "VMINotOwned");
    }

    #[test]
    fn migrating_and_not_ready() {
        let v = vm(RunStrategy::Always);
        let m = with(present(VmiPhase::Running), |f| f.migrating = true);
        let r = decide_vm(&v, &m);
        assert_eq!(r.status.printable, PrintableStatus::Migrating);
        assert!(r.status.ready, "a migrating VM keeps serving");
        let nr = with(present(VmiPhase::Running), |f| {
            f.ready_condition = Some(false)
        });
        let r = decide_vm(&v, &nr);
        assert_eq!(r.status.printable, PrintableStatus::Running);
        assert!(!r.status.ready);
        assert_eq!(r.status.not_ready.unwrap().0, "NotReady");
    }

    #[test]
    fn blocked_vmis_show_the_error_status() {
        let v = vm(RunStrategy::Always);
        let pvc = with(present(VmiPhase::Pending), |f| {
            f.blocked = Some(StartBlocker::PvcNotFound {
                message: "PVC ns/disk does not exist".into(),
            })
        });
        let r = decide_vm(&v, &pvc);
        assert_eq!(
            (r.action, r.status.printable),
            (VmiAction::None, PrintableStatus::ErrorPvcNotFound)
        );
        assert_eq!(
            r.status.not_ready,
            Some(("FailedPvcNotFound", "PVC ns/disk does not exist".into()))
        );
        assert!(r.status.created);
        let uns = with(present(VmiPhase::Pending), |f| {
            f.blocked = Some(StartBlocker::Unschedulable {
                message: "no node".into(),
            })
        });
        assert_eq!(d(&v, &uns).1, "ErrorUnschedulable");
    }

    #[test]
    fn orphans_are_vmis_whose_vm_is_gone_or_recreated() {
        let k = |n: &str| ObjectKey::new("ns", n);
        let owned = |n: &str, owner: &str, uid: &str| OwnedVmi {
            key: k(n),
            owner_name: owner.into(),
            owner_uid: uid.into(),
            deleting: false,
        };
        let vms = vec![(k("a"), "u-a".to_owned()), (k("b"), "u-b2".to_owned())];
        let mut going = owned("d", "d", "u-d");
        going.deleting = true;
        let vmis = vec![
            owned("c", "c", "u-c"),  // VM gone
            owned("b", "b", "u-b1"), // VM re-created with a new uid
            owned("a", "a", "u-a"),  // alive
            going,                   // already being deleted
        ];
        assert_eq!(collect_orphans(&vms, &vmis), vec![k("b"), k("c")]);
        // Another namespace's VM of the same name does not own it.
        let other = vec![(ObjectKey::new("other", "c"), "u-c".to_owned())];
        assert_eq!(
            collect_orphans(&other, &[owned("c", "c", "u-c")]),
            vec![k("c")]
        );
    }

    fn requests(strategy: RunStrategy, reqs: Vec<ChangeRequest>) -> VmView {
        VmView {
            has_status: true,
            requests: reqs,
            ..vm(strategy)
        }
    }

    fn stop(uid: Option<&str>) -> ChangeRequest {
        ChangeRequest::Stop {
            uid: uid.map(str::to_owned),
        }
    }

    /// (action, remove_first) for each strategy, request list and VMI:
    /// KubeVirt's `syncRunStrategy` + `isTrimFirstChangeRequestNeeded`.
    #[test]
    fn state_change_requests_drive_stop_start_and_restart() {
        use ChangeRequest::Start;
        use RunStrategy::*;
        use VmiAction::{Create, Delete, None as Keep};
        let running = present(VmiPhase::Running);
        let succeeded = present(VmiPhase::Succeeded);
        let going = with(present(VmiPhase::Running), |f| f.deleting = true);
        let restart = || vec![stop(Some("uid-1")), Start];
        let table: Vec<(RunStrategy, Vec<ChangeRequest>, &VmiState, VmiAction, bool)> = vec![
            // Restart under Always: delete this VMI, keep the request...
            (Always, restart(), &running, Delete, false),
            // ...wait while it goes...
            (Always, restart(), &going, Keep, false),
            // ...gone: Stop done, and Always makes the new VMI at once...
            (Always, restart(), &VmiState::Missing, Create, true),
            // ...the new VMI (another uid) is up: Start done.
            (Always, vec![Start], &running, Keep, true),
            // Restart under Manual: the same, but only the Start creates.
            (Manual, restart(), &running, Delete, false),
            (Manual, restart(), &VmiState::Missing, Keep, true),
            (Manual, vec![Start], &VmiState::Missing, Create, false),
            (Manual, vec![Start], &running, Keep, true),
            // Stop under Manual / RerunOnFailure: delete, then stay stopped.
            (Manual, vec![stop(Some("uid-1"))], &running, Delete, false),
            (
                Manual,
                vec![stop(Some("uid-1"))],
                &VmiState::Missing,
                Keep,
                true,
            ),
            (
                RerunOnFailure,
                vec![stop(Some("uid-1"))],
                &running,
                Delete,
                false,
            ),
            (
                RerunOnFailure,
                vec![stop(Some("uid-1"))],
                &VmiState::Missing,
                Keep,
                true,
            ),
            (RerunOnFailure, vec![], &VmiState::Missing, Keep, false),
            // A requested stop deletes a final VMI too (Manual's start of a
            // stopped VM is [Stop{uid}, Start]).
            (Manual, restart(), &succeeded, Delete, false),
            // Stale: the VMI was already replaced; no uid: not actionable.
            (
                Always,
                vec![stop(Some("uid-0")), Start],
                &running,
                Keep,
                true,
            ),
            (Manual, vec![stop(None)], &running, Keep, true),
            // Only the first request counts.
            (
                Manual,
                vec![Start, stop(Some("uid-1"))],
                &running,
                Keep,
                true,
            ),
            // Halted never starts on a request (KubeVirt's start of a Halted
            // VM changes runStrategy instead).
            (Halted, vec![Start], &VmiState::Missing, Keep, false),
        ];
        for (i, (strategy, reqs, vmi, action, remove)) in table.into_iter().enumerate() {
            let r = decide_vm(&requests(strategy, reqs.clone()), vmi);
            assert_eq!(
                (r.action, r.requests.remove_first),
                (action, remove),
                "row {i}: {strategy:?} {reqs:?} {vmi:?}"
            );
            assert!(!r.requests.append_start, "row {i}");
        }
    }

    #[test]
    fn a_restart_shows_stopping_then_starting() {
        let v = requests(
            RunStrategy::Always,
            vec![stop(Some("uid-1")), ChangeRequest::Start],
        );
        assert_eq!(d(&v, &present(VmiPhase::Running)).1, "Stopping");
        assert_eq!(d(&v, &VmiState::Missing).1, "Starting");
        let m = requests(RunStrategy::Manual, vec![ChangeRequest::Start]);
        assert_eq!(d(&m, &VmiState::Missing).1, "Starting");
    }
}
