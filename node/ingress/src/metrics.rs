//! Prometheus metrics of the ingress, served on `/.wisp/metrics`: requests by Service and
//! status code, latency to the response head, cold starts and how long their requests
//! waited, and per Service the requests in flight, those held by the activator and the ready
//! endpoints. A request that was traced leaves its trace id as the exemplar of its latency
//! bucket (OpenMetrics), to go from a slow bucket to a trace of it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::table::ServiceState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub namespace: String,
    pub service: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
}

/// An exemplar's labels: the trace a request was recorded in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    pub trace_id: String,
}

impl ServiceLabels {
    pub fn of(s: &ServiceState) -> Self {
        Self {
            namespace: s.namespace.clone(),
            service: s.name.clone(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<CodeLabels, Counter>,
    pub latency: Family<ServiceLabels, HistogramWithExemplars<TraceLabels>>,
    pub cold_starts: Family<ServiceLabels, Counter>,
    pub cold_start_wait: Family<ServiceLabels, Histogram>,
    pub queued: Family<ServiceLabels, Gauge>,
    pub ready_endpoints: Family<ServiceLabels, Gauge>,
    pub in_flight: Family<ServiceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wisp_ingress");
        let requests = Family::<CodeLabels, Counter>::default();
        let latency =
            Family::<ServiceLabels, HistogramWithExemplars<TraceLabels>>::new_with_constructor(|| {
                HistogramWithExemplars::new(exponential_buckets(0.000_05, 2.0, 20))
            });
        let cold_starts = Family::<ServiceLabels, Counter>::default();
        let cold_start_wait = Family::<ServiceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let queued = Family::<ServiceLabels, Gauge>::default();
        let ready_endpoints = Family::<ServiceLabels, Gauge>::default();
        let in_flight = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "requests",
            "Requests by Service and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by Service",
            latency.clone(),
        );
        registry.register(
            "cold_starts",
            "Activations of a Service with no ready endpoint",
            cold_starts.clone(),
        );
        registry.register(
            "cold_start_wait_seconds",
            "How long requests waited for a Service to wake",
            cold_start_wait.clone(),
        );
        registry.register(
            "queued_requests",
            "Requests held by the activator now",
            queued.clone(),
        );
        registry.register(
            "ready_endpoints",
            "Ready endpoints (pods) per Service",
            ready_endpoints.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests in flight now (held by the activator or at a backend), per Service",
            in_flight.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            cold_starts,
            cold_start_wait,
            queued,
            ready_endpoints,
            in_flight,
        }
    }
}

impl Metrics {
    /// The text exposition, with the gauges read from the Services now.
    pub fn encode(&self, services: &[std::sync::Arc<ServiceState>]) -> String {
        for s in services {
            let l = ServiceLabels::of(s);
            let queued = s.queued.load(std::sync::atomic::Ordering::Relaxed);
            self.queued
                .get_or_create(&l)
                .set(i64::try_from(queued).unwrap_or(i64::MAX));
            let ready = s.backend_count();
            self.ready_endpoints
                .get_or_create(&l)
                .set(i64::try_from(ready).unwrap_or(i64::MAX));
            let in_flight = s.in_flight.load(std::sync::atomic::Ordering::Relaxed);
            self.in_flight
                .get_or_create(&l)
                .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
