//! Release logic that knows no platform: resolving a Release against its Environment into a
//! [`plan::RevisionPlan`], and the rollout state machine in [`machine`].

pub mod machine;
pub mod plan;
