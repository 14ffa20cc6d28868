//! Types shared by the three kinds: conditions, replica bounds, resources and env vars.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A `metav1.Condition`-shaped status condition. `conditions` lists are keyed by `type`, so
/// the API server itself refuses a duplicated condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition in CamelCase: Ready, Reconciling, Stalled, or a kind-specific one.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// A CamelCase, machine-readable reason for the last transition.
    pub reason: String,
    /// A human-readable message saying what happened and, on failure, what to fix.
    #[serde(default)]
    pub message: String,
}

impl Condition {
    /// A condition stamped with the generation it was computed from and the time `at`.
    pub fn new(
        type_: &str,
        status: &str,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
        at: impl Into<String>,
    ) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            observed_generation: generation,
            last_transition_time: at.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// RFC 3339 with second precision in UTC, as `metav1.Time` serialises.
pub fn format_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 time of a status; None when absent or malformed.
pub fn parse_time(s: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The well-known condition statuses.
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// The condition types every kind carries (kstatus-compatible). `Ready` is always present;
/// `Reconciling` and `Stalled` are "abnormal-true" and present only while True (see
/// [`set_kstatus_conditions`]).
pub mod condition_type {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

/// Where an object stands, as kstatus reads it from its conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convergence {
    /// Converged: `Ready=True`, neither `Reconciling` nor `Stalled`.
    Ready,
    /// Work in progress or waiting on something that may resolve itself: `Ready=False`,
    /// `Reconciling=True`.
    Reconciling,
    /// Cannot go on without a change by a person: `Ready=False`, `Stalled=True`.
    Stalled,
}

/// Sets `Ready`, `Reconciling` and `Stalled` for `state`. `make(type, status)` builds each
/// condition with the caller's reason, message, generation and time (all three say the same).
pub fn set_kstatus_conditions(
    conditions: &mut Vec<Condition>,
    state: Convergence,
    make: impl Fn(&str, &str) -> Condition,
) {
    let ready = if state == Convergence::Ready {
        status::TRUE
    } else {
        status::FALSE
    };
    set_condition(conditions, make(condition_type::READY, ready));
    set_abnormal_condition(
        conditions,
        condition_type::RECONCILING,
        state == Convergence::Reconciling,
        |t| make(t, status::TRUE),
    );
    set_abnormal_condition(
        conditions,
        condition_type::STALLED,
        state == Convergence::Stalled,
        |t| make(t, status::TRUE),
    );
}

/// Sets the "abnormal-true" condition `type_` (kstatus `Reconciling` and `Stalled`, Release
/// `RolledBack`) to `make(type_)` while it `holds`, and removes it when it does not. kstatus
/// reads a missing one as False ("the absence of any conditions means everything is
/// normal"), as Flux's controllers write them; leaving them out also keeps every status write
/// smaller. Returns true when anything changed.
pub fn set_abnormal_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    holds: bool,
    make: impl FnOnce(&str) -> Condition,
) -> bool {
    if holds {
        let c = make(type_);
        debug_assert_eq!(c.status, status::TRUE);
        set_condition(conditions, c)
    } else {
        remove_condition(conditions, type_)
    }
}

/// The types of `conditions`, in order (for tests).
#[cfg(test)]
pub(crate) fn condition_types(conditions: &[Condition]) -> Vec<&str> {
    conditions.iter().map(|c| c.type_.as_str()).collect()
}

/// Sets (or replaces) the condition of the same type, keeping `lastTransitionTime` when the
/// status did not change. Returns true when anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            if *old == new {
                return false;
            }
            *old = new;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Removes the condition of the given type. Returns true when one was removed.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Replica bounds of a service. `min == max` is a fixed count.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.min <= self.max", "message": "replicas.min must be less than or equal to replicas.max"}
]))]
pub struct Replicas {
    /// Fewest replicas. 0 is allowed only for services scaled by a ScaledWorker.
    #[schemars(range(min = 0, max = 10000))]
    pub min: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 10000))]
    pub max: i32,
}

/// CPU and memory for one container; used as both request and limit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU as a Kubernetes quantity, e.g. `500m` or `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)m?$"), length(max = 16))]
    pub cpu: Option<String>,
    /// Memory as a Kubernetes quantity, e.g. `512Mi` or `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"),
        length(max = 16)
    )]
    pub memory: Option<String>,
}

/// A plain environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name: letters, digits and `_`, not starting with a digit.
    #[schemars(
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// Variable value.
    #[serde(default)]
    pub value: String,
}

/// The DNS-1123 label pattern used for names of services, jobs and triggers.
pub const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kstatus_conditions_keep_only_the_abnormal_one_that_holds() {
        let mut c = vec![cond("Active", "True", "t0")];
        let at = |time: &'static str| move |t: &str, s: &str| cond(t, s, time);
        set_kstatus_conditions(&mut c, Convergence::Reconciling, at("t1"));
        assert_eq!(condition_types(&c), ["Active", "Ready", "Reconciling"]);
        set_kstatus_conditions(&mut c, Convergence::Stalled, at("t2"));
        assert_eq!(condition_types(&c), ["Active", "Ready", "Stalled"]);
        // Ready stayed False: its transition time is the first one.
        assert_eq!(
            find_condition(&c, "Ready").unwrap().last_transition_time,
            "t1"
        );
        set_kstatus_conditions(&mut c, Convergence::Ready, at("t3"));
        assert_eq!(condition_types(&c), ["Active", "Ready"]);
        assert_eq!(find_condition(&c, "Ready").unwrap().status, "True");
    }

    fn cond(t: &str, s: &str, time: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            observed_generation: Some(1),
            last_transition_time: time.into(),
            reason: "R".into(),
            message: String::new(),
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut cs = vec![cond("Ready", "False", "t1")];
        assert!(!set_condition(&mut cs, cond("Ready", "False", "t2")));
        assert_eq!(cs[0].last_transition_time, "t1");
        assert!(set_condition(&mut cs, cond("Ready", "True", "t3")));
        assert_eq!(cs[0].last_transition_time, "t3");
        assert_eq!(cs.len(), 1);
    }

    #[test]
    fn set_condition_never_duplicates_a_type() {
        let mut cs = vec![];
        set_condition(&mut cs, cond("Ready", "False", "t1"));
        set_condition(&mut cs, cond("Reconciling", "True", "t1"));
        set_condition(&mut cs, cond("Ready", "True", "t2"));
        assert_eq!(cs.len(), 2);
        assert!(remove_condition(&mut cs, "Reconciling"));
        assert!(!remove_condition(&mut cs, "Reconciling"));
        assert_eq!(find_condition(&cs, "Ready").unwrap().status, "True");
    }
}
