//! Azure Service Bus queues and topic subscriptions, read through the REST management API.
//!
//! `GET https://{namespace}.servicebus.windows.net/{queue}?api-version=2021-05` (or
//! `{topic}/subscriptions/{subscription}`) answers an Atom entry whose description carries
//! `<CountDetails>` with `<d2p1:ActiveMessageCount>`: the messages waiting to be received
//! (dead-lettered, scheduled and transfer messages are not counted). An entity that does not
//! exist answers an empty Atom `<feed>` with status 200, which reads as "not found".
//!
//! Authentication is a Shared Access Signature made per request by [`sas_token`] from a
//! policy name and key, taken from the auth Secret: key `connection` holding a connection
//! string (`Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`, or one with a
//! ready-made `SharedAccessSignature=...`), else keys `sharedAccessKeyName` and
//! `sharedAccessKey`. Reading entity counts needs a policy with the **Manage** claim (a
//! Listen-only policy answers 401). `spec.serviceBus.namespace` is the namespace name or its
//! full host name.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use super::{error_chain, secret, SourceError};
use crate::api::ServiceBusSource;

const KIND: &str = "serviceBus";

/// The REST API version asked for.
pub const API_VERSION: &str = "2021-05";

/// Lifetime of a generated SAS token.
pub const TOKEN_LIFETIME_SECS: u64 = 3600;

/// Everything but RFC 3986 unreserved characters is encoded (`:` and `/` included).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Entity names may hold `/` (a queue `orders/eu` is a path); it is kept in the path.
const ENTITY_PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// The namespace's host: `NAME.servicebus.windows.net` for a bare name, else the host given
/// (any scheme, path or trailing `/` dropped).
pub fn namespace_host(namespace: &str) -> String {
    let ns = namespace.trim();
    let ns = ns.split_once("://").map_or(ns, |(_, rest)| rest);
    let ns = ns.split('/').next().unwrap_or_default();
    if ns.contains('.') {
        ns.to_ascii_lowercase()
    } else {
        format!("{}.servicebus.windows.net", ns.to_ascii_lowercase())
    }
}

/// `queue`, or `topic/subscriptions/subscription`.
pub fn entity_path(source: &ServiceBusSource) -> Result<String, String> {
    let nonempty = |s: &Option<String>| s.as_deref().filter(|v| !v.is_empty()).map(str::to_string);
    match (
        nonempty(&source.queue),
        nonempty(&source.topic),
        nonempty(&source.subscription),
    ) {
        (Some(queue), None, None) => Ok(utf8_percent_encode(&queue, ENTITY_PATH).to_string()),
        (None, Some(topic), Some(sub)) => Ok(format!(
            "{}/subscriptions/{}",
            utf8_percent_encode(&topic, ENTITY_PATH),
            utf8_percent_encode(&sub, COMPONENT)
        )),
        _ => Err("set either queue, or topic and subscription".into()),
    }
}

/// `https://{host}/{entity}?api-version=2021-05`.
pub fn entity_url(host: &str, entity: &str) -> String {
    format!("https://{host}/{entity}?api-version={API_VERSION}")
}

/// A Shared Access Signature for `resource_uri`, valid until `expiry` (Unix seconds):
/// `SharedAccessSignature sr={uri}&sig={signature}&se={expiry}&skn={key_name}`, where the
/// signature is the Base64 HMAC-SHA256, keyed with the policy key's text, of
/// `{url-encoded uri}\n{expiry}`, and `uri` and `signature` are URL-encoded in the token.
pub fn sas_token(resource_uri: &str, key_name: &str, key: &str, expiry: u64) -> String {
    let encoded_uri = utf8_percent_encode(resource_uri, COMPONENT).to_string();
    let to_sign = format!("{encoded_uri}\n{expiry}");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "SharedAccessSignature sr={encoded_uri}&sig={}&se={expiry}&skn={}",
        utf8_percent_encode(&signature, COMPONENT),
        utf8_percent_encode(key_name, COMPONENT)
    )
}

/// How to sign requests.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A policy name and key: a token is made per request.
    Key {
        /// `SharedAccessKeyName`.
        name: String,
        /// `SharedAccessKey`.
        key: String,
    },
    /// A ready-made `SharedAccessSignature ...` token.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key { name, .. } => write!(f, "Key {{ name: {name:?}, key: *** }}"),
            Credential::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The credential of the auth Secret (see the module docs), or the missing key's name.
pub fn credential(auth: &BTreeMap<String, String>) -> Result<Credential, &'static str> {
    if let Some(conn) = secret(auth, "connection") {
        let mut name = None;
        let mut key = None;
        for part in conn.split(';') {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "sharedaccesskeyname" => name = Some(v.trim()),
                "sharedaccesskey" => key = Some(v.trim()),
                "sharedaccesssignature" => {
                    let token = v.trim();
                    let token = if token.starts_with("SharedAccessSignature ") {
                        token.to_string()
                    } else {
                        format!("SharedAccessSignature {token}")
                    };
                    return Ok(Credential::Token(token));
                }
                _ => {}
            }
        }
        return match (name, key) {
            (Some(name), Some(key)) => Ok(Credential::Key {
                name: name.to_string(),
                key: key.to_string(),
            }),
            (None, _) => Err("connection: SharedAccessKeyName"),
            (_, None) => Err("connection: SharedAccessKey"),
        };
    }
    match (
        secret(auth, "sharedAccessKeyName"),
        secret(auth, "sharedAccessKey"),
    ) {
        (Some(name), Some(key)) => Ok(Credential::Key {
            name: name.to_string(),
            key: key.to_string(),
        }),
        (Some(_), None) => Err("sharedAccessKey"),
        _ => Err("connection"),
    }
}

/// Why an answer holds no count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountError {
    /// An empty Atom feed: the entity does not exist.
    EntityNotFound,
    /// Not an entity description with a count.
    Malformed(String),
}

/// The `ActiveMessageCount` inside `CountDetails` of an entity description, whatever the
/// namespace prefixes.
pub fn parse_active_message_count(xml: &str) -> Result<i64, CountError> {
    let mut in_count_details = false;
    let mut root: Option<&str> = None;
    for tag in Tags::new(xml) {
        let tag = tag.map_err(CountError::Malformed)?;
        if root.is_none() && tag.kind != TagKind::End {
            root = Some(tag.local_name);
        }
        match (tag.kind, tag.local_name) {
            (TagKind::Start, "CountDetails") => in_count_details = true,
            (TagKind::End, "CountDetails") => in_count_details = false,
            (TagKind::Start, "ActiveMessageCount") if in_count_details => {
                let rest = &xml[tag.end..];
                let text = rest.split('<').next().unwrap_or_default().trim();
                return text.parse::<i64>().map_err(|_| {
                    CountError::Malformed(format!("ActiveMessageCount {text:?} is not an integer"))
                });
            }
            _ => {}
        }
    }
    match root {
        Some("feed") => Err(CountError::EntityNotFound),
        Some(other) => Err(CountError::Malformed(format!(
            "no CountDetails/ActiveMessageCount in <{other}>"
        ))),
        None => Err(CountError::Malformed("not XML".into())),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TagKind {
    Start,
    End,
    Empty,
}

#[derive(Debug)]
struct Tag<'a> {
    kind: TagKind,
    /// The name without its namespace prefix.
    local_name: &'a str,
    /// Byte offset just past the `>`.
    end: usize,
}

/// The element tags of an XML document, skipping declarations, comments and CDATA.
struct Tags<'a> {
    xml: &'a str,
    pos: usize,
}

impl<'a> Tags<'a> {
    fn new(xml: &'a str) -> Self {
        Tags { xml, pos: 0 }
    }
}

impl<'a> Iterator for Tags<'a> {
    type Item = Result<Tag<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let start = self.pos + self.xml[self.pos..].find('<')?;
            let rest = &self.xml[start..];
            let skip_to =
                |end_marker: &str| rest.find(end_marker).map(|i| start + i + end_marker.len());
            let skipped = if rest.starts_with("<!--") {
                Some(skip_to("-->"))
            } else if rest.starts_with("<![CDATA[") {
                Some(skip_to("]]>"))
            } else if rest.starts_with("<?") {
                Some(skip_to("?>"))
            } else if rest.starts_with("<!") {
                Some(skip_to(">"))
            } else {
                None
            };
            if let Some(next) = skipped {
                match next {
                    Some(n) => {
                        self.pos = n;
                        continue;
                    }
                    None => {
                        self.pos = self.xml.len();
                        return Some(Err("unterminated markup".into()));
                    }
                }
            }
            // Find the closing `>` outside attribute quotes.
            let mut quote: Option<char> = None;
            let mut close = None;
            for (i, c) in rest.char_indices().skip(1) {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '>') => {
                        close = Some(i);
                        break;
                    }
                    (None, '<') => break,
                    _ => {}
                }
            }
            let Some(close) = close else {
                self.pos = self.xml.len();
                return Some(Err("unterminated tag".into()));
            };
            let inner = &rest[1..close];
            self.pos = start + close + 1;
            let (kind, body) = if let Some(b) = inner.strip_prefix('/') {
                (TagKind::End, b)
            } else if let Some(b) = inner.strip_suffix('/') {
                (TagKind::Empty, b)
            } else {
                (TagKind::Start, inner)
            };
            let name = body
                .split(|c: char| c.is_whitespace())
                .next()
                .unwrap_or_default();
            if name.is_empty() {
                return Some(Err("a tag without a name".into()));
            }
            let local_name = name.rsplit(':').next().unwrap_or(name);
            return Some(Ok(Tag {
                kind,
                local_name,
                end: self.pos,
            }));
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads Service Bus entities over the shared HTTP client.
pub struct ServiceBusReader {
    http: reqwest::Client,
}

impl ServiceBusReader {
    /// A reader using `http`.
    pub fn new(http: reqwest::Client) -> Self {
        ServiceBusReader { http }
    }

    /// Active messages of the queue or subscription.
    pub async fn read(
        &self,
        source: &ServiceBusSource,
        auth: &BTreeMap<String, String>,
    ) -> Result<i64, SourceError> {
        let host = namespace_host(&source.namespace);
        let entity = entity_path(source).map_err(|message| SourceError::Config {
            kind: KIND,
            message,
        })?;
        let credential = credential(auth).map_err(|key| SourceError::MissingCredential {
            kind: KIND,
            address: host.clone(),
            key,
        })?;
        let token = match credential {
            Credential::Key { name, key } => {
                let resource = format!("https://{host}/{entity}");
                sas_token(&resource, &name, &key, unix_now() + TOKEN_LIFETIME_SECS)
            }
            Credential::Token(token) => token,
        };
        let response = self
            .http
            .get(entity_url(&host, &entity))
            .header(reqwest::header::AUTHORIZATION, token)
            .send()
            .await
            .map_err(|e| SourceError::Connect {
                kind: KIND,
                address: host.clone(),
                message: error_chain(&e.without_url()),
            })?;
        let status = response.status();
        let what = describe_entity(source);
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(SourceError::NotFound {
                kind: KIND,
                address: host,
                what,
            });
        }
        if !status.is_success() {
            let message = match status.as_u16() {
                401 => "unauthorized: the SAS policy needs the Manage claim to read counts".into(),
                403 => "forbidden: the SAS policy may not read this entity".into(),
                _ => status.canonical_reason().unwrap_or("error").to_string(),
            };
            return Err(SourceError::Status {
                kind: KIND,
                address: host,
                status: status.as_u16(),
                message,
            });
        }
        let body = response.text().await.map_err(|e| SourceError::Connect {
            kind: KIND,
            address: host.clone(),
            message: error_chain(&e.without_url()),
        })?;
        parse_active_message_count(&body).map_err(|e| match e {
            CountError::EntityNotFound => SourceError::NotFound {
                kind: KIND,
                address: host,
                what,
            },
            CountError::Malformed(message) => SourceError::Response {
                kind: KIND,
                address: host,
                message: format!("{what}: {message}"),
            },
        })
    }
}

fn describe_entity(source: &ServiceBusSource) -> String {
    match (&source.queue, &source.topic, &source.subscription) {
        (Some(q), _, _) => format!("queue {q}"),
        (None, Some(t), Some(s)) => format!("subscription {s} of topic {t}"),
        _ => "entity".into(),
    }
}

/// Service Bus has no emulator here: these tests check request building, signing and parsing
/// against response samples written from the documented Atom format of the management API.
#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> ServiceBusSource {
        ServiceBusSource {
            namespace: "diamond-prod-servicebus".into(),
            queue: Some(name.into()),
            topic: None,
            subscription: None,
        }
    }

    /// `GET /work-items?api-version=2021-05` of an existing queue (abridged): an Atom entry
    /// with a QueueDescription whose CountDetails uses the `d2p1` prefix.
    const QUEUE_ENTRY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<entry xmlns="http://www.w3.org/2005/Atom">
  <id>https://diamond-prod-servicebus.servicebus.windows.net/work-items?api-version=2021-05</id>
  <title type="text">work-items</title>
  <published>2025-01-01T10:00:00Z</published>
  <updated>2025-01-01T11:00:00Z</updated>
  <author><name>diamond-prod-servicebus</name></author>
  <link rel="self" href="https://diamond-prod-servicebus.servicebus.windows.net/work-items?api-version=2021-05"/>
  <content type="application/xml">
    <QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
      <LockDuration>PT1M</LockDuration>
      <MaxSizeInMegabytes>1024</MaxSizeInMegabytes>
      <RequiresDuplicateDetection>false</RequiresDuplicateDetection>
      <RequiresSession>false</RequiresSession>
      <DeadLetteringOnMessageExpiration>false</DeadLetteringOnMessageExpiration>
      <MaxDeliveryCount>10</MaxDeliveryCount>
      <EnableBatchedOperations>true</EnableBatchedOperations>
      <SizeInBytes>48213</SizeInBytes>
      <MessageCount>103</MessageCount>
      <IsAnonymousAccessible>false</IsAnonymousAccessible>
      <Status>Active</Status>
      <CreatedAt>2025-01-01T10:00:00Z</CreatedAt>
      <UpdatedAt>2025-01-01T11:00:00Z</UpdatedAt>
      <AccessedAt>2025-01-01T11:59:00Z</AccessedAt>
      <CountDetails xmlns:d2p1="http://schemas.microsoft.com/netservices/2011/06/servicebus">
        <d2p1:ActiveMessageCount>95</d2p1:ActiveMessageCount>
        <d2p1:DeadLetterMessageCount>3</d2p1:DeadLetterMessageCount>
        <d2p1:ScheduledMessageCount>5</d2p1:ScheduledMessageCount>
        <d2p1:TransferMessageCount>0</d2p1:TransferMessageCount>
        <d2p1:TransferDeadLetterMessageCount>0</d2p1:TransferDeadLetterMessageCount>
      </CountDetails>
      <EnablePartitioning>false</EnablePartitioning>
    </QueueDescription>
  </content>
</entry>"#;

    /// `GET /orders/subscriptions/billing?api-version=2021-05` (abridged): a
    /// SubscriptionDescription, another prefix, and a decoy ActiveMessageCount outside
    /// CountDetails.
    const SUBSCRIPTION_ENTRY: &str = r#"<entry xmlns="http://www.w3.org/2005/Atom"><title type="text">billing</title><content type="application/xml"><SubscriptionDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><!-- <ActiveMessageCount>999</ActiveMessageCount> --><ActiveMessageCount>999</ActiveMessageCount><LockDuration>PT1M</LockDuration><MessageCount>7</MessageCount><CountDetails xmlns:a="http://schemas.microsoft.com/netservices/2011/06/servicebus"><a:ActiveMessageCount>
7
</a:ActiveMessageCount><a:DeadLetterMessageCount>0</a:DeadLetterMessageCount></CountDetails></SubscriptionDescription></content></entry>"#;

    /// What the API answers for an entity that does not exist: status 200, an empty feed.
    const NO_SUCH_ENTITY: &str = r#"<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Publicly Listed Services</title><subtitle type="text">This is the list of publicly-listed services currently available.</subtitle><id>uuid:0a1b2c3d-0000-0000-0000-000000000000;id=1</id><updated>2025-01-01T12:00:00Z</updated><generator>Service Bus 1.1</generator></feed>"#;

    #[test]
    fn parses_the_active_message_count() {
        assert_eq!(parse_active_message_count(QUEUE_ENTRY), Ok(95));
        assert_eq!(parse_active_message_count(SUBSCRIPTION_ENTRY), Ok(7));
    }

    #[test]
    fn an_empty_feed_is_a_missing_entity() {
        assert_eq!(
            parse_active_message_count(NO_SUCH_ENTITY),
            Err(CountError::EntityNotFound)
        );
    }

    #[test]
    fn other_answers_are_malformed() {
        for body in [
            "",
            "not xml at all",
            "<entry><content/></entry>",
            "<entry><CountDetails><ActiveMessageCount>many</ActiveMessageCount></CountDetails></entry>",
            "<entry><CountDetails><ActiveMessageCount",
            "<entry><!-- unterminated",
            "<Error><Code>401</Code><Detail>Unauthorized</Detail></Error>",
        ] {
            assert!(
                matches!(parse_active_message_count(body), Err(CountError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn attributes_with_a_greater_than_sign_do_not_end_the_tag() {
        let xml = r#"<entry a="x>y"><CountDetails b='>'><c:ActiveMessageCount>4</c:ActiveMessageCount></CountDetails></entry>"#;
        assert_eq!(parse_active_message_count(xml), Ok(4));
    }

    #[test]
    fn namespace_names_and_hosts() {
        assert_eq!(
            namespace_host("diamond-prod-servicebus"),
            "diamond-prod-servicebus.servicebus.windows.net"
        );
        assert_eq!(
            namespace_host("Diamond.servicebus.windows.net"),
            "diamond.servicebus.windows.net"
        );
        assert_eq!(
            namespace_host("sb://ns.servicebus.chinacloudapi.cn/"),
            "ns.servicebus.chinacloudapi.cn"
        );
    }

    #[test]
    fn entity_urls() {
        assert_eq!(
            entity_url(
                &namespace_host("ns"),
                &entity_path(&queue("work-items")).unwrap()
            ),
            "https://ns.servicebus.windows.net/work-items?api-version=2021-05"
        );
        assert_eq!(
            entity_path(&queue("orders/eu west")).unwrap(),
            "orders/eu%20west"
        );
        let sub = ServiceBusSource {
            namespace: "ns".into(),
            queue: None,
            topic: Some("orders".into()),
            subscription: Some("billing".into()),
        };
        assert_eq!(entity_path(&sub).unwrap(), "orders/subscriptions/billing");
        let both = ServiceBusSource {
            topic: Some("t".into()),
            ..queue("q")
        };
        assert!(entity_path(&both).is_err());
        let neither = ServiceBusSource {
            queue: None,
            ..queue("q")
        };
        assert!(entity_path(&neither).is_err());
    }

    #[test]
    fn sas_token_format_and_signature() {
        let token = sas_token(
            "https://ns.servicebus.windows.net/work-items",
            "RootManageSharedAccessKey",
            "c2VjcmV0LWtleQ==",
            1_735_736_400,
        );
        // Expected signature: Base64(HMAC-SHA256(key text, encoded uri + "\n" + expiry)),
        // computed independently of this code.
        assert_eq!(
            token,
            "SharedAccessSignature \
             sr=https%3A%2F%2Fns.servicebus.windows.net%2Fwork-items\
             &sig=2RS3wI%2BmRaT72CvppVfSE5HkO7y08h0ytCk%2BpD%2FUQNA%3D\
             &se=1735736400\
             &skn=RootManageSharedAccessKey"
        );
    }

    #[test]
    fn credentials_from_a_connection_string_or_keys() {
        let conn = BTreeMap::from([(
            "connection".to_string(),
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=abc/def+g==;EntityPath=q"
                .to_string(),
        )]);
        assert_eq!(
            credential(&conn),
            Ok(Credential::Key {
                name: "listen".into(),
                key: "abc/def+g==".into()
            })
        );
        let keys = BTreeMap::from([
            ("sharedAccessKeyName".to_string(), "manage".to_string()),
            ("sharedAccessKey".to_string(), "k".to_string()),
        ]);
        assert_eq!(
            credential(&keys),
            Ok(Credential::Key {
                name: "manage".into(),
                key: "k".into()
            })
        );
        let sas = BTreeMap::from([(
            "connection".to_string(),
            "Endpoint=sb://ns/;SharedAccessSignature=sr=x&sig=y&se=1&skn=z".to_string(),
        )]);
        assert_eq!(
            credential(&sas),
            Ok(Credential::Token(
                "SharedAccessSignature sr=x&sig=y&se=1&skn=z".into()
            ))
        );
        assert_eq!(credential(&BTreeMap::new()), Err("connection"));
        let half = BTreeMap::from([(
            "connection".to_string(),
            "Endpoint=sb://ns/;SharedAccessKeyName=x".to_string(),
        )]);
        assert_eq!(credential(&half), Err("connection: SharedAccessKey"));
        let debug = format!("{:?}", credential(&conn).unwrap());
        assert!(!debug.contains("abc/def"), "{debug}");
    }

    #[tokio::test]
    async fn a_missing_credential_is_reported_before_any_request() {
        crate::scaling::sources::install_crypto_provider();
        let reader = ServiceBusReader::new(reqwest::Client::new());
        let err = reader
            .read(&queue("work-items"), &BTreeMap::new())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "serviceBus at diamond-prod-servicebus.servicebus.windows.net: \
             the auth Secret has no key `connection`"
        );
    }
}
