//! Queue-driven scaling for ScaledWorker: what to read, and what to decide from it.
//!
//! - [`sources`]: one reader per trigger source (Redis lists and streams, RabbitMQ, AWS SQS,
//!   Azure Service Bus, NATS JetStream, PostgreSQL), sharing connections through a
//!   [`sources::SourcePool`]; [`sources::read_trigger`] reads one trigger.
//! - [`decision`]: the pure function [`decision::desired_replicas`] that turns the readings,
//!   bounds, fallback, cooldown and current state into a replica count, with KEDA's semantics
//!   (activation, cooldown, fallback) and without its sharp edges (an unreadable source never
//!   scales a worker to zero; the fallback also applies at zero replicas).
//! - [`step`]: one polling step, pure: readings, target state and previous status in; the
//!   replica count to write, the new status (conditions included), Events and the next poll
//!   out. It knows nothing of the target's platform.
//!
//! The ScaledWorker controller polls each trigger every `pollingIntervalSeconds`, keeps the
//! consecutive failure counts, calls the decision, and writes the result to the target and to
//! `status` (every decision is visible in `status.triggers`).

pub mod decision;
pub mod sources;
pub mod step;
