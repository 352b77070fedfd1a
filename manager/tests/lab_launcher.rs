//! A lab VM lives in its launcher pod, not in the agent (root; real
//! QEMU/TCG guest): the lab kubelet runs `mignet launcher` for the VMI's
//! launcher pod as a process of its own session, so
//! - killing the lab daemon (its migration controller, kubelets and every
//!   in-process agent) and starting a new one,
//! - and a network change, which rolls (restarts) every agent pod,
//!
//! leave the same launcher and the same QEMU running, the guest's `tick N`
//! still increasing in its serial.log; afterwards the node's new agent has
//! re-attached and migrates the VM to the other node (a new launcher pod
//! there; the old launcher and QEMU end).

mod lab_common;

use std::process::Stdio;
use std::time::Duration;

use lab_common::*;
use mignet::api::{VirtualMachineInstance, VmiPhase};
use mignet::lab::history::{self, PodStep};
use mignet::lab::lifecycle;
use mignet::store::Store;

const NODES: u32 = 2;
const VMI: &str = "vmi-fedora";

fn vmi(store: &Store) -> Option<VirtualMachineInstance> {
    store
        .get::<VirtualMachineInstance>("mignet-system", VMI)
        .unwrap()
}

fn agents_ready(lab: &Lab) -> Option<()> {
    let out = lab.ok(&[
        "get",
        "ds",
        "mignet-agent",
        "-o",
        "jsonpath={.status.numberReady}/{.status.updatedNumberScheduled}",
    ]);
    (out == format!("{NODES}/{NODES}")).then_some(())
}

/// The guest's last tick on node1, once it is past `after`.
fn tick_past(lab: &Lab, node: &str, after: u64, what: &str) -> u64 {
    wait_for(what, Duration::from_secs(60), || {
        last_tick(&serial_output(&lab.dir, node, VMI)).filter(|t| *t > after)
    })
}

/// The VM is untouched: same launcher and QEMU, Running on node1.
fn untouched(lab: &Lab, store: &Store, launcher: i32, qemu: i32) {
    assert!(pid_alive(launcher), "launcher {launcher} died");
    assert!(pid_alive(qemu), "QEMU {qemu} died");
    assert_eq!(lifecycle::launcher_processes(&lab.dir), vec![launcher]);
    assert_eq!(lifecycle::vm_processes(&lab.dir), vec![qemu]);
    assert_eq!(parent_pid(qemu), Some(launcher));
    let st = vmi(store).unwrap().status.unwrap();
    assert_eq!(
        (st.phase, st.node_name.as_deref()),
        (Some(VmiPhase::Running), Some("node1"))
    );
}

#[test]
fn a_vms_launcher_outlives_agent_restarts_and_a_network_roll() {
    let t_start = std::time::Instant::now();
    let lab = Lab::new("lch");
    up_with_seed_network(&lab, NODES);
    let ex = examples();
    let store = Store::open(lab.dir.join("store")).unwrap();
    lab.ok(&["create", "-f", ex.join("lab/vmi.yaml").to_str().unwrap()]);
    wait_for(
        "vmi-fedora Running on node1",
        Duration::from_secs(90),
        || {
            let st = vmi(&store)?.status?;
            (st.phase == Some(VmiPhase::Running) && st.node_name.as_deref() == Some("node1"))
                .then_some(())
        },
    );
    wait_for("guest memory filled", Duration::from_secs(120), || {
        serial_output(&lab.dir, "node1", VMI)
            .contains("mignet: ready")
            .then_some(())
    });
    let qemu = wait_for("the guest's QEMU", Duration::from_secs(30), || {
        let p = lifecycle::vm_processes(&lab.dir);
        (p.len() == 1).then(|| p[0])
    });
    let launcher = parent_pid(qemu).unwrap();
    untouched(&lab, &store, launcher, qemu);
    let t0 = tick_past(&lab, "node1", 0, "a tick");

    // 0. A second daemon for the same lab is refused: two would each run a
    //    controller, a kubelet and agents for the same nodes.
    let second = lab.run(&["lab", "daemon"]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("a lab daemon already runs for"), "{err}");

    // 1. The lab daemon dies (SIGKILL: no chance to tidy up) with its
    //    controller, kubelets and every in-process agent.
    let daemon = lab.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the daemon gone", Duration::from_secs(10), || {
        (!pid_alive(daemon)).then_some(())
    });
    let t1 = tick_past(&lab, "node1", t0, "ticks without any daemon or agent");
    untouched(&lab, &store, launcher, qemu);
    // A new daemon (as `lab daemon` by hand: it records itself).
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.dir.join("daemon.log"))
        .unwrap();
    let mut c = lab.cmd();
    c.args(["lab", "daemon"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let daemon2 = c.spawn().unwrap().id() as i32;
    wait_for("agents Ready again", Duration::from_secs(60), || {
        agents_ready(&lab)
    });
    let t2 = tick_past(&lab, "node1", t1, "ticks under the new daemon");
    untouched(&lab, &store, launcher, qemu);
    let pods = launcher_pods(&store);
    assert_eq!(pods.len(), 1);
    assert_eq!(
        (pods[0].1.as_deref(), pods[0].2.as_str()),
        (Some("node1"), "Running")
    );

    // 2. A network change: every agent pod is restarted, one at a time.
    let history_before = history::read(&lab.dir).unwrap().len();
    switch_to_second_network(&lab);
    wait_for(
        "every agent restarted on the new network",
        Duration::from_secs(120),
        || {
            let events = history::read(&lab.dir).unwrap().split_off(history_before);
            let ready: Vec<_> = events
                .iter()
                .filter(|e| {
                    e.step == PodStep::Ready
                        && e.networks.as_deref() == Some("second-network@migration0")
                })
                .map(|e| e.node.clone())
                .collect();
            untouched(&lab, &store, launcher, qemu);
            (ready.len() == NODES as usize).then_some(())
        },
    );
    let stops = history::read(&lab.dir)
        .unwrap()
        .split_off(history_before)
        .into_iter()
        .filter(|e| e.step == PodStep::Stopping)
        .count();
    assert_eq!(stops, NODES as usize, "each agent pod was restarted once");
    let t3 = tick_past(&lab, "node1", t2, "ticks after the roll");
    untouched(&lab, &store, launcher, qemu);
    println!("launcher {launcher}, QEMU {qemu}: ticks {t0} -> {t1} (no daemon) -> {t2} (new daemon) -> {t3} (after the roll)");

    // 3. The re-attached agent migrates it.
    lab.ok(&["create", "-f", ex.join("vmim.yaml").to_str().unwrap()]);
    wait_for("migration-job Succeeded", Duration::from_secs(300), || {
        let phase = lab.ok(&[
            "get",
            "vmim",
            "migration-job",
            "-o",
            "jsonpath={.status.phase}",
        ]);
        assert_ne!(phase, "Failed", "{:#?}", vmi(&store).and_then(|v| v.status));
        let st = vmi(&store)?.status?;
        (phase == "Succeeded" && st.node_name.as_deref() == Some("node2")).then_some(())
    });
    let t4 = tick_past(&lab, "node2", t3, "the guest ticking on node2");
    wait_for(
        "the source launcher and QEMU gone",
        Duration::from_secs(60),
        || (!pid_alive(launcher) && !pid_alive(qemu)).then_some(()),
    );
    let qemu2 = wait_for("one QEMU, on node2", Duration::from_secs(30), || {
        let p = lifecycle::vm_processes(&lab.dir);
        (p.len() == 1).then(|| p[0])
    });
    let launcher2 = parent_pid(qemu2).unwrap();
    assert_eq!(lifecycle::launcher_processes(&lab.dir), vec![launcher2]);
    wait_for(
        "one launcher pod, on node2",
        Duration::from_secs(30),
        || {
            let pods = launcher_pods(&store);
            (pods.len() == 1 && pods[0].1.as_deref() == Some("node2") && pods[0].2 == "Running")
                .then_some(())
        },
    );
    println!("migrated to node2 (launcher {launcher2}, QEMU {qemu2}), tick {t4}");

    lab.ok(&["lab", "down"]);
    assert!(!pid_alive(daemon2));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    println!("total {:.1} s", t_start.elapsed().as_secs_f64());
}

/// A launcher that fails: its pod ends Failed with the container's
/// terminated exit code and message (the termination log), and the
/// controller ends the VMI with that reason; nothing is left running.
#[test]
fn a_failing_launcher_fails_its_pod_and_vmi_with_the_reason() {
    let lab = Lab::new("lfail");
    lab.ok(&["lab", "up", "--nodes", "1"]);
    let store = Store::open(lab.dir.join("store")).unwrap();
    let vmi_yaml = std::env::temp_dir().join(format!("{}-bad.yaml", lab.prefix));
    std::fs::write(
        &vmi_yaml,
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: bad-cpu
  namespace: mignet-system
spec:
  domain:
    cpu:
      model: no-such-cpu-model
    memory:
      guest: 64Mi
"#,
    )
    .unwrap();
    lab.ok(&["create", "-f", vmi_yaml.to_str().unwrap()]);
    let _ = std::fs::remove_file(&vmi_yaml);
    let (pod, _, _) = wait_for("the launcher pod Failed", Duration::from_secs(60), || {
        launcher_pods(&store)
            .into_iter()
            .find(|(_, _, phase)| phase == "Failed")
    });
    let cs = &pod.status.unwrap().container_statuses.unwrap()[0];
    let t = cs.state.as_ref().unwrap().terminated.clone().unwrap();
    let message = t.message.unwrap_or_default();
    assert_eq!((cs.name.as_str(), t.exit_code), ("compute", 1), "{message}");
    // The launcher's own words (its termination log).
    assert!(message.contains("QEMU"), "{message}");
    let st = wait_for("the VMI Failed", Duration::from_secs(30), || {
        let st = store
            .get::<VirtualMachineInstance>("mignet-system", "bad-cpu")
            .unwrap()?
            .status?;
        (st.phase == Some(VmiPhase::Failed)).then_some(st)
    });
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    let why = ready.message.clone().unwrap_or_default();
    assert!(
        why.contains("launcher exited with code 1") && why.contains(&message),
        "{why}"
    );
    assert!(lifecycle::launcher_processes(&lab.dir).is_empty());
    assert!(lifecycle::vm_processes(&lab.dir).is_empty());
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
