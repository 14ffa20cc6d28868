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
    pub duration: Family<KindLabels, Histogram>,
    pub ready: Gauge,
    /// Every request the operator sends to the API server, by HTTP method.
    pub api_requests: Family<VerbLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciliations: Family::default(),
            failures: Family::default(),
            status_writes: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            }),
            ready: Gauge::default(),
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
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            self.duration.clone(),
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
    /// Requests that change something on the API server.
    pub fn api_writes(&self) -> u64 {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|v| {
                self.api_requests
                    .get_or_create(&VerbLabels {
                        verb: v.to_string(),
                    })
                    .get()
            })
            .sum()
    }

    /// A kube client whose every request is counted in `api_requests`.
    pub fn counting_client(&self, config: kube::Config) -> Result<kube::Client, kube::Error> {
        let counter = self.api_requests.clone();
        let layer =
            tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
                counter
                    .get_or_create(&VerbLabels {
                        verb: req.method().as_str().to_string(),
                    })
                    .inc();
                req
            });
        Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&layer)
            .build())
    }
}
