//! The lab's control loop in-process: a network change restarts the agent
//! pods one node at a time (never two down at once, judged from the
//! kubelet's recorded history, not from a lossy event stream), and the agent
//! runtime hook sees each pod's migration address (root).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use mignet::cli::{run_on, Verb};
use mignet::lab::agent_pods::{AgentPod, AgentRuntime};
use mignet::lab::history::{self, PodStep};
use mignet::lab::{daemon, lifecycle, LabConfig, LAB_NAMESPACE};
use mignet::store::Store;
use serde_json::Value;

#[derive(Default)]
struct Recorder(Mutex<Vec<(&'static str, AgentPod)>>);

impl AgentRuntime for Recorder {
    fn start(&self, pod: &AgentPod) -> Result<(), String> {
        self.0.lock().unwrap().push(("start", pod.clone()));
        Ok(())
    }
    fn stop(&self, pod: &AgentPod) {
        self.0.lock().unwrap().push(("stop", pod.clone()));
    }
}

/// Stops the loop, then removes the lab, even on panic.
struct Running {
    cfg: LabConfig,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let r = lifecycle::destroy(&self.cfg.dir);
        if !std::thread::panicking() {
            let r = r.unwrap();
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
    }
}

fn config() -> LabConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "mlr{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    LabConfig {
        dir: std::env::temp_dir().join(format!("{prefix}-lab")),
        prefix,
        nodes: 3,
    }
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn pod_ready(v: &Value) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

#[test]
fn network_change_rolls_agents_one_node_at_a_time() {
    let cfg = config();
    lifecycle::create(&cfg).expect("lab up (are the CNI plugins built? cargo build -p mignet-cni)");
    let store = Arc::new(Store::open(cfg.store_dir()).unwrap());
    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (cfg, store, recorder, stop) =
            (cfg.clone(), store.clone(), recorder.clone(), stop.clone());
        std::thread::spawn(move || daemon::run_with_store(&cfg, &store, &*recorder, &stop).unwrap())
    };
    let _running = Running {
        cfg: cfg.clone(),
        stop,
        thread: Some(thread),
    };
    assert!(lifecycle::wait_for_agents(&cfg, Duration::from_secs(60)).unwrap());
    // Everything before this point is the lab coming up; the roll is what
    // the kubelet records after it.
    let before = history::read(&cfg.dir).unwrap().len();
    recorder.0.lock().unwrap().clear();

    for f in ["nad.yaml", "hyperconverged.yaml"] {
        run_on(
            &store,
            Verb::Apply {
                files: vec![examples().join(f)],
                namespace: LAB_NAMESPACE.into(),
            },
        )
        .unwrap();
    }

    // Wait until the kubelet's history (written after each pod's Ready
    // status) shows all three pods back on the network; the history holds
    // every step in the order it was taken, so judging the roll from it is
    // exact however late this thread looks.
    let on_network = |e: &history::PodEvent| {
        e.step == PodStep::Ready && e.networks.as_deref() == Some("my-secondary-network@migration0")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = history::read(&cfg.dir).unwrap().split_off(before);
        let back: BTreeSet<&str> = events
            .iter()
            .filter(|e| on_network(e))
            .map(|e| e.node.as_str())
            .collect();
        if back.len() == 3 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not finish; history since the change: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The store agrees: every pod Ready with the network annotation.
    for p in store.list::<Pod>(Some(LAB_NAMESPACE)).unwrap() {
        let v = serde_json::to_value(&p).unwrap();
        assert!(pod_ready(&v), "{v}");
        assert_eq!(
            v.pointer("/metadata/annotations/k8s.v1.cni.cncf.io~1networks")
                .and_then(Value::as_str),
            Some("my-secondary-network@migration0")
        );
    }
    let a = history::availability(&events);
    assert_eq!(a.max_down, 1, "maxUnavailable = 1: {events:?}");
    assert_eq!(a.stop_order, vec!["node1", "node2", "node3"]);
    assert_eq!(a.ready_order, vec!["node1", "node2", "node3"]);
    assert!(a.down_at_end.is_empty(), "{a:?}");
    // Each pod came back with the new network annotation.
    for e in events.iter().filter(|e| e.step == PodStep::Ready) {
        assert_eq!(
            e.networks.as_deref(),
            Some("my-secondary-network@migration0"),
            "{e:?}"
        );
    }
    // Stop, stopped, start, ready: strictly per node, never interleaved.
    let steps: Vec<(PodStep, &str)> = events.iter().map(|e| (e.step, e.node.as_str())).collect();
    let want: Vec<(PodStep, &str)> = ["node1", "node2", "node3"]
        .into_iter()
        .flat_map(|n| {
            [
                (PodStep::Stopping, n),
                (PodStep::Stopped, n),
                (PodStep::Starting, n),
                (PodStep::Ready, n),
            ]
        })
        .collect();
    assert_eq!(steps, want);

    // The runtime hook: stopped, then started with the pod's migration0
    // address, per node in the same order.
    let calls = recorder.0.lock().unwrap().clone();
    let seq: Vec<(&str, String)> = calls.iter().map(|(w, p)| (*w, p.node.clone())).collect();
    let want: Vec<(&str, String)> = ["node1", "node2", "node3"]
        .iter()
        .flat_map(|n| [("stop", n.to_string()), ("start", n.to_string())])
        .collect();
    assert_eq!(seq, want);
    let mut ips = BTreeSet::new();
    for (what, pod) in calls.iter().filter(|(w, _)| *w == "start") {
        assert_eq!(*what, "start");
        assert_eq!(pod.netns, format!("{}-agent-{}", cfg.prefix, pod.node));
        assert_eq!(pod.networks.len(), 1, "{pod:?}");
        let (iface, addrs) = &pod.networks[0];
        assert_eq!(iface, "migration0");
        assert!(
            addrs[0].starts_with("10.200.5.") && addrs[0].ends_with("/24"),
            "{addrs:?}"
        );
        ips.insert(addrs[0].clone());
    }
    assert_eq!(ips.len(), 3, "distinct addresses");
}
