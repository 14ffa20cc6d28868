//! One polling step of a ScaledWorker, as a pure function: from the trigger readings, what the
//! target runs now and the previous status, to the replica count to write, the new status,
//! the Events to record and when to poll again.
//!
//! [`step`] does no I/O and reads no clock; the controller (`controller::scaled_worker`) reads
//! the triggers and the target, calls it, and carries its [`StepOutput`] out. It knows nothing
//! of the target's platform: a target is just "runs N replicas", "not found" or "cannot be
//! scaled as written", so Deployments today and other platforms later go through the same
//! code.
//!
//! # Status and conditions
//!
//! - `status.triggers`: per trigger, in spec order, the last value read (kept from the previous
//!   poll while the source fails), whether it is active and healthy, its consecutive failures
//!   and last error.
//! - `Ready`: `True` (reason `Ready`, or `Paused`) when every trigger was read and the target
//!   runs the decided count; `False` with reason `TriggerError` while a source fails (the
//!   message names each failing trigger and its error, and what the worker runs meanwhile),
//!   `TargetNotFound` while the target does not exist (retried), or the reason of a target
//!   that cannot be scaled as written.
//! - `Reconciling`: `True` while a failure is being retried (`TriggerError`,
//!   `TargetNotFound`); `Stalled`: `True` when the target cannot be scaled without a change
//!   (a person must act). Both are absent while they do not hold (kstatus "abnormal-true"),
//!   like the other kinds.
//! - `Active`, `Fallback`, `Paused`: the state of the decision.
//!
//! # Events
//!
//! Every change of the replica count (`ScaledOut`, `ScaledIn`, saying from what, to what, and
//! the decision's reason: which trigger and value decided); a trigger starting to fail
//! (`TriggerError`) or recovering (`TriggerRecovered`); the fallback starting to apply
//! (`FallbackApplied`); the target going missing (`TargetNotFound`) or being unusable.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::decision::{desired_replicas, Decision, DecisionInput, Reading};
use crate::api::{
    condition_type, find_condition, set_condition, set_kstatus_conditions, status as cstatus,
    Condition, Convergence, ScaledWorkerSpec, ScaledWorkerStatus, TriggerStatus,
};
use crate::api::{format_time, parse_time};

/// Kind-specific condition types of a ScaledWorker.
pub mod condition {
    /// Some trigger is above its activation threshold.
    pub const ACTIVE: &str = "Active";
    /// `fallback.replicas` is in use because a source keeps failing.
    pub const FALLBACK: &str = "Fallback";
    /// `spec.paused` freezes the replica count.
    pub const PAUSED: &str = "Paused";
}

/// Reasons of conditions and Events.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const PAUSED: &str = "Paused";
    pub const NOT_PAUSED: &str = "NotPaused";
    pub const TRIGGER_ERROR: &str = "TriggerError";
    pub const TRIGGER_RECOVERED: &str = "TriggerRecovered";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const TRIGGER_ACTIVE: &str = "TriggerActive";
    pub const IDLE: &str = "Idle";
    pub const FALLBACK_APPLIED: &str = "FallbackApplied";
    pub const NO_FALLBACK: &str = "NoFallback";
    pub const SOURCES_HEALTHY: &str = "SourcesHealthy";
    pub const BELOW_FAILURE_THRESHOLD: &str = "BelowFailureThreshold";
    pub const SCALED_OUT: &str = "ScaledOut";
    pub const SCALED_IN: &str = "ScaledIn";
}

/// Longest message kept in `status.triggers[].lastError` and in conditions.
const MAX_MESSAGE: usize = 1024;

/// What the target is doing, as far as the decision cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// The target exists and is set to run this many replicas.
    Found { replicas: i32 },
    /// The target does not exist (yet); retried every poll.
    NotFound { message: String },
    /// The target cannot be scaled as written (e.g. its platform is not supported); a person
    /// must change something.
    Unusable { reason: String, message: String },
}

/// Everything one step depends on.
#[derive(Clone, Debug)]
pub struct StepInput<'a> {
    pub spec: &'a ScaledWorkerSpec,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The status the object holds (or the one last computed).
    pub previous: &'a ScaledWorkerStatus,
    /// The last active time remembered at full precision, when known (status keeps seconds).
    pub remembered_last_active: Option<DateTime<Utc>>,
    /// One result per `spec.triggers`, in spec order: the value, or the error message.
    pub readings: Vec<Result<i64, String>>,
    /// What is scaled, e.g. `deployment/worker` (for `status.target` and messages).
    pub target_name: String,
    pub target: TargetState,
    pub now: DateTime<Utc>,
}

/// An Event to record on the ScaledWorker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What one step decided.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The status to write (the caller skips the write when it equals the current one).
    pub status: ScaledWorkerStatus,
    /// The replica count to write to the target, when it differs from what it runs.
    pub scale_to: Option<i32>,
    /// The decision, when the target was found.
    pub decision: Option<Decision>,
    /// The new last active time at full precision.
    pub last_active_time: Option<DateTime<Utc>>,
    /// Events to record, in order.
    pub events: Vec<StepEvent>,
    /// When to poll again.
    pub requeue: Duration,
}

/// The polling interval of a spec (at least one second).
pub fn polling_interval(spec: &ScaledWorkerSpec) -> Duration {
    Duration::from_secs(spec.polling_interval_seconds.max(1) as u64)
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// One polling step; see the module docs.
pub fn step(input: &StepInput<'_>) -> StepOutput {
    let spec = input.spec;
    let prev = input.previous;
    let g = input.generation;
    let now_s = format_time(input.now);

    // Readings with their consecutive failure counts, carried over from the previous status.
    let prev_trigger = |name: &str| prev.triggers.iter().find(|t| t.name == name);
    let readings: Vec<Reading> = spec
        .triggers
        .iter()
        .zip(&input.readings)
        .map(|(t, r)| Reading {
            name: t.name.clone(),
            target_per_replica: t.target_per_replica,
            activation_threshold: t.activation_threshold,
            value: r.as_ref().ok().copied(),
            consecutive_failures: match r {
                Ok(_) => 0,
                Err(_) => prev_trigger(&t.name)
                    .map(|p| p.consecutive_failures.max(0))
                    .unwrap_or(0)
                    .saturating_add(1),
            },
        })
        .collect();

    let status_last_active = parse_time(prev.last_active_time.as_deref());
    let last_active = match (input.remembered_last_active, status_last_active) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let current = match &input.target {
        TargetState::Found { replicas } => Some(*replicas),
        _ => None,
    };
    let decision = desired_replicas(&DecisionInput {
        min: spec.min_replicas,
        max: spec.max_replicas,
        fallback: spec
            .fallback
            .as_ref()
            .map(|f| (f.failure_threshold, f.replicas)),
        paused: spec.paused,
        cooldown: Duration::from_secs(spec.cooldown_seconds.max(0) as u64),
        current_replicas: current.unwrap_or(0),
        last_active_time: last_active,
        now: input.now,
        readings: readings.clone(),
    });
    let scale_to = match current {
        Some(c) if c != decision.desired && !spec.paused => Some(decision.desired),
        _ => None,
    };

    // --- status
    let mut st = prev.clone();
    st.observed_generation = g;
    st.target = Some(input.target_name.clone());
    st.triggers = readings
        .iter()
        .zip(&decision.triggers)
        .zip(&input.readings)
        .map(|((r, d), res)| TriggerStatus {
            name: r.name.clone(),
            value: r
                .value
                .or_else(|| prev_trigger(&r.name).and_then(|p| p.value)),
            active: d.active,
            healthy: d.healthy,
            consecutive_failures: r.consecutive_failures,
            last_error: match res {
                Ok(_) => String::new(),
                Err(e) => clip(e),
            },
        })
        .collect();
    st.last_active_time = decision.last_active_time.map(format_time);
    if let Some(c) = current {
        st.desired_replicas = Some(decision.desired);
        st.current_replicas = Some(scale_to.unwrap_or(c));
    } else {
        st.current_replicas = None;
    }
    if scale_to.is_some() {
        st.last_scale_time = Some(now_s.clone());
    }

    // --- conditions
    let failing: Vec<String> = st
        .triggers
        .iter()
        .filter(|t| !t.healthy)
        .map(|t| {
            format!(
                "trigger {} ({} failed reads in a row): {}",
                t.name, t.consecutive_failures, t.last_error
            )
        })
        .collect();
    let mk = |type_: &str, status: &str, reason: &str, message: String| {
        Condition::new(type_, status, reason, clip(&message), g, now_s.clone())
    };
    let conds = &mut st.conditions;
    let (state, ready_reason, ready_msg) = match &input.target {
        TargetState::Unusable { reason, message } => {
            (Convergence::Stalled, reason.clone(), message.clone())
        }
        TargetState::NotFound { message } => (
            Convergence::Reconciling,
            reason::TARGET_NOT_FOUND.to_string(),
            format!("{message}; retrying every poll"),
        ),
        TargetState::Found { .. } if !failing.is_empty() => {
            let runs = scale_to.or(current).unwrap_or(0);
            (
                Convergence::Reconciling,
                reason::TRIGGER_ERROR.to_string(),
                format!(
                    "{}; {} runs {runs} replicas: {}",
                    failing.join("; "),
                    input.target_name,
                    decision.reason
                ),
            )
        }
        TargetState::Found { .. } => {
            let runs = scale_to.or(current).unwrap_or(0);
            let reason = if spec.paused {
                reason::PAUSED
            } else {
                reason::READY
            };
            (
                Convergence::Ready,
                reason.to_string(),
                format!(
                    "{} runs {runs} replicas: {}",
                    input.target_name, decision.reason
                ),
            )
        }
    };
    set_kstatus_conditions(conds, state, |t, s| {
        mk(t, s, &ready_reason, ready_msg.clone())
    });
    let active: Vec<String> = st
        .triggers
        .iter()
        .zip(&spec.triggers)
        .filter(|(t, _)| t.active)
        .map(|(t, s)| {
            format!(
                "trigger {} value {} > activation {}",
                t.name,
                t.value.unwrap_or_default(),
                s.activation_threshold
            )
        })
        .collect();
    set_condition(
        conds,
        if active.is_empty() {
            mk(
                condition::ACTIVE,
                cstatus::FALSE,
                reason::IDLE,
                "no trigger is above its activation threshold".into(),
            )
        } else {
            mk(
                condition::ACTIVE,
                cstatus::TRUE,
                reason::TRIGGER_ACTIVE,
                active.join(", "),
            )
        },
    );
    let fallback_cond = match &spec.fallback {
        _ if decision.fallback_applied => {
            let f = spec.fallback.as_ref().map(|f| f.replicas).unwrap_or(1);
            mk(
                condition::FALLBACK,
                cstatus::TRUE,
                reason::FALLBACK_APPLIED,
                format!(
                    "fallback.replicas {} in use: {}",
                    f.max(1),
                    failing.join("; ")
                ),
            )
        }
        None => mk(
            condition::FALLBACK,
            cstatus::FALSE,
            reason::NO_FALLBACK,
            if failing.is_empty() {
                "no fallback configured".into()
            } else {
                "no fallback configured: a failing trigger holds the current replica count".into()
            },
        ),
        Some(f) if !failing.is_empty() => mk(
            condition::FALLBACK,
            cstatus::FALSE,
            reason::BELOW_FAILURE_THRESHOLD,
            format!(
                "failing triggers hold the current replica count until {} failed reads in a row",
                f.failure_threshold
            ),
        ),
        Some(_) => mk(
            condition::FALLBACK,
            cstatus::FALSE,
            reason::SOURCES_HEALTHY,
            "every trigger was read".into(),
        ),
    };
    set_condition(conds, fallback_cond);
    set_condition(
        conds,
        if spec.paused {
            mk(
                condition::PAUSED,
                cstatus::TRUE,
                reason::PAUSED,
                match current {
                    Some(c) => format!("spec.paused: the replica count is frozen at {c}"),
                    None => "spec.paused: the replica count is frozen".into(),
                },
            )
        } else {
            mk(
                condition::PAUSED,
                cstatus::FALSE,
                reason::NOT_PAUSED,
                String::new(),
            )
        },
    );

    // --- events
    let mut events = Vec::new();
    for t in &st.triggers {
        let before = prev_trigger(&t.name);
        let was_healthy = before.map(|b| b.healthy).unwrap_or(true);
        if !t.healthy && (was_healthy || before.is_none()) {
            events.push(StepEvent {
                warning: true,
                reason: reason::TRIGGER_ERROR,
                message: format!("trigger {} cannot be read: {}", t.name, t.last_error),
            });
        } else if t.healthy && !was_healthy {
            events.push(StepEvent {
                warning: false,
                reason: reason::TRIGGER_RECOVERED,
                message: format!(
                    "trigger {} read again after {} failed reads: value {}",
                    t.name,
                    before.map(|b| b.consecutive_failures).unwrap_or(0),
                    t.value.unwrap_or_default()
                ),
            });
        }
    }
    let was = |type_: &str| {
        find_condition(&prev.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
    };
    if decision.fallback_applied
        && was(condition::FALLBACK).map(|(s, _)| s) != Some(cstatus::TRUE.into())
    {
        events.push(StepEvent {
            warning: true,
            reason: reason::FALLBACK_APPLIED,
            message: format!("{}: {}", input.target_name, decision.reason),
        });
    }
    if state != Convergence::Ready
        && ready_reason != reason::TRIGGER_ERROR
        && was(condition_type::READY) != Some((cstatus::FALSE.into(), ready_reason.clone()))
    {
        events.push(StepEvent {
            warning: true,
            reason: if ready_reason == reason::TARGET_NOT_FOUND {
                reason::TARGET_NOT_FOUND
            } else {
                "TargetUnusable"
            },
            message: ready_msg.clone(),
        });
    }
    if let (Some(to), Some(from)) = (scale_to, current) {
        events.push(StepEvent {
            warning: false,
            reason: if to > from {
                reason::SCALED_OUT
            } else {
                reason::SCALED_IN
            },
            message: format!(
                "scaled {} from {from} to {to}: {}",
                input.target_name, decision.reason
            ),
        });
    }

    let interval = polling_interval(spec);
    let requeue = match &input.target {
        TargetState::Found { .. } => interval,
        TargetState::NotFound { .. } => interval.min(Duration::from_secs(30)),
        TargetState::Unusable { .. } => interval.min(Duration::from_secs(60)),
    };
    StepOutput {
        status: st,
        scale_to,
        last_active_time: decision.last_active_time,
        decision: current.map(|_| decision),
        events,
        requeue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::condition_types;
    use chrono::TimeZone;

    fn t(n: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap() + chrono::TimeDelta::seconds(n)
    }

    fn spec(extra: serde_json::Value) -> ScaledWorkerSpec {
        let mut s = serde_json::json!({
            "target": { "deployment": { "name": "worker" } },
            "minReplicas": 0, "maxReplicas": 5,
            "pollingIntervalSeconds": 2, "cooldownSeconds": 30,
            "triggers": [ { "name": "q", "targetPerReplica": 10, "activationThreshold": 2,
                            "redis": { "address": "redis://r:6379", "list": "q" } } ]
        });
        if let (Some(a), serde_json::Value::Object(b)) = (s.as_object_mut(), extra) {
            for (k, v) in b {
                a.insert(k, v);
            }
        }
        serde_json::from_value(s).unwrap()
    }

    struct Run {
        spec: ScaledWorkerSpec,
        status: ScaledWorkerStatus,
        replicas: i32,
        remembered: Option<DateTime<Utc>>,
    }

    impl Run {
        fn new(spec: ScaledWorkerSpec, replicas: i32) -> Run {
            Run {
                spec,
                status: ScaledWorkerStatus::default(),
                replicas,
                remembered: None,
            }
        }
        /// One poll at time `at` with the given reading; applies the scale and the status.
        fn poll(&mut self, at: i64, reading: Result<i64, &str>) -> StepOutput {
            self.poll_target(at, reading, None)
        }
        fn poll_target(
            &mut self,
            at: i64,
            reading: Result<i64, &str>,
            target: Option<TargetState>,
        ) -> StepOutput {
            let out = step(&StepInput {
                spec: &self.spec,
                generation: Some(1),
                previous: &self.status,
                remembered_last_active: self.remembered,
                readings: vec![reading.map_err(String::from)],
                target_name: "deployment/worker".into(),
                target: target.unwrap_or(TargetState::Found {
                    replicas: self.replicas,
                }),
                now: t(at),
            });
            if let Some(n) = out.scale_to {
                self.replicas = n;
            }
            self.status = out.status.clone();
            self.remembered = out.last_active_time;
            out
        }
    }

    fn cond<'a>(st: &'a ScaledWorkerStatus, type_: &str) -> &'a Condition {
        find_condition(&st.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"))
    }

    #[test]
    fn first_poll_writes_every_condition_once_and_scales_to_min() {
        let mut run = Run::new(spec(serde_json::json!({})), 1);
        let out = run.poll(0, Ok(0));
        assert_eq!(out.scale_to, Some(0));
        assert_eq!(
            condition_types(&out.status.conditions),
            // Reconciling and Stalled are absent while False (kstatus abnormal-true).
            vec!["Ready", "Active", "Fallback", "Paused"]
        );
        assert_eq!(cond(&out.status, "Ready").status, "True");
        assert_eq!(out.status.observed_generation, Some(1));
        assert_eq!(out.status.target.as_deref(), Some("deployment/worker"));
        assert_eq!(out.status.desired_replicas, Some(0));
        assert_eq!(out.status.current_replicas, Some(0));
        assert_eq!(
            out.status.last_scale_time.as_deref(),
            Some(format_time(t(0)).as_str())
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].reason, "ScaledIn");
        assert!(
            out.events[0].message.contains("from 1 to 0"),
            "{}",
            out.events[0].message
        );
        assert_eq!(out.requeue, Duration::from_secs(2));
    }

    #[test]
    fn a_steady_state_poll_changes_nothing() {
        let mut run = Run::new(spec(serde_json::json!({})), 0);
        run.poll(0, Ok(0));
        let before = run.status.clone();
        let out = run.poll(2, Ok(0));
        assert_eq!(out.status, before, "no status write when nothing changed");
        assert_eq!(out.scale_to, None);
        assert!(out.events.is_empty());
    }

    #[test]
    fn scale_out_event_names_trigger_and_value() {
        let mut run = Run::new(spec(serde_json::json!({})), 0);
        run.poll(0, Ok(0));
        let out = run.poll(2, Ok(25));
        assert_eq!(out.scale_to, Some(3));
        let ev = &out.events[0];
        assert_eq!((ev.warning, ev.reason), (false, "ScaledOut"));
        assert!(ev.message.contains("from 0 to 3"), "{}", ev.message);
        assert!(ev.message.contains("trigger q value 25"), "{}", ev.message);
        assert_eq!(cond(&out.status, "Active").status, "True");
        assert_eq!(
            out.status.last_active_time.as_deref(),
            Some(format_time(t(2)).as_str())
        );
        let tr = &out.status.triggers[0];
        assert_eq!(
            (tr.value, tr.active, tr.healthy, tr.consecutive_failures),
            (Some(25), true, true, 0)
        );
        // Capped at max.
        let out = run.poll(4, Ok(1000));
        assert_eq!(out.scale_to, Some(5));
        assert!(out.events[0].message.contains("capped at maxReplicas 5"));
    }

    #[test]
    fn below_activation_nothing_wakes_from_zero() {
        let mut run = Run::new(spec(serde_json::json!({})), 0);
        for (i, v) in [0, 1, 2, 2].into_iter().enumerate() {
            let out = run.poll(i as i64 * 2, Ok(v));
            assert_eq!(out.scale_to, None, "value {v}");
            assert_eq!(cond(&out.status, "Active").status, "False");
        }
        assert_eq!(run.replicas, 0);
        assert_eq!(run.status.triggers[0].value, Some(2));
    }

    #[test]
    fn scale_in_waits_for_the_cooldown_measured_at_full_precision() {
        let mut run = Run::new(spec(serde_json::json!({})), 0);
        run.poll(0, Ok(30));
        assert_eq!(run.replicas, 3);
        // Drained: held until 30 s after the last active poll.
        for at in [2, 10, 29] {
            assert_eq!(run.poll(at, Ok(0)).scale_to, None, "at {at}");
        }
        let out = run.poll(30, Ok(0));
        assert_eq!(out.scale_to, Some(0));
        assert!(
            out.events[0].message.contains("cooldown"),
            "{:?}",
            out.events
        );
    }

    #[test]
    fn remembered_last_active_time_beats_the_truncated_status_one() {
        let s = spec(serde_json::json!({}));
        let precise = t(0) + chrono::TimeDelta::milliseconds(900);
        let prev = ScaledWorkerStatus {
            last_active_time: Some(format_time(precise)), // truncated to t(0)
            ..Default::default()
        };
        let input = |remembered| StepInput {
            spec: &s,
            generation: Some(1),
            previous: &prev,
            remembered_last_active: remembered,
            readings: vec![Ok(0)],
            target_name: "deployment/worker".into(),
            target: TargetState::Found { replicas: 2 },
            now: t(30) + chrono::TimeDelta::milliseconds(500),
        };
        assert_eq!(
            step(&input(None)).scale_to,
            Some(0),
            "from status: t0 + 30 s passed"
        );
        assert_eq!(
            step(&input(Some(precise))).scale_to,
            None,
            "remembered: 30 s have not passed since t0.9"
        );
    }

    #[test]
    fn a_failing_source_counts_failures_then_uses_the_fallback_and_never_scales_to_zero() {
        let mut run = Run::new(
            spec(serde_json::json!({ "fallback": { "failureThreshold": 2, "replicas": 4 } })),
            0,
        );
        run.poll(0, Ok(15));
        assert_eq!(run.replicas, 2);
        let out = run.poll(2, Err("redis at redis://r:6379: cannot connect: refused"));
        assert_eq!(out.scale_to, None, "holds below the threshold");
        let tr = &out.status.triggers[0];
        assert_eq!(
            (tr.value, tr.healthy, tr.consecutive_failures),
            (Some(15), false, 1)
        );
        assert!(tr.last_error.contains("cannot connect"));
        let ready = cond(&out.status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "TriggerError")
        );
        assert!(
            ready
                .message
                .contains("trigger q (1 failed reads in a row)"),
            "{}",
            ready.message
        );
        assert_eq!(cond(&out.status, "Reconciling").status, "True");
        assert!(find_condition(&out.status.conditions, "Stalled").is_none());
        assert_eq!(
            cond(&out.status, "Fallback").reason,
            "BelowFailureThreshold"
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(
            (out.events[0].reason, out.events[0].warning),
            ("TriggerError", true)
        );

        let out = run.poll(4, Err("redis at redis://r:6379: cannot connect: refused"));
        assert_eq!(out.scale_to, Some(4));
        assert_eq!(out.status.triggers[0].consecutive_failures, 2);
        assert_eq!(cond(&out.status, "Fallback").status, "True");
        let reasons: Vec<_> = out.events.iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            vec!["FallbackApplied", "ScaledOut"],
            "no second TriggerError"
        );

        // Long past the cooldown: still the fallback, never zero.
        for at in [40, 100, 1000] {
            let out = run.poll(at, Err("down"));
            assert_eq!(out.scale_to, None);
            assert_eq!(run.replicas, 4);
            assert!(out.events.is_empty(), "{:?}", out.events);
        }

        // Recovery: value read again, counts reset, fallback off.
        let out = run.poll(1002, Ok(45));
        assert_eq!(out.scale_to, Some(5));
        assert_eq!(out.status.triggers[0].consecutive_failures, 0);
        assert_eq!(out.status.triggers[0].last_error, "");
        assert_eq!(cond(&out.status, "Ready").status, "True");
        assert_eq!(cond(&out.status, "Fallback").reason, "SourcesHealthy");
        let reasons: Vec<_> = out.events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, vec!["TriggerRecovered", "ScaledOut"]);
    }

    #[test]
    fn the_fallback_wakes_a_worker_at_zero() {
        let mut run = Run::new(
            spec(serde_json::json!({ "fallback": { "failureThreshold": 1, "replicas": 2 } })),
            0,
        );
        let out = run.poll(0, Err("down"));
        assert_eq!(out.scale_to, Some(2));
    }

    #[test]
    fn paused_freezes_the_count_and_says_so() {
        let mut run = Run::new(spec(serde_json::json!({ "paused": true })), 3);
        let out = run.poll(0, Ok(500));
        assert_eq!(out.scale_to, None);
        assert_eq!(out.status.desired_replicas, Some(3));
        let paused = cond(&out.status, "Paused");
        assert_eq!(paused.status, "True");
        assert!(paused.message.contains("frozen at 3"));
        let ready = cond(&out.status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Paused")
        );
        let out = run.poll(100, Ok(0));
        assert_eq!(out.scale_to, None);
        assert_eq!(run.replicas, 3);
    }

    #[test]
    fn a_missing_target_is_retried_and_reported_once() {
        let mut run = Run::new(
            spec(serde_json::json!({ "pollingIntervalSeconds": 300 })),
            0,
        );
        let missing = || {
            Some(TargetState::NotFound {
                message: "Deployment worker not found in namespace shop".into(),
            })
        };
        let out = run.poll_target(0, Ok(25), missing());
        assert_eq!(out.scale_to, None);
        assert!(out.decision.is_none());
        let ready = cond(&out.status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "TargetNotFound")
        );
        assert!(ready.message.contains("Deployment worker not found"));
        assert_eq!(cond(&out.status, "Reconciling").status, "True");
        assert_eq!(out.status.current_replicas, None);
        assert_eq!(
            out.status.triggers[0].value,
            Some(25),
            "triggers still shown"
        );
        assert_eq!(
            out.requeue,
            Duration::from_secs(30),
            "retried sooner than a 300 s poll"
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].reason, "TargetNotFound");
        let out = run.poll_target(30, Ok(25), missing());
        assert!(out.events.is_empty(), "reported once");

        // The target appears: scaled at once.
        let out = run.poll_target(60, Ok(25), Some(TargetState::Found { replicas: 1 }));
        assert_eq!(out.scale_to, Some(3));
        assert_eq!(cond(&out.status, "Ready").status, "True");
    }

    #[test]
    fn an_unusable_target_stalls() {
        let mut run = Run::new(spec(serde_json::json!({})), 0);
        let out = run.poll_target(
            0,
            Ok(0),
            Some(TargetState::Unusable {
                reason: "PlatformNotSupported".into(),
                message: "Environment prod: platform.ecs cannot be scaled yet".into(),
            }),
        );
        let ready = cond(&out.status, "Ready");
        assert_eq!(ready.reason, "PlatformNotSupported");
        assert_eq!(cond(&out.status, "Stalled").status, "True");
        assert!(find_condition(&out.status.conditions, "Reconciling").is_none());
        assert_eq!(out.events[0].reason, "TargetUnusable");
    }

    #[test]
    fn condition_transition_times_move_only_on_status_changes() {
        let mut run = Run::new(spec(serde_json::json!({})), 0);
        run.poll(0, Ok(0));
        let t0 = cond(&run.status, "Ready").last_transition_time.clone();
        run.poll(2, Ok(0));
        assert_eq!(cond(&run.status, "Ready").last_transition_time, t0);
        run.poll(4, Err("x"));
        assert_eq!(
            cond(&run.status, "Ready").last_transition_time,
            format_time(t(4))
        );
    }

    #[test]
    fn long_errors_are_clipped() {
        let mut run = Run::new(spec(serde_json::json!({})), 0);
        let long = "é".repeat(2000);
        let out = run.poll(0, Err(&long));
        assert!(out.status.triggers[0].last_error.len() <= MAX_MESSAGE + 3);
        assert!(out.status.triggers[0].last_error.ends_with("..."));
    }

    #[test]
    fn time_round_trip() {
        assert_eq!(parse_time(Some(&format_time(t(5)))), Some(t(5)));
        assert_eq!(parse_time(Some("garbage")), None);
        assert_eq!(parse_time(None), None);
    }
}
