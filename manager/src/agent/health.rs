//! What keeps the agent from being ready besides its migration IP: gates
//! the loops close with a reason (no certificate yet, the migration config
//! cannot be read) and warnings that do not block (an invalid config the
//! agent replaces by the defaults, as the controller does). `/readyz` shows
//! them; nothing is dropped silently.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A reason the agent is not ready, other than the migration IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Gate {
    /// No valid agent certificate in the cert dir yet (cluster mode: the
    /// CSR is not issued yet).
    Certificate,
    /// The HyperConverged holding the migration config cannot be read;
    /// migration decisions wait until it can.
    MigrationConfig,
}

/// Something the operator should see that does not stop the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Warning {
    /// `liveMigrationConfig` is invalid: defaults are used meanwhile.
    InvalidMigrationConfig,
}

/// Shared between the loops that open/close gates and the readiness
/// reporter. Cheap; a poisoned lock reads as "no news" rather than panic.
#[derive(Debug, Default)]
pub struct AgentHealth {
    gates: Mutex<BTreeMap<Gate, String>>,
    warnings: Mutex<BTreeMap<Warning, String>>,
}

impl AgentHealth {
    /// Close `gate` with `reason` (replacing an earlier reason). Returns
    /// whether anything changed, so callers log only transitions.
    pub fn block(&self, gate: Gate, reason: impl Into<String>) -> bool {
        let reason = reason.into();
        self.gates
            .lock()
            .map(|mut g| g.insert(gate, reason.clone()).as_ref() != Some(&reason))
            .unwrap_or(false)
    }

    /// Open `gate`; returns whether it was closed.
    pub fn clear(&self, gate: Gate) -> bool {
        self.gates
            .lock()
            .map(|mut g| g.remove(&gate).is_some())
            .unwrap_or(false)
    }

    /// Set or clear a warning; returns whether it changed.
    pub fn warn(&self, warning: Warning, message: Option<String>) -> bool {
        let Ok(mut w) = self.warnings.lock() else {
            return false;
        };
        match message {
            Some(m) => w.insert(warning, m.clone()).as_ref() != Some(&m),
            None => w.remove(&warning).is_some(),
        }
    }

    /// The closed gates' reasons, in a fixed order.
    pub fn blockers(&self) -> Vec<String> {
        self.gates
            .lock()
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_report_transitions_and_reasons() {
        let h = AgentHealth::default();
        assert!(h.blockers().is_empty());
        assert!(h.block(Gate::MigrationConfig, "reading HyperConverged: 403"));
        assert!(!h.block(Gate::MigrationConfig, "reading HyperConverged: 403"));
        assert!(h.block(Gate::Certificate, "no certificate yet"));
        assert_eq!(
            h.blockers(),
            vec!["no certificate yet", "reading HyperConverged: 403"]
        );
        assert!(h.clear(Gate::Certificate));
        assert!(!h.clear(Gate::Certificate));
        assert!(h.warn(Warning::InvalidMigrationConfig, Some("bad".into())));
        assert!(!h.warn(Warning::InvalidMigrationConfig, Some("bad".into())));
        assert_eq!(h.warnings(), vec!["bad"]);
        assert!(h.warn(Warning::InvalidMigrationConfig, None));
    }
}
