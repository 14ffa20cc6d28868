//! The ScaledWorker kind: queue-driven scaling of a worker, scale to zero included.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Condition;

/// KEDA-like scaling of a worker by queue depth, owned by the operator itself (no HPA, no
/// external metrics APIService). Desired replicas = clamp(max over triggers of
/// ceil(value / targetPerReplica), minReplicas, maxReplicas).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "ScaledWorker",
    plural = "scaledworkers",
    shortname = "sw",
    category = "slipway",
    namespaced,
    doc = "A ScaledWorker scales a worker by queue depth (Redis, RabbitMQ, SQS, Service Bus, NATS JetStream, PostgreSQL), scale to zero included.",
    status = "ScaledWorkerStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minReplicas"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas",
     "message": "spec.minReplicas must be less than or equal to spec.maxReplicas"},
    {"rule": "!has(self.fallback) || self.fallback.replicas <= self.maxReplicas",
     "message": "spec.fallback.replicas must not exceed spec.maxReplicas"}
]))]
pub struct ScaledWorkerSpec {
    /// What to scale: exactly one of `release` or `deployment`.
    pub target: ScaleTarget,
    /// Fewest replicas; 0 scales to zero when idle.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Seconds between reads of each trigger.
    #[serde(default = "default_polling")]
    #[schemars(range(min = 1, max = 3600))]
    pub polling_interval_seconds: i32,
    /// Seconds without activity before scaling in to `minReplicas`.
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_seconds: i32,
    /// Queue readings that drive the replica count; desired = max over triggers.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub triggers: Vec<Trigger>,
    /// Replicas to run while the sources keep failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// True freezes the current replica count.
    #[serde(default)]
    pub paused: bool,
}

fn default_max() -> i32 {
    100
}
fn default_polling() -> i32 {
    30
}
fn default_cooldown() -> i32 {
    300
}

/// What a ScaledWorker scales. Exactly one block must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.release) != has(self.deployment)",
     "message": "set exactly one of target.release or target.deployment"}
]))]
pub struct ScaleTarget {
    /// A service of a Release in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseTarget>,
    /// Any Deployment in the same namespace, scaled through its scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentTarget>,
}

impl ScaleTarget {
    /// A short description for `status.target`, e.g. `release/shop/worker`.
    pub fn describe(&self) -> String {
        match (&self.release, &self.deployment) {
            (Some(r), _) => format!("release/{}/{}", r.name, r.service),
            (None, Some(d)) => format!("deployment/{}", d.name),
            (None, None) => "none".into(),
        }
    }
}

/// A service of a Release.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseTarget {
    /// Release name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Service name within the Release.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 40)
    )]
    pub service: String,
}

/// A Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentTarget {
    /// Deployment name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One queue reading. Exactly one source block must be set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.redis) ? 1 : 0) + (has(self.redisStream) ? 1 : 0) + (has(self.rabbitmq) ? 1 : 0) + (has(self.sqs) ? 1 : 0) + (has(self.serviceBus) ? 1 : 0) + (has(self.natsJetStream) ? 1 : 0) + (has(self.postgresql) ? 1 : 0) == 1",
     "message": "set exactly one trigger source: redis, redisStream, rabbitmq, sqs, serviceBus, natsJetStream or postgresql"},
    {"rule": "self.targetPerReplica > 0",
     "message": "targetPerReplica must be greater than 0 (messages one replica handles)"}
]))]
pub struct Trigger {
    /// Trigger name: a DNS-1123 label, unique within the ScaledWorker.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// Messages one replica handles (KEDA's messageCount).
    pub target_per_replica: i64,
    /// The trigger is active only when its value is greater than this.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_threshold: i64,
    /// Length of a Redis list (LLEN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSource>,
    /// Pending entries of a Redis stream consumer group, or the stream length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_stream: Option<RedisStreamSource>,
    /// Ready plus unacknowledged messages of a RabbitMQ queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitMqSource>,
    /// Visible plus in-flight messages of an AWS SQS queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs: Option<SqsSource>,
    /// Active messages of an Azure Service Bus queue or subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_bus: Option<ServiceBusSource>,
    /// Pending plus ack-pending messages of a NATS JetStream consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_jet_stream: Option<NatsJetStreamSource>,
    /// A scalar query on PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<PostgresqlSource>,
    /// Credentials: a Secret in the same namespace; keys are named per source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<TriggerAuth>,
}

/// A Redis list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSource {
    /// `redis://host:port[/db]` or `rediss://` for TLS. Password from auth key `password`.
    #[schemars(regex(pattern = r"^rediss?://"), length(max = 1024))]
    pub address: String,
    /// List key.
    #[schemars(length(min = 1, max = 1024))]
    pub list: String,
}

/// A Redis stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisStreamSource {
    /// `redis://host:port[/db]` or `rediss://`.
    #[schemars(regex(pattern = r"^rediss?://"), length(max = 1024))]
    pub address: String,
    /// Stream key.
    #[schemars(length(min = 1, max = 1024))]
    pub stream: String,
    /// Consumer group whose pending entries count; without it, the stream length counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
}

/// A RabbitMQ queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqSource {
    /// Management API URL (`http://host:15672`) or AMQP URL (`amqp://host:5672/vhost`).
    /// Credentials from auth keys `username` and `password`.
    #[schemars(regex(pattern = r"^(amqps?|https?)://"), length(max = 1024))]
    pub url: String,
    /// Queue name.
    #[schemars(length(min = 1, max = 255))]
    pub queue: String,
    /// Virtual host; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
}

/// An AWS SQS queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqsSource {
    /// Queue URL.
    #[schemars(regex(pattern = r"^https?://"), length(max = 1024))]
    pub queue_url: String,
    /// AWS region.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
    /// Endpoint override for emulators, e.g. `http://127.0.0.1:5000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint_url: Option<String>,
}

/// An Azure Service Bus queue, or a topic subscription.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.queue) ? (!has(self.topic) && !has(self.subscription)) : (has(self.topic) && has(self.subscription))",
     "message": "serviceBus needs either queue, or topic and subscription"}
]))]
pub struct ServiceBusSource {
    /// Namespace name (`NAME.servicebus.windows.net`) or full host.
    #[schemars(length(min = 1, max = 253))]
    pub namespace: String,
    /// Queue name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Topic name (with `subscription`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Subscription name (with `topic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
}

/// A NATS JetStream consumer, read through the server's monitoring endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsJetStreamSource {
    /// Monitoring URL, e.g. `http://nats:8222`.
    #[schemars(regex(pattern = r"^https?://"), length(max = 1024))]
    pub monitoring_url: String,
    /// Account; default `$G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Stream name.
    #[schemars(length(min = 1, max = 255))]
    pub stream: String,
    /// Durable consumer name.
    #[schemars(length(min = 1, max = 255))]
    pub consumer: String,
}

/// A PostgreSQL query returning one number.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSource {
    /// A query returning a single numeric value, e.g. `select count(*) from jobs where state='queued'`.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// Connection URL without password, e.g. `postgresql://app@db:5432/app`; password from
    /// auth key `password`. Default: auth key `connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^postgres(ql)?://"))]
    pub connection: Option<String>,
}

/// Credentials of a trigger.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerAuth {
    /// Secret in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Replicas used while sources fail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Consecutive failed reads before the fallback applies.
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: i32,
    /// Replicas to run meanwhile.
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,
}

/// Observed state of a ScaledWorker; every decision is visible here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaledWorkerStatus {
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What is scaled (printed by `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Replica count last decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Replica count of the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// Last time some trigger was active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<String>,
    /// Last time the replica count was changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// The last reading of each trigger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerStatus>,
    /// Ready, Active, Fallback, Paused, Reconciling, Stalled.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The last reading of one trigger.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// Trigger name.
    pub name: String,
    /// Last value read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// Value is above the activation threshold.
    #[serde(default)]
    pub active: bool,
    /// The last read succeeded.
    #[serde(default)]
    pub healthy: bool,
    /// Failed reads in a row.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// The last read's error, empty when healthy.
    #[serde(default)]
    pub last_error: String,
}
