//! The route table: Routes (host + path prefix → weighted Services) resolved against the
//! Services' ready endpoints. Built from watch caches off the hot path and swapped in whole;
//! a request reads one snapshot without locks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use wisp_sandbox::SandboxId;

/// Where one ready pod of a Service is reached.
#[derive(Debug)]
pub struct Backend {
    pub pod_uid: String,
    pub pod: String,
    pub node: Option<String>,
    pub target: Target,
    /// Requests in flight to this backend (least-outstanding balancing).
    pub outstanding: AtomicUsize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A wasm sandbox on this node, called in process.
    Local(SandboxId),
    /// A port this node published for one of its pods' containers (on loopback).
    Addr(SocketAddr),
    /// Another node's port (its agent), which hands the request to that node's ingress.
    Node(Arc<Peer>),
}

/// Another node as this ingress forwards to it: its agent's URL, over TLS trusting that
/// node's own CA only (`Node.status.agentCa`), on a connection pool of its own.
pub struct Peer {
    pub url: String,
    pub ca: String,
    pub(crate) http: hyper_util::client::legacy::Client<wisp_client::NodeConnector, crate::proxy::Body>,
}

impl Peer {
    /// A peer at `url` whose certificate chains to `ca` (PEM).
    pub fn new(url: &str, ca: &str) -> Result<Self, wisp_client::ClientError> {
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(wisp_client::node_connector(ca)?);
        Ok(Self {
            url: url.to_owned(),
            ca: ca.to_owned(),
            http,
        })
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.ca == other.ca
    }
}

impl Eq for Peer {}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A Service as the ingress sees it: its ready backends (swapped on every change) and its
/// traffic counters, which outlive table rebuilds.
#[derive(Debug)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    pub backends: ArcSwap<Vec<Arc<Backend>>>,
    /// Ready backend count, for requests waiting on a cold start.
    pub ready: tokio::sync::watch::Sender<usize>,
    pub in_flight: AtomicUsize,
    /// The integral of in-flight requests over time (its rate is the average concurrency),
    /// kept current on every change so a long request counts while it runs.
    busy: std::sync::Mutex<Busy>,
    pub requests: AtomicU64,
    /// Unix milliseconds of the last request (0: never).
    pub last_request_ms: AtomicU64,
    /// Requests held by the activator now.
    pub queued: AtomicUsize,
    pub cold_starts: AtomicU64,
    /// Unix ms when a request last woke the Service (0: not waking), so a burst activates
    /// it once.
    pub activated_ms: AtomicU64,
    /// Answers of status 500 and above.
    pub errors: AtomicU64,
    /// Requests per latency bucket (`wisp_api::LATENCY_BOUNDS_MS`, then one above them all).
    pub latency: [AtomicU64; wisp_api::LATENCY_BOUNDS_MS.len() + 1],
}

impl ServiceState {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            backends: ArcSwap::from_pointee(Vec::new()),
            ready: tokio::sync::watch::Sender::new(0),
            in_flight: AtomicUsize::new(0),
            busy: std::sync::Mutex::new(Busy {
                area_us: 0,
                in_flight: 0,
                since: std::time::Instant::now(),
            }),
            requests: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            cold_starts: AtomicU64::new(0),
            activated_ms: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one answer: its latency bucket, and whether it was an error (5xx).
    pub fn answered(&self, latency: std::time::Duration, status: u16) {
        let bucket = wisp_api::latency_bucket(latency.as_secs_f64() * 1000.0);
        if let Some(b) = self.latency.get(bucket) {
            b.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if status >= 500 {
            self.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A request enters (`+1`) or leaves (`-1`): the busy integral is brought up to now first.
    pub fn busy_change(&self, delta: isize) {
        let mut b = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        b.advance();
        b.in_flight = b.in_flight.saturating_add_signed(delta);
    }

    /// Request-µs spent in flight so far (in-flight requests counted up to now).
    pub fn busy_us(&self) -> u64 {
        let mut b = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        b.advance();
        u64::try_from(b.area_us).unwrap_or(u64::MAX)
    }

    /// Replaces the backends, keeping the counters of those that stay.
    pub fn set_backends(&self, next: Vec<Arc<Backend>>) {
        let n = next.len();
        self.backends.store(Arc::new(next));
        // Every change wakes held requests (a stopping backend may have been replaced).
        self.ready.send_replace(n);
    }

    pub fn backend_count(&self) -> usize {
        self.backends.load().len()
    }

    /// The backend with fewer requests in flight of two picked at random (power of two
    /// choices), or `None` without backends.
    pub fn pick(&self, local_only: bool, usable: impl Fn(&Backend) -> bool) -> Option<Arc<Backend>> {
        let all = self.backends.load();
        let candidates: Vec<&Arc<Backend>> = all
            .iter()
            .filter(|b| (!local_only || !matches!(b.target, Target::Node(_))) && usable(b))
            .collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let a = random_below(n);
                let mut b = random_below(n - 1);
                if b >= a {
                    b += 1;
                }
                let (x, y) = (candidates[a], candidates[b]);
                let pick = if y.outstanding.load(Ordering::Relaxed) < x.outstanding.load(Ordering::Relaxed) {
                    y
                } else {
                    x
                };
                Some(pick.clone())
            }
        }
    }
}

#[derive(Debug)]
struct Busy {
    area_us: u128,
    in_flight: usize,
    since: std::time::Instant,
}

impl Busy {
    fn advance(&mut self) {
        let now = std::time::Instant::now();
        self.area_us += now.duration_since(self.since).as_micros() * self.in_flight as u128;
        self.since = now;
    }
}

/// A cheap per-thread xorshift: balancing needs spread, not cryptographic randomness.
fn random_below(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9_7f4a_7c15, |d| (u64::from(d.subsec_nanos()) << 32) | 1),
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        usize::try_from(x % (n as u64)).unwrap_or(0)
    })
}

/// One Route: where it matches and the Services it splits traffic over.
#[derive(Debug)]
pub struct RouteEntry {
    pub namespace: String,
    pub name: String,
    /// `None` matches any host; `*.example.com` matches one or more labels before it.
    pub host: Option<String>,
    pub prefix: String,
    pub backends: Vec<(Arc<ServiceState>, u32)>,
    pub timeout: Option<Duration>,
    /// Matched only for requests through the node's Service gateway (`<svc>.<ns>.svc`).
    pub gateway_only: bool,
    /// When the Route was created (RFC 3339): of the namespaces claiming one host, the
    /// first to claim it keeps it.
    pub created: String,
}

impl RouteEntry {
    fn host_matches(&self, host: &str) -> bool {
        match &self.host {
            None => true,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
                None => h.eq_ignore_ascii_case(host),
            },
        }
    }

    fn prefix_matches(&self, path: &str) -> bool {
        let p = self.prefix.trim_end_matches('/');
        p.is_empty() || path == p || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
    }

    /// A Service by weight (a random draw over the weights).
    pub fn pick_service(&self) -> Option<&Arc<ServiceState>> {
        let total: u64 = self.backends.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return self.backends.first().map(|(s, _)| s);
        }
        let mut draw = random_below(usize::try_from(total).unwrap_or(usize::MAX)) as u64;
        for (s, w) in &self.backends {
            if draw < u64::from(*w) {
                return Some(s);
            }
            draw -= u64::from(*w);
        }
        self.backends.last().map(|(s, _)| s)
    }
}

/// Every Route, most specific first: exact hosts before wildcards before any host, then the
/// longest path prefix.
#[derive(Debug, Default)]
pub struct Table {
    routes: Vec<RouteEntry>,
}

fn specificity(r: &RouteEntry) -> (u8, usize) {
    let host = match &r.host {
        Some(h) if h.starts_with("*.") => 1,
        Some(_) => 2,
        None => 0,
    };
    (host, r.prefix.trim_end_matches('/').len())
}

impl Table {
    pub fn new(routes: Vec<RouteEntry>) -> Self {
        // A host belongs to one namespace: the one whose Route claimed it first (admission
        // already refuses a second claim; this holds whatever the store says). Another
        // namespace's Route for the same host, even with a longer path prefix, is left out.
        let mut owner: std::collections::HashMap<String, (&str, &str)> = std::collections::HashMap::new();
        for r in routes.iter().filter(|r| !r.gateway_only) {
            let Some(h) = &r.host else { continue };
            let claim = (r.created.as_str(), r.namespace.as_str());
            owner
                .entry(h.to_ascii_lowercase())
                .and_modify(|o| {
                    if claim < *o {
                        *o = claim;
                    }
                })
                .or_insert(claim);
        }
        let owner: std::collections::HashMap<String, String> =
            owner.into_iter().map(|(h, (_, ns))| (h, ns.to_owned())).collect();
        let mut routes: Vec<RouteEntry> = routes
            .into_iter()
            .filter(|r| {
                if r.gateway_only {
                    return true;
                }
                match &r.host {
                    Some(h) => owner.get(&h.to_ascii_lowercase()) == Some(&r.namespace),
                    // A Route without a host is refused at admission; one that predates that
                    // rule matches nothing rather than every host.
                    None => false,
                }
            })
            .collect();
        // Equal claims resolve the same way on every node and every rebuild.
        routes.sort_by(|a, b| {
            specificity(b)
                .cmp(&specificity(a))
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        });
        Self { routes }
    }

    /// The Route for `host` (without port) and `path`: through the gateway only the Services'
    /// own names (gateway-only routes), elsewhere only the others — so no Route, whatever its
    /// host, answers a guest's call to a Service.
    pub fn lookup(&self, host: &str, path: &str, gateway: bool) -> Option<&RouteEntry> {
        self.routes
            .iter()
            .find(|r| r.gateway_only == gateway && r.host_matches(host) && r.prefix_matches(path))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The Services the ingress knows, kept across rebuilds so their counters survive.
#[derive(Default)]
pub struct Services(std::sync::Mutex<HashMap<(String, String), Arc<ServiceState>>>);

impl Services {
    pub fn get_or_create(&self, namespace: &str, name: &str) -> Arc<ServiceState> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((namespace.to_owned(), name.to_owned()))
            .or_insert_with(|| Arc::new(ServiceState::new(namespace, name)))
            .clone()
    }

    /// Forgets a Service (its counters too).
    pub fn remove(&self, namespace: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    pub fn all(&self) -> Vec<Arc<ServiceState>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, prefix: &str) -> RouteEntry {
        RouteEntry {
            namespace: "default".into(),
            name: name.into(),
            host: host.map(Into::into),
            prefix: prefix.into(),
            backends: vec![(Arc::new(ServiceState::new("default", name)), 100)],
            timeout: None,
            gateway_only: false,
            created: String::new(),
        }
    }

    #[test]
    fn a_host_belongs_to_the_namespace_that_claimed_it_first() {
        let mut victim = route("hello", Some("hello.team-a.localhost"), "/");
        victim.namespace = "team-a".into();
        victim.created = "2026-12-01T00:00:00Z".into();
        let mut thief = route("thief", Some("HELLO.team-a.localhost"), "/api");
        thief.namespace = "team-b".into();
        thief.created = "2026-12-02T00:00:00Z".into();
        let mut own = route("own", Some("hello.team-a.localhost"), "/v2");
        own.namespace = "team-a".into();
        own.created = "2026-12-03T00:00:00Z".into();
        let t = Table::new(vec![thief, victim, own]);
        let name = |p: &str| {
            t.lookup("hello.team-a.localhost", p, false)
                .map(|r| r.name.clone())
        };
        assert_eq!(
            name("/api/x").as_deref(),
            Some("hello"),
            "a longer prefix of another namespace does not shadow"
        );
        assert_eq!(
            name("/v2/x").as_deref(),
            Some("own"),
            "the owner's own longer prefix does"
        );
        assert!(
            Table::new(vec![route("any", None, "/")])
                .lookup("x.example.com", "/", false)
                .is_none()
        );
    }

    #[test]
    fn exact_host_then_wildcard_then_any_and_longest_prefix() {
        let t = Table::new(vec![
            route("any", Some("example.com"), "/"),
            route("api", Some("api.example.com"), "/"),
            route("api-v2", Some("api.example.com"), "/v2"),
            route("wild", Some("*.example.com"), "/"),
        ]);
        let name = |h: &str, p: &str| t.lookup(h, p, false).map(|r| r.name.clone());
        assert_eq!(name("api.example.com", "/v2/users").as_deref(), Some("api-v2"));
        assert_eq!(name("api.example.com", "/v2").as_deref(), Some("api-v2"));
        assert_eq!(
            name("api.example.com", "/v20").as_deref(),
            Some("api"),
            "prefixes match whole segments"
        );
        assert_eq!(name("www.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(
            name("example.com", "/").as_deref(),
            Some("any"),
            "a wildcard needs a label"
        );
        assert!(name("other.org", "/").is_none());
        assert_eq!(name("API.EXAMPLE.COM", "/").as_deref(), Some("api"));
    }

    #[test]
    fn no_route_without_a_match() {
        let t = Table::new(vec![route("api", Some("api.example.com"), "/v1")]);
        assert!(t.lookup("api.example.com", "/v2", false).is_none());
        assert!(t.lookup("other.com", "/v1", false).is_none());
        // A Service name answers only through the gateway.
        let mut svc = route("svc", Some("web.default.svc"), "");
        svc.gateway_only = true;
        // And a Route (refused at admission; held here whatever the store says) never
        // answers through the gateway, even with a longer prefix or for any host.
        let mut longer = route("hijack", Some("web.default.svc"), "/api");
        longer.namespace = "other".into();
        let t = Table::new(vec![svc, longer, route("any", None, "/")]);
        assert!(t.lookup("web.default.svc", "/", false).is_none());
        assert_eq!(
            t.lookup("web.default.svc", "/", true).map(|r| r.name.as_str()),
            Some("svc")
        );
        assert_eq!(
            t.lookup("web.default.svc", "/api/x", true)
                .map(|r| r.name.as_str()),
            Some("svc")
        );
        assert!(t.lookup("other.default.svc", "/", true).is_none(), "no catch-all");
    }

    fn backend(uid: &str, outstanding: usize) -> Arc<Backend> {
        Arc::new(Backend {
            pod_uid: uid.into(),
            pod: uid.into(),
            node: None,
            target: Target::Local(SandboxId::new(uid, "main")),
            outstanding: AtomicUsize::new(outstanding),
        })
    }

    #[test]
    fn two_choices_prefer_the_less_loaded_backend() {
        let s = ServiceState::new("default", "s");
        assert!(s.pick(false, |_| true).is_none());
        s.set_backends(vec![backend("busy", 100), backend("idle", 0)]);
        assert_eq!(*s.ready.borrow(), 2);
        for _ in 0..50 {
            assert_eq!(
                s.pick(false, |_| true).map(|b| b.pod_uid.clone()).as_deref(),
                Some("idle")
            );
        }
        // With many backends every one is chosen sometimes.
        let many: Vec<_> = (0..8).map(|i| backend(&format!("b{i}"), 0)).collect();
        s.set_backends(many);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            if let Some(b) = s.pick(false, |_| true) {
                seen.insert(b.pod_uid.clone());
            }
        }
        assert_eq!(seen.len(), 8);
    }

    #[test]
    fn busy_time_counts_running_requests_as_they_run() {
        let s = ServiceState::new("default", "s");
        s.busy_change(1);
        s.busy_change(1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mid = s.busy_us();
        assert!(mid >= 40_000, "two requests for 20 ms: {mid} µs");
        s.busy_change(-1);
        s.busy_change(-1);
        let end = s.busy_us();
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(s.busy_us(), end, "nothing in flight: no more busy time");
    }

    #[test]
    fn weights_split_traffic() {
        let a = Arc::new(ServiceState::new("default", "a"));
        let b = Arc::new(ServiceState::new("default", "b"));
        let r = RouteEntry {
            namespace: "default".into(),
            name: "canary".into(),
            host: None,
            prefix: "/".into(),
            backends: vec![(a, 90), (b, 10)],
            timeout: None,
            gateway_only: false,
            created: String::new(),
        };
        let mut to_b = 0;
        for _ in 0..10_000 {
            if r.pick_service().is_some_and(|s| s.name == "b") {
                to_b += 1;
            }
        }
        assert!((600..1400).contains(&to_b), "about 10% to b, got {to_b}");
    }
}
