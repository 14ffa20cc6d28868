//! ScaledWorker behaviour against the real control plane and real brokers: for each source
//! (Redis list, Redis stream consumer group, RabbitMQ, SQS through the moto server, NATS
//! JetStream, PostgreSQL) messages pushed scale the target Deployment to
//! `ceil(N / targetPerReplica)` clamped to `maxReplicas` within one polling interval plus a
//! slack; a drained queue scales back to `minReplicas` only after `cooldownSeconds`; a backlog
//! at or below `activationThreshold` wakes nothing from zero. Plus: a broker stopped mid-test
//! (a Redis instance of the test's own) gives the fallback replicas, `Ready=False` with reason
//! `TriggerError` and no scale to zero, then recovers; `paused` freezes the count; a Release
//! service scaled while the Release rolls out a new version (neither fights the other); a
//! missing target is `TargetNotFound` until it appears.
//!
//! The brokers are started on loopback by `tests/brokers/up` (`make test` does it) and found
//! through the variables it prints: REDIS_URL, RABBITMQ_URL, SQS_ENDPOINT, NATS_URL,
//! NATS_MONITORING_URL, POSTGRES_URL. A missing variable fails the test; nothing is skipped.
//!
//! Azure Service Bus has no emulator here (none is packaged for Debian or PyPI): its request
//! building and response parsing are unit-tested against the documented response format in
//! `src/scaling/sources/service_bus.rs`, and it has no test in this file.
//!
//! Every test has its own namespace, operator, Deployment and queue/list/stream/table names, so
//! the tests run in parallel against the same brokers.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use slipway::api::{find_condition, Environment, Phase, Release, ScaledWorker, ScaledWorkerStatus};

/// `pollingIntervalSeconds` of the tests.
const POLL: Duration = Duration::from_secs(1);
/// `cooldownSeconds` of the tests.
const COOLDOWN: Duration = Duration::from_secs(4);
/// Allowance on top of one polling interval for a change to reach the Deployment: the broker
/// showing the new depth, the read, the scale write, on two shared cores.
const SLACK: Duration = Duration::from_secs(5);

/// A broker address from the environment that tests/brokers/up prints.
fn broker_env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set: the ScaledWorker tests read real brokers started by \
             tests/brokers/up; run them via `make test` (or export what tests/brokers/up prints)"
            )
        })
}

impl Fixture {
    async fn deployment(&self, name: &str, replicas: i32) {
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": name },
            "spec": { "replicas": replicas, "selector": { "matchLabels": { "app": name } },
                      "template": { "metadata": { "labels": { "app": name } },
                                    "spec": { "containers": [ { "name": "worker", "image": "example.test/worker:v1" } ] } } }
        }))
        .unwrap();
        self.api::<Deployment>()
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
    }

    async fn secret(&self, name: &str, data: &BTreeMap<String, String>) {
        let s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": data
        }))
        .unwrap();
        self.api::<Secret>()
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }

    async fn scaled_worker(&self, name: &str, spec: serde_json::Value) {
        let sw: ScaledWorker = serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "ScaledWorker",
            "metadata": { "name": name }, "spec": spec
        }))
        .unwrap();
        self.api::<ScaledWorker>()
            .create(&PostParams::default(), &sw)
            .await
            .unwrap();
    }

    async fn patch_scaled_worker(&self, name: &str, spec: serde_json::Value) {
        self.api::<ScaledWorker>()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    /// `spec.replicas` of a Deployment (None while it does not exist).
    async fn replicas(&self, deployment: &str) -> Option<i32> {
        let d = self
            .api::<Deployment>()
            .get_opt(deployment)
            .await
            .unwrap()?;
        Some(d.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    async fn status(&self, sw: &str) -> ScaledWorkerStatus {
        self.api::<ScaledWorker>()
            .get(sw)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    /// Fails with the ScaledWorker's status and the operator log.
    async fn fail<T>(&self, what: String) -> T {
        let sws = self
            .api::<ScaledWorker>()
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|s| (s.metadata.name, s.status))
                    .collect::<Vec<_>>()
            });
        panic!(
            "{what}\nScaledWorkers: {sws:#?}\noperator log (last 60 lines):\n{}",
            tail(&self.op.logs(), 60)
        )
    }

    /// Waits until the Deployment runs `want` replicas; returns how long it took.
    async fn wait_replicas(&self, deployment: &str, want: i32, within: Duration) -> Duration {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < within {
            last = self.replicas(deployment).await;
            if last == Some(want) {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(format!(
            "Deployment {deployment}: spec.replicas is {last:?}, not {want}, after {within:?}"
        ))
        .await
    }

    /// Checks that the Deployment keeps `want` replicas for `period`.
    async fn hold_replicas(&self, deployment: &str, want: i32, period: Duration, why: &str) {
        let start = Instant::now();
        while start.elapsed() < period {
            let now = self.replicas(deployment).await;
            if now != Some(want) {
                self.fail(format!(
                    "Deployment {deployment}: spec.replicas became {now:?} after {:?}, expected \
                     {want} for {period:?}: {why}",
                    start.elapsed()
                ))
                .await
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the ScaledWorker's status satisfies `ok`; returns that status.
    async fn wait_status(
        &self,
        sw: &str,
        what: &str,
        within: Duration,
        ok: impl Fn(&ScaledWorkerStatus) -> bool,
    ) -> ScaledWorkerStatus {
        let start = Instant::now();
        while start.elapsed() < within {
            let st = self.status(sw).await;
            if ok(&st) {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(format!(
            "ScaledWorker {sw}: {what} not seen within {within:?}"
        ))
        .await
    }

    /// Waits until the operator has read `value` for the first trigger.
    async fn wait_value(&self, sw: &str, value: i64) -> ScaledWorkerStatus {
        self.wait_value_within(sw, value, POLL + SLACK).await
    }

    async fn wait_value_within(
        &self,
        sw: &str,
        value: i64,
        within: Duration,
    ) -> ScaledWorkerStatus {
        self.wait_status(sw, &format!("trigger value {value}"), within, |st| {
            st.triggers.first().and_then(|t| t.value) == Some(value)
        })
        .await
    }

    /// Waits until, for each (reason, texts), an Event with that reason whose message holds
    /// every text is recorded on the ScaledWorker `sw`.
    async fn wait_events(&self, sw: &str, wanted: &[(&str, &[&str])]) {
        let start = Instant::now();
        loop {
            let events = self.events(sw).await;
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(reason, texts)| {
                    !events
                        .iter()
                        .any(|(r, m)| r == reason && texts.iter().all(|t| m.contains(t)))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > SLACK {
                panic!("no Events {missing:?} on ScaledWorker {sw}; Events: {events:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// (reason, message) of the Events on the ScaledWorker `sw`.
    async fn events(&self, sw: &str) -> Vec<(String, String)> {
        self.api::<k8s_openapi::api::events::v1::Event>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ScaledWorker")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(sw)
            })
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn condition(st: &ScaledWorkerStatus, type_: &str) -> (String, String) {
    find_condition(&st.conditions, type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

fn is(st: &ScaledWorkerStatus, type_: &str, status: &str, reason: &str) -> bool {
    condition(st, type_) == (status.to_string(), reason.to_string())
}

/// A queue of some broker the test can fill and empty.
trait Queue {
    /// The trigger fields that name the source (the source block, and `auth` if any).
    fn trigger(&self) -> serde_json::Value;
    /// The auth Secret the trigger names, if any: (name, data).
    fn secret(&self) -> Option<(String, BTreeMap<String, String>)> {
        None
    }
    /// Adds `n` messages to the backlog.
    async fn push(&self, n: usize);
    /// Empties the backlog.
    async fn drain(&self);
    /// How late the broker itself reports a change of depth (on top of the polling interval).
    fn reporting_lag(&self) -> Duration {
        Duration::ZERO
    }
}

/// The scenario every source goes through, on a worker with min 0, max 4, 10 messages per
/// replica, activation threshold 5.
async fn scales_with_the_backlog<Q: Queue>(f: &Fixture, q: &Q) {
    let within = POLL + SLACK + q.reporting_lag();
    f.deployment("worker", 1).await;
    if let Some((name, data)) = q.secret() {
        f.secret(&name, &data).await;
    }
    let mut trigger = json!({ "name": "queue", "targetPerReplica": 10, "activationThreshold": 5 });
    for (k, v) in q.trigger().as_object().unwrap() {
        trigger[k] = v.clone();
    }
    f.scaled_worker(
        "worker",
        json!({
            "target": { "deployment": { "name": "worker" } },
            "minReplicas": 0, "maxReplicas": 4,
            "pollingIntervalSeconds": POLL.as_secs(), "cooldownSeconds": COOLDOWN.as_secs(),
            "triggers": [ trigger ]
        }),
    )
    .await;

    // Never active: minReplicas at once (KEDA's behaviour for a new ScaledObject).
    f.wait_replicas("worker", 0, Duration::from_secs(30)).await;
    let st = f
        .wait_status("worker", "Ready=True", POLL + SLACK, |st| {
            is(st, "Ready", "True", "Ready")
        })
        .await;
    assert_eq!(st.target.as_deref(), Some("deployment/worker"));
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(
        (st.desired_replicas, st.current_replicas),
        (Some(0), Some(0))
    );
    assert!(is(&st, "Active", "False", "Idle"), "{st:#?}");
    // Abnormal-true (kstatus): absent while they do not hold.
    assert!(
        find_condition(&st.conditions, "Reconciling").is_none(),
        "{st:#?}"
    );
    assert!(
        find_condition(&st.conditions, "Stalled").is_none(),
        "{st:#?}"
    );

    // At the activation threshold: read, but nothing wakes from zero.
    q.push(5).await;
    let st = f.wait_value_within("worker", 5, within).await;
    assert!(
        !st.triggers[0].active,
        "5 is not above the threshold 5: {st:#?}"
    );
    f.hold_replicas(
        "worker",
        0,
        3 * POLL,
        "a backlog at the activation threshold wakes nothing",
    )
    .await;

    // 25 messages: ceil(25 / 10) = 3, within one polling interval plus slack.
    q.push(20).await;
    let took = f.wait_replicas("worker", 3, within).await;
    eprintln!("25 messages -> 3 replicas in {took:?}");
    let st = f.wait_value_within("worker", 25, within).await;
    let t = &st.triggers[0];
    assert_eq!(
        (
            t.name.as_str(),
            t.active,
            t.healthy,
            t.consecutive_failures,
            t.last_error.as_str()
        ),
        ("queue", true, true, 0, ""),
        "{st:#?}"
    );
    assert!(is(&st, "Active", "True", "TriggerActive"), "{st:#?}");
    assert!(st.last_active_time.is_some() && st.last_scale_time.is_some());

    // 125 messages: ceil(125 / 10) = 13, clamped to maxReplicas 4.
    q.push(100).await;
    let took = f.wait_replicas("worker", 4, within).await;
    eprintln!("125 messages -> 4 replicas (max) in {took:?}");
    let st = f.wait_value_within("worker", 125, within).await;
    let ready = find_condition(&st.conditions, "Ready").unwrap();
    assert!(
        ready
            .message
            .contains("trigger queue value 125 / 10 per replica -> 13 (capped at maxReplicas 4)"),
        "{}",
        ready.message
    );

    // Drained: the count holds through the cooldown, then goes to minReplicas.
    q.drain().await;
    let drained = Instant::now();
    // The last poll that saw the backlog was at most one interval before the drain, so the
    // cooldown cannot end before COOLDOWN - POLL after it.
    f.hold_replicas(
        "worker",
        4,
        COOLDOWN - POLL - Duration::from_millis(300),
        "scaled in before the cooldown",
    )
    .await;
    f.wait_replicas("worker", 0, within + POLL).await;
    eprintln!("drained -> 0 replicas after {:?}", drained.elapsed());
    // The status is written right after the scale.
    let st = f
        .wait_status("worker", "currentReplicas 0", POLL + SLACK, |st| {
            st.current_replicas == Some(0)
        })
        .await;
    let parse = |s: &Option<String>| {
        chrono::DateTime::parse_from_rfc3339(s.as_deref().expect("a time")).expect("RFC 3339")
    };
    let (active, scaled) = (parse(&st.last_active_time), parse(&st.last_scale_time));
    assert!(
        scaled - active >= chrono::TimeDelta::from_std(COOLDOWN).unwrap(),
        "scaled in at {scaled}, less than the cooldown after the last activity at {active}"
    );
    assert_eq!(st.triggers[0].value, Some(0));
    assert!(is(&st, "Ready", "True", "Ready"), "{st:#?}");

    // Every scale change has an Event naming the trigger and its value. (Messages published
    // one at a time may be read half-way, so the first scale-out may go 0 -> 1 -> 3.) Events
    // are recorded right after the status write.
    let wanted: [(&str, &[&str]); 4] = [
        ("ScaledIn", &["from 1 to 0", "never active"]),
        ("ScaledOut", &["from 0 to ", ": trigger queue value "]),
        ("ScaledOut", &[" to 4: trigger queue value "]),
        (
            "ScaledIn",
            &["from 4 to 0: no trigger active (queue value 0", "cooldown"],
        ),
    ];
    f.wait_events("worker", &wanted).await;
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix())
}

// ---------------------------------------------------------------------------------------
// Redis

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}"))
}

struct RedisList {
    url: String,
    key: String,
}

impl Queue for RedisList {
    fn trigger(&self) -> serde_json::Value {
        json!({ "redis": { "address": self.url, "list": self.key } })
    }
    async fn push(&self, n: usize) {
        let mut c = redis_conn(&self.url).await;
        let items: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
        let _: i64 = redis::cmd("RPUSH")
            .arg(&self.key)
            .arg(items)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    async fn drain(&self) {
        let mut c = redis_conn(&self.url).await;
        let _: i64 = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

/// A stream with a consumer group; the test is the consumer: pushed entries are read by the
/// group at once, so they are pending until the drain acknowledges them.
struct RedisStream {
    url: String,
    stream: String,
    group: String,
    next_id: AtomicU64,
}

impl RedisStream {
    async fn new(url: String) -> RedisStream {
        let s = RedisStream {
            url,
            stream: unique("stream"),
            group: "workers".into(),
            next_id: AtomicU64::new(1),
        };
        let mut c = redis_conn(&s.url).await;
        let _: String = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&s.stream)
            .arg(&s.group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await
            .unwrap();
        s
    }
}

impl Queue for RedisStream {
    fn trigger(&self) -> serde_json::Value {
        json!({ "redisStream": { "address": self.url, "stream": self.stream, "consumerGroup": self.group } })
    }
    async fn push(&self, n: usize) {
        let mut c = redis_conn(&self.url).await;
        for _ in 0..n {
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            let _: String = redis::cmd("XADD")
                .arg(&self.stream)
                .arg(format!("0-{id}"))
                .arg("job")
                .arg(id)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg("test-consumer")
            .arg("COUNT")
            .arg(n)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    async fn drain(&self) {
        let mut c = redis_conn(&self.url).await;
        let ids: Vec<String> = (1..self.next_id.load(Ordering::SeqCst))
            .map(|i| format!("0-{i}"))
            .collect();
        let _: i64 = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(ids)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn redis_list_scales_with_the_backlog() {
    let q = RedisList {
        url: broker_env("REDIS_URL"),
        key: unique("jobs"),
    };
    let f = Fixture::new("sw-redis").await;
    scales_with_the_backlog(&f, &q).await;
}

#[tokio::test]
async fn redis_stream_pending_entries_scale_the_worker() {
    let q = RedisStream::new(broker_env("REDIS_URL")).await;
    let f = Fixture::new("sw-rstream").await;
    scales_with_the_backlog(&f, &q).await;
}

// ---------------------------------------------------------------------------------------
// RabbitMQ, through the management API (the test publishes through it too)

fn http() -> reqwest::Client {
    slipway::scaling::sources::install_crypto_provider();
    reqwest::Client::new()
}

struct RabbitQueue {
    url: String,
    queue: String,
    http: reqwest::Client,
}

impl RabbitQueue {
    async fn new(url: String) -> RabbitQueue {
        let q = RabbitQueue {
            url,
            queue: unique("jobs"),
            http: http(),
        };
        let r = q
            .http
            .put(format!("{}/api/queues/%2F/{}", q.url, q.queue))
            .basic_auth("guest", Some("guest"))
            .json(&json!({ "durable": false, "auto_delete": false }))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "declaring the queue: {}",
            r.status()
        );
        q
    }
}

impl Queue for RabbitQueue {
    fn trigger(&self) -> serde_json::Value {
        json!({ "rabbitmq": { "url": self.url, "queue": self.queue }, "auth": { "secretName": "rabbitmq" } })
    }
    fn secret(&self) -> Option<(String, BTreeMap<String, String>)> {
        Some((
            "rabbitmq".into(),
            BTreeMap::from([
                ("username".into(), "guest".into()),
                ("password".into(), "guest".into()),
            ]),
        ))
    }
    async fn push(&self, n: usize) {
        for i in 0..n {
            let r = self
                .http
                .post(format!(
                    "{}/api/exchanges/%2F/amq.default/publish",
                    self.url
                ))
                .basic_auth("guest", Some("guest"))
                .json(&json!({ "properties": {}, "routing_key": self.queue,
                               "payload": format!("job-{i}"), "payload_encoding": "string" }))
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["routed"], json!(true), "publishing: {body}");
        }
    }
    async fn drain(&self) {
        let r = self
            .http
            .delete(format!(
                "{}/api/queues/%2F/{}/contents",
                self.url, self.queue
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "purging: {}", r.status());
    }
    /// The management API reports queue depth from statistics the broker gathers every few
    /// seconds (here 4-5 s after a change, also for a new queue), not live.
    fn reporting_lag(&self) -> Duration {
        Duration::from_secs(6)
    }
}

#[tokio::test]
async fn rabbitmq_queue_scales_with_the_backlog() {
    let q = RabbitQueue::new(broker_env("RABBITMQ_URL")).await;
    let f = Fixture::new("sw-rabbit").await;
    scales_with_the_backlog(&f, &q).await;
}

// ---------------------------------------------------------------------------------------
// SQS, on the moto server

struct SqsQueue {
    endpoint: String,
    url: String,
    client: aws_sdk_sqs::Client,
}

impl SqsQueue {
    async fn new(endpoint: String) -> SqsQueue {
        slipway::scaling::sources::install_crypto_provider();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .http_client(http)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .load()
            .await;
        let client = aws_sdk_sqs::Client::new(&config);
        let url = client
            .create_queue()
            .queue_name(unique("jobs"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating an SQS queue on {endpoint}: {e:?}"))
            .queue_url
            .expect("a queue URL");
        SqsQueue {
            endpoint,
            url,
            client,
        }
    }
}

impl Queue for SqsQueue {
    fn trigger(&self) -> serde_json::Value {
        json!({ "sqs": { "queueUrl": self.url, "region": "us-east-1", "endpointUrl": self.endpoint },
                "auth": { "secretName": "aws" } })
    }
    fn secret(&self) -> Option<(String, BTreeMap<String, String>)> {
        Some((
            "aws".into(),
            BTreeMap::from([
                ("awsAccessKeyId".into(), "test".into()),
                ("awsSecretAccessKey".into(), "test".into()),
            ]),
        ))
    }
    async fn push(&self, n: usize) {
        let mut sent = 0;
        while sent < n {
            let batch = (n - sent).min(10);
            let mut req = self.client.send_message_batch().queue_url(&self.url);
            for i in 0..batch {
                req = req.entries(
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(format!("job-{}", sent + i))
                        .build()
                        .unwrap(),
                );
            }
            req.send().await.unwrap();
            sent += batch;
        }
    }
    async fn drain(&self) {
        self.client
            .purge_queue()
            .queue_url(&self.url)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn sqs_queue_on_moto_scales_with_the_backlog() {
    let q = SqsQueue::new(broker_env("SQS_ENDPOINT")).await;
    let f = Fixture::new("sw-sqs").await;
    scales_with_the_backlog(&f, &q).await;
}

// ---------------------------------------------------------------------------------------
// NATS JetStream. The test speaks the NATS text protocol itself (a few lines; no client crate)
// to create the stream and durable consumer, publish and purge; the operator reads the
// consumer's pending count from the monitoring endpoint.

struct Nats {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    inbox: String,
    n: u64,
}

impl Nats {
    async fn connect(url: &str) -> Nats {
        use tokio::io::AsyncWriteExt;
        let addr = url.trim_start_matches("nats://");
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to NATS at {url}: {e}"));
        let (r, w) = stream.into_split();
        let mut n = Nats {
            reader: tokio::io::BufReader::new(r),
            writer: w,
            inbox: format!("_INBOX.{}", random_suffix()),
            n: 0,
        };
        let info = n.line().await;
        assert!(info.starts_with("INFO "), "NATS greeting: {info}");
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"0\"}}\r\nSUB {}.* 1\r\n",
            n.inbox
        );
        n.writer.write_all(hello.as_bytes()).await.unwrap();
        n
    }

    async fn line(&mut self) -> String {
        use tokio::io::AsyncBufReadExt;
        let mut s = String::new();
        let read = self.reader.read_line(&mut s).await.unwrap();
        assert!(read > 0, "NATS closed the connection");
        s.trim_end().to_string()
    }

    /// Publishes `payload` to `subject` and returns the JSON reply.
    async fn request(&mut self, subject: &str, payload: &serde_json::Value) -> serde_json::Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.n += 1;
        let reply = format!("{}.{}", self.inbox, self.n);
        let body = payload.to_string();
        let msg = format!("PUB {subject} {reply} {}\r\n{body}\r\n", body.len());
        self.writer.write_all(msg.as_bytes()).await.unwrap();
        loop {
            let line = self.line().await;
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n").await.unwrap();
                continue;
            }
            if let Some(rest) = line.strip_prefix("-ERR") {
                panic!("NATS error: {rest}");
            }
            let Some(rest) = line.strip_prefix("MSG ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let len: usize = parts.last().unwrap().parse().unwrap();
            let mut buf = vec![0u8; len + 2];
            self.reader.read_exact(&mut buf).await.unwrap();
            if parts[0] != reply {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
            assert!(v.get("error").is_none(), "NATS {subject}: {v}");
            return v;
        }
    }
}

struct JetStreamQueue {
    url: String,
    monitoring: String,
    stream: String,
    conn: tokio::sync::Mutex<Nats>,
}

impl JetStreamQueue {
    async fn new(url: String, monitoring: String) -> JetStreamQueue {
        let stream = format!("WORK_{}", random_suffix());
        let mut conn = Nats::connect(&url).await;
        conn.request(
            &format!("$JS.API.STREAM.CREATE.{stream}"),
            &json!({ "name": stream, "subjects": [format!("{stream}.>")], "storage": "memory" }),
        )
        .await;
        conn.request(
            &format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.workers"),
            &json!({ "stream_name": stream,
                     "config": { "durable_name": "workers", "ack_policy": "explicit", "deliver_policy": "all" } }),
        )
        .await;
        JetStreamQueue {
            url,
            monitoring,
            stream,
            conn: tokio::sync::Mutex::new(conn),
        }
    }
}

impl Queue for JetStreamQueue {
    fn trigger(&self) -> serde_json::Value {
        json!({ "natsJetStream": { "monitoringUrl": self.monitoring, "stream": self.stream, "consumer": "workers" } })
    }
    async fn push(&self, n: usize) {
        let mut c = self.conn.lock().await;
        for i in 0..n {
            // A request: JetStream acknowledges each stored message.
            let ack = c
                .request(&format!("{}.jobs", self.stream), &json!({ "job": i }))
                .await;
            assert_eq!(ack["stream"], json!(self.stream), "publish ack: {ack}");
        }
    }
    async fn drain(&self) {
        let mut c = self.conn.lock().await;
        c.request(&format!("$JS.API.STREAM.PURGE.{}", self.stream), &json!({}))
            .await;
    }
}

#[tokio::test]
async fn nats_jetstream_consumer_scales_with_the_backlog() {
    let q = JetStreamQueue::new(broker_env("NATS_URL"), broker_env("NATS_MONITORING_URL")).await;
    assert!(q.url.starts_with("nats://"));
    let f = Fixture::new("sw-nats").await;
    scales_with_the_backlog(&f, &q).await;
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

struct PgJobs {
    url: String,
    table: String,
    client: tokio_postgres::Client,
}

impl PgJobs {
    async fn new(url: String) -> PgJobs {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to PostgreSQL at {url}: {e}"));
        tokio::spawn(conn);
        let table = format!("jobs_{}", random_suffix());
        client
            .batch_execute(&format!(
                "create table {table} (id serial primary key, state text not null)"
            ))
            .await
            .unwrap();
        PgJobs { url, table, client }
    }
}

impl Queue for PgJobs {
    fn trigger(&self) -> serde_json::Value {
        json!({ "postgresql": {
            "query": format!("select count(*) from {} where state = 'queued'", self.table),
            "connection": self.url } })
    }
    async fn push(&self, n: usize) {
        self.client
            .batch_execute(&format!(
                "insert into {} (state) select 'queued' from generate_series(1, {n})",
                self.table
            ))
            .await
            .unwrap();
    }
    async fn drain(&self) {
        self.client
            .batch_execute(&format!(
                "update {} set state = 'done' where state = 'queued'",
                self.table
            ))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn postgresql_query_scales_with_the_backlog() {
    let q = PgJobs::new(broker_env("POSTGRES_URL")).await;
    let f = Fixture::new("sw-pg").await;
    scales_with_the_backlog(&f, &q).await;
}

// ---------------------------------------------------------------------------------------
// A broker stopped mid-test: a Redis server of the test's own.

struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = OwnRedis { port, child: None };
        r.restart();
        r
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server (installed by hack/deps): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_stopped_broker_gives_the_fallback_never_zero_and_recovers() {
    let mut redis = OwnRedis::start();
    let q = RedisList {
        url: redis.url(),
        key: "jobs".into(),
    };
    let f = Fixture::new("sw-fallback").await;
    f.deployment("worker", 1).await;
    f.scaled_worker(
        "worker",
        json!({
            "target": { "deployment": { "name": "worker" } },
            "minReplicas": 0, "maxReplicas": 10,
            "pollingIntervalSeconds": POLL.as_secs(), "cooldownSeconds": 3,
            "fallback": { "failureThreshold": 2, "replicas": 3 },
            "triggers": [ { "name": "jobs", "targetPerReplica": 10, "redis": { "address": q.url, "list": q.key } } ]
        }),
    )
    .await;
    q.push(15).await;
    f.wait_replicas("worker", 2, Duration::from_secs(30)).await;

    // The broker goes away: after 2 failed reads the fallback applies; Ready=False TriggerError.
    redis.stop();
    let st = f
        .wait_status(
            "worker",
            "Ready=False TriggerError with the fallback",
            Duration::from_secs(40),
            |st| {
                is(st, "Ready", "False", "TriggerError")
                    && is(st, "Fallback", "True", "FallbackApplied")
            },
        )
        .await;
    let t = &st.triggers[0];
    assert!(!t.healthy && t.consecutive_failures >= 2, "{st:#?}");
    assert!(
        t.last_error.starts_with("redis at redis://127.0.0.1:"),
        "{}",
        t.last_error
    );
    assert_eq!(t.value, Some(15), "the last value read is kept");
    assert!(is(&st, "Reconciling", "True", "TriggerError"), "{st:#?}");
    let ready = find_condition(&st.conditions, "Ready").unwrap();
    assert!(
        ready.message.contains("trigger jobs ("),
        "{}",
        ready.message
    );
    f.wait_replicas("worker", 3, POLL + SLACK).await;
    // Well past the cooldown: still the fallback, never zero.
    f.hold_replicas(
        "worker",
        3,
        Duration::from_secs(6),
        "a failing source must not scale to zero",
    )
    .await;

    // The broker is back (empty: no persistence); a new backlog scales as usual.
    redis.restart();
    q.push(45).await;
    f.wait_replicas("worker", 5, POLL + SLACK + Duration::from_secs(5))
        .await;
    let st = f
        .wait_status("worker", "Ready=True after recovery", POLL + SLACK, |st| {
            is(st, "Ready", "True", "Ready")
        })
        .await;
    assert!(is(&st, "Fallback", "False", "SourcesHealthy"), "{st:#?}");
    let t = &st.triggers[0];
    assert_eq!(
        (
            t.value,
            t.healthy,
            t.consecutive_failures,
            t.last_error.as_str()
        ),
        (Some(45), true, 0, ""),
        "{st:#?}"
    );
    // TriggerRecovered is recorded right after the status write the wait above saw.
    f.wait_events(
        "worker",
        &[
            ("TriggerError", &[]),
            ("FallbackApplied", &[]),
            ("TriggerRecovered", &[]),
            ("ScaledOut", &[]),
        ],
    )
    .await;
    // Drained after recovery: zero is allowed again once the cooldown has passed.
    q.drain().await;
    f.wait_replicas("worker", 0, Duration::from_secs(3) + POLL + SLACK)
        .await;
}

#[tokio::test]
async fn paused_freezes_the_replica_count() {
    let q = RedisList {
        url: broker_env("REDIS_URL"),
        key: unique("jobs"),
    };
    let f = Fixture::new("sw-paused").await;
    f.deployment("worker", 1).await;
    f.scaled_worker(
        "worker",
        json!({
            "target": { "deployment": { "name": "worker" } },
            "minReplicas": 0, "maxReplicas": 10,
            "pollingIntervalSeconds": POLL.as_secs(), "cooldownSeconds": 3,
            "triggers": [ { "name": "jobs", "targetPerReplica": 10, "redis": { "address": q.url, "list": q.key } } ]
        }),
    )
    .await;
    q.push(25).await;
    f.wait_replicas("worker", 3, Duration::from_secs(30)).await;

    f.patch_scaled_worker("worker", json!({ "paused": true }))
        .await;
    let st = f
        .wait_status("worker", "Paused=True", POLL + SLACK, |st| {
            st.observed_generation == Some(2) && is(st, "Paused", "True", "Paused")
        })
        .await;
    assert!(is(&st, "Ready", "True", "Paused"), "{st:#?}");
    // More work: read and shown, but the count stays.
    q.push(100).await;
    f.wait_value("worker", 125).await;
    f.hold_replicas("worker", 3, 3 * POLL, "paused, yet scaled out")
        .await;
    // No work, well past the cooldown: the count still stays.
    q.drain().await;
    f.wait_value("worker", 0).await;
    f.hold_replicas("worker", 3, Duration::from_secs(5), "paused, yet scaled in")
        .await;
    assert_eq!(f.status("worker").await.desired_replicas, Some(3));

    f.patch_scaled_worker("worker", json!({ "paused": false }))
        .await;
    f.wait_replicas("worker", 0, POLL + SLACK).await;
    let st = f.status("worker").await;
    assert!(is(&st, "Paused", "False", "NotPaused"), "{st:#?}");
}

// ---------------------------------------------------------------------------------------
// A Release service scaled while the Release rolls out a new version.

fn release_spec(version: &str) -> serde_json::Value {
    json!({
        "environment": "dev",
        "version": version,
        "services": [ { "name": "worker", "image": format!("example.test/shop-worker:{version}"),
                        "replicas": { "min": 1, "max": 2 } } ],
        "rollout": { "progressDeadlineSeconds": 60 }
    })
}

#[tokio::test]
async fn a_release_service_is_scaled_while_the_release_rolls_out() {
    let q = RedisList {
        url: broker_env("REDIS_URL"),
        key: unique("jobs"),
    };
    let f = Fixture::new("sw-release").await;
    let env: Environment = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Environment",
        "metadata": { "name": "dev" }, "spec": { "platform": { "kubernetes": {} } }
    }))
    .unwrap();
    f.api::<Environment>()
        .create(&PostParams::default(), &env)
        .await
        .unwrap();
    f.scaled_worker(
        "worker",
        json!({
            "target": { "release": { "name": "shop", "service": "worker" } },
            "minReplicas": 0, "maxReplicas": 6,
            "pollingIntervalSeconds": POLL.as_secs(), "cooldownSeconds": 120,
            "triggers": [ { "name": "jobs", "targetPerReplica": 10, "redis": { "address": q.url, "list": q.key } } ]
        }),
    )
    .await;
    // No Release yet: TargetNotFound, retried.
    let st = f
        .wait_status(
            "worker",
            "Ready=False TargetNotFound",
            Duration::from_secs(30),
            |st| is(st, "Ready", "False", "TargetNotFound"),
        )
        .await;
    let ready = find_condition(&st.conditions, "Ready").unwrap();
    assert!(
        ready.message.contains("Release shop not found"),
        "{}",
        ready.message
    );
    assert!(is(&st, "Reconciling", "True", "TargetNotFound"), "{st:#?}");
    assert_eq!(st.target.as_deref(), Some("release/shop/worker"));

    q.push(40).await;
    let releases = f.api::<Release>();
    let rel: Release = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Release",
        "metadata": { "name": "shop" }, "spec": release_spec("v1")
    }))
    .unwrap();
    releases.create(&PostParams::default(), &rel).await.unwrap();
    f.wait_replicas("shop-worker", 4, Duration::from_secs(60))
        .await;
    wait_release(&f, Phase::Succeeded, "v1").await;
    assert_eq!(f.replicas("shop-worker").await, Some(4));

    // A new version: the image changes, the count stays the ScaledWorker's throughout.
    releases
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": release_spec("v2") })),
        )
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        assert_eq!(
            f.replicas("shop-worker").await,
            Some(4),
            "the replica count changed during the rollout"
        );
        let r = releases.get("shop").await.unwrap();
        let st = r.status.unwrap_or_default();
        if st.phase == Some(Phase::Succeeded)
            && st.version.as_deref() == Some("v2")
            && st.observed_generation == r.metadata.generation
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            f.fail::<()>(format!("Release shop did not roll out v2: {st:#?}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        image(&f, "shop-worker").await,
        "example.test/shop-worker:v2"
    );

    // More work after the rollout: scaled out, the Release untouched.
    let generation = releases.get("shop").await.unwrap().metadata.generation;
    q.push(20).await;
    f.wait_replicas("shop-worker", 6, POLL + SLACK).await;
    f.hold_replicas("shop-worker", 6, 2 * POLL, "the Release reset the count")
        .await;
    let r = releases.get("shop").await.unwrap();
    assert_eq!(r.metadata.generation, generation);
    assert_eq!(r.status.unwrap().phase, Some(Phase::Succeeded));
    assert_eq!(
        image(&f, "shop-worker").await,
        "example.test/shop-worker:v2"
    );
    let st = f
        .wait_status("worker", "Ready=True", POLL + SLACK, |st| {
            is(st, "Ready", "True", "Ready")
        })
        .await;
    assert_eq!(st.current_replicas, Some(6));
    f.wait_events("worker", &[("TargetNotFound", &["Release shop not found"])])
        .await;
    // The Release's applies do not own spec.replicas (so they can never reset it).
    let d = f.api::<Deployment>().get("shop-worker").await.unwrap();
    let owners: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:spec")
                    .is_some_and(|spec| spec.get("f:replicas").is_some())
            })
        })
        .map(|m| format!("{:?}/{:?}", m.manager, m.operation))
        .collect();
    assert!(
        !owners.iter().any(|o| o.contains("Apply")),
        "an apply owns spec.replicas: {owners:?}"
    );
}

async fn wait_release(f: &Fixture, phase: Phase, version: &str) {
    let releases = f.api::<Release>();
    let start = Instant::now();
    loop {
        let r = releases.get("shop").await.unwrap();
        let st = r.status.clone().unwrap_or_default();
        if st.phase == Some(phase) && st.version.as_deref() == Some(version) {
            return;
        }
        if start.elapsed() > Duration::from_secs(90) {
            f.fail::<()>(format!("Release shop not {phase:?} at {version}: {st:#?}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn image(f: &Fixture, deployment: &str) -> String {
    let d = f.api::<Deployment>().get(deployment).await.unwrap();
    d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_missing_deployment_is_target_not_found_until_it_appears() {
    let q = RedisList {
        url: broker_env("REDIS_URL"),
        key: unique("jobs"),
    };
    q.push(12).await;
    let f = Fixture::new("sw-missing").await;
    f.scaled_worker(
        "worker",
        json!({
            "target": { "deployment": { "name": "later" } },
            "pollingIntervalSeconds": POLL.as_secs(), "cooldownSeconds": 60,
            "triggers": [ { "name": "jobs", "targetPerReplica": 10, "redis": { "address": q.url, "list": q.key } } ]
        }),
    )
    .await;
    let st = f
        .wait_status(
            "worker",
            "Ready=False TargetNotFound",
            Duration::from_secs(30),
            |st| is(st, "Ready", "False", "TargetNotFound"),
        )
        .await;
    let ready = find_condition(&st.conditions, "Ready").unwrap();
    assert!(
        ready
            .message
            .contains("spec.target.deployment: Deployment later not found in namespace"),
        "{}",
        ready.message
    );
    assert_eq!(
        st.triggers[0].value,
        Some(12),
        "triggers are still read: {st:#?}"
    );
    assert!(
        find_condition(&st.conditions, "Stalled").is_none(),
        "{st:#?}"
    );

    f.deployment("later", 0).await;
    f.wait_replicas("later", 2, POLL + SLACK).await;
    f.wait_status("worker", "Ready=True", POLL + SLACK, |st| {
        is(st, "Ready", "True", "Ready")
    })
    .await;
}
