//! Prometheus metrics of the API server, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: String,
}

/// The kind a watch stream is of, by its plural (`pods`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<VerbLabel, Histogram>,
    /// Open watch streams by resource (`wisp_apiserver_watches{resource="pods"}`).
    pub watches: Family<ResourceLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wisp_apiserver");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<VerbLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        let watches = Family::<ResourceLabel, Gauge>::default();
        registry.register(
            "requests",
            "API requests by verb and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request latency by verb",
            latency.clone(),
        );
        registry.register("watches", "Open watch streams by resource", watches.clone());
        Self {
            registry,
            requests,
            latency,
            watches,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
