//! AWS SQS queues, read with the official SDK.
//!
//! The value is `ApproximateNumberOfMessages` (visible, waiting to be received) plus
//! `ApproximateNumberOfMessagesNotVisible` (received, in flight, not yet deleted) of
//! `GetQueueAttributes` on `queueUrl`. Counting in-flight messages keeps a worker from being
//! scaled in while it is still processing what it took off the queue. Delayed messages are
//! not counted.
//!
//! The client is made for `spec.sqs.region`, with `spec.sqs.endpointUrl` as endpoint when
//! set (an emulator, a VPC endpoint). Credentials are the auth Secret keys `awsAccessKeyId`
//! and `awsSecretAccessKey` (and `awsSessionToken` for temporary credentials) when given,
//! else the SDK's default chain (environment, web identity / IRSA, container and instance
//! metadata). Clients are cached per region, endpoint and credentials. HTTPS uses rustls
//! with the ring provider, like the rest of the operator.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::config::{Credentials, SharedHttpClient};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_http_client::tls;

use super::{redact_address, secret, ConnCache, SourceError};
use crate::api::SqsSource;

const KIND: &str = "sqs";

/// The attributes asked for and summed.
pub const ATTRIBUTES: [QueueAttributeName; 2] = [
    QueueAttributeName::ApproximateNumberOfMessages,
    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
];

/// The sum of [`ATTRIBUTES`] in a `GetQueueAttributes` answer; each must be present and a
/// non-negative integer.
pub fn sum_attributes(
    attributes: Option<&HashMap<QueueAttributeName, String>>,
) -> Result<i64, String> {
    let attributes = attributes.ok_or_else(|| "the answer has no attributes".to_string())?;
    let mut total: i64 = 0;
    for name in &ATTRIBUTES {
        let raw = attributes
            .get(name)
            .ok_or_else(|| format!("attribute {} is missing", name.as_str()))?;
        let n: i64 = raw
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("attribute {} is {raw:?}, not a count", name.as_str()))?;
        total = total
            .checked_add(n)
            .ok_or_else(|| "the counts overflow".to_string())?;
    }
    Ok(total)
}

/// Static credentials of the auth Secret, if it has an access key id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StaticCredentials {
    /// `awsAccessKeyId`.
    pub access_key_id: String,
    /// `awsSecretAccessKey`.
    pub secret_access_key: String,
    /// `awsSessionToken`.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The static credentials of the auth Secret: `None` without `awsAccessKeyId` (use the
/// default chain), or the name of the missing key when only half is given.
pub fn static_credentials(
    auth: &BTreeMap<String, String>,
) -> Result<Option<StaticCredentials>, &'static str> {
    match (
        secret(auth, "awsAccessKeyId"),
        secret(auth, "awsSecretAccessKey"),
    ) {
        (None, None) => Ok(None),
        (Some(id), Some(key)) => Ok(Some(StaticCredentials {
            access_key_id: id.to_string(),
            secret_access_key: key.to_string(),
            session_token: secret(auth, "awsSessionToken").map(str::to_string),
        })),
        (Some(_), None) => Err("awsSecretAccessKey"),
        (None, Some(_)) => Err("awsAccessKeyId"),
    }
}

type ClientKey = (String, Option<String>, Option<StaticCredentials>);

/// Reads SQS queues over cached SDK clients, which share one HTTPS connection pool.
pub struct SqsReader {
    clients: ConnCache<ClientKey, aws_sdk_sqs::Client>,
    http: OnceLock<SharedHttpClient>,
    connect_timeout: Duration,
}

impl SqsReader {
    /// A reader whose clients connect within `connect_timeout`, dropped after `idle_ttl`
    /// without use.
    pub fn new(connect_timeout: Duration, idle_ttl: Duration) -> Self {
        SqsReader {
            clients: ConnCache::new(idle_ttl),
            http: OnceLock::new(),
            connect_timeout,
        }
    }

    /// Number of cached clients.
    pub fn cached(&self) -> usize {
        self.clients.len()
    }

    /// Visible plus in-flight messages of the queue.
    pub async fn read(
        &self,
        source: &SqsSource,
        auth: &BTreeMap<String, String>,
    ) -> Result<i64, SourceError> {
        let address = redact_address(&source.queue_url);
        let credentials =
            static_credentials(auth).map_err(|key| SourceError::MissingCredential {
                kind: KIND,
                address: address.clone(),
                key,
            })?;
        let endpoint = source.endpoint_url.clone().filter(|e| !e.is_empty());
        let key: ClientKey = (source.region.clone(), endpoint, credentials);
        let connect_timeout = self.connect_timeout;
        // Made on first use, inside the runtime; every SQS client shares it.
        let http = self
            .http
            .get_or_init(|| {
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https()
            })
            .clone();
        let client = self
            .clients
            .get_or_connect(
                &key,
                |_| true,
                || async {
                    Ok::<_, std::convert::Infallible>(
                        make_client(&key, http, connect_timeout).await,
                    )
                },
            )
            .await
            .unwrap_or_else(|never| match never {});
        let mut request = client.get_queue_attributes().queue_url(&source.queue_url);
        for name in ATTRIBUTES {
            request = request.attribute_names(name);
        }
        let output = request
            .send()
            .await
            .map_err(|e| classify(&address, &source.queue_url, e))?;
        sum_attributes(output.attributes()).map_err(|message| SourceError::Response {
            kind: KIND,
            address,
            message,
        })
    }
}

async fn make_client(
    key: &ClientKey,
    http: SharedHttpClient,
    connect_timeout: Duration,
) -> aws_sdk_sqs::Client {
    let (region, endpoint, credentials) = key;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.clone()))
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(connect_timeout)
                .build(),
        );
    if let Some(c) = credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "slipway-trigger-auth",
        ));
    }
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url.clone());
    }
    aws_sdk_sqs::Client::new(&loader.load().await)
}

fn classify<E, R>(address: &str, queue_url: &str, e: SdkError<E, R>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let address = address.to_string();
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("unknown");
            if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
                return SourceError::NotFound {
                    kind: KIND,
                    address,
                    what: format!("queue {}", redact_address(queue_url)),
                };
            }
            SourceError::Response {
                kind: KIND,
                address,
                message: format!("{code}: {}", err.message().unwrap_or("no message")),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            SourceError::Connect {
                kind: KIND,
                address,
                message: DisplayErrorContext(&e).to_string(),
            }
        }
        _ => SourceError::Response {
            kind: KIND,
            address,
            message: DisplayErrorContext(&e).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(QueueAttributeName, &str)]) -> HashMap<QueueAttributeName, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    }

    #[test]
    fn sums_visible_and_in_flight() {
        let a = attrs(&[
            (QueueAttributeName::ApproximateNumberOfMessages, "90"),
            (
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                "5",
            ),
            (
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                "1000",
            ),
        ]);
        assert_eq!(sum_attributes(Some(&a)), Ok(95));
        let zero = attrs(&[
            (QueueAttributeName::ApproximateNumberOfMessages, "0"),
            (
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                "0",
            ),
        ]);
        assert_eq!(sum_attributes(Some(&zero)), Ok(0));
    }

    #[test]
    fn missing_or_bad_attributes_fail() {
        assert!(sum_attributes(None).is_err());
        let only_visible = attrs(&[(QueueAttributeName::ApproximateNumberOfMessages, "3")]);
        assert_eq!(
            sum_attributes(Some(&only_visible)),
            Err("attribute ApproximateNumberOfMessagesNotVisible is missing".into())
        );
        let bad = attrs(&[
            (QueueAttributeName::ApproximateNumberOfMessages, "x"),
            (
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                "0",
            ),
        ]);
        assert!(sum_attributes(Some(&bad))
            .unwrap_err()
            .contains("not a count"));
        let negative = attrs(&[
            (QueueAttributeName::ApproximateNumberOfMessages, "-1"),
            (
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                "0",
            ),
        ]);
        assert!(sum_attributes(Some(&negative)).is_err());
        let max = i64::MAX.to_string();
        let overflow = attrs(&[
            (QueueAttributeName::ApproximateNumberOfMessages, &max),
            (
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                "1",
            ),
        ]);
        assert!(sum_attributes(Some(&overflow)).is_err());
    }

    #[test]
    fn credentials_from_the_secret_or_the_default_chain() {
        assert_eq!(static_credentials(&BTreeMap::new()), Ok(None));
        let full = BTreeMap::from([
            ("awsAccessKeyId".to_string(), "AKIAEXAMPLE".to_string()),
            (
                "awsSecretAccessKey".to_string(),
                "wJalrXUtnFEMI".to_string(),
            ),
        ]);
        let c = static_credentials(&full).unwrap().unwrap();
        assert_eq!(c.access_key_id, "AKIAEXAMPLE");
        assert_eq!(c.session_token, None);
        assert!(!format!("{c:?}").contains("wJalr"));
        let half = BTreeMap::from([("awsAccessKeyId".to_string(), "AKIA".to_string())]);
        assert_eq!(static_credentials(&half), Err("awsSecretAccessKey"));
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_a_connect_error() {
        // Nothing listens on port 1 of the loopback address.
        let reader = SqsReader::new(Duration::from_secs(2), Duration::from_secs(60));
        let source = SqsSource {
            queue_url: "http://127.0.0.1:1/000000000000/jobs".into(),
            region: "eu-west-1".into(),
            endpoint_url: Some("http://127.0.0.1:1".into()),
        };
        let auth = BTreeMap::from([
            ("awsAccessKeyId".to_string(), "AKIAEXAMPLE".to_string()),
            (
                "awsSecretAccessKey".to_string(),
                "wJalrXUtnFEMI".to_string(),
            ),
        ]);
        let err = tokio::time::timeout(Duration::from_secs(30), reader.read(&source, &auth))
            .await
            .expect("the SDK gives up on a refused connection")
            .unwrap_err();
        assert!(
            matches!(err, SourceError::Connect { kind: "sqs", .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("wJalr"), "{err}");
        assert_eq!(reader.cached(), 1);
    }
}
