//! Keeping migrations whole across a network change (pure).
//!
//! An agent restart cuts the streams it proxies, and agents on two
//! different networks cannot reach each other (KubeVirt issue 18765: the
//! migrations started during a switch fail). So a change of the agents'
//! network (first set, switch, removal) goes in two phases:
//!
//! 1. **Hold, then drain.** The rollout first writes the hold
//!    ([`reason::WAITING_FOR_MIGRATIONS`] on `MigrationNetworkReady`): the
//!    migration controller starts nothing new while it stands; new
//!    migrations stay Pending, queued, not failed. The migrations already
//!    running end on the network they started on; the DaemonSet is patched
//!    once none is left, or once the last one is past its completion budget
//!    (`completionTimeoutPerGiB` x its size, counted from its start: by then
//!    the agent aborts it anyway).
//! 2. **Switch.** While Ready agents still carry another network than the
//!    DaemonSet's template ([`reason::SWITCHING_AGENTS`]), the hold stays:
//!    a migration between an old and a new agent could not connect.
//!
//! [`migrations_held`] is what the migration controller reads: the
//! condition alone, so the rollout is the one writer of the hold.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::decide::reason;

/// How long the hold must have been written before the DaemonSet is
/// patched, by default: a controller pass that read the HyperConverged
/// just before the hold may still start a migration; it shows up as in
/// flight by then. (Zero: patch in the pass that writes the hold, for
/// tests of the rollout alone.)
pub const HOLD_SETTLE: Duration = Duration::from_secs(2);

/// What the rollout remembers between passes (lost on restart: the next
/// pass then probes and holds afresh, the safe side).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutMemory {
    /// The last failed pre-flight round.
    pub failed: Option<super::preflight::FailedRound>,
    /// The round (network hash) that passed and is not rolled out yet.
    pub passed: Option<String>,
    /// Since when the hold for this hash stands.
    pub hold_since: Option<(String, Timestamp)>,
    /// The probe pods have been looked for since this process started
    /// (stale ones from before a restart are removed once), and whether a
    /// round may still have pods out.
    pub swept: bool,
    pub probes_out: bool,
    /// For `/metrics`.
    pub stats: super::preflight::PreflightStats,
}

/// A migration in flight, as the drain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    /// `namespace/name` of the VMIM.
    pub name: String,
    pub started: Timestamp,
    /// Its completion budget (`completionTimeoutPerGiB` x size).
    pub budget: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// Patch the DaemonSet now; `overdue` names migrations still in flight
    /// past their budget (said in the log: they will be cut).
    Go { overdue: Vec<String> },
    /// Keep the hold and wait; pass again after `recheck`.
    Wait { message: String, recheck: Duration },
}

/// Decide whether the agents may restart onto the new network now.
pub fn drain(
    hold_since: Option<Timestamp>,
    in_flight: &[InFlight],
    settle: Duration,
    now: Timestamp,
) -> Drain {
    let since = hold_since.unwrap_or(now);
    let held_for = now.duration_since(since).unsigned_abs();
    let settling = hold_since.is_none() && !settle.is_zero() || held_for < settle;
    let deadline = |m: &InFlight| m.started + m.budget;
    let (overdue, running): (Vec<&InFlight>, Vec<&InFlight>) =
        in_flight.iter().partition(|m| deadline(m) <= now);
    if running.is_empty() {
        if settling {
            return Drain::Wait {
                message: "holding new migrations before the agents restart".into(),
                recheck: settle.saturating_sub(held_for),
            };
        }
        return Drain::Go {
            overdue: overdue.iter().map(|m| m.name.clone()).collect(),
        };
    }
    let last = running.iter().map(|m| deadline(m)).max().unwrap_or(now);
    let mut names: Vec<&str> = running.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    const SHOWN: usize = 5;
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let mut list = names.join(", ");
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    Drain::Wait {
        message: format!(
            "waiting for {} migration{} in flight to end before the agents restart ({list}; at the latest until {}); new migrations wait",
            running.len(),
            if running.len() == 1 { "" } else { "s" },
            last.round(k8s_openapi::jiff::Unit::Second).unwrap_or(last),
        ),
        recheck: Duration::from_secs(1),
    }
}

/// Whether Ready agents carry a network other than the template's: the
/// DaemonSet's `mignet.io/migration-network-hash` against each Ready agent
/// pod's (`None` = the pod network). An agent that is not Ready takes no
/// migration, so it cannot mix.
pub fn agents_mixed<'a>(
    template_hash: Option<&str>,
    ready_agent_hashes: impl IntoIterator<Item = Option<&'a str>>,
) -> bool {
    ready_agent_hashes.into_iter().any(|h| h != template_hash)
}

/// The hold as the migration controller reads it: the reason of the
/// `MigrationNetworkReady` condition. `Some(message)` = start nothing new.
pub fn migrations_held(condition_reason: &str, condition_message: &str) -> Option<String> {
    matches!(
        condition_reason,
        reason::WAITING_FOR_MIGRATIONS | reason::SWITCHING_AGENTS
    )
    .then(|| format!("the migration network is changing: {condition_message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn m(name: &str, started: i64, budget: u64) -> InFlight {
        InFlight {
            name: name.into(),
            started: t(started),
            budget: Duration::from_secs(budget),
        }
    }

    #[test]
    fn the_hold_settles_then_waits_for_each_migration_within_its_budget() {
        let s = HOLD_SETTLE;
        // No hold yet: write it first, whatever runs.
        assert!(matches!(drain(None, &[], s, t(0)), Drain::Wait { .. }));
        // Just written: a controller pass may still be starting one.
        assert!(matches!(
            drain(Some(t(0)), &[], s, t(1)),
            Drain::Wait { .. }
        ));
        // Settled and nothing in flight: go.
        assert_eq!(
            drain(Some(t(0)), &[], s, t(2)),
            Drain::Go { overdue: vec![] }
        );
        // No settle asked: the pass that holds may go.
        assert_eq!(
            drain(None, &[], Duration::ZERO, t(0)),
            Drain::Go { overdue: vec![] }
        );
        // A 1 GiB VM at 800 s/GiB started at 0: wait until 800.
        let one = [m("default/vm-a-mig", 0, 800)];
        let Drain::Wait { message, .. } = drain(Some(t(0)), &one, s, t(10)) else {
            panic!()
        };
        assert!(message.contains("1 migration in flight"), "{message}");
        assert!(message.contains("default/vm-a-mig"), "{message}");
        assert!(message.contains("new migrations wait"), "{message}");
        // Past its budget: the agent aborts it anyway; go, and name it.
        assert_eq!(
            drain(Some(t(0)), &one, s, t(800)),
            Drain::Go {
                overdue: vec!["default/vm-a-mig".into()]
            }
        );
        // The last deadline bounds the wait.
        let two = [m("ns/a", 0, 100), m("ns/b", 50, 800)];
        assert!(matches!(
            drain(Some(t(0)), &two, s, t(200)),
            Drain::Wait { .. }
        ));
        assert!(matches!(
            drain(Some(t(0)), &two, s, t(850)),
            Drain::Go { .. }
        ));
    }

    #[test]
    fn ready_agents_on_another_network_hold_migrations() {
        assert!(!agents_mixed(Some("h2"), [Some("h2"), Some("h2")]));
        assert!(agents_mixed(Some("h2"), [Some("h1"), Some("h2")]));
        // Back to the pod network: an agent still on a NAD mixes.
        assert!(agents_mixed(None, [Some("h1"), None]));
        assert!(!agents_mixed(None, [None, None]));
        assert!(migrations_held(reason::SWITCHING_AGENTS, "x").is_some());
        assert!(migrations_held(reason::WAITING_FOR_MIGRATIONS, "x").is_some());
        for r in [
            reason::ROLLING_OUT,
            reason::ROLLED_OUT,
            reason::PREFLIGHT_RUNNING,
            reason::PREFLIGHT_FAILED,
        ] {
            assert_eq!(migrations_held(r, "x"), None, "{r}");
        }
    }
}
