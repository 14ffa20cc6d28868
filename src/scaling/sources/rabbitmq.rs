//! RabbitMQ queues, read through the management HTTP API.
//!
//! The value is `messages_ready + messages_unacknowledged` of
//! `GET {management}/api/queues/{vhost}/{queue}`, with the vhost and queue name
//! percent-encoded (the default vhost `/` is `%2F`). Fields missing from the answer count as 0:
//! RabbitMQ leaves the message counts out of a queue declared moments ago, before its first
//! statistics emission.
//!
//! `url` is either the management URL (`http://host:15672`, or `https://`, any path prefix
//! kept) or an AMQP URL, mapped to the management API by convention:
//!
//! | AMQP URL                              | management URL          | vhost     |
//! |---------------------------------------|-------------------------|-----------|
//! | `amqp://user:pass@host:5672/orders`   | `http://host:15672`     | `orders`  |
//! | `amqps://host:5671/a%2Fb`             | `https://host:15671`    | `a/b`     |
//! | `amqp://host` or `amqp://host/`       | `http://host:15672`     | `/`       |
//!
//! The AMQP port is ignored: the management plugin listens on 15672 (15671 with TLS) unless
//! configured otherwise, in which case give its URL. `spec.vhost` overrides the vhost of the
//! URL. Credentials are the auth Secret keys `username` and `password`, else the userinfo of
//! the URL; they are sent as HTTP basic auth, and need the `monitoring` tag (or any tag that
//! can read the queue).

use std::collections::BTreeMap;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::{error_chain, redact_address, secret, SourceError};
use crate::api::RabbitMqSource;

const KIND: &str = "rabbitmq";

/// Everything but RFC 3986 unreserved characters is encoded in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where and as whom to ask the management API.
#[derive(Clone, PartialEq, Eq)]
pub struct ManagementTarget {
    /// Base URL of the management API, without a trailing `/` and without credentials.
    pub base: String,
    /// Virtual host.
    pub vhost: String,
    /// Basic auth user name and password.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for ManagementTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementTarget")
            .field("base", &self.base)
            .field("vhost", &self.vhost)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// Maps `url` (management or AMQP), the optional vhost override and the auth Secret to the
/// management API target; see the module docs for the AMQP convention.
pub fn management_target(
    url: &str,
    vhost: Option<&str>,
    auth: &BTreeMap<String, String>,
) -> Result<ManagementTarget, String> {
    let mut parsed = url::Url::parse(url)
        .map_err(|e| format!("url {} does not parse: {e}", redact_address(url)))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("url {} has no host", redact_address(url)))?
        .to_string();
    let url_user = percent_decode(parsed.username());
    let url_password = parsed.password().map(percent_decode);
    let (base, url_vhost) = match parsed.scheme() {
        "http" | "https" => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            let base = parsed.as_str().trim_end_matches('/').to_string();
            (base, None)
        }
        scheme @ ("amqp" | "amqps") => {
            let (http, port) = if scheme == "amqps" {
                ("https", 15671)
            } else {
                ("http", 15672)
            };
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            let path = parsed.path().trim_start_matches('/');
            let url_vhost = if path.is_empty() {
                "/".to_string()
            } else {
                percent_decode(path)
            };
            (format!("{http}://{host}:{port}"), Some(url_vhost))
        }
        other => {
            return Err(format!(
                "url scheme {other}: is not amqp, amqps, http or https"
            ))
        }
    };
    let vhost = vhost
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .or(url_vhost)
        .unwrap_or_else(|| "/".to_string());
    let credentials = match (secret(auth, "username"), secret(auth, "password")) {
        (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
        (Some(u), None) => Some((u.to_string(), url_password.unwrap_or_default())),
        (None, Some(p)) if !url_user.is_empty() => Some((url_user, p.to_string())),
        (None, Some(_)) => {
            return Err(
                "the auth Secret has key `password` but no `username`, and the url no user".into(),
            )
        }
        (None, None) if !url_user.is_empty() => Some((url_user, url_password.unwrap_or_default())),
        (None, None) => None,
    };
    Ok(ManagementTarget {
        base,
        vhost,
        credentials,
    })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `{base}/api/queues/{vhost}/{queue}`, both names percent-encoded.
pub fn queue_url(base: &str, vhost: &str, queue: &str) -> String {
    format!(
        "{}/api/queues/{}/{}",
        base.trim_end_matches('/'),
        utf8_percent_encode(vhost, SEGMENT),
        utf8_percent_encode(queue, SEGMENT)
    )
}

#[derive(Deserialize)]
struct QueueInfo {
    #[serde(default)]
    messages_ready: Option<i64>,
    #[serde(default)]
    messages_unacknowledged: Option<i64>,
}

/// `messages_ready + messages_unacknowledged` of a queue object of the management API.
pub fn parse_queue(body: &[u8]) -> Result<i64, String> {
    let info: QueueInfo =
        serde_json::from_slice(body).map_err(|e| format!("not a queue object: {e}"))?;
    let ready = info.messages_ready.unwrap_or(0);
    let unacked = info.messages_unacknowledged.unwrap_or(0);
    ready
        .checked_add(unacked)
        .ok_or_else(|| "message counts overflow".to_string())
}

/// Reads RabbitMQ queues over the shared HTTP client.
pub struct RabbitMqReader {
    http: reqwest::Client,
}

impl RabbitMqReader {
    /// A reader using `http`.
    pub fn new(http: reqwest::Client) -> Self {
        RabbitMqReader { http }
    }

    /// Ready plus unacknowledged messages of the queue.
    pub async fn read(
        &self,
        source: &RabbitMqSource,
        auth: &BTreeMap<String, String>,
    ) -> Result<i64, SourceError> {
        let target =
            management_target(&source.url, source.vhost.as_deref(), auth).map_err(|message| {
                SourceError::Config {
                    kind: KIND,
                    message,
                }
            })?;
        let address = target.base.clone();
        let url = queue_url(&target.base, &target.vhost, &source.queue);
        let mut request = self.http.get(&url);
        if let Some((user, password)) = &target.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| SourceError::Connect {
            kind: KIND,
            address: address.clone(),
            message: error_chain(&e.without_url()),
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(SourceError::NotFound {
                kind: KIND,
                address,
                what: format!("queue {} in vhost {}", source.queue, target.vhost),
            });
        }
        if !status.is_success() {
            let message = match status.as_u16() {
                401 => "unauthorized: check the auth Secret keys username and password".into(),
                403 => format!(
                    "forbidden: the user may not read vhost {} (needs the monitoring tag)",
                    target.vhost
                ),
                _ => status.canonical_reason().unwrap_or("error").to_string(),
            };
            return Err(SourceError::Status {
                kind: KIND,
                address,
                status: status.as_u16(),
                message,
            });
        }
        let body = response.bytes().await.map_err(|e| SourceError::Connect {
            kind: KIND,
            address: address.clone(),
            message: error_chain(&e.without_url()),
        })?;
        parse_queue(&body).map_err(|message| SourceError::Response {
            kind: KIND,
            address,
            message: format!("queue {}: {message}", source.queue),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_auth() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// An abridged `GET /api/queues/%2F/work-items` answer of the management plugin
    /// (RabbitMQ 3.13), in the documented shape: counts at the top level, rates under
    /// `*_details`, message stats under `message_stats`.
    const SAMPLE_QUEUE: &str = r#"{
      "arguments": {"x-queue-type": "classic"},
      "auto_delete": false,
      "consumer_capacity": 1.0,
      "consumer_utilisation": 1.0,
      "consumers": 2,
      "durable": true,
      "exclusive": false,
      "idle_since": "2025-01-01T12:00:00.000+00:00",
      "memory": 55600,
      "message_bytes": 1234,
      "message_bytes_ready": 1000,
      "message_bytes_unacknowledged": 234,
      "message_stats": {
        "ack": 120, "ack_details": {"rate": 0.4},
        "deliver_get": 125, "deliver_get_details": {"rate": 0.5},
        "publish": 200, "publish_details": {"rate": 1.2}
      },
      "messages": 95,
      "messages_details": {"rate": 0.0},
      "messages_ready": 90,
      "messages_ready_details": {"rate": 0.0},
      "messages_unacknowledged": 5,
      "messages_unacknowledged_details": {"rate": 0.0},
      "name": "work-items",
      "node": "rabbit@rabbitmq-0",
      "policy": null,
      "state": "running",
      "type": "classic",
      "vhost": "/"
    }"#;

    #[test]
    fn parses_ready_plus_unacknowledged() {
        assert_eq!(parse_queue(SAMPLE_QUEUE.as_bytes()), Ok(95));
    }

    #[test]
    fn missing_counts_are_zero() {
        // A queue declared moments ago, before its first statistics emission.
        let fresh = r#"{"name":"new","vhost":"/","durable":true,"state":"running"}"#;
        assert_eq!(parse_queue(fresh.as_bytes()), Ok(0));
        let ready_only = r#"{"messages_ready": 7}"#;
        assert_eq!(parse_queue(ready_only.as_bytes()), Ok(7));
    }

    #[test]
    fn rejects_other_answers() {
        assert!(parse_queue(b"<html>login</html>").is_err());
        assert!(parse_queue(br#"[{"messages_ready": 1}]"#).is_err());
        assert!(parse_queue(br#"{"messages_ready": "x"}"#).is_err());
        let overflow = format!(
            r#"{{"messages_ready": {}, "messages_unacknowledged": 1}}"#,
            i64::MAX
        );
        assert!(parse_queue(overflow.as_bytes()).is_err());
    }

    #[test]
    fn queue_url_encodes_vhost_and_queue() {
        assert_eq!(
            queue_url("http://rabbit:15672", "/", "work-items"),
            "http://rabbit:15672/api/queues/%2F/work-items"
        );
        assert_eq!(
            queue_url("https://mq.example/rabbitmq/", "prod/eu", "jobs v2#1"),
            "https://mq.example/rabbitmq/api/queues/prod%2Feu/jobs%20v2%231"
        );
    }

    #[test]
    fn amqp_urls_map_to_the_management_port() {
        let t =
            management_target("amqp://user:p%40ss@rabbit:5672/orders", None, &no_auth()).unwrap();
        assert_eq!(t.base, "http://rabbit:15672");
        assert_eq!(t.vhost, "orders");
        assert_eq!(t.credentials, Some(("user".into(), "p@ss".into())));

        let t = management_target("amqps://rabbit:5671/a%2Fb", None, &no_auth()).unwrap();
        assert_eq!(t.base, "https://rabbit:15671");
        assert_eq!(t.vhost, "a/b");
        assert_eq!(t.credentials, None);

        for url in ["amqp://rabbit", "amqp://rabbit/", "amqp://rabbit:5672/"] {
            let t = management_target(url, None, &no_auth()).unwrap();
            assert_eq!(
                (t.base.as_str(), t.vhost.as_str()),
                ("http://rabbit:15672", "/"),
                "{url}"
            );
        }

        let t = management_target("amqp://[::1]:5672/v", None, &no_auth()).unwrap();
        assert_eq!(t.base, "http://[::1]:15672");
    }

    #[test]
    fn management_urls_are_kept_without_credentials() {
        let t = management_target("http://admin:pw@rabbit:15672/", None, &no_auth()).unwrap();
        assert_eq!(t.base, "http://rabbit:15672");
        assert_eq!(t.vhost, "/");
        assert_eq!(t.credentials, Some(("admin".into(), "pw".into())));

        let t =
            management_target("https://mq.example/rabbitmq?x=1", Some("prod"), &no_auth()).unwrap();
        assert_eq!(t.base, "https://mq.example/rabbitmq");
        assert_eq!(t.vhost, "prod");
    }

    #[test]
    fn spec_vhost_and_secret_keys_override_the_url() {
        let auth = BTreeMap::from([
            ("username".to_string(), "scaler".to_string()),
            ("password".to_string(), "s3cret".to_string()),
        ]);
        let t = management_target("amqp://u:p@rabbit/orders", Some("billing"), &auth).unwrap();
        assert_eq!(t.vhost, "billing");
        assert_eq!(t.credentials, Some(("scaler".into(), "s3cret".into())));
        assert!(!format!("{t:?}").contains("s3cret"));

        let only_password = BTreeMap::from([("password".to_string(), "s3cret".to_string())]);
        let t = management_target("amqp://app@rabbit", None, &only_password).unwrap();
        assert_eq!(t.credentials, Some(("app".into(), "s3cret".into())));
        assert!(management_target("amqp://rabbit", None, &only_password)
            .unwrap_err()
            .contains("no `username`"));
    }

    #[test]
    fn other_schemes_are_rejected() {
        assert!(management_target("redis://x", None, &no_auth())
            .unwrap_err()
            .contains("scheme redis"));
        assert!(management_target("not a url", None, &no_auth()).is_err());
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error() {
        crate::scaling::sources::install_crypto_provider();
        let reader = RabbitMqReader::new(reqwest::Client::new());
        let source = RabbitMqSource {
            url: "http://u:pw@127.0.0.1:1/".into(),
            queue: "q".into(),
            vhost: None,
        };
        let err = reader.read(&source, &no_auth()).await.unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Connect {
                    kind: "rabbitmq",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("rabbitmq at http://127.0.0.1:1: "),
            "{err}"
        );
    }
}
