//! Readers of queue depth, one module per trigger source.
//!
//! [`read_trigger`] reads the one source block a [`Trigger`] sets and returns its value (the
//! number of messages waiting, in the source's own sense; see each module). Each module has an
//! async reader with a `read` method and pure helpers for request building and response
//! parsing, so what can be checked without a server is unit-tested.
//!
//! | block           | module           | value                                            | auth keys |
//! |-----------------|------------------|--------------------------------------------------|-----------|
//! | `redis`         | [`redis`]        | `LLEN list`                                      | `password` (+ `username`) |
//! | `redisStream`   | [`redis`]        | `XPENDING stream group` count, or `XLEN stream`  | `password` (+ `username`) |
//! | `rabbitmq`      | [`rabbitmq`]     | `messages_ready + messages_unacknowledged`       | `username`, `password` |
//! | `sqs`           | [`sqs`]          | visible + not-visible (in-flight) messages       | `awsAccessKeyId`, `awsSecretAccessKey` (+ `awsSessionToken`) |
//! | `serviceBus`    | [`service_bus`]  | `ActiveMessageCount`                             | `connection`, or `sharedAccessKeyName` + `sharedAccessKey` |
//! | `natsJetStream` | [`nats`]         | consumer `num_pending + num_ack_pending`         | none |
//! | `postgresql`    | [`postgres`]     | first column of the first row                    | `connection`, `password` |
//!
//! A [`SourcePool`] is made once per operator process and shared by every ScaledWorker: it
//! holds one HTTP client (one connection pool for RabbitMQ, NATS and Service Bus), and caches
//! Redis connection managers, PostgreSQL clients and SQS clients per address and credentials,
//! so many ScaledWorkers reading one server share one connection. Cached connections unused
//! for [`PoolOptions::idle_ttl`] are dropped.
//!
//! Errors ([`SourceError`]) name the source and its address, never a secret: addresses are shown
//! without userinfo or query string ([`redact_address`]), and every value of the trigger's auth
//! Secret is masked out of error messages before they are returned.

pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod service_bus;
pub mod sqs;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Trigger;

/// Why a trigger could not be read. Every message names the source and address; none holds a
/// secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The trigger cannot be read as written (bad URL, no source block, ...).
    #[error("{kind}: invalid configuration: {message}")]
    Config {
        /// Source block name (`redis`, `rabbitmq`, ...).
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A credential the source needs is not in the trigger's auth Secret.
    #[error("{kind} at {address}: the auth Secret has no key `{key}`")]
    MissingCredential {
        /// Source block name.
        kind: &'static str,
        /// Address, without credentials.
        address: String,
        /// The Secret key that is needed.
        key: &'static str,
    },
    /// The server could not be reached or the connection broke.
    #[error("{kind} at {address}: cannot connect: {message}")]
    Connect {
        /// Source block name.
        kind: &'static str,
        /// Address, without credentials.
        address: String,
        /// Cause.
        message: String,
    },
    /// The server answered with an HTTP error status.
    #[error("{kind} at {address}: HTTP {status}: {message}")]
    Status {
        /// Source block name.
        kind: &'static str,
        /// Address, without credentials.
        address: String,
        /// HTTP status code.
        status: u16,
        /// What it means for this source.
        message: String,
    },
    /// The server answered something that holds no usable value.
    #[error("{kind} at {address}: unexpected response: {message}")]
    Response {
        /// Source block name.
        kind: &'static str,
        /// Address, without credentials.
        address: String,
        /// What is wrong with it.
        message: String,
    },
    /// The queue, stream, consumer or entity does not exist.
    #[error("{kind} at {address}: not found: {what}")]
    NotFound {
        /// Source block name.
        kind: &'static str,
        /// Address, without credentials.
        address: String,
        /// What is missing.
        what: String,
    },
    /// No answer within the pool's read timeout.
    #[error("{kind} at {address}: no answer within {seconds}s")]
    Timeout {
        /// Source block name.
        kind: &'static str,
        /// Address, without credentials.
        address: String,
        /// The timeout.
        seconds: u64,
    },
}

impl SourceError {
    /// The source block name this error is about.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Config { kind, .. }
            | SourceError::MissingCredential { kind, .. }
            | SourceError::Connect { kind, .. }
            | SourceError::Status { kind, .. }
            | SourceError::Response { kind, .. }
            | SourceError::NotFound { kind, .. }
            | SourceError::Timeout { kind, .. } => kind,
        }
    }

    /// Replaces every occurrence of each secret (of 3 characters or more) by `***`.
    pub fn scrubbed<'a>(self, secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let secrets: Vec<&str> = secrets.into_iter().filter(|s| s.len() >= 3).collect();
        if secrets.is_empty() {
            return self;
        }
        let clean = |s: String| {
            secrets
                .iter()
                .fold(s, |acc, secret| acc.replace(secret, "***"))
        };
        match self {
            SourceError::Config { kind, message } => SourceError::Config {
                kind,
                message: clean(message),
            },
            SourceError::MissingCredential { kind, address, key } => {
                SourceError::MissingCredential {
                    kind,
                    address: clean(address),
                    key,
                }
            }
            SourceError::Connect {
                kind,
                address,
                message,
            } => SourceError::Connect {
                kind,
                address: clean(address),
                message: clean(message),
            },
            SourceError::Status {
                kind,
                address,
                status,
                message,
            } => SourceError::Status {
                kind,
                address: clean(address),
                status,
                message: clean(message),
            },
            SourceError::Response {
                kind,
                address,
                message,
            } => SourceError::Response {
                kind,
                address: clean(address),
                message: clean(message),
            },
            SourceError::NotFound {
                kind,
                address,
                what,
            } => SourceError::NotFound {
                kind,
                address: clean(address),
                what: clean(what),
            },
            SourceError::Timeout {
                kind,
                address,
                seconds,
            } => SourceError::Timeout {
                kind,
                address: clean(address),
                seconds,
            },
        }
    }
}

/// Tuning of a [`SourcePool`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Longest time one [`read_trigger`] may take, connecting included.
    pub read_timeout: Duration,
    /// Longest time to open a connection.
    pub connect_timeout: Duration,
    /// Cached connections unused for this long are closed.
    pub idle_ttl: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            read_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            idle_ttl: Duration::from_secs(15 * 60),
        }
    }
}

/// Shared clients and connections of every source, for the whole operator process.
pub struct SourcePool {
    options: PoolOptions,
    redis: redis::RedisReader,
    rabbitmq: rabbitmq::RabbitMqReader,
    nats: nats::NatsReader,
    postgres: postgres::PostgresReader,
    service_bus: service_bus::ServiceBusReader,
    sqs: sqs::SqsReader,
}

impl std::fmt::Debug for SourcePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Cache keys hold credentials: show counts only.
        f.debug_struct("SourcePool")
            .field("options", &self.options)
            .field("redis_connections", &self.redis.cached())
            .field("postgres_clients", &self.postgres.cached())
            .field("sqs_clients", &self.sqs.cached())
            .finish()
    }
}

impl SourcePool {
    /// A pool with [`PoolOptions::default`].
    pub fn new() -> Result<Self, SourceError> {
        Self::with_options(PoolOptions::default())
    }

    /// A pool with the given options.
    ///
    /// Installs rustls' *ring* crypto provider as the process default when none is installed
    /// yet: the HTTP client and `rediss://` connections use the process default, and this
    /// build carries ring only (no aws-lc).
    pub fn with_options(options: PoolOptions) -> Result<Self, SourceError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .timeout(options.read_timeout)
            .pool_idle_timeout(options.idle_ttl)
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Config {
                kind: "http",
                message: format!("cannot build the HTTP client: {}", error_chain(&e)),
            })?;
        Ok(SourcePool {
            redis: redis::RedisReader::new(options.connect_timeout, options.idle_ttl),
            rabbitmq: rabbitmq::RabbitMqReader::new(http.clone()),
            nats: nats::NatsReader::new(http.clone()),
            service_bus: service_bus::ServiceBusReader::new(http),
            postgres: postgres::PostgresReader::new(options.connect_timeout, options.idle_ttl),
            sqs: sqs::SqsReader::new(options.connect_timeout, options.idle_ttl),
            options,
        })
    }

    /// The options the pool was made with.
    pub fn options(&self) -> &PoolOptions {
        &self.options
    }
}

/// Installs ring as rustls' process-wide default provider unless one is installed already.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is installed then.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Reads the value of a trigger from its one source block.
///
/// `auth` holds the decoded data of the trigger's auth Secret (empty without `auth`). The
/// whole read, connecting included, is bounded by [`PoolOptions::read_timeout`].
pub async fn read_trigger(
    pool: &SourcePool,
    trigger: &Trigger,
    auth: &BTreeMap<String, String>,
) -> Result<i64, SourceError> {
    let (kind, address) = describe_trigger(trigger);
    let set = count_sources(trigger);
    if set != 1 {
        return Err(SourceError::Config {
            kind,
            message: format!(
                "trigger {} sets {set} source blocks; set exactly one of redis, redisStream, \
                 rabbitmq, sqs, serviceBus, natsJetStream or postgresql",
                trigger.name
            ),
        });
    }
    let read = async {
        if let Some(s) = &trigger.redis {
            let query = redis::RedisQuery::ListLength { list: &s.list };
            return pool
                .redis
                .read(&s.address, redis::RedisAuth::from_secret(auth), query)
                .await;
        }
        if let Some(s) = &trigger.redis_stream {
            let query = match &s.consumer_group {
                Some(group) => redis::RedisQuery::StreamPending {
                    stream: &s.stream,
                    group,
                },
                None => redis::RedisQuery::StreamLength { stream: &s.stream },
            };
            return pool
                .redis
                .read(&s.address, redis::RedisAuth::from_secret(auth), query)
                .await;
        }
        if let Some(s) = &trigger.rabbitmq {
            return pool.rabbitmq.read(s, auth).await;
        }
        if let Some(s) = &trigger.sqs {
            return pool.sqs.read(s, auth).await;
        }
        if let Some(s) = &trigger.service_bus {
            return pool.service_bus.read(s, auth).await;
        }
        if let Some(s) = &trigger.nats_jet_stream {
            return pool.nats.read(s).await;
        }
        if let Some(s) = &trigger.postgresql {
            return pool.postgres.read(s, auth).await;
        }
        unreachable!("exactly one source block is set")
    };
    let result = match tokio::time::timeout(pool.options.read_timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(SourceError::Timeout {
            kind,
            address: address.clone(),
            seconds: pool.options.read_timeout.as_secs(),
        }),
    };
    result.map_err(|e| e.scrubbed(auth.values().map(String::as_str)))
}

/// How many source blocks a trigger sets (the CRD admits exactly one).
fn count_sources(t: &Trigger) -> usize {
    [
        t.redis.is_some(),
        t.redis_stream.is_some(),
        t.rabbitmq.is_some(),
        t.sqs.is_some(),
        t.service_bus.is_some(),
        t.nats_jet_stream.is_some(),
        t.postgresql.is_some(),
    ]
    .into_iter()
    .filter(|set| *set)
    .count()
}

/// The source block name and the address (without credentials) of a trigger, for messages.
pub fn describe_trigger(t: &Trigger) -> (&'static str, String) {
    if let Some(s) = &t.redis {
        return ("redis", redact_address(&s.address));
    }
    if let Some(s) = &t.redis_stream {
        return ("redisStream", redact_address(&s.address));
    }
    if let Some(s) = &t.rabbitmq {
        return ("rabbitmq", redact_address(&s.url));
    }
    if let Some(s) = &t.sqs {
        return ("sqs", redact_address(&s.queue_url));
    }
    if let Some(s) = &t.service_bus {
        return ("serviceBus", service_bus::namespace_host(&s.namespace));
    }
    if let Some(s) = &t.nats_jet_stream {
        return ("natsJetStream", redact_address(&s.monitoring_url));
    }
    if let Some(s) = &t.postgresql {
        let address = match &s.connection {
            Some(c) => redact_address(c),
            None => "auth key `connection`".to_string(),
        };
        return ("postgresql", address);
    }
    ("trigger", t.name.clone())
}

/// An address as shown in messages: no userinfo, no query string, no fragment.
///
/// `redis://:secret@cache:6379/0` becomes `redis://cache:6379/0`; something that does not
/// parse as a URL keeps only what follows the last `@` of its authority.
pub fn redact_address(address: &str) -> String {
    if let Ok(mut url) = url::Url::parse(address) {
        if url.has_host() {
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        url.set_query(None);
        url.set_fragment(None);
        let mut shown = url.to_string();
        // `Url` adds a `/` to an empty path of special schemes; keep what the user wrote.
        if shown.ends_with('/') && !address.ends_with('/') && url.path() == "/" {
            shown.pop();
        }
        return shown;
    }
    let no_query = address.split(['?', '#']).next().unwrap_or_default();
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}{path}")
        }
        None => no_query.rsplit('@').next().unwrap_or_default().to_string(),
    }
}

/// An error and its causes, `outer: inner: innermost`, without repeats.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = e.source();
    }
    out
}

/// A non-empty value of the auth Secret.
pub(crate) fn secret<'a>(auth: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    auth.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// Cached connections by key: one connection per key, opened on first use, shared by all
/// callers, reopened when no longer usable, dropped after `idle_ttl` without use.
///
/// Callers for one key wait for a single connect; callers for other keys are never blocked by
/// it (the map is locked only to find the key's slot).
pub(crate) struct ConnCache<K, V> {
    slots: std::sync::Mutex<HashMap<K, Slot<V>>>,
    idle_ttl: Duration,
}

struct Slot<V> {
    cell: Arc<tokio::sync::Mutex<Option<V>>>,
    last_used: Instant,
}

impl<K: Eq + Hash + Clone, V: Clone> ConnCache<K, V> {
    pub(crate) fn new(idle_ttl: Duration) -> Self {
        ConnCache {
            slots: std::sync::Mutex::new(HashMap::new()),
            idle_ttl,
        }
    }

    /// Number of keys with a slot.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The cached value for `key` if `usable`, else the result of `connect`, cached on success.
    pub(crate) async fn get_or_connect<E, F, Fut>(
        &self,
        key: &K,
        usable: impl Fn(&V) -> bool,
        connect: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let ttl = self.idle_ttl;
            // Evict idle slots nobody is using right now.
            slots.retain(|_, s| {
                now.duration_since(s.last_used) < ttl || Arc::strong_count(&s.cell) > 1
            });
            let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
                cell: Arc::new(tokio::sync::Mutex::new(None)),
                last_used: now,
            });
            slot.last_used = now;
            slot.cell.clone()
        };
        let mut value = cell.lock().await;
        if let Some(v) = value.as_ref() {
            if usable(v) {
                return Ok(v.clone());
            }
        }
        *value = None;
        let fresh = connect().await?;
        *value = Some(fresh.clone());
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        NatsJetStreamSource, PostgresqlSource, RabbitMqSource, RedisSource, ServiceBusSource,
        SqsSource,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn trigger() -> Trigger {
        Trigger {
            name: "work-items".into(),
            target_per_replica: 10,
            activation_threshold: 0,
            redis: None,
            redis_stream: None,
            rabbitmq: None,
            sqs: None,
            service_bus: None,
            nats_jet_stream: None,
            postgresql: None,
            auth: None,
        }
    }

    #[test]
    fn redact_address_drops_credentials_query_and_fragment() {
        let cases = [
            ("redis://:s3cret@cache:6379/0", "redis://cache:6379/0"),
            ("redis://user:s3cret@cache:6379", "redis://cache:6379"),
            ("rediss://cache:6380", "rediss://cache:6380"),
            (
                "amqp://guest:guest@rabbit:5672/orders",
                "amqp://rabbit:5672/orders",
            ),
            ("http://rabbit:15672/", "http://rabbit:15672/"),
            ("http://rabbit:15672", "http://rabbit:15672"),
            (
                "postgresql://app:pw@db:5432/app?sslmode=disable&password=x",
                "postgresql://db:5432/app",
            ),
            (
                "https://sqs.example:443/123/jobs#frag",
                "https://sqs.example/123/jobs",
            ),
            ("not a url user:pw@host", "host"),
            ("weird://us@er:pw@ho st/path?q", "weird://ho st/path"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_address(input), want, "{input}");
        }
    }

    #[test]
    fn describe_trigger_names_source_and_address() {
        let mut t = trigger();
        t.redis = Some(RedisSource {
            address: "redis://:pw@redis:6379".into(),
            list: "jobs".into(),
        });
        assert_eq!(describe_trigger(&t), ("redis", "redis://redis:6379".into()));

        let mut t = trigger();
        t.rabbitmq = Some(RabbitMqSource {
            url: "amqp://u:p@rabbit/vh".into(),
            queue: "q".into(),
            vhost: None,
        });
        assert_eq!(
            describe_trigger(&t),
            ("rabbitmq", "amqp://rabbit/vh".into())
        );

        let mut t = trigger();
        t.service_bus = Some(ServiceBusSource {
            namespace: "diamond-prod-servicebus".into(),
            queue: Some("work-items".into()),
            topic: None,
            subscription: None,
        });
        assert_eq!(
            describe_trigger(&t),
            (
                "serviceBus",
                "diamond-prod-servicebus.servicebus.windows.net".into()
            )
        );

        let mut t = trigger();
        t.sqs = Some(SqsSource {
            queue_url: "https://sqs.eu-west-1.example/1/q".into(),
            region: "eu-west-1".into(),
            endpoint_url: None,
        });
        assert_eq!(describe_trigger(&t).0, "sqs");

        let mut t = trigger();
        t.nats_jet_stream = Some(NatsJetStreamSource {
            monitoring_url: "http://nats:8222".into(),
            account: None,
            stream: "S".into(),
            consumer: "C".into(),
        });
        assert_eq!(
            describe_trigger(&t),
            ("natsJetStream", "http://nats:8222".into())
        );

        let mut t = trigger();
        t.postgresql = Some(PostgresqlSource {
            query: "select 1".into(),
            connection: None,
        });
        assert_eq!(
            describe_trigger(&t),
            ("postgresql", "auth key `connection`".into())
        );
    }

    #[tokio::test]
    async fn read_trigger_rejects_zero_or_two_source_blocks() {
        let pool = SourcePool::new().unwrap();
        let err = read_trigger(&pool, &trigger(), &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sets 0 source blocks"), "{err}");

        let mut t = trigger();
        t.redis = Some(RedisSource {
            address: "redis://127.0.0.1:1".into(),
            list: "l".into(),
        });
        t.postgresql = Some(PostgresqlSource {
            query: "select 1".into(),
            connection: None,
        });
        let err = read_trigger(&pool, &t, &BTreeMap::new()).await.unwrap_err();
        assert!(
            matches!(err, SourceError::Config { kind: "redis", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("sets 2 source blocks"), "{err}");
    }

    #[tokio::test]
    async fn read_trigger_masks_secrets_in_errors() {
        // Nothing listens on port 1 of the loopback address: the connect fails at once.
        let pool = SourcePool::new().unwrap();
        let mut t = trigger();
        t.postgresql = Some(PostgresqlSource {
            query: "select 1".into(),
            connection: None,
        });
        let auth = BTreeMap::from([(
            "connection".to_string(),
            "postgresql://app:hunter22@127.0.0.1:1/app".to_string(),
        )]);
        let err = read_trigger(&pool, &t, &auth).await.unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("hunter22"), "{text}");
        assert!(text.starts_with("postgresql at "), "{text}");
    }

    #[test]
    fn pool_and_reads_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let pool = SourcePool::new().unwrap();
        send_sync(&pool);
        let t = trigger();
        let auth = BTreeMap::new();
        send(&read_trigger(&pool, &t, &auth));
    }

    #[test]
    fn scrubbed_masks_every_field() {
        let err = SourceError::Connect {
            kind: "redis",
            address: "redis://host-pw123".into(),
            message: "bad pw123 here".into(),
        }
        .scrubbed(["pw123", "", "ab"]);
        assert_eq!(
            err.to_string(),
            "redis at redis://host-***: cannot connect: bad *** here"
        );
        assert_eq!(err.kind(), "redis");
    }

    #[test]
    fn error_messages_name_source_and_address() {
        let e = SourceError::NotFound {
            kind: "rabbitmq",
            address: "http://rabbit:15672".into(),
            what: "queue jobs in vhost /".into(),
        };
        assert_eq!(
            e.to_string(),
            "rabbitmq at http://rabbit:15672: not found: queue jobs in vhost /"
        );
        let e = SourceError::Timeout {
            kind: "sqs",
            address: "https://q".into(),
            seconds: 15,
        };
        assert_eq!(e.to_string(), "sqs at https://q: no answer within 15s");
    }

    #[tokio::test]
    async fn conn_cache_connects_once_per_key() {
        let cache: ConnCache<String, Arc<usize>> = ConnCache::new(Duration::from_secs(60));
        let connects = AtomicUsize::new(0);
        let connect = || async {
            let n = connects.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(Arc::new(n))
        };
        let a1 = cache
            .get_or_connect(&"a".into(), |_| true, connect)
            .await
            .unwrap();
        let a2 = cache
            .get_or_connect(&"a".into(), |_| true, connect)
            .await
            .unwrap();
        let b = cache
            .get_or_connect(&"b".into(), |_| true, connect)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a1, &a2));
        assert_eq!((*a1, *b), (0, 1));
        assert_eq!(connects.load(Ordering::SeqCst), 2);
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn conn_cache_concurrent_callers_share_one_connect() {
        let cache: ConnCache<&'static str, usize> = ConnCache::new(Duration::from_secs(60));
        let connects = AtomicUsize::new(0);
        let get = || {
            cache.get_or_connect(
                &"k",
                |_| true,
                || async {
                    connects.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, ()>(7)
                },
            )
        };
        let (x, y, z) = tokio::join!(get(), get(), get());
        assert_eq!((x, y, z), (Ok(7), Ok(7), Ok(7)));
        assert_eq!(connects.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn conn_cache_retries_failures_and_replaces_unusable_values() {
        let cache: ConnCache<&'static str, usize> = ConnCache::new(Duration::from_secs(60));
        let err = cache
            .get_or_connect(&"k", |_| true, || async { Err::<usize, _>("refused") })
            .await;
        assert_eq!(err, Err("refused"));
        let v = cache
            .get_or_connect(&"k", |_| true, || async { Ok::<_, &str>(1) })
            .await;
        assert_eq!(v, Ok(1));
        // A closed connection (not usable) is replaced.
        let v = cache
            .get_or_connect(&"k", |v| *v != 1, || async { Ok::<_, &str>(2) })
            .await;
        assert_eq!(v, Ok(2));
        let v = cache
            .get_or_connect(&"k", |_| true, || async { Ok::<_, &str>(3) })
            .await;
        assert_eq!(v, Ok(2));
    }

    #[tokio::test]
    async fn conn_cache_evicts_idle_slots() {
        let cache: ConnCache<&'static str, usize> = ConnCache::new(Duration::from_millis(10));
        cache
            .get_or_connect(&"old", |_| true, || async { Ok::<_, ()>(1) })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        cache
            .get_or_connect(&"new", |_| true, || async { Ok::<_, ()>(2) })
            .await
            .unwrap();
        assert_eq!(cache.len(), 1);
        let v = cache
            .get_or_connect(&"old", |_| true, || async { Ok::<_, ()>(9) })
            .await;
        assert_eq!(v, Ok(9), "an evicted key connects again");
    }
}
