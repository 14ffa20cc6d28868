//! NATS JetStream consumers, read through the server's HTTP monitoring endpoint.
//!
//! `GET {monitoringUrl}/jsz?acc={account}&consumers=true` answers the JetStream state of one
//! account (default `$G`, the global account of a server without accounts):
//! `account_details[].stream_detail[].consumer_detail[]`. The value is the consumer's
//! `num_pending` (messages of the stream not yet delivered to it) plus `num_ack_pending`
//! (delivered, not yet acknowledged), so a consumer with no client connected (a worker at
//! zero replicas) still shows the backlog.
//!
//! The monitoring endpoint needs no credentials. In a JetStream cluster each server reports
//! the streams and consumers it holds a replica of; point `monitoringUrl` at a server that
//! holds the consumer (a Service over all servers may answer from one that does not, which
//! reads as "not found" and counts as a failed read).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::{error_chain, redact_address, SourceError};
use crate::api::NatsJetStreamSource;

const KIND: &str = "natsJetStream";

/// The global account of a server without configured accounts.
pub const DEFAULT_ACCOUNT: &str = "$G";

/// Everything but RFC 3986 unreserved characters is encoded in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `{monitoringUrl}/jsz?acc={account}&consumers=true`.
pub fn jsz_url(monitoring_url: &str, account: &str) -> String {
    format!(
        "{}/jsz?acc={}&consumers=true",
        monitoring_url.trim_end_matches('/'),
        utf8_percent_encode(account, QUERY_VALUE)
    )
}

#[derive(Deserialize)]
struct Jsz {
    #[serde(default)]
    account_details: Vec<AccountDetail>,
}

#[derive(Deserialize)]
struct AccountDetail {
    #[serde(default)]
    name: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    stream_detail: Vec<StreamDetail>,
}

#[derive(Deserialize)]
struct StreamDetail {
    name: String,
    #[serde(default)]
    consumer_detail: Vec<ConsumerDetail>,
}

#[derive(Deserialize)]
struct ConsumerDetail {
    name: String,
    #[serde(default)]
    num_pending: u64,
    #[serde(default)]
    num_ack_pending: u64,
}

/// Why a `/jsz` answer holds no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JszError {
    /// Not the `/jsz` JSON.
    Malformed(String),
    /// The account, stream or consumer is not in the answer.
    NotFound(String),
}

/// `num_pending + num_ack_pending` of `consumer` on `stream` in `account`, from a `/jsz`
/// answer with consumer details.
pub fn parse_jsz(
    body: &[u8],
    account: &str,
    stream: &str,
    consumer: &str,
) -> Result<i64, JszError> {
    let jsz: Jsz = serde_json::from_slice(body)
        .map_err(|e| JszError::Malformed(format!("not /jsz JSON: {e}")))?;
    let acc = jsz
        .account_details
        .iter()
        .find(|a| a.name == account || a.id == account)
        .ok_or_else(|| {
            JszError::NotFound(format!(
                "account {account} (no JetStream use on this server?)"
            ))
        })?;
    let st = acc
        .stream_detail
        .iter()
        .find(|s| s.name == stream)
        .ok_or_else(|| JszError::NotFound(format!("stream {stream} in account {account}")))?;
    let c = st
        .consumer_detail
        .iter()
        .find(|c| c.name == consumer)
        .ok_or_else(|| JszError::NotFound(format!("consumer {consumer} of stream {stream}")))?;
    let total = c.num_pending.saturating_add(c.num_ack_pending);
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

/// Reads JetStream consumers over the shared HTTP client.
pub struct NatsReader {
    http: reqwest::Client,
}

impl NatsReader {
    /// A reader using `http`.
    pub fn new(http: reqwest::Client) -> Self {
        NatsReader { http }
    }

    /// Pending plus ack-pending messages of the consumer.
    pub async fn read(&self, source: &NatsJetStreamSource) -> Result<i64, SourceError> {
        let address = redact_address(&source.monitoring_url);
        let account = source
            .account
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or(DEFAULT_ACCOUNT);
        let url = jsz_url(&source.monitoring_url, account);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| SourceError::Connect {
                kind: KIND,
                address: address.clone(),
                message: error_chain(&e.without_url()),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(SourceError::Status {
                kind: KIND,
                address,
                status: status.as_u16(),
                message: format!(
                    "{} from /jsz (is this the monitoring port, usually 8222?)",
                    status.canonical_reason().unwrap_or("error")
                ),
            });
        }
        let body = response.bytes().await.map_err(|e| SourceError::Connect {
            kind: KIND,
            address: address.clone(),
            message: error_chain(&e.without_url()),
        })?;
        parse_jsz(&body, account, &source.stream, &source.consumer).map_err(|e| match e {
            JszError::Malformed(message) => SourceError::Response {
                kind: KIND,
                address,
                message,
            },
            JszError::NotFound(what) => SourceError::NotFound {
                kind: KIND,
                address,
                what,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/jsz?acc=$G&consumers=true` answer written from the documented format of the
    /// monitoring endpoint: server totals, then `account_details` with each stream's `state`
    /// and `consumer_detail` (the consumer info of the JetStream API).
    const SAMPLE_JSZ: &str = r#"{
      "server_id": "NCXOBPIZPFB6UDF4PSV5CNX4NMZRI7VGDPQG6VZPQLX6JUB4BWGVDQHQ",
      "now": "2025-01-01T12:00:00.000000000Z",
      "config": {"max_memory": 1073741824, "max_storage": 10737418240, "store_dir": "/data/jetstream"},
      "memory": 0,
      "storage": 52480,
      "reserved_memory": 0,
      "reserved_storage": 0,
      "accounts": 1,
      "ha_assets": 0,
      "api": {"total": 41, "errors": 0},
      "streams": 2,
      "consumers": 3,
      "messages": 130,
      "bytes": 52480,
      "account_details": [
        {
          "name": "$G",
          "id": "$G",
          "memory": 0,
          "storage": 52480,
          "accounts": 1,
          "api": {"total": 41, "errors": 0},
          "stream_detail": [
            {
              "name": "ORDERS",
              "created": "2025-01-01T10:00:00Z",
              "cluster": {"leader": "nats-0"},
              "state": {"messages": 120, "bytes": 48000, "first_seq": 1, "last_seq": 120,
                        "consumer_count": 2},
              "consumer_detail": [
                {
                  "stream_name": "ORDERS",
                  "name": "billing",
                  "created": "2025-01-01T10:00:01Z",
                  "config": {"durable_name": "billing", "ack_policy": "explicit", "max_ack_pending": 1000},
                  "delivered": {"consumer_seq": 30, "stream_seq": 30},
                  "ack_floor": {"consumer_seq": 25, "stream_seq": 25},
                  "num_ack_pending": 5,
                  "num_redelivered": 0,
                  "num_waiting": 1,
                  "num_pending": 90
                },
                {
                  "stream_name": "ORDERS",
                  "name": "audit",
                  "created": "2025-01-01T10:00:02Z",
                  "config": {"durable_name": "audit", "ack_policy": "explicit"},
                  "delivered": {"consumer_seq": 120, "stream_seq": 120},
                  "ack_floor": {"consumer_seq": 120, "stream_seq": 120},
                  "num_ack_pending": 0,
                  "num_redelivered": 0,
                  "num_waiting": 0,
                  "num_pending": 0
                }
              ]
            },
            {
              "name": "EVENTS",
              "created": "2025-01-01T10:05:00Z",
              "state": {"messages": 10, "bytes": 4480, "first_seq": 1, "last_seq": 10,
                        "consumer_count": 1},
              "consumer_detail": [
                {
                  "stream_name": "EVENTS",
                  "name": "billing",
                  "num_ack_pending": 1,
                  "num_pending": 2
                }
              ]
            }
          ]
        }
      ]
    }"#;

    #[test]
    fn value_is_pending_plus_ack_pending() {
        assert_eq!(
            parse_jsz(SAMPLE_JSZ.as_bytes(), "$G", "ORDERS", "billing"),
            Ok(95)
        );
        assert_eq!(
            parse_jsz(SAMPLE_JSZ.as_bytes(), "$G", "ORDERS", "audit"),
            Ok(0)
        );
        // Same consumer name on another stream.
        assert_eq!(
            parse_jsz(SAMPLE_JSZ.as_bytes(), "$G", "EVENTS", "billing"),
            Ok(3)
        );
    }

    #[test]
    fn missing_account_stream_or_consumer_is_not_found() {
        let body = SAMPLE_JSZ.as_bytes();
        assert!(matches!(
            parse_jsz(body, "APP", "ORDERS", "billing"),
            Err(JszError::NotFound(w)) if w.starts_with("account APP")
        ));
        assert_eq!(
            parse_jsz(body, "$G", "NOPE", "billing"),
            Err(JszError::NotFound("stream NOPE in account $G".into()))
        );
        assert_eq!(
            parse_jsz(body, "$G", "ORDERS", "nope"),
            Err(JszError::NotFound("consumer nope of stream ORDERS".into()))
        );
        // A server without JetStream use in the account answers no account details.
        let bare = r#"{"server_id":"X","memory":0,"storage":0,"streams":0,"consumers":0}"#;
        assert!(matches!(
            parse_jsz(bare.as_bytes(), "$G", "ORDERS", "billing"),
            Err(JszError::NotFound(_))
        ));
    }

    #[test]
    fn accounts_match_by_name_or_id() {
        let body = r#"{"account_details":[{"name":"app","id":"ACXYZ","stream_detail":[
            {"name":"S","consumer_detail":[{"name":"C","num_pending":4,"num_ack_pending":0}]}]}]}"#;
        assert_eq!(parse_jsz(body.as_bytes(), "app", "S", "C"), Ok(4));
        assert_eq!(parse_jsz(body.as_bytes(), "ACXYZ", "S", "C"), Ok(4));
    }

    #[test]
    fn huge_counts_saturate_and_junk_is_malformed() {
        let body = format!(
            r#"{{"account_details":[{{"name":"$G","stream_detail":[{{"name":"S","consumer_detail":[
                {{"name":"C","num_pending":{},"num_ack_pending":{}}}]}}]}}]}}"#,
            u64::MAX,
            u64::MAX
        );
        assert_eq!(parse_jsz(body.as_bytes(), "$G", "S", "C"), Ok(i64::MAX));
        assert!(matches!(
            parse_jsz(b"<html></html>", "$G", "S", "C"),
            Err(JszError::Malformed(_))
        ));
        assert!(matches!(
            parse_jsz(br#"{"account_details":[{"name":"$G","stream_detail":[{"name":"S","consumer_detail":[{"name":"C","num_pending":-1}]}]}]}"#, "$G", "S", "C"),
            Err(JszError::Malformed(_))
        ));
    }

    #[test]
    fn jsz_url_encodes_the_account() {
        assert_eq!(
            jsz_url("http://nats:8222/", DEFAULT_ACCOUNT),
            "http://nats:8222/jsz?acc=%24G&consumers=true"
        );
        assert_eq!(
            jsz_url("http://nats:8222", "team a&b"),
            "http://nats:8222/jsz?acc=team%20a%26b&consumers=true"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_connect_error() {
        crate::scaling::sources::install_crypto_provider();
        let reader = NatsReader::new(reqwest::Client::new());
        let source = NatsJetStreamSource {
            monitoring_url: "http://127.0.0.1:1".into(),
            account: None,
            stream: "S".into(),
            consumer: "C".into(),
        };
        let err = reader.read(&source).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("natsJetStream at http://127.0.0.1:1: cannot connect"),
            "{err}"
        );
    }
}
