//! What a node's ingress reports at `GET /.wisp/stats`, per Service (the autoscaler reads
//! it): not a stored resource, a wire format shared by its writer and its reader.

use serde::{Deserialize, Serialize};

/// One Service's traffic as one ingress saw it. Missing fields read as 0, so a reader
/// tolerates an older or newer ingress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IngressServiceStats {
    pub namespace: String,
    pub name: String,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Total time requests spent in flight, in µs: its rate is the average concurrency.
    pub busy_us: u64,
    pub requests: u64,
    /// Unix milliseconds of the last request (0: none yet).
    pub last_request_ms: u64,
    /// Requests the activator holds now.
    pub queued: usize,
    pub cold_starts: u64,
    pub ready_backends: usize,
    /// Answers of status 500 and above (the ingress's own 502/503/504 among them).
    pub errors: u64,
    /// Requests by time to the response head: `latency_buckets[i]` counts those within
    /// [`LATENCY_BOUNDS_MS`]`[i]` and above the bound before it; the last one those above
    /// every bound.
    pub latency_buckets: Vec<u64>,
}

/// Upper bounds (ms) of the latency buckets an ingress counts requests in.
pub const LATENCY_BOUNDS_MS: [f64; 16] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10_000.0,
    30_000.0,
];

/// The bucket of [`LATENCY_BOUNDS_MS`] a latency of `ms` falls in (the last: above all).
pub fn latency_bucket(ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The `q` quantile (0..=1) of the requests counted in `buckets` (laid out as
/// [`IngressServiceStats::latency_buckets`]), interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; `None` without requests. Above the last bound, the last bound.
pub fn latency_quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total = buckets.iter().fold(0u64, |a, n| a.saturating_add(*n));
    if total == 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        if n > 0 && below.saturating_add(n) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return LATENCY_BOUNDS_MS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS_MS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below = below.saturating_add(n);
    }
    LATENCY_BOUNDS_MS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        assert_eq!(latency_bucket(0.1), 0);
        assert_eq!(latency_bucket(0.25), 0);
        assert_eq!(latency_bucket(3.0), 4);
        assert_eq!(latency_bucket(1e9), LATENCY_BOUNDS_MS.len());
        let mut b = vec![0u64; LATENCY_BOUNDS_MS.len() + 1];
        assert_eq!(latency_quantile(&b, 0.5), None);
        // 100 requests in (2, 5] ms: the median halfway, p99 near the top.
        b[4] = 100;
        assert_eq!(latency_quantile(&b, 0.5), Some(3.5));
        let p99 = latency_quantile(&b, 0.99).expect("p99");
        assert!((p99 - 4.97).abs() < 1e-9, "{p99}");
        // One slow request in (500, 1000] among them decides nothing below p99.
        b[11] = 1;
        assert!(latency_quantile(&b, 0.99).expect("p99") <= 5.0);
        assert!(latency_quantile(&b, 1.0).expect("max") > 500.0);
        b[16] = 5;
        assert_eq!(latency_quantile(&b, 1.0), Some(30_000.0));
    }
}
