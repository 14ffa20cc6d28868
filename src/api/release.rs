//! The Release kind: one app at one version in one Environment.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, EnvVar, Replicas, Resources};

/// Annotation a person sets to approve a version for an Environment with
/// `promotion.requireApproval`.
pub const APPROVED_VERSION_ANNOTATION: &str = "slipway.dev/approved-version";
/// Annotation whose change retries a failed revision without a spec change.
pub const RETRY_ANNOTATION: &str = "slipway.dev/retry";

/// One application at one version in one Environment: its services, the migration that must
/// succeed first, scheduled jobs, verification and automatic rollback. Edited in place: a
/// spec change starts a new revision.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "Release",
    plural = "releases",
    shortname = "rel",
    category = "slipway",
    namespaced,
    doc = "A Release is one application at one version in one Environment: services, a migration that must succeed first, scheduled jobs, verification and automatic rollback to the last good revision.",
    status = "ReleaseStatus",
    printcolumn = r#"{"name":"Environment","type":"string","jsonPath":".spec.environment"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Serving","type":"string","jsonPath":".status.version","priority":1}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.environment == oldSelf.environment",
     "message": "spec.environment is immutable: create a new Release to deploy to another Environment"},
    {"rule": "!has(self.rollout) || !has(self.rollout.verify) || !has(self.rollout.verify.service) || self.services.exists(s, s.name == self.rollout.verify.service)",
     "message": "spec.rollout.verify.service must name one of spec.services"},
    {"rule": "!has(self.jobs) || self.jobs.all(j, !self.services.exists(s, s.name == j.name))",
     "message": "spec.jobs names must differ from spec.services names"}
]))]
pub struct ReleaseSpec {
    /// Environment (same namespace) this Release deploys to. Immutable.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub environment: String,
    /// Application name linking Releases of the same app across Environments (promotion).
    /// Default: `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub app: Option<String>,
    /// The version to run, e.g. `v1.6.1` or a commit SHA.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"),
        length(min = 1, max = 128)
    )]
    pub version: String,
    /// Long-running services; at least one, keyed by name.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<Service>,
    /// A Job that must run to completion before any service changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// Scheduled jobs, keyed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub jobs: Vec<ScheduledJob>,
    /// How the rollout is watched, verified and undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// How many old revisions are kept for rollback.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: i32,
}

fn default_history_limit() -> i32 {
    10
}

/// A long-running service (a Deployment on Kubernetes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.ingress) || (has(self.ports) && size(self.ports) > 0)",
     "message": "a service with ingress needs at least one entry in ports"},
    {"rule": "!has(self.healthCheck) || !has(self.healthCheck.port) || (type(self.healthCheck.port) == int ? (self.healthCheck.port >= 1 && self.healthCheck.port <= 65535) : (has(self.ports) && self.ports.exists(p, p.name == self.healthCheck.port)))",
     "message": "healthCheck.port must be a port number (1-65535) or the name of one of the service's ports"}
]))]
pub struct Service {
    /// Service name: a DNS-1123 label, unique within the Release.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 40)
    )]
    pub name: String,
    /// Container image, e.g. `cr.example.io/shop-api:v1.6.1`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// Ports the service listens on; a Service object is created when set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub ports: Vec<Port>,
    /// Expose the service over HTTP(S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
    /// Replica bounds; `min == max` is a fixed count. Default: the Environment's defaults, else 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// CPU and memory per replica. Default: the Environment's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Environment variables, added to (and overriding) the Environment's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
    /// HTTP readiness and liveness check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// A named container port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// Port name: a DNS-1123 label of at most 15 characters, e.g. `http`.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 15)
    )]
    pub name: String,
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// HTTP exposure of a service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    /// Reachable from outside the cluster / environment.
    #[serde(default)]
    pub external: bool,
    /// Host name, e.g. `api.shop.example`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        ),
        length(max = 253)
    )]
    pub host: Option<String>,
    /// Path prefix.
    #[serde(default = "default_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

fn default_path() -> String {
    "/".into()
}

/// An HTTP health check, used as readiness and liveness probe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP path, e.g. `/health`.
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path: String,
    /// Port name (from `ports`) or number. Default: the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// Seconds between checks.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// Consecutive failures before the replica is unready.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

fn default_period() -> i32 {
    10
}
fn default_failure_threshold() -> i32 {
    3
}

/// A port given by name or number.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl JsonSchema for PortRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortRef".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "description": "Port name (from `ports`) or number."
        })
    }
}

/// The migration Job: runs to completion before any service of the revision changes, once
/// per revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// Migrator image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Command, e.g. `[npx, prisma, migrate, deploy]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
    /// Seconds the migration may run before it counts as failed.
    #[serde(default = "default_migration_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
    /// Retries after a failed attempt.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
}

fn default_migration_timeout() -> i32 {
    600
}

/// A scheduled job (a CronJob on Kubernetes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledJob {
    /// Job name: a DNS-1123 label, unique within the Release.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 40)
    )]
    pub name: String,
    /// Container image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// Five-field cron schedule (minute hour day-of-month month day-of-week), e.g.
    /// `0 2 * * *`, or a macro such as `@daily`.
    #[schemars(length(min = 1, max = 128))]
    #[schemars(regex(
        pattern = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\*|\?|([0-9]{1,2}|[A-Za-z]{3})(-([0-9]{1,2}|[A-Za-z]{3}))?)(/[0-9]{1,2})?(,(\*|\?|([0-9]{1,2}|[A-Za-z]{3})(-([0-9]{1,2}|[A-Za-z]{3}))?)(/[0-9]{1,2})?)*(\s+(\*|\?|([0-9]{1,2}|[A-Za-z]{3})(-([0-9]{1,2}|[A-Za-z]{3}))?)(/[0-9]{1,2})?(,(\*|\?|([0-9]{1,2}|[A-Za-z]{3})(-([0-9]{1,2}|[A-Za-z]{3}))?)(/[0-9]{1,2})?)*){4})$"
    ))]
    pub schedule: String,
    /// IANA time zone of the schedule, e.g. `Europe/London`. Default: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// Seconds one run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: Option<i32>,
    /// Retries of a failed run.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
}

/// How a rollout is watched, verified and undone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Seconds every service has to become available before the rollout counts as failed.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: i32,
    /// Restore the last Succeeded revision when the rollout or verification fails.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// A check run after all services are available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            progress_deadline_seconds: 600,
            auto_rollback: true,
            verify: None,
        }
    }
}

fn default_progress_deadline() -> i32 {
    600
}
fn default_true() -> bool {
    true
}

/// A post-rollout HTTP check: `url`, or `service` with `path`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.url) != has(self.service)",
     "message": "rollout.verify needs exactly one of url or service"},
    {"rule": "!has(self.path) || has(self.service)",
     "message": "rollout.verify.path is used with service; put the path in url instead"}
]))]
pub struct Verify {
    /// Absolute URL to GET, e.g. `https://api.shop.example/health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub url: Option<String>,
    /// A service of this Release to GET through its first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Path used with `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub path: Option<String>,
    /// Attempts before verification fails; any 2xx answer passes.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 1000))]
    pub attempts: i32,
    /// Seconds between attempts.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
}

fn default_attempts() -> i32 {
    10
}
fn default_interval() -> i32 {
    6
}

/// Where a Release is in its lifecycle.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    AwaitingPromotion,
    AwaitingApproval,
    Migrating,
    RollingOut,
    Verifying,
    Succeeded,
    Failed,
    RolledBack,
    Frozen,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::AwaitingPromotion => "AwaitingPromotion",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Migrating => "Migrating",
            Phase::RollingOut => "RollingOut",
            Phase::Verifying => "Verifying",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::RolledBack => "RolledBack",
            Phase::Frozen => "Frozen",
        }
    }
}

/// Observed state of a Release.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Lifecycle phase of the current revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Version serving now (after a rollback: the restored one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Current revision number; increases with every spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Version the current revision deploys (`spec.version` when the revision started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_version: Option<String>,
    /// When the current revision started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_started_at: Option<String>,
    /// When the services of the current revision started to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started_at: Option<String>,
    /// Verification attempts made for the current revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_attempts: Option<i32>,
    /// The last revision that Succeeded: what a rollback restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_succeeded_revision: Option<i64>,
    /// The revision restored by the last rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<i64>,
    /// The `slipway.dev/retry` annotation value the current revision started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// Ready, Reconciling, Stalled, MigrationSucceeded, RolledOut, Healthy, RolledBack.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The current revision's migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// Per-service rollout state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
    /// Earlier revisions, newest first, bounded by `revisionHistoryLimit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,
}

/// State of a migration Job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// Name of the Job.
    pub job: String,
    /// Pending, Running, Succeeded or Failed.
    pub state: String,
    /// The revision this migration belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Rollout state of one service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Image running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Desired replicas.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas running the current revision.
    #[serde(default)]
    pub updated_replicas: i32,
}

/// One earlier revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// Revision number.
    pub revision: i64,
    /// Version of that revision.
    pub version: String,
    /// How it ended.
    pub phase: Phase,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}
