//! Redis lists and streams.
//!
//! - `redis` block: `LLEN list`, the number of items waiting in a list (0 when the key is
//!   missing).
//! - `redisStream` block with `consumerGroup`: the count of `XPENDING stream group` (the
//!   summary form), i.e. entries delivered to the group's consumers and not acknowledged yet.
//!   Entries not yet delivered to the group are not counted: a worker scaled to zero has no
//!   consumer reading, so the pending count stays 0 until something reads; give such a
//!   trigger `minReplicas: 1`, or use the stream without a group (below).
//! - `redisStream` block without a group: `XLEN stream`, the stream length.
//!
//! Addresses are `redis://host:port[/db]` or `rediss://` for TLS (rustls with the process
//! default provider, system trust roots). The password comes from the auth Secret key
//! `password`, and an ACL user name from `username`; both override any userinfo of the
//! address.
//!
//! Connections are [`ConnectionManager`]s, multiplexed and reconnecting by themselves, cached
//! per address and credentials: every trigger reading one server shares one connection.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Value};

use super::{error_chain, redact_address, secret, ConnCache, SourceError};

/// What to read from Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisQuery<'a> {
    /// `LLEN list`.
    ListLength {
        /// List key.
        list: &'a str,
    },
    /// `XLEN stream`.
    StreamLength {
        /// Stream key.
        stream: &'a str,
    },
    /// The count of `XPENDING stream group`.
    StreamPending {
        /// Stream key.
        stream: &'a str,
        /// Consumer group.
        group: &'a str,
    },
}

impl RedisQuery<'_> {
    /// The trigger block this query belongs to.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisQuery::ListLength { .. } => "redis",
            RedisQuery::StreamLength { .. } | RedisQuery::StreamPending { .. } => "redisStream",
        }
    }

    /// What is read, for messages: `list work-items`.
    pub fn describe(&self) -> String {
        match self {
            RedisQuery::ListLength { list } => format!("list {list}"),
            RedisQuery::StreamLength { stream } => format!("stream {stream}"),
            RedisQuery::StreamPending { stream, group } => {
                format!("consumer group {group} of stream {stream}")
            }
        }
    }
}

/// Credentials from the auth Secret.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisAuth<'a> {
    /// ACL user name (auth key `username`).
    pub username: Option<&'a str>,
    /// Password (auth key `password`).
    pub password: Option<&'a str>,
}

impl std::fmt::Debug for RedisAuth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "***"))
            .finish()
    }
}

impl<'a> RedisAuth<'a> {
    /// Keys `username` and `password` of the auth Secret.
    pub fn from_secret(auth: &'a BTreeMap<String, String>) -> Self {
        RedisAuth {
            username: secret(auth, "username"),
            password: secret(auth, "password"),
        }
    }
}

/// The command for a query.
pub fn command(query: &RedisQuery<'_>) -> redis::Cmd {
    match query {
        RedisQuery::ListLength { list } => redis::cmd("LLEN").arg(*list).to_owned(),
        RedisQuery::StreamLength { stream } => redis::cmd("XLEN").arg(*stream).to_owned(),
        RedisQuery::StreamPending { stream, group } => {
            redis::cmd("XPENDING").arg(*stream).arg(*group).to_owned()
        }
    }
}

/// The value of a reply to [`command`]: the integer of `LLEN`/`XLEN`, or the first element
/// (the pending count) of the `XPENDING` summary `[count, first-id, last-id, consumers]`.
pub fn parse_reply(query: &RedisQuery<'_>, reply: &Value) -> Result<i64, String> {
    match (query, reply) {
        (RedisQuery::StreamPending { .. }, Value::Array(items)) => match items.first() {
            Some(Value::Int(n)) => Ok(*n),
            Some(other) => integer(other).map_err(|e| format!("XPENDING count: {e}")),
            None => Err("XPENDING returned an empty array".into()),
        },
        (RedisQuery::StreamPending { .. }, other) => Err(format!(
            "XPENDING returned {}, not the summary array",
            shape(other)
        )),
        (_, other) => integer(other),
    }
}

fn integer(value: &Value) -> Result<i64, String> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| "a bulk string that is not an integer".to_string()),
        Value::SimpleString(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}, not an integer")),
        Value::ServerError(e) => Err(format!("server error {}", e.code())),
        other => Err(format!("{}, not an integer", shape(other))),
    }
}

fn shape(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a bulk string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a simple string",
        Value::Okay => "OK",
        Value::Map(_) => "a map",
        Value::Set(_) => "a set",
        Value::Double(_) => "a double",
        Value::Boolean(_) => "a boolean",
        Value::ServerError(_) => "a server error",
        _ => "an unexpected reply",
    }
}

/// Reads Redis lists and streams over cached connection managers.
pub struct RedisReader {
    connections: ConnCache<(String, Option<String>, Option<String>), ConnectionManager>,
    connect_timeout: Duration,
}

impl RedisReader {
    /// A reader opening connections within `connect_timeout`, closing them after `idle_ttl`
    /// without use.
    pub fn new(connect_timeout: Duration, idle_ttl: Duration) -> Self {
        RedisReader {
            connections: ConnCache::new(idle_ttl),
            connect_timeout,
        }
    }

    /// Number of cached connections.
    pub fn cached(&self) -> usize {
        self.connections.len()
    }

    /// Reads `query` from the server at `address`.
    pub async fn read(
        &self,
        address: &str,
        auth: RedisAuth<'_>,
        query: RedisQuery<'_>,
    ) -> Result<i64, SourceError> {
        let kind = query.kind();
        let shown = redact_address(address);
        let key = (
            address.to_string(),
            auth.username.map(str::to_string),
            auth.password.map(str::to_string),
        );
        let timeout = self.connect_timeout;
        let mut conn = self
            .connections
            .get_or_connect(&key, |_| true, || connect(address, auth, timeout))
            .await
            .map_err(|e| match e {
                ConnectError::Config(message) => SourceError::Config { kind, message },
                ConnectError::Redis(e) => SourceError::Connect {
                    kind,
                    address: shown.clone(),
                    message: describe_error(&e),
                },
            })?;
        let reply: Value = command(&query)
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(kind, &shown, &query, &e))?;
        if let Value::ServerError(e) = &reply {
            let e: redis::RedisError = e.clone().into();
            return Err(classify(kind, &shown, &query, &e));
        }
        parse_reply(&query, &reply).map_err(|message| SourceError::Response {
            kind,
            address: shown,
            message: format!("{}: {message}", query.describe()),
        })
    }
}

enum ConnectError {
    Config(String),
    Redis(redis::RedisError),
}

async fn connect(
    address: &str,
    auth: RedisAuth<'_>,
    timeout: Duration,
) -> Result<ConnectionManager, ConnectError> {
    let info = address.into_connection_info().map_err(|e| {
        ConnectError::Config(format!(
            "address {} is not a Redis URL: {}",
            redact_address(address),
            describe_error(&e)
        ))
    })?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = auth.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = auth.password {
        settings = settings.set_password(password);
    }
    let info = info.set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(ConnectError::Redis)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(ConnectError::Redis)
}

/// A Redis error as a message without the request (which holds no secret anyway).
fn describe_error(e: &redis::RedisError) -> String {
    error_chain(e)
}

fn classify(
    kind: &'static str,
    address: &str,
    query: &RedisQuery<'_>,
    e: &redis::RedisError,
) -> SourceError {
    let address = address.to_string();
    match e.code() {
        Some("NOGROUP") => SourceError::NotFound {
            kind,
            address,
            what: query.describe(),
        },
        Some("WRONGTYPE") => SourceError::Response {
            kind,
            address,
            message: format!("{}: the key holds another type", query.describe()),
        },
        _ if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
            SourceError::Connect {
                kind,
                address,
                message: describe_error(e),
            }
        }
        _ => SourceError::Response {
            kind,
            address,
            message: format!("{}: {}", query.describe(), describe_error(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(cmd: &redis::Cmd) -> String {
        String::from_utf8(cmd.get_packed_command()).unwrap()
    }

    #[test]
    fn commands_are_llen_xlen_and_xpending_summary() {
        assert_eq!(
            packed(&command(&RedisQuery::ListLength { list: "work-items" })),
            "*2\r\n$4\r\nLLEN\r\n$10\r\nwork-items\r\n"
        );
        assert_eq!(
            packed(&command(&RedisQuery::StreamLength { stream: "events" })),
            "*2\r\n$4\r\nXLEN\r\n$6\r\nevents\r\n"
        );
        assert_eq!(
            packed(&command(&RedisQuery::StreamPending {
                stream: "events",
                group: "workers"
            })),
            "*3\r\n$8\r\nXPENDING\r\n$6\r\nevents\r\n$7\r\nworkers\r\n"
        );
    }

    #[test]
    fn parses_integer_replies() {
        let list = RedisQuery::ListLength { list: "l" };
        assert_eq!(parse_reply(&list, &Value::Int(42)), Ok(42));
        assert_eq!(parse_reply(&list, &Value::Int(0)), Ok(0));
        assert_eq!(
            parse_reply(&list, &Value::BulkString(b"17".to_vec())),
            Ok(17)
        );
        assert!(parse_reply(&list, &Value::Nil).unwrap_err().contains("nil"));
        assert!(parse_reply(&list, &Value::Array(vec![]))
            .unwrap_err()
            .contains("an array"));
    }

    #[test]
    fn parses_the_xpending_summary() {
        let q = RedisQuery::StreamPending {
            stream: "s",
            group: "g",
        };
        // XPENDING s g with two pending entries held by one consumer.
        let summary = Value::Array(vec![
            Value::Int(2),
            Value::BulkString(b"1526984818136-0".to_vec()),
            Value::BulkString(b"1526984818137-0".to_vec()),
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"consumer-1".to_vec()),
                Value::BulkString(b"2".to_vec()),
            ])]),
        ]);
        assert_eq!(parse_reply(&q, &summary), Ok(2));
        // Nothing pending: count 0 and nils.
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(parse_reply(&q, &empty), Ok(0));
        assert!(parse_reply(&q, &Value::Int(3))
            .unwrap_err()
            .contains("not the summary array"));
        assert!(parse_reply(&q, &Value::Array(vec![])).is_err());
        assert!(parse_reply(&q, &Value::Array(vec![Value::Nil])).is_err());
    }

    #[test]
    fn auth_comes_from_secret_keys_and_is_not_printed() {
        let auth = BTreeMap::from([
            ("password".to_string(), "s3cret".to_string()),
            ("username".to_string(), String::new()),
        ]);
        let a = RedisAuth::from_secret(&auth);
        assert_eq!(a.password, Some("s3cret"));
        assert_eq!(a.username, None, "empty values count as absent");
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn kinds_and_descriptions() {
        assert_eq!(RedisQuery::ListLength { list: "l" }.kind(), "redis");
        let q = RedisQuery::StreamPending {
            stream: "s",
            group: "g",
        };
        assert_eq!(q.kind(), "redisStream");
        assert_eq!(q.describe(), "consumer group g of stream s");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error_without_the_password() {
        // Nothing listens on port 1 of the loopback address.
        let reader = RedisReader::new(Duration::from_secs(2), Duration::from_secs(60));
        let auth = RedisAuth {
            username: None,
            password: Some("s3cret"),
        };
        let err = reader
            .read(
                "redis://:other@127.0.0.1:1/0",
                auth,
                RedisQuery::ListLength { list: "l" },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, SourceError::Connect { kind: "redis", .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("redis at redis://127.0.0.1:1/0: cannot connect"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret") && !text.contains("other"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_bad_address_is_a_config_error() {
        let reader = RedisReader::new(Duration::from_secs(2), Duration::from_secs(60));
        let err = reader
            .read(
                "http://x",
                RedisAuth::default(),
                RedisQuery::StreamLength { stream: "s" },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Config {
                    kind: "redisStream",
                    ..
                }
            ),
            "{err}"
        );
    }
}
