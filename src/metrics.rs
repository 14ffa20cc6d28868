//! Prometheus metrics of the controllers, exposed by the admin server at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
    /// The resource the request is about, e.g. `deployments` or `releases/status`.
    pub resource: String,
}

/// The path segments after the group/version and after `namespaces/{ns}/`.
fn resource_segments(path: &str) -> Option<Vec<&str>> {
    let segs: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let rest: &[&str] = match segs.first() {
        Some(&"api") => segs.get(2..).unwrap_or(&[]),
        Some(&"apis") => segs.get(3..).unwrap_or(&[]),
        _ => return None,
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        &rest[2..]
    } else {
        rest
    };
    Some(rest.to_vec())
}

/// The resource of an API path: `/apis/apps/v1/namespaces/x/deployments/y` → `deployments`,
/// `/apis/slipway.dev/v1alpha1/namespaces/x/releases/y/status` → `releases/status`.
pub fn resource_of(path: &str) -> String {
    match resource_segments(path).as_deref() {
        None => "other".into(),
        Some([]) => "discovery".into(),
        Some([r]) | Some([r, _]) => (*r).to_string(),
        Some([r, _, sub, ..]) => format!("{r}/{sub}"),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub error: String,
}

/// All metrics of one operator process.
#[derive(Clone)]
pub struct Metrics {
    pub reconciliations: Family<KindLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub status_writes: Family<KindLabels, Counter>,
    /// Reconciles that found a cached copy older than the process's own last write.
    pub stale_reads: Family<KindLabels, Counter>,
    pub duration: Family<KindLabels, Histogram>,
    pub ready: Gauge,
    /// Migration Jobs running, and Releases queued for a slot to start one.
    pub migrations_running: Gauge,
    pub migrations_queued: Gauge,
    /// Every request the operator sends to the API server, by HTTP method.
    pub api_requests: Family<VerbLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciliations: Family::default(),
            failures: Family::default(),
            status_writes: Family::default(),
            stale_reads: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            }),
            ready: Gauge::default(),
            migrations_running: Gauge::default(),
            migrations_queued: Gauge::default(),
            api_requests: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `slipway` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("slipway");
        r.register(
            "reconciliations",
            "Reconciliations started",
            self.reconciliations.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconciliations that returned an error",
            self.failures.clone(),
        );
        r.register(
            "status_writes",
            "Status patches sent to the API server",
            self.status_writes.clone(),
        );
        r.register(
            "stale_reads",
            "Reconciles that waited for the watch to show the process's own last write",
            self.stale_reads.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            self.duration.clone(),
        );
        r.register(
            "migrations_running",
            "Migration Jobs running (each holds one of --max-concurrent-migrations slots)",
            self.migrations_running.clone(),
        );
        r.register(
            "migrations_queued",
            "Releases waiting for a migration slot",
            self.migrations_queued.clone(),
        );
        r.register(
            "ready",
            "1 once every watch cache has synced",
            self.ready.clone(),
        );
        r.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by HTTP method (writes: POST, PUT, PATCH, DELETE)",
            self.api_requests.clone(),
        );
    }

    pub fn kind(kind: &str) -> KindLabels {
        KindLabels {
            kind: kind.to_string(),
        }
    }
}

impl Metrics {
    /// A kube client whose every request is counted in `api_requests`, by verb (GET, LIST,
    /// WATCH, POST, PUT, PATCH, DELETE) and resource.
    ///
    /// It offers HTTP/2 (ALPN `h2`, falling back to HTTP/1.1): every request and watch shares
    /// one connection, as with client-go. kube's default client speaks HTTP/1.1 only and opens
    /// a connection (and a TLS handshake on the API server) per concurrent request: 265 of
    /// them within two seconds when 200 Releases arrived together.
    pub fn counting_client(&self, config: kube::Config) -> anyhow::Result<kube::Client> {
        use anyhow::Context as _;
        use kube::client::ConfigExt;
        use tower::ServiceBuilder;

        let counter = self.api_requests.clone();
        let counting =
            tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
                counter
                    .get_or_create(&request_labels(req.method(), req.uri()))
                    .inc();
                req
            });
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(config.connect_timeout);
        let tls = config
            .rustls_client_config()
            .context("TLS settings of the kubeconfig")?;
        let mut https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        if let Some(name) = &config.tls_server_name {
            let name = rustls::pki_types::ServerName::try_from(name.clone())
                .with_context(|| format!("tls-server-name {name:?} of the kubeconfig"))?;
            https =
                https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
        }
        let https = https.enable_all_versions().wrap_connector(http);
        let transport =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, kube::client::Body>(https);
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(
                config
                    .auth_layer()
                    .context("credentials of the kubeconfig")?,
            )
            .layer(
                config
                    .extra_headers_layer()
                    .context("impersonation headers of the kubeconfig")?,
            )
            .layer(counting)
            .map_err(tower::BoxError::from)
            .service(transport);
        Ok(kube::Client::new(service, config.default_namespace))
    }
}

/// Labels of one request: GETs are split into GET (one object), LIST and WATCH.
pub fn request_labels(method: &http::Method, uri: &http::Uri) -> VerbLabels {
    let resource = resource_of(uri.path());
    let verb = if method == http::Method::GET {
        let query = uri.query().unwrap_or("");
        let named = resource_segments(uri.path()).is_some_and(|r| r.len() >= 2);
        if query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1")
        {
            "WATCH"
        } else if named {
            "GET"
        } else {
            "LIST"
        }
    } else {
        method.as_str()
    };
    VerbLabels {
        verb: verb.to_string(),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_by_verb_and_resource() {
        let cases = [
            (
                "GET",
                "/apis/apps/v1/namespaces/a/deployments/web",
                "GET",
                "deployments",
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/a/deployments?labelSelector=x",
                "LIST",
                "deployments",
            ),
            (
                "GET",
                "/apis/apps/v1/deployments?watch=true&resourceVersion=1",
                "WATCH",
                "deployments",
            ),
            (
                "PATCH",
                "/apis/slipway.dev/v1alpha1/namespaces/a/releases/shop/status",
                "PATCH",
                "releases/status",
            ),
            ("GET", "/api/v1/namespaces/a", "GET", "namespaces"),
            ("POST", "/apis/batch/v1/namespaces/a/jobs", "POST", "jobs"),
            ("GET", "/api/v1/namespaces", "LIST", "namespaces"),
        ];
        for (m, path, verb, resource) in cases {
            let l = request_labels(&m.parse().unwrap(), &path.parse().unwrap());
            assert_eq!(
                (l.verb.as_str(), l.resource.as_str()),
                (verb, resource),
                "{m} {path}"
            );
        }
    }
}
