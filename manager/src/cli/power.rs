//! `mignet start|stop|restart vm NAME`: virtctl's verbs with virtctl's
//! output (`VM NAME was scheduled to start`) and refusals, over any
//! [`Backend`] (the lab store or a cluster).
//!
//! What each verb writes is what KubeVirt's virt-api writes for virtctl
//! (`pkg/virt-api/rest/lifecycle.go` at v1.9.0-beta.0+, commit d923fdb:
//! `StartVMRequestHandler`, `StopVMRequestHandler`,
//! `RestartVMRequestHandler`, `getChangeRequestJson`, `getRunningPatch`):
//! either `spec.runStrategy` (Halted <-> Always) or a request in
//! `status.stateChangeRequests` that the VM controller carries out
//! (`mignet_policy::vm`). Restart = [Stop{uid of the running VMI}, Start]:
//! the VMI is deleted and a new one is made from the VM's current template.
//!
//! | verb    | Always / Once          | RerunOnFailure / Manual | Halted                  |
//! |---------|------------------------|-------------------------|-------------------------|
//! | start   | refused                | [Start] (after a final VMI: [Stop{uid}, Start]) | runStrategy Always |
//! | stop    | runStrategy Halted     | [Stop{uid}], VMI needed | refused                 |
//! | restart | [Stop{uid}, Start] (Once: refused) | [Stop{uid}, Start] | refused          |

use std::collections::BTreeMap;

use crate::api::{
    RunStrategy, StateChangeRequestAction, VirtualMachine, VirtualMachineInstance,
    VirtualMachineStateChangeRequest, VmiPhase,
};
use crate::backend::Backend;

use super::resources;
use super::CliError;

/// The VM a power verb acts on: `vm NAME` or `vm/NAME`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// `vm` (or `vms`, `virtualmachine`), or `vm/NAME`.
    pub resource: String,
    pub name: Option<String>,
    /// Default: mignet-system in the lab, the context's on a cluster.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

impl VmArgs {
    /// The VM's name; anything but a VirtualMachine is a usage error.
    pub fn vm_name(&self, verb: Power) -> Result<String, CliError> {
        let (r, name) = super::resource_and_name(&self.resource, self.name.clone())?;
        if r.kind != resources::lookup("vm").map_or("", |v| v.kind) {
            return Err(CliError::Usage(format!(
                "{} works on VirtualMachines (`mignet {} vm NAME`), not {}",
                verb.word(),
                verb.word(),
                r.kind
            )));
        }
        name.ok_or_else(|| CliError::Usage(format!("{} needs a VM NAME", verb.word())))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    Start,
    Stop,
    Restart,
}

impl Power {
    pub fn word(self) -> &'static str {
        match self {
            Power::Start => "start",
            Power::Stop => "stop",
            Power::Restart => "restart",
        }
    }

    fn gerund(self) -> &'static str {
        match self {
            Power::Start => "starting",
            Power::Stop => "stopping",
            Power::Restart => "restarting",
        }
    }
}

/// The write a verb makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The VM's new `status.stateChangeRequests`.
    Requests(Vec<VirtualMachineStateChangeRequest>),
    /// `spec.runStrategy` (`spec.running` on a VM that uses that instead).
    RunStrategy(RunStrategy),
}

// KubeVirt's texts (lifecycle.go / subresource.go).
const NOT_RUNNING: &str = "VM is not running";
const ALREADY_RUNNING: &str = "VM is already running";
const UNDERWAY: &str = "unable to complete request: stop/start already underway";

fn strategy_of(vm: &VirtualMachine) -> RunStrategy {
    match (vm.spec.run_strategy, vm.spec.running) {
        (Some(s), _) => s,
        (None, Some(true)) => RunStrategy::Always,
        (None, _) => RunStrategy::Halted,
    }
}

fn is_final(vmi: &VirtualMachineInstance) -> bool {
    matches!(
        vmi.status.as_ref().and_then(|s| s.phase),
        Some(VmiPhase::Succeeded | VmiPhase::Failed)
    )
}

fn phase(vmi: &VirtualMachineInstance) -> Option<VmiPhase> {
    vmi.status.as_ref().and_then(|s| s.phase)
}

fn start() -> VirtualMachineStateChangeRequest {
    VirtualMachineStateChangeRequest {
        action: StateChangeRequestAction::Start,
        data: BTreeMap::new(),
        uid: None,
    }
}

fn stop(vmi: &VirtualMachineInstance) -> VirtualMachineStateChangeRequest {
    VirtualMachineStateChangeRequest {
        action: StateChangeRequestAction::Stop,
        data: BTreeMap::new(),
        uid: vmi.metadata.uid.clone(),
    }
}

/// `getChangeRequestJson`: requests go into an empty queue; a lone Stop
/// replaces whatever is queued; anything else waits for the queue to drain.
fn queue(
    vm: &VirtualMachine,
    changes: Vec<VirtualMachineStateChangeRequest>,
) -> Result<Change, String> {
    let queued = vm
        .status
        .as_ref()
        .is_some_and(|s| !s.state_change_requests.is_empty());
    let lone_stop = changes.len() == 1 && changes[0].action == StateChangeRequestAction::Stop;
    if queued && !lone_stop {
        return Err(UNDERWAY.into());
    }
    Ok(Change::Requests(changes))
}

/// What `verb` writes on `vm`, given the VMI of its name, or KubeVirt's
/// reason for refusing. Pure.
pub fn decide(
    verb: Power,
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
) -> Result<Change, String> {
    use RunStrategy::*;
    let strategy = strategy_of(vm);
    // virt-api's "running": a VMI that is not final, in a known phase.
    let running = vmi.filter(|v| !is_final(v));
    match verb {
        Power::Start => {
            if vmi.is_some_and(|v| {
                !is_final(v) && !matches!(phase(v), None | Some(VmiPhase::Unknown))
            }) {
                return Err(ALREADY_RUNNING.into());
            }
            match strategy {
                Halted => Ok(Change::RunStrategy(Always)),
                RerunOnFailure if vmi.and_then(phase) == Some(VmiPhase::Failed) => Err(format!(
                    "{strategy:?} does not support starting VM from failed state"
                )),
                RerunOnFailure | Manual => {
                    let stopped = vmi.filter(|v| match strategy {
                        RerunOnFailure => phase(v) == Some(VmiPhase::Succeeded),
                        _ => is_final(v),
                    });
                    match stopped {
                        // The old VMI goes first, then the new one starts.
                        Some(old) => queue(vm, vec![stop(old), start()]),
                        None => queue(vm, vec![start()]),
                    }
                }
                // KubeVirt accepts and ignores a start of WaitAsReceiver
                // (no case in its switch); saying so is clearer.
                Always | Once | WaitAsReceiver => Err(format!(
                    "{strategy:?} does not support manual start requests"
                )),
            }
        }
        Power::Stop => match strategy {
            Always | Once => Ok(Change::RunStrategy(Halted)),
            RerunOnFailure | Manual => match running {
                Some(v) => queue(vm, vec![stop(v)]),
                None => Err(NOT_RUNNING.into()),
            },
            // KubeVirt's Halted stop only shortens a grace period, which
            // mignet's stop has no flag for.
            Halted if running.is_none() => Err(NOT_RUNNING.into()),
            Halted => Err(format!(
                "{strategy:?} only supports manual stop requests with a shorter graceperiod"
            )),
            WaitAsReceiver => Err(format!(
                "{strategy:?} does not support manual stop requests"
            )),
        },
        Power::Restart => match (strategy, vmi) {
            // KubeVirt (still at d923fdb) spells this "RunStategy".
            (Halted | Once | WaitAsReceiver, _) => Err(format!(
                "RunStrategy {strategy:?} does not support manual restart requests"
            )),
            (_, None) => Err(NOT_RUNNING.into()),
            (_, Some(v)) => queue(vm, vec![stop(v), start()]),
        },
    }
}

/// `change` written into `vm` (the object the write sends).
pub fn apply(change: &Change, vm: &mut VirtualMachine) {
    match change {
        Change::Requests(r) => {
            vm.status
                .get_or_insert_with(Default::default)
                .state_change_requests = r.clone();
        }
        // `getRunningPatch`: the field the VM already uses.
        Change::RunStrategy(s) => match (vm.spec.run_strategy, vm.spec.running) {
            (None, Some(_)) => vm.spec.running = Some(*s == RunStrategy::Always),
            _ => vm.spec.run_strategy = Some(*s),
        },
    }
}

/// How often a write that lost a race is decided again on a fresh read.
const ATTEMPTS: usize = 10;

/// Run `verb` on VM `name` in `ns`: `VM <name> was scheduled to <verb>`.
/// The write is conditional on the VM as read; a concurrent change is
/// re-read and decided again (it may now be refused), never overwritten.
pub async fn power<B: Backend>(
    b: &B,
    ns: &str,
    name: &str,
    verb: Power,
) -> Result<String, CliError> {
    let failed = |why: &dyn std::fmt::Display| {
        CliError::Failed(format!(
            "Error {} VirtualMachine {name} in namespace {ns}: {why}",
            verb.gerund()
        ))
    };
    let not_found =
        || CliError::Failed(format!("VirtualMachine {name} not found in namespace {ns}"));
    for _ in 0..ATTEMPTS {
        let Some(vm) = b
            .get::<VirtualMachine>(ns, name)
            .await
            .map_err(|e| failed(&e))?
        else {
            return Err(not_found());
        };
        let vmi: Option<VirtualMachineInstance> = b.get(ns, name).await.map_err(|e| failed(&e))?;
        let change = decide(verb, &vm, vmi.as_ref()).map_err(|why| failed(&why))?;
        let mut after = vm.clone();
        apply(&change, &mut after);
        let written = match change {
            Change::Requests(_) => b.patch_status(&vm, &after).await,
            Change::RunStrategy(_) => b.patch_object(&vm, &after).await,
        };
        match written {
            Ok(_) => return Ok(format!("VM {name} was scheduled to {}\n", verb.word())),
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Err(not_found()),
            Err(e) => return Err(failed(&e)),
        }
    }
    Err(failed(&format_args!(
        "the VirtualMachine changed under {ATTEMPTS} attempts in a row; nothing was written, try again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{VirtualMachineInstanceStatus, VirtualMachineSpec, VirtualMachineStatus};
    use StateChangeRequestAction::{Start as S, Stop as P};

    fn vm(strategy: RunStrategy) -> VirtualMachine {
        VirtualMachine::new(
            "fedora",
            VirtualMachineSpec {
                running: None,
                run_strategy: Some(strategy),
                template: Default::default(),
            },
        )
    }

    fn vmi(phase: Option<VmiPhase>) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("fedora", Default::default());
        v.metadata.uid = Some("uid-1".into());
        v.status = Some(VirtualMachineInstanceStatus {
            phase,
            ..Default::default()
        });
        v
    }

    /// The requests as (action, uid) pairs, or the refusal / runStrategy.
    fn d(verb: Power, vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> String {
        match decide(verb, vm, vmi) {
            Ok(Change::Requests(r)) => r
                .iter()
                .map(|r| format!("{:?}{}", r.action, r.uid.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(","),
            Ok(Change::RunStrategy(s)) => format!("runStrategy={s:?}"),
            Err(why) => format!("refused: {why}"),
        }
    }

    #[test]
    fn verbs_write_what_virt_api_writes_or_refuse_with_its_words() {
        use Power::*;
        use RunStrategy::*;
        use VmiPhase::{Failed, Running, Succeeded};
        let run = vmi(Some(Running));
        let done = vmi(Some(Succeeded));
        let failed = vmi(Some(Failed));
        let unset = vmi(None);
        let table: Vec<(Power, RunStrategy, Option<&VirtualMachineInstance>, &str)> = vec![
            // restart
            (Restart, Always, Some(&run), "Stopuid-1,Start"),
            (Restart, Manual, Some(&run), "Stopuid-1,Start"),
            (Restart, RerunOnFailure, Some(&run), "Stopuid-1,Start"),
            (Restart, Always, None, "refused: VM is not running"),
            (
                Restart,
                Halted,
                Some(&run),
                "refused: RunStrategy Halted does not support manual restart requests",
            ),
            (
                Restart,
                Once,
                Some(&run),
                "refused: RunStrategy Once does not support manual restart requests",
            ),
            // start
            (Start, Halted, None, "runStrategy=Always"),
            (Start, Manual, None, "Start"),
            (Start, Manual, Some(&done), "Stopuid-1,Start"),
            (Start, Manual, Some(&failed), "Stopuid-1,Start"),
            (Start, RerunOnFailure, None, "Start"),
            (Start, RerunOnFailure, Some(&done), "Stopuid-1,Start"),
            (
                Start,
                RerunOnFailure,
                Some(&failed),
                "refused: RerunOnFailure does not support starting VM from failed state",
            ),
            (Start, Manual, Some(&run), "refused: VM is already running"),
            (Start, Halted, Some(&run), "refused: VM is already running"),
            // A VMI without a phase yet is not "running" for start.
            (Start, Manual, Some(&unset), "Start"),
            (
                Start,
                Always,
                None,
                "refused: Always does not support manual start requests",
            ),
            (
                Start,
                Once,
                None,
                "refused: Once does not support manual start requests",
            ),
            // stop
            (Stop, Always, Some(&run), "runStrategy=Halted"),
            (Stop, Once, None, "runStrategy=Halted"),
            (Stop, Manual, Some(&run), "Stopuid-1"),
            (Stop, RerunOnFailure, Some(&run), "Stopuid-1"),
            (Stop, Manual, None, "refused: VM is not running"),
            (Stop, Manual, Some(&done), "refused: VM is not running"),
            (Stop, Halted, None, "refused: VM is not running"),
            (
                Stop,
                Halted,
                Some(&run),
                "refused: Halted only supports manual stop requests with a shorter graceperiod",
            ),
        ];
        for (verb, strategy, vmi, want) in table {
            assert_eq!(
                d(verb, &vm(strategy), vmi),
                want,
                "{verb:?} on {strategy:?} with {:?}",
                vmi.and_then(phase)
            );
        }
    }

    #[test]
    fn a_queued_request_blocks_all_but_a_lone_stop() {
        let mut v = vm(RunStrategy::Manual);
        v.status = Some(VirtualMachineStatus {
            state_change_requests: vec![start()],
            ..Default::default()
        });
        let run = vmi(Some(VmiPhase::Running));
        assert_eq!(
            d(Power::Restart, &v, Some(&run)),
            format!("refused: {UNDERWAY}")
        );
        // A stop overrides a pending start (KubeVirt's replace).
        assert_eq!(d(Power::Stop, &v, Some(&run)), "Stopuid-1");
    }

    #[test]
    fn run_strategy_changes_use_the_field_the_vm_uses() {
        let mut v = vm(RunStrategy::Always);
        v.spec.run_strategy = None;
        v.spec.running = Some(true);
        let c = decide(Power::Stop, &v, None).unwrap();
        apply(&c, &mut v);
        assert_eq!((v.spec.run_strategy, v.spec.running), (None, Some(false)));
        let c = decide(Power::Start, &v, None).unwrap();
        apply(&c, &mut v);
        assert_eq!((v.spec.run_strategy, v.spec.running), (None, Some(true)));
        let mut v = vm(RunStrategy::Halted);
        apply(&decide(Power::Start, &v, None).unwrap(), &mut v);
        assert_eq!(v.spec.run_strategy, Some(RunStrategy::Always));
    }

    #[test]
    fn requests_are_written_into_the_status() {
        let mut v = vm(RunStrategy::Always);
        let run = vmi(Some(VmiPhase::Running));
        apply(&decide(Power::Restart, &v, Some(&run)).unwrap(), &mut v);
        let r = &v.status.unwrap().state_change_requests;
        assert_eq!(
            r.iter()
                .map(|r| (r.action, r.uid.clone()))
                .collect::<Vec<_>>(),
            vec![(P, Some("uid-1".into())), (S, None)]
        );
    }
}
