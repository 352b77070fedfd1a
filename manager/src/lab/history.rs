//! The lab's own record of agent pod restarts: one JSON line per step the
//! kubelet stand-in takes (`Stopping`, `Stopped`, `Starting`, `Ready`,
//! `NotReady`), appended to `<dir>/agent-pods.jsonl` as it happens.
//!
//! Why a file and not the store's event channel: a broadcast receiver that
//! falls behind loses events (or sees a pod's Deleted and Added coalesced
//! into its later state), so "at most one agent down at any moment" counted
//! from events can be fooled by load. The history is written by the only
//! actor that stops and starts pods, in the order it does so, and read
//! afterwards in full: [`availability`] over it is exact. It is also
//! readable from another process (the background daemon writes it, tests and
//! `lab status` read it).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LabError;

/// File name under the lab directory.
pub const HISTORY_FILE: &str = "agent-pods.jsonl";

pub fn history_file(lab_dir: &Path) -> PathBuf {
    lab_dir.join(HISTORY_FILE)
}

/// One step of an agent pod's life, as the kubelet stand-in took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodStep {
    /// About to stop the agent and detach the pod's networks: unavailable
    /// from here.
    Stopping,
    /// Networks detached, namespace and Pod object gone.
    Stopped,
    /// About to create the Pod object, namespace and networks.
    Starting,
    /// Networks attached, agent started, Pod Ready: available again.
    Ready,
    /// Created but not Ready (a NAD missing, CNI ADD failed, agent did not
    /// start): still unavailable; retried later.
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    /// Milliseconds since the Unix epoch (for people reading the file; the
    /// order of the lines is what [`availability`] relies on).
    pub at_ms: i64,
    pub node: String,
    pub pod: String,
    pub step: PodStep,
    /// The pod's `k8s.v1.cni.cncf.io/networks` annotation (Starting, Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<String>,
    /// Why a pod is NotReady (reason: message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Append one event. The single writer is the lab's control loop; a line
/// is written with one `write` call on an `O_APPEND` file, so a reader never
/// sees half of one next to a later one.
pub fn append(lab_dir: &Path, event: &PodEvent) -> Result<(), LabError> {
    let path = history_file(lab_dir);
    let mut line = serde_json::to_vec(event).expect("event serialises");
    line.push(b'\n');
    let io = |source| LabError::Io {
        op: "appending to",
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    f.write_all(&line).map_err(io)
}

/// Every recorded event, oldest first (empty when none was recorded). A
/// torn last line (a crash mid-write) is ignored; a corrupt line elsewhere is
/// an error.
pub fn read(lab_dir: &Path) -> Result<Vec<PodEvent>, LabError> {
    let path = history_file(lab_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io {
                op: "reading",
                path,
                source,
            })
        }
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(e) => out.push(e),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(source) => {
                return Err(LabError::State {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// What a stretch of history says about availability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Availability {
    /// The most agent pods unavailable at the same moment.
    pub max_down: usize,
    /// Nodes in the order their pods were stopped (one entry per stop).
    pub stop_order: Vec<String>,
    /// Nodes in the order their pods became Ready (one entry per Ready).
    pub ready_order: Vec<String>,
    /// Nodes whose pod was unavailable at the end of the stretch.
    pub down_at_end: BTreeSet<String>,
}

/// Replay `events` (a stretch that starts with every pod up, e.g. the
/// events after the lab's agents were all Ready): a node is down from its
/// `Stopping` (or `Starting`, for a pod that did not exist) until its
/// `Ready`. Pure.
pub fn availability(events: &[PodEvent]) -> Availability {
    let mut a = Availability::default();
    for e in events {
        match e.step {
            PodStep::Stopping => {
                a.stop_order.push(e.node.clone());
                a.down_at_end.insert(e.node.clone());
            }
            PodStep::Starting => {
                a.down_at_end.insert(e.node.clone());
            }
            PodStep::Ready => {
                a.ready_order.push(e.node.clone());
                a.down_at_end.remove(&e.node);
            }
            PodStep::Stopped | PodStep::NotReady => {}
        }
        a.max_down = a.max_down.max(a.down_at_end.len());
    }
    a
}

/// Record `step` for `node`'s pod; a failure to record is logged, never
/// fatal (the history describes the roll, it does not drive it).
pub(crate) fn record(
    lab_dir: &Path,
    node: &str,
    pod: &str,
    step: PodStep,
    networks: Option<&str>,
    reason: Option<String>,
) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let event = PodEvent {
        at_ms,
        node: node.to_owned(),
        pod: pod.to_owned(),
        step,
        networks: networks.map(str::to_owned),
        reason,
    };
    if let Err(e) = append(lab_dir, &event) {
        tracing::warn!(error = %e, %node, ?step, "recording the agent pod history failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(node: &str, step: PodStep) -> PodEvent {
        PodEvent {
            at_ms: 0,
            node: node.into(),
            pod: format!("mignet-agent-{node}"),
            step,
            networks: None,
            reason: None,
        }
    }

    #[test]
    fn one_at_a_time_roll() {
        use PodStep::*;
        let mut events = Vec::new();
        for n in ["node1", "node2", "node3"] {
            events.extend([
                ev(n, Stopping),
                ev(n, Stopped),
                ev(n, Starting),
                ev(n, Ready),
            ]);
        }
        let a = availability(&events);
        assert_eq!(a.max_down, 1);
        assert_eq!(a.stop_order, ["node1", "node2", "node3"]);
        assert_eq!(a.ready_order, ["node1", "node2", "node3"]);
        assert!(a.down_at_end.is_empty());
    }

    #[test]
    fn overlapping_restarts_and_failures_count() {
        use PodStep::*;
        let events = [
            ev("node1", Stopping),
            ev("node1", Stopped),
            ev("node1", Starting),
            ev("node1", NotReady),
            // node2 taken down while node1 is not back: two down.
            ev("node2", Stopping),
            ev("node1", Starting),
            ev("node1", Ready),
        ];
        let a = availability(&events);
        assert_eq!(a.max_down, 2);
        assert_eq!(a.down_at_end, BTreeSet::from(["node2".to_owned()]));
    }

    #[test]
    fn file_round_trip_ignores_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("mignet-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(history_file(&dir));
        assert!(read(&dir).unwrap().is_empty());
        append(&dir, &ev("node1", PodStep::Stopping)).unwrap();
        append(&dir, &ev("node1", PodStep::Ready)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(history_file(&dir))
            .unwrap();
        f.write_all(b"{\"at_ms\":1,\"no").unwrap();
        let got = read(&dir).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].step, PodStep::Ready);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
