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
}
