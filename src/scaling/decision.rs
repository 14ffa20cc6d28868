//! The replica decision of a ScaledWorker: a pure function from readings to a replica count.
//!
//! [`desired_replicas`] takes everything it needs in a [`DecisionInput`] (bounds, fallback,
//! cooldown, the current replica count, the last time a trigger was active, the clock, and one
//! [`Reading`] per trigger) and returns a [`Decision`]. It does no I/O and reads no clock, so
//! the same input always gives the same output and every rule below is tested by a table.
//!
//! # Semantics (KEDA's, with its well-known sharp edges removed)
//!
//! Every trigger makes a *claim* on replicas:
//!
//! - a trigger whose read succeeded claims `ceil(value / targetPerReplica)` (a negative value
//!   claims 0); it is **active** when `value > activationThreshold`;
//! - a trigger whose read failed (`value: None`) with `consecutive_failures >=
//!   fallback.failureThreshold` claims `fallback.replicas` (at least 1, see below): the
//!   **fallback applies**;
//! - any other failing trigger claims the *current* replica count: it **holds**. Like an HPA
//!   with a broken metric, an unreadable trigger never lets the worker scale in, but the other
//!   triggers can still scale it out.
//!
//! Then, with `lo = max(minReplicas, 0)` and `hi = max(maxReplicas, lo)`:
//!
//! 1. **Paused**: the current replica count, unchanged (not even clamped).
//! 2. **Some trigger active, or the fallback applies** (the *scaling phase*): `clamp(max(1,
//!    max of all claims), lo, hi)`. This wakes a worker from zero; scale-out and scale-in follow
//!    the claims at once. The fallback also applies at zero replicas (KEDA only applies it to
//!    a worker that is already running).
//! 3. **No trigger active, worker at zero**: `lo`. Nothing below its activation threshold, and
//!    no read error, ever wakes a worker from zero (the fallback does, once it applies).
//! 4. **No trigger active, worker running, within `cooldown` of `last_active_time`**: the
//!    current count, clamped to the bounds. Nothing scales in while the queue may only be
//!    between two bursts, and inactive values do not scale out either.
//! 5. **No trigger active, cooldown over** (or the worker was never active): `lo`, or the
//!    current count while some trigger holds (an unreadable source never scales in).
//!
//! `last_active_time` becomes `now` whenever some trigger is active, and is kept otherwise.
//! A worker that has never been active (`last_active_time: None`) goes to `minReplicas` at
//! once, as KEDA does when a ScaledObject is created; a caller that wants a grace period after
//! creation (KEDA's `initialCooldownPeriod`) seeds `last_active_time` with the creation time.
//!
//! # Invariants (property-tested)
//!
//! - The result is within `lo..=hi`, or equals `current_replicas` when paused.
//! - A failing source never drives the result to zero: with a failing trigger and a running
//!   worker the result is at least 1, and once the fallback applies it is at least 1 even
//!   from zero. This is why `fallback.replicas: 0` counts as 1: API.md promises that an
//!   unreachable source never scales a worker to zero.
//! - Deterministic: the same input gives the same output.
//!
//! Ties between triggers claiming the same count go to the first trigger in spec order, so
//! `reason` is deterministic too.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The latest reading of one trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Trigger name, used in [`Decision::reason`].
    pub name: String,
    /// Messages one replica handles (KEDA's `messageCount`); values below 1 count as 1.
    pub target_per_replica: i64,
    /// The trigger is active only when its value is greater than this.
    pub activation_threshold: i64,
    /// The value read, or `None` when the read failed.
    pub value: Option<i64>,
    /// Failed reads in a row, this one included (0 after a successful read).
    pub consecutive_failures: i32,
}

/// Everything the decision depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionInput {
    /// `spec.minReplicas` (negative counts as 0).
    pub min: i32,
    /// `spec.maxReplicas` (below `min` counts as `min`).
    pub max: i32,
    /// `spec.fallback` as `(failure_threshold, replicas)`.
    pub fallback: Option<(i32, i32)>,
    /// `spec.paused`: keep the current replica count.
    pub paused: bool,
    /// `spec.cooldownSeconds`: idle time before scaling in to `min`.
    pub cooldown: Duration,
    /// Replicas the target runs now.
    pub current_replicas: i32,
    /// Last time some trigger was active (`status.lastActiveTime`).
    pub last_active_time: Option<DateTime<Utc>>,
    /// The time of this decision.
    pub now: DateTime<Utc>,
    /// One reading per trigger, in spec order.
    pub readings: Vec<Reading>,
}

/// The outcome for one trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerDecision {
    /// Trigger name.
    pub name: String,
    /// The value is above the activation threshold.
    pub active: bool,
    /// The read succeeded.
    pub healthy: bool,
    /// Replicas this trigger asks for (see the module docs for failing triggers).
    pub claim: i32,
}

/// What [`desired_replicas`] decided, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Replicas the target should run.
    pub desired: i32,
    /// Some trigger is active.
    pub active: bool,
    /// A failing trigger passed the failure threshold and `fallback.replicas` was used.
    pub fallback_applied: bool,
    /// The new `status.lastActiveTime`.
    pub last_active_time: Option<DateTime<Utc>>,
    /// One sentence naming the trigger and value that decided the count.
    pub reason: String,
    /// Per trigger, in input order.
    pub triggers: Vec<TriggerDecision>,
}

/// How a trigger came to its claim; used to word the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClaimKind {
    Value { value: i64, target: i64 },
    Fallback { failures: i32, threshold: i32 },
    Hold { failures: i32 },
}

/// Decides the replica count of a ScaledWorker; see the module docs for the rules.
pub fn desired_replicas(input: &DecisionInput) -> Decision {
    let lo = input.min.max(0);
    let hi = input.max.max(lo);
    let current = input.current_replicas.max(0);

    let mut triggers = Vec::with_capacity(input.readings.len());
    let mut kinds = Vec::with_capacity(input.readings.len());
    for reading in &input.readings {
        let (claim, kind, active) = claim_of(reading, input.fallback, current);
        triggers.push(TriggerDecision {
            name: reading.name.clone(),
            active,
            healthy: reading.value.is_some(),
            claim,
        });
        kinds.push(kind);
    }

    let active = triggers.iter().any(|t| t.active);
    let fallback_applied = kinds
        .iter()
        .any(|k| matches!(k, ClaimKind::Fallback { .. }));
    let last_active_time = if active {
        Some(input.now)
    } else {
        input.last_active_time
    };
    // The deciding trigger: the largest claim, the first one on a tie.
    let top = triggers
        .iter()
        .enumerate()
        .fold(None::<usize>, |best, (i, t)| match best {
            Some(b) if triggers[b].claim >= t.claim => Some(b),
            _ => Some(i),
        });
    let holding = kinds
        .iter()
        .position(|k| matches!(k, ClaimKind::Hold { .. }));

    let (desired, reason) = if input.paused {
        (
            input.current_replicas,
            format!("paused: keeping {} replicas", input.current_replicas),
        )
    } else if active || fallback_applied {
        let i = top.expect("an active or fallback trigger exists");
        let wanted = triggers[i].claim.max(1);
        let desired = wanted.clamp(lo, hi);
        let mut reason = describe_claim(&triggers[i].name, kinds[i], triggers[i].claim);
        if triggers[i].claim < 1 {
            reason.push_str(" (active: at least 1)");
        }
        push_bounds(&mut reason, wanted, desired, lo, hi);
        (desired, reason)
    } else if current == 0 {
        let reason = format!(
            "no trigger active ({}): staying at {lo}",
            idle_summary(&input.readings)
        );
        (lo, reason)
    } else if within_cooldown(input.last_active_time, input.now, input.cooldown) {
        let desired = current.clamp(lo, hi);
        let since = input
            .last_active_time
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        let mut reason = format!(
            "no trigger active ({}): holding {current} replicas during the {}s cooldown since {since}",
            idle_summary(&input.readings),
            input.cooldown.as_secs()
        );
        push_bounds(&mut reason, current, desired, lo, hi);
        (desired, reason)
    } else if let Some(h) = holding {
        let desired = current.clamp(lo, hi);
        let mut reason = describe_claim(&triggers[h].name, kinds[h], triggers[h].claim);
        push_bounds(&mut reason, current, desired, lo, hi);
        (desired, reason)
    } else {
        let why = if input.last_active_time.is_some() {
            format!("idle for the {}s cooldown", input.cooldown.as_secs())
        } else {
            "never active".to_string()
        };
        let reason = format!(
            "no trigger active ({}), {why}: scaling in to minReplicas {lo}",
            idle_summary(&input.readings)
        );
        (lo, reason)
    };

    Decision {
        desired,
        active,
        fallback_applied,
        last_active_time,
        reason,
        triggers,
    }
}

/// The claim of one trigger, how it came about, and whether the trigger is active.
fn claim_of(
    reading: &Reading,
    fallback: Option<(i32, i32)>,
    current: i32,
) -> (i32, ClaimKind, bool) {
    match reading.value {
        Some(value) => {
            let target = reading.target_per_replica.max(1);
            let claim = replicas_for(value, target);
            let active = value > reading.activation_threshold;
            (claim, ClaimKind::Value { value, target }, active)
        }
        None => match fallback {
            Some((threshold, replicas)) if reading.consecutive_failures >= threshold => (
                replicas.max(1),
                ClaimKind::Fallback {
                    failures: reading.consecutive_failures,
                    threshold,
                },
                false,
            ),
            _ => (
                current,
                ClaimKind::Hold {
                    failures: reading.consecutive_failures,
                },
                false,
            ),
        },
    }
}

/// `ceil(value / target)` for `target >= 1`, 0 for negative values, saturating at `i32::MAX`.
pub fn replicas_for(value: i64, target: i64) -> i32 {
    if value <= 0 {
        return 0;
    }
    let target = target.max(1);
    let n = value / target + i64::from(value % target != 0);
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Whether `now` is still within `cooldown` of the last activity.
fn within_cooldown(
    last_active: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    cooldown: Duration,
) -> bool {
    let Some(last) = last_active else {
        return false;
    };
    let cooldown = chrono::TimeDelta::from_std(cooldown).unwrap_or(chrono::TimeDelta::MAX);
    match last.checked_add_signed(cooldown) {
        Some(end) => now < end,
        None => true,
    }
}

fn describe_claim(name: &str, kind: ClaimKind, claim: i32) -> String {
    match kind {
        ClaimKind::Value { value, target } => {
            format!("trigger {name} value {value} / {target} per replica -> {claim}")
        }
        ClaimKind::Fallback {
            failures,
            threshold,
        } => format!(
            "trigger {name} failed {failures} reads in a row (threshold {threshold}): fallback -> {claim}"
        ),
        ClaimKind::Hold { failures } => format!(
            "trigger {name} cannot be read ({failures} failures in a row): holding {claim} replicas"
        ),
    }
}

fn push_bounds(reason: &mut String, wanted: i32, desired: i32, lo: i32, hi: i32) {
    if desired < wanted {
        reason.push_str(&format!(" (capped at maxReplicas {hi})"));
    } else if desired > wanted {
        reason.push_str(&format!(" (raised to minReplicas {lo})"));
    }
}

/// `a value 0 <= activation 0, b value 3 <= activation 5, c read failed`.
fn idle_summary(readings: &[Reading]) -> String {
    if readings.is_empty() {
        return "no triggers".into();
    }
    readings
        .iter()
        .map(|r| match r.value {
            Some(v) => format!(
                "{} value {v} <= activation {}",
                r.name, r.activation_threshold
            ),
            None => format!("{} read failed", r.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap()
    }

    fn secs(n: i64) -> DateTime<Utc> {
        t0() + chrono::TimeDelta::seconds(n)
    }

    fn ok(name: &str, target: i64, activation: i64, value: i64) -> Reading {
        Reading {
            name: name.into(),
            target_per_replica: target,
            activation_threshold: activation,
            value: Some(value),
            consecutive_failures: 0,
        }
    }

    fn failed(name: &str, failures: i32) -> Reading {
        Reading {
            name: name.into(),
            target_per_replica: 10,
            activation_threshold: 0,
            value: None,
            consecutive_failures: failures,
        }
    }

    /// min 0, max 30, cooldown 300 s, no fallback, 0 replicas, never active, now = t0 + 1000 s.
    fn base(readings: Vec<Reading>) -> DecisionInput {
        DecisionInput {
            min: 0,
            max: 30,
            fallback: None,
            paused: false,
            cooldown: Duration::from_secs(300),
            current_replicas: 0,
            last_active_time: None,
            now: secs(1000),
            readings,
        }
    }

    struct Case {
        name: &'static str,
        input: DecisionInput,
        desired: i32,
        active: bool,
        fallback: bool,
        reason_contains: &'static str,
    }

    fn with(mut input: DecisionInput, f: impl FnOnce(&mut DecisionInput)) -> DecisionInput {
        f(&mut input);
        input
    }

    fn cases() -> Vec<Case> {
        vec![
            // --- desired = clamp(max over triggers of ceil(value / target), min, max)
            Case {
                name: "ceil of value over target",
                input: base(vec![ok("work-items", 10, 0, 95)]),
                desired: 10,
                active: true,
                fallback: false,
                reason_contains: "trigger work-items value 95 / 10 per replica -> 10",
            },
            Case {
                name: "exact multiple does not round up",
                input: base(vec![ok("q", 10, 0, 100)]),
                desired: 10,
                active: true,
                fallback: false,
                reason_contains: "value 100 / 10 per replica -> 10",
            },
            Case {
                name: "one message is one replica",
                input: base(vec![ok("q", 10, 0, 1)]),
                desired: 1,
                active: true,
                fallback: false,
                reason_contains: "-> 1",
            },
            Case {
                name: "max over triggers decides",
                input: base(vec![
                    ok("a", 10, 0, 25),
                    ok("b", 5, 0, 40),
                    ok("c", 100, 0, 1),
                ]),
                desired: 8,
                active: true,
                fallback: false,
                reason_contains: "trigger b value 40 / 5 per replica -> 8",
            },
            Case {
                name: "tie goes to the first trigger",
                input: base(vec![ok("a", 10, 0, 30), ok("b", 5, 0, 15)]),
                desired: 3,
                active: true,
                fallback: false,
                reason_contains: "trigger a value 30",
            },
            Case {
                name: "capped at max",
                input: base(vec![ok("q", 10, 0, 5000)]),
                desired: 30,
                active: true,
                fallback: false,
                reason_contains: "-> 500 (capped at maxReplicas 30)",
            },
            Case {
                name: "raised to min",
                input: with(base(vec![ok("q", 10, 0, 5)]), |i| i.min = 3),
                desired: 3,
                active: true,
                fallback: false,
                reason_contains: "(raised to minReplicas 3)",
            },
            Case {
                name: "scale-in follows the claim at once while active",
                input: with(base(vec![ok("q", 10, 0, 15)]), |i| {
                    i.current_replicas = 10;
                    i.last_active_time = Some(secs(990));
                }),
                desired: 2,
                active: true,
                fallback: false,
                reason_contains: "-> 2",
            },
            Case {
                name: "an inactive trigger still counts in the max while another is active",
                input: base(vec![ok("a", 10, 0, 5), ok("b", 10, 100, 60)]),
                desired: 6,
                active: true,
                fallback: false,
                reason_contains: "trigger b value 60",
            },
            Case {
                name: "an active trigger wakes at least one replica even with a zero claim",
                input: base(vec![ok("a", 10, -1, 0)]),
                desired: 1,
                active: true,
                fallback: false,
                reason_contains: "at least 1",
            },
            Case {
                name: "target below one counts as one",
                input: base(vec![ok("q", 0, 0, 7)]),
                desired: 7,
                active: true,
                fallback: false,
                reason_contains: "/ 1 per replica -> 7",
            },
            // --- activation: 0 -> 1 only when some trigger is active
            Case {
                name: "empty queue stays at zero",
                input: base(vec![ok("q", 10, 0, 0)]),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "no trigger active (q value 0 <= activation 0): staying at 0",
            },
            Case {
                name: "below activation nothing wakes from zero",
                input: base(vec![ok("q", 10, 50, 50)]),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "q value 50 <= activation 50",
            },
            Case {
                name: "above activation wakes from zero",
                input: base(vec![ok("q", 10, 50, 51)]),
                desired: 6,
                active: true,
                fallback: false,
                reason_contains: "value 51 / 10 per replica -> 6",
            },
            Case {
                name: "at zero with min above zero goes to min",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| i.min = 2),
                desired: 2,
                active: false,
                fallback: false,
                reason_contains: "staying at 2",
            },
            Case {
                name: "negative value is idle and claims nothing",
                input: base(vec![ok("q", 10, 0, -5)]),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "q value -5",
            },
            // --- cooldown: scale-in to min only after cooldown since the last activity
            Case {
                name: "idle within cooldown holds the current count",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| {
                    i.current_replicas = 5;
                    i.last_active_time = Some(secs(800));
                }),
                desired: 5,
                active: false,
                fallback: false,
                reason_contains: "holding 5 replicas during the 300s cooldown",
            },
            Case {
                name: "idle within cooldown does not scale out on inactive values",
                input: with(base(vec![ok("q", 10, 100, 90)]), |i| {
                    i.current_replicas = 2;
                    i.last_active_time = Some(secs(800));
                }),
                desired: 2,
                active: false,
                fallback: false,
                reason_contains: "holding 2 replicas",
            },
            Case {
                name: "idle within cooldown respects a lowered max",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| {
                    i.current_replicas = 50;
                    i.last_active_time = Some(secs(800));
                }),
                desired: 30,
                active: false,
                fallback: false,
                reason_contains: "(capped at maxReplicas 30)",
            },
            Case {
                name: "cooldown elapsed exactly scales in to zero",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| {
                    i.current_replicas = 5;
                    i.last_active_time = Some(secs(700));
                }),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "idle for the 300s cooldown: scaling in to minReplicas 0",
            },
            Case {
                name: "cooldown elapsed scales in to min",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| {
                    i.min = 1;
                    i.current_replicas = 5;
                    i.last_active_time = Some(secs(100));
                }),
                desired: 1,
                active: false,
                fallback: false,
                reason_contains: "scaling in to minReplicas 1",
            },
            Case {
                name: "never active goes to min at once (KEDA on creation)",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| i.current_replicas = 4),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "never active",
            },
            Case {
                name: "zero cooldown scales in at once",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| {
                    i.cooldown = Duration::ZERO;
                    i.current_replicas = 4;
                    i.last_active_time = Some(secs(999));
                }),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "idle for the 0s cooldown",
            },
            Case {
                name: "last activity in the future (clock skew) counts as within cooldown",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| {
                    i.current_replicas = 3;
                    i.last_active_time = Some(secs(5000));
                }),
                desired: 3,
                active: false,
                fallback: false,
                reason_contains: "holding 3 replicas",
            },
            // --- fallback
            Case {
                name: "fallback after the failure threshold",
                input: with(base(vec![failed("q", 3)]), |i| {
                    i.fallback = Some((3, 2));
                    i.current_replicas = 10;
                    i.last_active_time = Some(secs(990));
                }),
                desired: 2,
                active: false,
                fallback: true,
                reason_contains: "trigger q failed 3 reads in a row (threshold 3): fallback -> 2",
            },
            Case {
                name: "fallback also applies at zero replicas",
                input: with(base(vec![failed("q", 5)]), |i| i.fallback = Some((3, 2))),
                desired: 2,
                active: false,
                fallback: true,
                reason_contains: "fallback -> 2",
            },
            Case {
                name: "fallback is capped at max",
                input: with(base(vec![failed("q", 3)]), |i| {
                    i.fallback = Some((3, 50));
                }),
                desired: 30,
                active: false,
                fallback: true,
                reason_contains: "(capped at maxReplicas 30)",
            },
            Case {
                name: "fallback of zero replicas still runs one",
                input: with(base(vec![failed("q", 3)]), |i| {
                    i.fallback = Some((3, 0));
                    i.current_replicas = 4;
                }),
                desired: 1,
                active: false,
                fallback: true,
                reason_contains: "fallback -> 1",
            },
            Case {
                name: "a healthy trigger asking for more wins over the fallback",
                input: with(base(vec![failed("a", 3), ok("b", 10, 0, 95)]), |i| {
                    i.fallback = Some((3, 2));
                }),
                desired: 10,
                active: true,
                fallback: true,
                reason_contains: "trigger b value 95",
            },
            Case {
                name: "below the failure threshold a failing trigger holds",
                input: with(base(vec![failed("q", 2)]), |i| {
                    i.fallback = Some((3, 2));
                    i.current_replicas = 7;
                }),
                desired: 7,
                active: false,
                fallback: false,
                reason_contains:
                    "trigger q cannot be read (2 failures in a row): holding 7 replicas",
            },
            Case {
                name: "below the failure threshold at zero stays at zero",
                input: with(base(vec![failed("q", 2)]), |i| i.fallback = Some((3, 2))),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "q read failed",
            },
            // --- failing sources without fallback never drive to zero
            Case {
                name: "all failed, no fallback, cooldown over: keep current",
                input: with(base(vec![failed("a", 9), failed("b", 9)]), |i| {
                    i.current_replicas = 4;
                    i.last_active_time = Some(secs(0));
                }),
                desired: 4,
                active: false,
                fallback: false,
                reason_contains:
                    "trigger a cannot be read (9 failures in a row): holding 4 replicas",
            },
            Case {
                name: "all failed, never active: keep current",
                input: with(base(vec![failed("a", 1)]), |i| i.current_replicas = 1),
                desired: 1,
                active: false,
                fallback: false,
                reason_contains: "holding 1 replicas",
            },
            Case {
                name: "a failing trigger blocks scale-in while another is active",
                input: with(base(vec![failed("a", 1), ok("b", 10, 0, 15)]), |i| {
                    i.current_replicas = 6;
                    i.last_active_time = Some(secs(990));
                }),
                desired: 6,
                active: true,
                fallback: false,
                reason_contains: "trigger a cannot be read",
            },
            Case {
                name: "a failing trigger does not block scale-out",
                input: with(base(vec![failed("a", 1), ok("b", 10, 0, 150)]), |i| {
                    i.current_replicas = 6;
                }),
                desired: 15,
                active: true,
                fallback: false,
                reason_contains: "trigger b value 150",
            },
            Case {
                name: "a failing trigger blocks scale-in after the cooldown",
                input: with(base(vec![failed("a", 1), ok("b", 10, 0, 0)]), |i| {
                    i.current_replicas = 3;
                    i.last_active_time = Some(secs(0));
                }),
                desired: 3,
                active: false,
                fallback: false,
                reason_contains: "holding 3 replicas",
            },
            // --- paused
            Case {
                name: "paused keeps the current count",
                input: with(base(vec![ok("q", 10, 0, 500)]), |i| {
                    i.paused = true;
                    i.current_replicas = 4;
                }),
                desired: 4,
                active: true,
                fallback: false,
                reason_contains: "paused: keeping 4 replicas",
            },
            Case {
                name: "paused keeps zero",
                input: with(base(vec![ok("q", 10, 0, 500)]), |i| i.paused = true),
                desired: 0,
                active: true,
                fallback: false,
                reason_contains: "paused",
            },
            Case {
                name: "paused wins over fallback",
                input: with(base(vec![failed("q", 10)]), |i| {
                    i.paused = true;
                    i.fallback = Some((1, 5));
                    i.current_replicas = 2;
                }),
                desired: 2,
                active: false,
                fallback: true,
                reason_contains: "paused",
            },
            Case {
                name: "paused keeps even an out-of-bounds count",
                input: with(base(vec![ok("q", 10, 0, 0)]), |i| {
                    i.paused = true;
                    i.current_replicas = 99;
                }),
                desired: 99,
                active: false,
                fallback: false,
                reason_contains: "keeping 99",
            },
            // --- degenerate bounds and inputs
            Case {
                name: "min above max counts max as min",
                input: with(base(vec![ok("q", 10, 0, 1000)]), |i| {
                    i.min = 5;
                    i.max = 2;
                }),
                desired: 5,
                active: true,
                fallback: false,
                reason_contains: "(capped at maxReplicas 5)",
            },
            Case {
                name: "no readings at all is idle",
                input: with(base(vec![]), |i| i.current_replicas = 3),
                desired: 0,
                active: false,
                fallback: false,
                reason_contains: "no triggers",
            },
            Case {
                name: "huge values saturate",
                input: with(base(vec![ok("q", 1, 0, i64::MAX)]), |i| i.max = i32::MAX),
                desired: i32::MAX,
                active: true,
                fallback: false,
                reason_contains: "-> 2147483647",
            },
        ]
    }

    #[test]
    fn decision_table() {
        let mut failures = Vec::new();
        for case in cases() {
            let d = desired_replicas(&case.input);
            if d.desired != case.desired
                || d.active != case.active
                || d.fallback_applied != case.fallback
                || !d.reason.contains(case.reason_contains)
            {
                failures.push(format!(
                    "{}: got desired={} active={} fallback={} reason={:?}; want desired={} active={} fallback={} reason containing {:?}",
                    case.name, d.desired, d.active, d.fallback_applied, d.reason,
                    case.desired, case.active, case.fallback, case.reason_contains
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn last_active_time_moves_only_when_active() {
        let active = desired_replicas(&with(base(vec![ok("q", 10, 0, 1)]), |i| {
            i.last_active_time = Some(secs(1));
        }));
        assert_eq!(active.last_active_time, Some(secs(1000)));

        let idle = desired_replicas(&with(base(vec![ok("q", 10, 0, 0)]), |i| {
            i.last_active_time = Some(secs(1));
        }));
        assert_eq!(idle.last_active_time, Some(secs(1)));

        let failing = desired_replicas(&with(base(vec![failed("q", 1)]), |i| {
            i.last_active_time = None;
        }));
        assert_eq!(failing.last_active_time, None);

        let paused = desired_replicas(&with(base(vec![ok("q", 10, 0, 5)]), |i| i.paused = true));
        assert_eq!(paused.last_active_time, Some(secs(1000)));
    }

    #[test]
    fn per_trigger_flags() {
        let d = desired_replicas(&with(
            base(vec![ok("a", 10, 0, 0), ok("b", 10, 5, 6), failed("c", 4)]),
            |i| {
                i.fallback = Some((3, 2));
                i.current_replicas = 1;
            },
        ));
        let flags: Vec<_> = d
            .triggers
            .iter()
            .map(|t| (t.name.as_str(), t.active, t.healthy, t.claim))
            .collect();
        assert_eq!(
            flags,
            vec![
                ("a", false, true, 0),
                ("b", true, true, 1),
                ("c", false, false, 2)
            ]
        );
        assert_eq!(d.desired, 2);
    }

    #[test]
    fn a_burst_then_idle_walks_through_the_phases() {
        // 0 -> burst -> drain -> cooldown hold -> zero, replaying each decision's output.
        let mut current = 0;
        let mut last_active = None;
        let mut seen = Vec::new();
        for (t, value) in [
            (0, 0),
            (30, 95),
            (60, 40),
            (90, 0),
            (300, 0),
            (359, 0),
            (360, 0),
        ] {
            let d = desired_replicas(&DecisionInput {
                current_replicas: current,
                last_active_time: last_active,
                now: secs(t),
                ..base(vec![ok("q", 10, 0, value)])
            });
            current = d.desired;
            last_active = d.last_active_time;
            seen.push(current);
        }
        assert_eq!(seen, vec![0, 10, 4, 4, 4, 4, 0]);
    }

    #[test]
    fn replicas_for_rounds_up_and_saturates() {
        assert_eq!(replicas_for(0, 10), 0);
        assert_eq!(replicas_for(-3, 10), 0);
        assert_eq!(replicas_for(1, 10), 1);
        assert_eq!(replicas_for(10, 10), 1);
        assert_eq!(replicas_for(11, 10), 2);
        assert_eq!(replicas_for(5, 0), 5);
        assert_eq!(replicas_for(5, -4), 5);
        assert_eq!(replicas_for(i64::MAX, 1), i32::MAX);
        assert_eq!(replicas_for(i64::MAX, i64::MAX), 1);
    }

    fn reading_strategy() -> impl Strategy<Value = Reading> {
        (
            "[a-z]{1,6}",
            -5i64..200,
            prop_oneof![Just(0i64), -2i64..60],
            // Small values (often idle) as much as large ones; a third of the reads fail.
            prop::option::weighted(0.67, prop_oneof![-5i64..=5, 0i64..5_000]),
            0i32..8,
        )
            .prop_map(|(name, target, activation, value, failures)| Reading {
                name,
                target_per_replica: target,
                activation_threshold: activation,
                consecutive_failures: if value.is_some() { 0 } else { failures.max(1) },
                value,
            })
    }

    prop_compose! {
        fn input_strategy()(
            min in prop_oneof![2 => Just(0i32), 1 => -2i32..20],
            max in 0i32..60,
            fallback in prop::option::of((1i32..6, prop_oneof![Just(0i32), 0i32..80])),
            paused in prop::bool::weighted(0.1),
            cooldown in 0u64..1_000,
            current in 0i32..100,
            last_active in prop::option::of(-2_000i64..2_000),
            readings in prop::collection::vec(reading_strategy(), 0..5),
        ) -> DecisionInput {
            DecisionInput {
                min,
                max,
                fallback,
                paused,
                cooldown: Duration::from_secs(cooldown),
                current_replicas: current,
                last_active_time: last_active.map(secs),
                now: secs(0),
                readings,
            }
        }
    }

    proptest! {
        #[test]
        fn within_bounds_or_current_when_paused(input in input_strategy()) {
            let d = desired_replicas(&input);
            if input.paused {
                prop_assert_eq!(d.desired, input.current_replicas);
            } else {
                let lo = input.min.max(0);
                let hi = input.max.max(lo);
                prop_assert!(lo <= d.desired && d.desired <= hi, "{} not in {}..={}", d.desired, lo, hi);
            }
        }

        #[test]
        fn a_failing_source_never_drives_to_zero(input in input_strategy()) {
            let d = desired_replicas(&input);
            let hi = input.max.max(input.min.max(0));
            let failing = input.readings.iter().any(|r| r.value.is_none());
            if !input.paused && failing && hi >= 1 {
                if input.current_replicas > 0 {
                    prop_assert!(d.desired >= 1, "failing source took {} replicas to zero: {}", input.current_replicas, d.reason);
                }
                if input.fallback.is_some() && d.fallback_applied {
                    prop_assert!(d.desired >= 1, "fallback applied but desired 0: {}", d.reason);
                }
            }
            if let Some((threshold, _)) = input.fallback {
                let due = input.readings.iter().any(|r| r.value.is_none() && r.consecutive_failures >= threshold);
                prop_assert_eq!(d.fallback_applied, due);
            }
        }

        #[test]
        fn deterministic(input in input_strategy()) {
            prop_assert_eq!(desired_replicas(&input), desired_replicas(&input.clone()));
        }

        #[test]
        fn nothing_inactive_wakes_from_zero(input in input_strategy()) {
            let d = desired_replicas(&input);
            if !input.paused && input.current_replicas == 0 && !d.active && !d.fallback_applied {
                prop_assert_eq!(d.desired, input.min.max(0).min(input.max.max(input.min.max(0))));
            }
        }

        #[test]
        fn idle_within_cooldown_never_scales_in(input in input_strategy()) {
            let d = desired_replicas(&input);
            let lo = input.min.max(0);
            let hi = input.max.max(lo);
            let in_cooldown = input.last_active_time.is_some_and(|t| {
                input.now < t + chrono::TimeDelta::from_std(input.cooldown).unwrap()
            });
            if !input.paused && !d.active && !d.fallback_applied && in_cooldown && input.current_replicas > 0 {
                prop_assert_eq!(d.desired, input.current_replicas.clamp(lo, hi));
            }
        }
    }
}
