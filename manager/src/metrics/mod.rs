//! Manager metrics: plain atomic counters rendered in the Prometheus text
//! format. Labels are fixed strings (error kinds, results), never Debug text,
//! so series cannot explode. Other families (the migration metrics of
//! [`migration`]) are computed elsewhere and handed in as [`text::Family`]
//! values: [`Metrics::set_section`] replaces a whole section at once, so a
//! series that is no longer computed disappears.

pub mod migration;
pub mod text;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use migration::AgentMigrations;
use text::Family;

/// Error kinds the rollout controller reports (`RolloutError::label`).
pub const ROLLOUT_ERROR_KINDS: [&str; 5] = [
    "no_namespace",
    "get",
    "patch_daemonset",
    "patch_status",
    "crd_missing",
];

#[derive(Debug, Default)]
pub struct Metrics {
    ready: AtomicBool,
    /// What `/readyz` says (why not ready, or warnings while ready); `None`
    /// = the manager's fixed texts.
    readiness_detail: Mutex<Option<String>>,
    reconciles_ok: AtomicU64,
    reconcile_errors: [AtomicU64; ROLLOUT_ERROR_KINDS.len()],
    daemonset_patches: AtomicU64,
    status_patches: AtomicU64,
    reconcile_micros_sum: AtomicU64,
    /// Families computed by others, by section name, in a fixed order.
    sections: Mutex<BTreeMap<&'static str, Vec<Family>>>,
    /// The agent's running migrations and the node it runs on, read at
    /// each scrape.
    agent: Mutex<Option<(String, Arc<AgentMigrations>)>>,
}

impl Metrics {
    /// Ready = the controller has checked its CRDs and started watching.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Readiness with the reason `/readyz` reports (the agent: which gate is
    /// closed, or warnings such as an invalid migration config).
    pub fn set_readiness(&self, ready: bool, detail: impl Into<String>) {
        if let Ok(mut d) = self.readiness_detail.lock() {
            *d = Some(detail.into());
        }
        self.set_ready(ready);
    }

    /// The detail set with [`Metrics::set_readiness`], if any.
    pub fn readiness_detail(&self) -> Option<String> {
        self.readiness_detail.lock().ok().and_then(|d| d.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn reconcile_ok(&self, micros: u64) {
        self.reconciles_ok.fetch_add(1, Ordering::Relaxed);
        self.reconcile_micros_sum
            .fetch_add(micros, Ordering::Relaxed);
    }

    pub fn reconcile_error(&self, kind: &str) {
        if let Some(i) = ROLLOUT_ERROR_KINDS.iter().position(|k| *k == kind) {
            self.reconcile_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn daemonset_patched(&self) {
        self.daemonset_patches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status_patched(&self) {
        self.status_patches.fetch_add(1, Ordering::Relaxed);
    }

    /// Replaces section `name`'s families (all of them: what is not given
    /// again is gone).
    pub fn set_section(&self, name: &'static str, families: Vec<Family>) {
        if let Ok(mut s) = self.sections.lock() {
            s.insert(name, families);
        }
    }

    /// Serve the migration families of an agent on `node`.
    pub fn set_agent(&self, node: &str, migrations: Arc<AgentMigrations>) {
        if let Ok(mut a) = self.agent.lock() {
            *a = Some((node.to_string(), migrations));
        }
    }

    pub fn render(&self) -> String {
        let mut out = self.render_rollout();
        if let Ok(s) = self.sections.lock() {
            for families in s.values() {
                text::render_into(&mut out, families);
            }
        }
        let agent = self.agent.lock().ok().and_then(|a| a.clone());
        if let Some((node, m)) = agent {
            text::render_into(&mut out, &m.families(&node));
        }
        out
    }

    fn render_rollout(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let ok = get(&self.reconciles_ok);
        let _ = writeln!(
            out,
            "# HELP mignet_rollout_reconciles_total Successful network rollout reconciles.\n\
             # TYPE mignet_rollout_reconciles_total counter\n\
             mignet_rollout_reconciles_total {ok}"
        );
        let _ = writeln!(
            out,
            "# HELP mignet_rollout_reconcile_errors_total Failed reconciles by error kind.\n\
             # TYPE mignet_rollout_reconcile_errors_total counter"
        );
        for (kind, n) in ROLLOUT_ERROR_KINDS.iter().zip(&self.reconcile_errors) {
            let _ = writeln!(
                out,
                "mignet_rollout_reconcile_errors_total{{kind=\"{kind}\"}} {}",
                get(n)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mignet_rollout_daemonset_patches_total Agent DaemonSet annotation changes.\n\
             # TYPE mignet_rollout_daemonset_patches_total counter\n\
             mignet_rollout_daemonset_patches_total {}",
            get(&self.daemonset_patches)
        );
        let _ = writeln!(
            out,
            "# HELP mignet_rollout_status_patches_total HyperConverged status writes.\n\
             # TYPE mignet_rollout_status_patches_total counter\n\
             mignet_rollout_status_patches_total {}",
            get(&self.status_patches)
        );
        let _ = writeln!(
            out,
            "# HELP mignet_rollout_reconcile_duration_seconds Time spent in successful reconciles.\n\
             # TYPE mignet_rollout_reconcile_duration_seconds summary\n\
             mignet_rollout_reconcile_duration_seconds_sum {:.6}\n\
             mignet_rollout_reconcile_duration_seconds_count {ok}",
            get(&self.reconcile_micros_sum) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP mignet_manager_ready Whether the controller is watching.\n\
             # TYPE mignet_manager_ready gauge\n\
             mignet_manager_ready {}",
            u8::from(self.is_ready())
        );
        out
    }
}

/// The manager's pre-flight families: `mignet_preflight_rounds_total{result}`
/// and, for the network that stands refused, one
/// `mignet_preflight_failures{node, peer, reason}` series per finding (gone
/// once a round passes).
pub fn preflight_families(stats: &crate::network::preflight::PreflightStats) -> Vec<text::Family> {
    use text::{Family, Kind};
    let rounds = Family::new(
        "mignet_preflight_rounds_total",
        Kind::Counter,
        "Pre-flight rounds of a migration network, by result.",
    )
    .with(vec![("result", "passed".into())], stats.passed as f64)
    .with(vec![("result", "failed".into())], stats.failed as f64);
    let mut failures = Family::new(
        "mignet_preflight_failures",
        Kind::Gauge,
        "Nodes and node pairs the last failed pre-flight round found wrong (1 each).",
    );
    for f in &stats.findings {
        failures.push(
            vec![
                ("node", f.node.clone()),
                ("peer", f.peer.clone().unwrap_or_default()),
                ("reason", f.failure.reason.as_str().into()),
            ],
            1.0,
        );
    }
    vec![rounds, failures]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fixed_series() {
        let m = Metrics::default();
        m.reconcile_ok(1500);
        m.reconcile_error("patch_status");
        m.reconcile_error("not-a-kind");
        m.daemonset_patched();
        let text = m.render();
        assert!(
            text.contains("mignet_rollout_reconciles_total 1\n"),
            "{text}"
        );
        assert!(text.contains("mignet_rollout_reconcile_errors_total{kind=\"patch_status\"} 1\n"));
        assert!(text.contains("mignet_rollout_reconcile_errors_total{kind=\"get\"} 0\n"));
        assert!(!text.contains("not-a-kind"));
        assert!(text.contains("mignet_rollout_daemonset_patches_total 1\n"));
        assert!(text.contains("mignet_rollout_reconcile_duration_seconds_sum 0.001500\n"));
        assert!(text.contains("mignet_manager_ready 0\n"));
    }

    #[test]
    fn a_section_replaced_drops_its_old_series() {
        let m = Metrics::default();
        let f = |v| {
            vec![text::Family::new("g", text::Kind::Gauge, "g").with(vec![("a", "x".into())], v)]
        };
        m.set_section("s", f(1.0));
        assert!(m.render().contains("g{a=\"x\"} 1\n"));
        m.set_section("s", vec![]);
        assert!(!m.render().contains("g{a="), "{}", m.render());
        let agent = Arc::new(AgentMigrations::default());
        m.set_agent("n1", agent.clone());
        agent
            .tls_failures()
            .count(mignet_dataplane::proxy::HandshakeFailure::Timeout);
        assert!(m
            .render()
            .contains("mignet_tls_handshake_failures_total{reason=\"timeout\"} 1\n"));
    }

    #[test]
    fn preflight_rounds_and_standing_failures() {
        let stats = crate::network::preflight::PreflightStats {
            passed: 2,
            failed: 1,
            findings: vec![crate::network::preflight::Finding {
                node: "node1".into(),
                peer: Some("node3".into()),
                failure: crate::network::preflight::Failure {
                    reason: crate::network::preflight::FailureReason::Mtu,
                    detail: "x".into(),
                },
            }],
        };
        let text = text::render(&preflight_families(&stats));
        assert!(
            text.contains("mignet_preflight_rounds_total{result=\"failed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "mignet_preflight_failures{node=\"node1\",peer=\"node3\",reason=\"MTU\"} 1\n"
            ),
            "{text}"
        );
    }
}
