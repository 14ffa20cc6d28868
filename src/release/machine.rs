//! The rollout state machine of a Release: a pure function from (spec summary, previous
//! status, what the platform reports, time) to (new status, actions, events, requeue).
//!
//! ```text
//! Pending → [AwaitingPromotion] → [AwaitingApproval] → [Migrating] → RollingOut → [Verifying] → Succeeded
//!                                      Migrating ✗ → Failed          RollingOut/Verifying ✗ → RolledBack | Failed
//! Frozen while the Environment is frozen (before anything changed).
//! ```
//!
//! Rules that live here and nowhere else:
//! - a new revision starts when `metadata.generation` changes, or when a Failed/RolledBack
//!   revision's `slipway.dev/retry` annotation changes;
//! - a migration recorded as Running is never abandoned: a newer spec waits for it;
//! - a migration recorded as Succeeded is never started again for that revision;
//! - no service changes before the migration Succeeded;
//! - a failure after services changed restores the last Succeeded revision when
//!   `autoRollback` is on and there is one.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::{format_time, parse_time};

use crate::api::{
    condition_type, set_abnormal_condition, set_condition, set_kstatus_conditions, status,
    Condition, Convergence, MigrationStatus, Phase, ReleaseStatus, RevisionRecord,
};

/// Condition types specific to Release.
pub mod release_condition {
    pub const MIGRATION_SUCCEEDED: &str = "MigrationSucceeded";
    pub const ROLLED_OUT: &str = "RolledOut";
    pub const HEALTHY: &str = "Healthy";
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// A gate that either lets the revision through or says why it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    Waiting(String),
}

/// The Environment's verdict on the current revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gates {
    pub frozen: bool,
    pub promotion: Gate,
    pub approval: Gate,
    /// Whether a migration may start now (`--max-concurrent-migrations`); consulted only when
    /// the revision is about to start one.
    pub migration_slot: Gate,
}

impl Gates {
    pub fn open() -> Gates {
        Gates {
            frozen: false,
            promotion: Gate::Open,
            approval: Gate::Open,
            migration_slot: Gate::Open,
        }
    }
}

/// What the platform reports about the migration named in `status.migration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationObserved {
    /// No such Job (never created, or gone).
    Absent,
    Running,
    Succeeded,
    Failed(String),
}

/// What the platform reports about the services of the plan it was asked to compare with.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RolloutObserved {
    /// Every service runs the plan and has its replicas available.
    pub available: bool,
    /// A reason the rollout cannot succeed (e.g. the platform reports it failed).
    pub failed: Option<String>,
}

/// Everything `decide` looks at.
#[derive(Clone, Debug)]
pub struct Input {
    pub generation: i64,
    pub version: String,
    pub retry: Option<String>,
    pub status: ReleaseStatus,
    pub gates: Gates,
    pub has_migration: bool,
    /// Name the migration Job of the current revision gets when it is started now.
    pub migration_job_name: String,
    pub migration: MigrationObserved,
    pub rollout: RolloutObserved,
    /// Some(attempts) when `rollout.verify` is set.
    pub verify_attempts_allowed: Option<i32>,
    pub verify_interval: Duration,
    /// The outcome of a verification attempt made in this reconcile, if one was made.
    pub verify: Option<Result<(), String>>,
    pub auto_rollback: bool,
    /// The revision a rollback would restore (the last Succeeded one whose plan is stored).
    pub rollback_target: Option<(i64, String)>,
    pub progress_deadline: Duration,
    pub history_limit: usize,
    pub now: DateTime<Utc>,
}

/// Side effects the controller carries out, in order, before writing the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the migration Job named in `status.migration.job`.
    StartMigration,
    /// Apply the current revision's services and jobs (a no-op when already applied).
    ApplyCurrent,
    /// Run one verification attempt on the next reconcile.
    Verify,
    /// Apply the stored plan of this revision (rollback).
    ApplyRevision(i64),
}

/// A Kubernetes Event to record on the Release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub status: ReleaseStatus,
    pub actions: Vec<Action>,
    pub events: Vec<EventNote>,
    pub requeue: Duration,
}

/// Safety-net requeue while work is in flight; watches on Jobs and Deployments wake the
/// Release as soon as something changes, so this only matters if an event is missed.
const POLL: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(300);

fn terminal(p: Option<Phase>) -> bool {
    matches!(p, Some(Phase::Failed) | Some(Phase::RolledBack))
}

/// Decides the next step of a Release. Pure and deterministic.
pub fn decide(inp: &Input) -> Decision {
    let mut st = inp.status.clone();
    let mut actions = vec![];
    let mut events = vec![];
    let before = st.phase;
    st.observed_generation = Some(inp.generation);
    let now = format_time(inp.now);

    // A migration recorded as Running settles first, whatever revision it belongs to.
    if let Some(m) = st.migration.as_mut().filter(|m| m.state == "Running") {
        match &inp.migration {
            MigrationObserved::Succeeded => {
                m.state = "Succeeded".into();
                m.completed_at = Some(now.clone());
                events.push(EventNote {
                    warning: false,
                    reason: "MigrationSucceeded".into(),
                    message: format!("migration Job {} succeeded", m.job),
                });
            }
            MigrationObserved::Failed(msg) => {
                m.state = "Failed".into();
                m.completed_at = Some(now.clone());
                m.message = Some(msg.clone());
                events.push(EventNote {
                    warning: true,
                    reason: "MigrationFailed".into(),
                    message: format!("migration Job {} failed: {msg}", m.job),
                });
            }
            MigrationObserved::Running | MigrationObserved::Absent => {}
        }
    }
    let migration_running = st.migration.as_ref().is_some_and(|m| m.state == "Running");

    let new_revision = st.revision != Some(inp.generation);
    let retry = !new_revision && terminal(st.phase) && inp.retry.is_some() && inp.retry != st.retry;
    if new_revision || retry {
        if migration_running && st.revision.is_some() {
            let m = st.migration.as_ref().unwrap();
            let msg = format!(
                "waiting for the migration of revision {} (Job {}) to finish before starting revision {}",
                m.revision.unwrap_or_default(),
                m.job,
                inp.generation
            );
            finish_conditions(&mut st, inp, "MigrationInProgress", &msg);
            return Decision {
                status: st,
                actions,
                events,
                requeue: POLL,
            };
        }
        if let (Some(rev), Some(phase)) = (st.revision, st.phase) {
            if new_revision {
                st.history.insert(
                    0,
                    RevisionRecord {
                        revision: rev,
                        version: st.revision_version.clone().unwrap_or_default(),
                        phase,
                        started_at: st.revision_started_at.clone(),
                        finished_at: Some(now.clone()),
                    },
                );
                st.history.truncate(inp.history_limit);
            }
        }
        st.revision = Some(inp.generation);
        st.revision_version = Some(inp.version.clone());
        st.revision_started_at = Some(now.clone());
        st.rollout_started_at = None;
        st.verify_attempts = None;
        st.rolled_back_to = None;
        st.retry = inp.retry.clone();
        // A retry of a revision whose migration succeeded keeps that record: it never runs twice.
        if new_revision
            || st
                .migration
                .as_ref()
                .is_some_and(|m| m.state != "Succeeded")
        {
            st.migration = None;
        }
        st.phase = Some(Phase::Pending);
    }

    let mut reason = String::new();
    let mut message = String::new();
    let mut requeue = IDLE;
    // Walk the phases; each arm either moves on (continue) or settles (break).
    for _ in 0..8 {
        match st.phase.unwrap_or(Phase::Pending) {
            Phase::Pending | Phase::Frozen | Phase::AwaitingPromotion | Phase::AwaitingApproval => {
                if inp.gates.frozen {
                    st.phase = Some(Phase::Frozen);
                    reason = "Frozen".into();
                    message =
                        "the Environment is frozen: new rollouts wait until spec.freeze is false"
                            .into();
                    requeue = IDLE;
                    break;
                }
                if let Gate::Waiting(why) = &inp.gates.promotion {
                    st.phase = Some(Phase::AwaitingPromotion);
                    reason = "PromotionPending".into();
                    message = why.clone();
                    requeue = Duration::from_secs(30);
                    break;
                }
                if let Gate::Waiting(why) = &inp.gates.approval {
                    st.phase = Some(Phase::AwaitingApproval);
                    reason = "AwaitingApproval".into();
                    message = why.clone();
                    requeue = IDLE;
                    break;
                }
                st.phase = Some(if inp.has_migration {
                    Phase::Migrating
                } else {
                    Phase::RollingOut
                });
            }
            Phase::Migrating => match st.migration.as_ref().map(|m| m.state.as_str()) {
                None if inp.gates.migration_slot != Gate::Open => {
                    st.phase = Some(Phase::Pending);
                    reason = "MigrationQueued".into();
                    if let Gate::Waiting(why) = &inp.gates.migration_slot {
                        message = why.clone();
                    }
                    requeue = POLL;
                    break;
                }
                None => {
                    st.migration = Some(MigrationStatus {
                        job: inp.migration_job_name.clone(),
                        state: "Running".into(),
                        revision: Some(inp.generation),
                        started_at: Some(now.clone()),
                        completed_at: None,
                        message: None,
                    });
                    actions.push(Action::StartMigration);
                    events.push(EventNote {
                        warning: false,
                        reason: "MigrationStarted".into(),
                        message: format!(
                            "started migration Job {} for {}",
                            inp.migration_job_name, inp.version
                        ),
                    });
                    reason = "Migrating".into();
                    message = format!("migration Job {} is running", inp.migration_job_name);
                    requeue = POLL;
                    break;
                }
                Some("Running") => {
                    let job = st.migration.as_ref().unwrap().job.clone();
                    if inp.migration == MigrationObserved::Absent {
                        // Recorded as started but the Job is gone before finishing: create it again.
                        actions.push(Action::StartMigration);
                    }
                    reason = "Migrating".into();
                    message = format!("migration Job {job} is running");
                    requeue = POLL;
                    break;
                }
                Some("Succeeded") => st.phase = Some(Phase::RollingOut),
                _ => {
                    let m = st.migration.as_ref().unwrap();
                    st.phase = Some(Phase::Failed);
                    reason = "MigrationFailed".into();
                    message = format!(
                        "migration Job {} failed: {}; the previous version keeps serving. Fix the migration and change the spec, or set the {} annotation",
                        m.job,
                        m.message.clone().unwrap_or_default(),
                        crate::api::RETRY_ANNOTATION
                    );
                    break;
                }
            },
            Phase::RollingOut => {
                if st.rollout_started_at.is_none() {
                    st.rollout_started_at = Some(now.clone());
                }
                actions.push(Action::ApplyCurrent);
                if inp.rollout.available {
                    if let Some(_attempts) = inp.verify_attempts_allowed {
                        st.phase = Some(Phase::Verifying);
                        st.verify_attempts = Some(0);
                        actions.push(Action::Verify);
                        reason = "Verifying".into();
                        message = "all services available; verifying".into();
                        requeue = Duration::from_millis(200);
                        break;
                    }
                    st.phase = Some(Phase::Succeeded);
                    continue;
                }
                let started = parse_time(st.rollout_started_at.as_deref()).unwrap_or(inp.now);
                let elapsed = (inp.now - started).to_std().unwrap_or_default();
                if let Some(why) = &inp.rollout.failed {
                    fail_rollout(
                        &mut st,
                        inp,
                        &mut actions,
                        "RolloutFailed",
                        why,
                        &mut reason,
                        &mut message,
                    );
                    break;
                }
                if elapsed > inp.progress_deadline {
                    let why = format!(
                        "services not available within progressDeadlineSeconds ({}s)",
                        inp.progress_deadline.as_secs()
                    );
                    fail_rollout(
                        &mut st,
                        inp,
                        &mut actions,
                        "ProgressDeadlineExceeded",
                        &why,
                        &mut reason,
                        &mut message,
                    );
                    break;
                }
                reason = "RollingOut".into();
                message = format!("rolling out {}", inp.version);
                // Wake up no later than the deadline, so a stuck rollout is noticed on time.
                let left = inp.progress_deadline.saturating_sub(elapsed) + Duration::from_secs(1);
                requeue = POLL.min(left);
                break;
            }
            Phase::Verifying => {
                let allowed = inp.verify_attempts_allowed.unwrap_or(1);
                match &inp.verify {
                    Some(Ok(())) => {
                        st.verify_attempts = Some(st.verify_attempts.unwrap_or(0) + 1);
                        st.phase = Some(Phase::Succeeded);
                        continue;
                    }
                    Some(Err(e)) => {
                        let n = st.verify_attempts.unwrap_or(0) + 1;
                        st.verify_attempts = Some(n);
                        if n >= allowed {
                            let why = format!("verification failed {n} times; last: {e}");
                            fail_rollout(
                                &mut st,
                                inp,
                                &mut actions,
                                "HealthCheckFailed",
                                &why,
                                &mut reason,
                                &mut message,
                            );
                            break;
                        }
                        reason = "Verifying".into();
                        message = format!("verification attempt {n}/{allowed} failed: {e}");
                        actions.push(Action::Verify);
                        requeue = inp.verify_interval;
                        break;
                    }
                    None => {
                        reason = "Verifying".into();
                        message = format!(
                            "verifying ({} of {allowed} attempts made)",
                            st.verify_attempts.unwrap_or(0)
                        );
                        actions.push(Action::Verify);
                        requeue = Duration::from_millis(200);
                        break;
                    }
                }
            }
            Phase::Succeeded => {
                actions.push(Action::ApplyCurrent);
                st.version = st.revision_version.clone();
                st.last_succeeded_revision = st.revision;
                reason = "Succeeded".into();
                message = format!("{} is serving", inp.version);
                requeue = IDLE;
                break;
            }
            Phase::RolledBack => {
                if let Some(rev) = st.rolled_back_to {
                    actions.push(Action::ApplyRevision(rev));
                }
                reason = "RolledBack".into();
                message = find_reason_message(&st, "RolledBack");
                requeue = IDLE;
                break;
            }
            Phase::Failed => {
                reason = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition_type::READY)
                    .map(|c| c.reason.clone())
                    .filter(|r| !r.is_empty() && r != "Succeeded")
                    .unwrap_or_else(|| "Failed".into());
                message = find_reason_message(&st, &reason);
                requeue = IDLE;
                break;
            }
        }
    }

    // A phase change gets its own Event, unless a more specific one (e.g. MigrationStarted
    // for Migrating) already says it.
    let said =
        events.iter().any(|e| e.reason == "MigrationStarted") && st.phase == Some(Phase::Migrating);
    if st.phase != before && !said {
        let p = st.phase.unwrap_or(Phase::Pending);
        let warning = matches!(p, Phase::Failed | Phase::RolledBack);
        // A migration that succeeded and the rollout it unblocks make one Event, not two.
        let mut message = message.clone();
        if p == Phase::RollingOut {
            if let Some(i) = events.iter().position(|e| e.reason == "MigrationSucceeded") {
                message = format!("{}; {message}", events.remove(i).message);
            }
        }
        // Queued for a migration slot is Pending with a reason worth naming.
        let event_reason = if p == Phase::Pending && reason == "MigrationQueued" {
            reason.clone()
        } else {
            p.as_str().into()
        };
        events.push(EventNote {
            warning,
            reason: event_reason,
            message,
        });
    }
    finish_conditions(&mut st, inp, &reason, &message);
    Decision {
        status: st,
        actions,
        events,
        requeue,
    }
}

fn find_reason_message(st: &ReleaseStatus, _reason: &str) -> String {
    st.conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn fail_rollout(
    st: &mut ReleaseStatus,
    inp: &Input,
    actions: &mut Vec<Action>,
    why_reason: &str,
    why: &str,
    reason: &mut String,
    message: &mut String,
) {
    match (&inp.rollback_target, inp.auto_rollback) {
        (Some((rev, version)), true) => {
            actions.retain(|a| *a != Action::ApplyCurrent);
            actions.push(Action::ApplyRevision(*rev));
            st.phase = Some(Phase::RolledBack);
            st.rolled_back_to = Some(*rev);
            st.version = Some(version.clone());
            *reason = "RolledBack".into();
            *message = format!(
                "{} failed ({why_reason}: {why}); rolled back to revision {rev} ({version})",
                inp.version
            );
        }
        _ => {
            st.phase = Some(Phase::Failed);
            *reason = why_reason.into();
            *message = format!(
                "{} failed: {why}{}",
                inp.version,
                if inp.auto_rollback {
                    "; no earlier Succeeded revision to roll back to"
                } else {
                    "; autoRollback is off"
                }
            );
        }
    }
}

fn cond(type_: &str, s: &str, reason: &str, message: &str, gen: i64, now: &str) -> Condition {
    Condition::new(type_, s, reason, message, Some(gen), now)
}

/// Derives every condition from the phase, kstatus-style: Ready, Reconciling and Stalled (the
/// last two only while True) plus the Release-specific ones (`RolledBack` only after a
/// rollback).
fn finish_conditions(st: &mut ReleaseStatus, inp: &Input, reason: &str, message: &str) {
    use release_condition::*;
    let g = inp.generation;
    let now = format_time(inp.now);
    let phase = st.phase.unwrap_or(Phase::Pending);
    let reason = if reason.is_empty() {
        phase.as_str()
    } else {
        reason
    };
    let state = match phase {
        Phase::Succeeded => Convergence::Ready,
        Phase::Failed | Phase::RolledBack => Convergence::Stalled,
        // Gated: not converged and waiting on something outside (kstatus InProgress, so
        // `flux wait` / `kubectl wait` keep waiting rather than report success).
        Phase::Frozen | Phase::AwaitingApproval | Phase::AwaitingPromotion => {
            Convergence::Reconciling
        }
        _ => Convergence::Reconciling,
    };
    set_kstatus_conditions(&mut st.conditions, state, |t, s| {
        cond(t, s, reason, message, g, &now)
    });
    if let Some(m) = st.migration.clone() {
        let (s, r) = match m.state.as_str() {
            "Succeeded" => (status::TRUE, "MigrationSucceeded"),
            "Failed" => (status::FALSE, "MigrationFailed"),
            _ => (status::UNKNOWN, "MigrationRunning"),
        };
        set_condition(
            &mut st.conditions,
            cond(
                MIGRATION_SUCCEEDED,
                s,
                r,
                &format!("Job {}", m.job),
                m.revision.unwrap_or(g),
                &now,
            ),
        );
    }
    let c = &mut st.conditions;
    let rolled_out = matches!(phase, Phase::Verifying | Phase::Succeeded);
    set_condition(
        c,
        cond(
            ROLLED_OUT,
            if rolled_out {
                status::TRUE
            } else {
                status::FALSE
            },
            if rolled_out {
                "AllServicesAvailable"
            } else {
                reason
            },
            "",
            g,
            &now,
        ),
    );
    let healthy = match phase {
        Phase::Succeeded => status::TRUE,
        Phase::Failed | Phase::RolledBack => status::FALSE,
        _ => status::UNKNOWN,
    };
    set_condition(c, cond(HEALTHY, healthy, reason, "", g, &now));
    // Abnormal-true like Stalled: present only after a rollback.
    set_abnormal_condition(c, ROLLED_BACK, phase == Phase::RolledBack, |t| {
        cond(t, status::TRUE, "RolledBack", message, g, &now)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::condition_types;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn input(generation: i64, status: ReleaseStatus) -> Input {
        Input {
            generation,
            version: format!("v{generation}"),
            retry: None,
            status,
            gates: Gates::open(),
            has_migration: true,
            migration_job_name: format!("shop-migrate-{generation}-abcde"),
            migration: MigrationObserved::Absent,
            rollout: RolloutObserved::default(),
            verify_attempts_allowed: None,
            verify_interval: Duration::from_secs(6),
            verify: None,
            auto_rollback: true,
            rollback_target: None,
            progress_deadline: Duration::from_secs(600),
            history_limit: 10,
            now: t(0),
        }
    }

    fn cond<'a>(s: &'a ReleaseStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} condition"))
    }

    /// Runs decide repeatedly, feeding the status back, like successive reconciles.
    fn step(inp: &mut Input) -> Decision {
        let d = decide(inp);
        inp.status = d.status.clone();
        d
    }

    #[test]
    fn new_release_starts_its_migration_before_touching_services() {
        let mut inp = input(1, ReleaseStatus::default());
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Migrating));
        assert_eq!(d.actions, vec![Action::StartMigration]);
        assert_eq!(d.status.migration.as_ref().unwrap().state, "Running");
        assert_eq!(cond(&d.status, "Ready").status, "False");
        assert_eq!(cond(&d.status, "Reconciling").status, "True");
        assert_eq!(
            condition_types(&d.status.conditions),
            vec![
                "Ready",
                "Reconciling",
                "MigrationSucceeded",
                "RolledOut",
                "Healthy"
            ],
            "no Stalled or RolledBack while they are False: {:#?}",
            d.status.conditions
        );
        // Still running: no service action, no second start.
        inp.migration = MigrationObserved::Running;
        let d = step(&mut inp);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        // Succeeded: recorded, then services roll out in the same pass.
        inp.migration = MigrationObserved::Succeeded;
        let d = step(&mut inp);
        assert_eq!(d.status.migration.as_ref().unwrap().state, "Succeeded");
        assert_eq!(d.status.phase, Some(Phase::RollingOut));
        assert_eq!(d.actions, vec![Action::ApplyCurrent]);
        assert_eq!(cond(&d.status, "MigrationSucceeded").status, "True");
        // One Event says both: the migration succeeded, the rollout began.
        assert_eq!(d.events.len(), 1, "{:?}", d.events);
        assert_eq!(d.events[0].reason, "RollingOut");
        assert!(d.events[0].message.contains("succeeded"), "{:?}", d.events);
        inp.rollout.available = true;
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Succeeded));
        assert_eq!(d.status.version.as_deref(), Some("v1"));
        assert_eq!(d.status.last_succeeded_revision, Some(1));
        assert_eq!(cond(&d.status, "Ready").status, "True");
        // The abnormal-true conditions are gone once they no longer hold (kstatus).
        assert_eq!(
            condition_types(&d.status.conditions),
            vec!["Ready", "MigrationSucceeded", "RolledOut", "Healthy"],
            "{:#?}",
            d.status.conditions
        );
    }

    #[test]
    fn a_succeeded_migration_is_never_started_again() {
        let mut inp = input(1, ReleaseStatus::default());
        step(&mut inp);
        inp.migration = MigrationObserved::Succeeded;
        step(&mut inp);
        // The Job is garbage-collected: the platform reports it absent.
        inp.migration = MigrationObserved::Absent;
        for _ in 0..3 {
            let d = step(&mut inp);
            assert!(
                !d.actions.contains(&Action::StartMigration),
                "{:?}",
                d.actions
            );
        }
    }

    #[test]
    fn failed_migration_fails_without_touching_services() {
        let mut inp = input(1, ReleaseStatus::default());
        step(&mut inp);
        inp.migration = MigrationObserved::Failed("BackoffLimitExceeded".into());
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Failed));
        assert!(d.actions.is_empty());
        assert_eq!(cond(&d.status, "Ready").reason, "MigrationFailed");
        assert_eq!(cond(&d.status, "Stalled").status, "True");
        assert!(d
            .events
            .iter()
            .any(|e| e.warning && e.reason == "MigrationFailed"));
        // Not retried on later reconciles.
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Failed));
        assert!(d.actions.is_empty());
        // ...until the retry annotation changes: a fresh migration attempt.
        inp.retry = Some("1".into());
        inp.migration_job_name = "shop-migrate-1-fffff".into();
        inp.migration = MigrationObserved::Absent;
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Migrating));
        assert_eq!(d.actions, vec![Action::StartMigration]);
        assert_eq!(d.status.migration.unwrap().job, "shop-migrate-1-fffff");
    }

    #[test]
    fn a_running_migration_is_never_abandoned_for_a_newer_spec() {
        let mut inp = input(1, ReleaseStatus::default());
        step(&mut inp);
        inp.migration = MigrationObserved::Running;
        inp.generation = 2;
        inp.version = "v2".into();
        let d = step(&mut inp);
        assert_eq!(d.status.revision, Some(1), "revision 2 must wait");
        assert!(d.actions.is_empty());
        assert!(cond(&d.status, "Ready")
            .message
            .contains("waiting for the migration of revision 1"));
        // The old migration finishes; revision 2 starts with its own migration.
        inp.migration = MigrationObserved::Succeeded;
        inp.migration_job_name = "shop-migrate-2-abcde".into();
        let d = step(&mut inp);
        assert_eq!(d.status.revision, Some(2));
        assert_eq!(d.actions, vec![Action::StartMigration]);
        assert_eq!(d.status.history[0].revision, 1);
    }

    #[test]
    fn gates_hold_the_revision_and_say_why() {
        let mut inp = input(1, ReleaseStatus::default());
        inp.gates.frozen = true;
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Frozen));
        assert!(d.actions.is_empty());
        inp.gates.frozen = false;
        inp.gates.promotion = Gate::Waiting("v1 has not Succeeded in staging".into());
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::AwaitingPromotion));
        assert_eq!(cond(&d.status, "Ready").reason, "PromotionPending");
        inp.gates.promotion = Gate::Open;
        inp.gates.approval = Gate::Waiting("approve with slipway.dev/approved-version=v1".into());
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::AwaitingApproval));
        assert_eq!(cond(&d.status, "Ready").reason, "AwaitingApproval");
        assert!(d.actions.is_empty());
        inp.gates.approval = Gate::Open;
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Migrating));
    }

    #[test]
    fn a_migration_waits_for_a_slot_in_pending_and_says_why() {
        let mut inp = input(1, ReleaseStatus::default());
        let why = "waiting for a migration slot: at most 2 migrations run at once";
        inp.gates.migration_slot = Gate::Waiting(why.into());
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Pending));
        assert!(d.actions.is_empty(), "nothing starts while queued");
        assert!(d.status.migration.is_none());
        assert_eq!(cond(&d.status, "Ready").reason, "MigrationQueued");
        assert_eq!(cond(&d.status, "Ready").message, why);
        assert_eq!(cond(&d.status, "Reconciling").status, "True");
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].reason, "MigrationQueued");
        // Asked again while still queued: the same status, no new Event.
        let again = step(&mut inp);
        assert_eq!(again.status, d.status);
        assert!(again.events.is_empty());
        inp.gates.migration_slot = Gate::Open;
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Migrating));
        assert_eq!(d.actions, vec![Action::StartMigration]);
        // A running migration never waits for a slot.
        inp.gates.migration_slot = Gate::Waiting(why.into());
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Migrating));
        assert_eq!(d.status.migration.as_ref().unwrap().state, "Running");
    }

    fn succeeded_v1() -> Input {
        let mut inp = input(1, ReleaseStatus::default());
        inp.has_migration = false;
        step(&mut inp);
        inp.rollout.available = true;
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Succeeded));
        inp.generation = 2;
        inp.version = "v2".into();
        inp.rollout.available = false;
        inp.rollback_target = Some((1, "v1".into()));
        inp
    }

    #[test]
    fn rollout_past_its_deadline_rolls_back_to_the_last_succeeded_revision() {
        let mut inp = succeeded_v1();
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::RollingOut));
        inp.now = t(601);
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::RolledBack));
        assert_eq!(d.actions, vec![Action::ApplyRevision(1)]);
        assert_eq!(d.status.version.as_deref(), Some("v1"));
        assert_eq!(cond(&d.status, "Stalled").status, "True");
        assert_eq!(cond(&d.status, "RolledBack").status, "True");
        assert_eq!(d.status.history[0].phase, Phase::Succeeded);
        assert!(d
            .events
            .iter()
            .any(|e| e.warning && e.reason == "RolledBack"));
    }

    #[test]
    fn without_auto_rollback_a_failed_rollout_is_failed() {
        let mut inp = succeeded_v1();
        inp.auto_rollback = false;
        step(&mut inp);
        inp.now = t(601);
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Failed));
        assert_eq!(cond(&d.status, "Ready").reason, "ProgressDeadlineExceeded");
        assert!(!d
            .actions
            .iter()
            .any(|a| matches!(a, Action::ApplyRevision(_))));
    }

    #[test]
    fn failed_verification_rolls_back_after_the_allowed_attempts() {
        let mut inp = succeeded_v1();
        inp.verify_attempts_allowed = Some(3);
        inp.rollout.available = true;
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Verifying));
        for n in 1..3 {
            inp.verify = Some(Err("HTTP 503".into()));
            let d = step(&mut inp);
            assert_eq!(d.status.phase, Some(Phase::Verifying), "attempt {n}");
            assert_eq!(d.requeue, Duration::from_secs(6));
        }
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::RolledBack));
        assert_eq!(cond(&d.status, "Ready").reason, "RolledBack");
        assert!(cond(&d.status, "Ready")
            .message
            .contains("HealthCheckFailed"));
    }

    #[test]
    fn passing_verification_succeeds() {
        let mut inp = succeeded_v1();
        inp.verify_attempts_allowed = Some(3);
        inp.rollout.available = true;
        step(&mut inp);
        inp.verify = Some(Ok(()));
        let d = step(&mut inp);
        assert_eq!(d.status.phase, Some(Phase::Succeeded));
        assert_eq!(cond(&d.status, "Healthy").status, "True");
    }

    #[test]
    fn a_stable_release_decides_the_same_status_again() {
        let mut inp = succeeded_v1();
        inp.generation = 1;
        inp.version = "v1".into();
        inp.rollout.available = true;
        let first = step(&mut inp).status;
        inp.now = t(3600);
        let again = step(&mut inp).status;
        assert_eq!(
            first, again,
            "a no-op reconcile must produce an identical status"
        );
    }

    #[test]
    fn history_is_bounded_by_the_limit() {
        let mut inp = input(1, ReleaseStatus::default());
        inp.has_migration = false;
        inp.rollout.available = true;
        inp.history_limit = 3;
        for g in 1..=6 {
            inp.generation = g;
            inp.version = format!("v{g}");
            step(&mut inp);
        }
        assert_eq!(inp.status.history.len(), 3);
        assert_eq!(inp.status.history[0].revision, 5);
    }
}
