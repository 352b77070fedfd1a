//! The HyperConverged's conditions (pure): replace one condition type, keep
//! `lastTransitionTime` unless the status flipped, and say whether anything
//! changed so an unchanged status is never re-written (a write would wake our
//! own watch for nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::decide::{ConditionSpec, CONDITION_TYPE};

/// Condition reporting whether `liveMigrationConfig` as a whole is valid.
pub const CONFIG_CONDITION_TYPE: &str = "MigrationConfigValid";

/// Returns the new list when it differs from `existing`, else None.
pub fn set_condition(
    existing: &[Condition],
    type_: &str,
    spec: &ConditionSpec,
    observed_generation: Option<i64>,
    now: Time,
) -> Option<Vec<Condition>> {
    let status = if spec.status { "True" } else { "False" };
    let old = existing.iter().find(|c| c.type_ == type_);
    if let Some(old) = old {
        if old.status == status
            && old.reason == spec.reason
            && old.message == spec.message
            && old.observed_generation == observed_generation
        {
            return None;
        }
    }
    let last_transition_time = match old {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => now,
    };
    let new = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: spec.reason.to_owned(),
        message: spec.message.clone(),
        observed_generation,
        last_transition_time,
    };
    let mut out: Vec<Condition> = existing.to_vec();
    match out.iter_mut().find(|c| c.type_ == type_) {
        Some(slot) => *slot = new,
        None => out.push(new),
    }
    Some(out)
}

/// The HyperConverged's conditions after one rollout pass: the network
/// condition the rollout decided plus `MigrationConfigValid` from the
/// effective config. One function, so cluster and lab mode report exactly
/// the same conditions. `None` = nothing changed (no status write needed).
pub fn hco_conditions<E: std::fmt::Display>(
    existing: &[Condition],
    observed_generation: Option<i64>,
    network: &ConditionSpec,
    config: Result<(), E>,
    now: Time,
) -> Option<Vec<Condition>> {
    let config_condition = match config {
        Ok(()) => ConditionSpec {
            status: true,
            reason: "Valid",
            message: "liveMigrationConfig is valid".into(),
        },
        Err(e) => ConditionSpec {
            status: false,
            reason: "InvalidField",
            message: e.to_string(),
        },
    };
    let after_network = set_condition(
        existing,
        CONDITION_TYPE,
        network,
        observed_generation,
        now.clone(),
    );
    let base = after_network.clone().unwrap_or_else(|| existing.to_vec());
    let after_config = set_condition(
        &base,
        CONFIG_CONDITION_TYPE,
        &config_condition,
        observed_generation,
        now,
    );
    after_config.or(after_network)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn spec(status: bool, reason: &'static str, msg: &str) -> ConditionSpec {
        ConditionSpec {
            status,
            reason,
            message: msg.into(),
        }
    }

    #[test]
    fn transition_time_moves_only_on_status_flip() {
        let c1 = set_condition(&[], "X", &spec(false, "A", "m"), Some(1), t(10)).unwrap();
        assert_eq!(c1[0].last_transition_time, t(10));
        assert_eq!(
            set_condition(&c1, "X", &spec(false, "A", "m"), Some(1), t(20)),
            None
        );
        let c2 = set_condition(&c1, "X", &spec(false, "B", "m2"), Some(1), t(20)).unwrap();
        assert_eq!(
            c2[0].last_transition_time,
            t(10),
            "same status keeps the time"
        );
        assert_eq!(c2[0].reason, "B");
        let c3 = set_condition(&c2, "X", &spec(true, "C", "ok"), Some(2), t(30)).unwrap();
        assert_eq!(c3[0].last_transition_time, t(30));
        assert_eq!(c3[0].status, "True");
        assert_eq!(c3.len(), 1);
        let c4 = set_condition(&c3, "Y", &spec(true, "D", ""), Some(2), t(40)).unwrap();
        assert_eq!(c4.len(), 2);
    }
}
