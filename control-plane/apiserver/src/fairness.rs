//! Fair sharing of the API server between its clients: a request rate (GCRA, `governor`)
//! and a cap on requests in flight and on open watches per token. The cluster admin and the
//! control plane's own in-process components are not limited here (they have their own
//! concurrency permits, apart from external clients'); namespace tokens and node credentials
//! are, each with its own budget, so one tenant's flood is answered 429 with `Retry-After`
//! while every other client goes on.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};

use crate::auth::Principal;
use crate::error::ApiError;

/// Per-token budgets.
#[derive(Clone, Debug)]
pub struct FairnessConfig {
    /// Requests per second a namespace token may make (sustained), and its burst.
    pub tenant_qps: u32,
    pub tenant_burst: u32,
    /// The same for a node credential (an agent and an ingress: watches, status writes).
    pub node_qps: u32,
    pub node_burst: u32,
    /// Requests one namespace token may have in flight at once (watches not counted).
    pub tenant_in_flight: usize,
    /// Watches one namespace token may hold open.
    pub tenant_watches: usize,
}

impl Default for FairnessConfig {
    fn default() -> Self {
        Self {
            tenant_qps: 50,
            tenant_burst: 100,
            node_qps: 500,
            node_burst: 1000,
            tenant_in_flight: 32,
            tenant_watches: 64,
        }
    }
}

type Limiter = RateLimiter<
    String,
    governor::state::keyed::HashMapStateStore<String>,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// The limits of one API server.
pub struct Fairness {
    config: FairnessConfig,
    tenants: Limiter,
    nodes: Limiter,
    clock: DefaultClock,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    watches: Arc<Mutex<HashMap<String, usize>>>,
}

fn quota(qps: u32, burst: u32) -> Quota {
    let qps = NonZeroU32::new(qps.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(qps).allow_burst(burst)
}

/// A request (or a watch) counted against its token until dropped.
pub struct Slot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

fn take(counts: &Arc<Mutex<HashMap<String, usize>>>, key: &str, max: usize) -> Option<Slot> {
    let mut map = counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = map.entry(key.to_owned()).or_insert(0);
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(Slot {
        counts: counts.clone(),
        key: key.to_owned(),
    })
}

impl Fairness {
    pub fn new(config: FairnessConfig) -> Self {
        Self {
            tenants: RateLimiter::hashmap(quota(config.tenant_qps, config.tenant_burst)),
            nodes: RateLimiter::hashmap(quota(config.node_qps, config.node_burst)),
            clock: DefaultClock::default(),
            in_flight: Arc::default(),
            watches: Arc::default(),
            config,
        }
    }

    /// Admit one request of `principal` (whose token's digest is `token`); `watch`: it opens
    /// a watch. The slot to hold while it runs, or 429.
    pub fn admit(&self, principal: &Principal, token: &str, watch: bool) -> Result<Option<Slot>, ApiError> {
        let limiter = match principal {
            Principal::Admin => return Ok(None),
            Principal::Namespace { .. } => &self.tenants,
            // Node-side credentials share the nodes' budget.
            Principal::Node { .. } | Principal::Scraper | Principal::PodLogs { .. } => &self.nodes,
        };
        if let Err(not_until) = limiter.check_key(&token.to_owned()) {
            let wait = not_until.wait_time_from(self.clock.now());
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "{} is over its request rate; retry in {} ms",
                    principal.scope(),
                    wait.as_millis().max(1)
                ),
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        if !matches!(principal, Principal::Namespace { .. }) {
            return Ok(None);
        }
        let (counts, max, what) = if watch {
            (&self.watches, self.config.tenant_watches, "watches open")
        } else {
            (
                &self.in_flight,
                self.config.tenant_in_flight,
                "requests in flight",
            )
        };
        take(counts, token, max)
            .map(Some)
            .ok_or_else(|| ApiError::TooManyRequests {
                message: format!(
                    "{} already has {max} {what}; retry when one ends",
                    principal.scope()
                ),
                retry_after_secs: 1,
            })
    }

    /// Forget the rate state of tokens idle long enough to be back at a full burst.
    pub fn shrink(&self) {
        self.tenants.retain_recent();
        self.nodes.retain_recent();
    }

    /// How often [`Fairness::shrink`] is worth calling.
    pub const SHRINK_EVERY: Duration = Duration::from_secs(60);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Principal {
        Principal::Namespace {
            namespace: "a".into(),
            namespace_uid: "u".into(),
        }
    }

    #[test]
    fn a_token_over_its_rate_gets_429_and_others_go_on() {
        let f = Fairness::new(FairnessConfig {
            tenant_qps: 1,
            tenant_burst: 3,
            ..FairnessConfig::default()
        });
        for _ in 0..3 {
            assert!(f.admit(&tenant(), "t1", false).is_ok());
        }
        let e = f.admit(&tenant(), "t1", false).err().expect("over the burst");
        assert_eq!(e.code(), 429);
        assert!(matches!(
            e,
            ApiError::TooManyRequests {
                retry_after_secs: 1..,
                ..
            }
        ));
        assert!(
            f.admit(&tenant(), "t2", false).is_ok(),
            "another token has its own budget"
        );
        assert!(f.admit(&Principal::Admin, "admin", false).is_ok());
    }

    #[test]
    fn requests_in_flight_per_token_are_capped_and_released() {
        let f = Fairness::new(FairnessConfig {
            tenant_in_flight: 2,
            tenant_burst: 100,
            ..FairnessConfig::default()
        });
        let a = f.admit(&tenant(), "t", false).expect("first");
        let _b = f.admit(&tenant(), "t", false).expect("second");
        assert_eq!(f.admit(&tenant(), "t", false).err().map(|e| e.code()), Some(429));
        let _w = f.admit(&tenant(), "t", true).expect("watches are counted apart");
        drop(a);
        assert!(
            f.admit(&tenant(), "t", false).is_ok(),
            "a finished request frees its slot"
        );
    }
}
