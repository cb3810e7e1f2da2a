//! The autoscaler (Knative-KPA style): every tick it reads each node ingress's per-Service
//! counters (`GET <Node.status.agentUrl>/.wisp/stats`, over TLS trusting that node's own CA,
//! `status.agentCa`), keeps the in-flight samples of each
//! Function revision (its Service and Deployment have the revision's name) over a stable
//! window (60 s) and a panic window (6 s), and sets the revision's Deployment to
//! `ceil(average concurrency / targetConcurrency)` replicas within the Function's
//! `[minScale, maxScale]` (`minScale` 0 for a revision that gets no traffic). In panic (the
//! short window wants at least twice the pods there are) it only scales up. A revision with
//! no request for `scaleToZeroAfter` and nothing in flight goes to zero; waking from zero is
//! the activator's (one write at the first request).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio_util::sync::CancellationToken;
use wisp_api::{Deployment, Function, Node, Revision};
use wisp_client::Client;
use wisp_runtime::{Informers, ObjectRef, Store};

/// Default target in-flight requests per pod: wasm pods take many at once.
pub const DEFAULT_TARGET_WASM: u32 = 100;
pub const DEFAULT_TARGET_CONTAINER: u32 = 10;

/// The event of a Function whose revision the autoscaler scaled to zero.
pub const REASON_SCALED_TO_ZERO: &str = "ScaledToZero";
/// The event of a Function whose revision the autoscaler scaled up from zero.
pub const REASON_ACTIVATED: &str = "Activated";

#[derive(Clone, Debug)]
pub struct AutoscalerConfig {
    pub tick: Duration,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// The token shown to the ingresses for `/.wisp/stats`: a credential that can do nothing
    /// else (`wisp up|server` mint one), since each Node names its ingress's URL itself and
    /// a node that lies must not collect a token worth anything. `None`: this client's own
    /// token (tests and benchmarks whose ingress runs in the same process).
    pub stats_token: Option<String>,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            stats_token: None,
        }
    }
}

/// One Service's counters from one ingress's `/.wisp/stats`.
pub use wisp_api::IngressServiceStats as Sample;

/// In-flight samples of one Function and what it decided last.
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<(Instant, f64)>,
    panicking_until: Option<Instant>,
    /// First sample: a Function never requested since is kept up for `scaleToZeroAfter`.
    since: Option<Instant>,
}

impl Window {
    pub fn push(&mut self, at: Instant, concurrency: f64, keep: Duration) {
        self.since.get_or_insert(at);
        self.samples.push_back((at, concurrency));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > keep)
        {
            self.samples.pop_front();
        }
    }

    fn average(&self, now: Instant, window: Duration) -> f64 {
        let recent: Vec<f64> = self
            .samples
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= window)
            .map(|(_, c)| *c)
            .collect();
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        }
    }
}

/// What a Function's scaling policy says, from its window and its last request.
pub struct Inputs {
    pub current: u32,
    pub min: u32,
    pub max: u32,
    pub target: u32,
    /// Time since the last request (None: never requested).
    pub idle_for: Option<Duration>,
    pub in_flight_now: usize,
    pub scale_to_zero_after: Duration,
    /// Whether the revision gets requests (a percent or a tag); one that no longer does goes
    /// to zero once nothing is in flight, without waiting out `scale_to_zero_after`.
    pub routed: bool,
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
pub fn decide(window: &mut Window, now: Instant, config: &AutoscalerConfig, i: &Inputs) -> u32 {
    if !i.routed && i.in_flight_now == 0 {
        return i.min;
    }
    let target = f64::from(i.target.max(1));
    let stable = (window.average(now, config.stable_window) / target).ceil() as u32;
    let panic = (window.average(now, config.panic_window) / target).ceil() as u32;
    let mut desired = stable;
    if i.current > 0 && panic >= i.current.saturating_mul(2) {
        window.panicking_until = Some(now + config.stable_window);
    }
    if window.panicking_until.is_some_and(|t| now < t) {
        // Panic mode: follow the short window up, never down.
        desired = desired.max(panic).max(i.current);
    } else {
        window.panicking_until = None;
    }
    let recently_used = i.in_flight_now > 0 || i.idle_for.is_some_and(|d| d < i.scale_to_zero_after);
    // Up but never called (yet): it gets the same grace from when it was first seen.
    let young = i.current > 0
        && i.idle_for.is_none()
        && window
            .since
            .is_some_and(|t| now.duration_since(t) < i.scale_to_zero_after);
    if recently_used || young {
        desired = desired.max(1);
    }
    desired.clamp(i.min, i.max.max(i.min))
}

async fn scrape(http: &HttpClient, url: &str, token: &str) -> Option<Vec<Sample>> {
    let uri: http::Uri = format!("{}/.wisp/stats", url.trim_end_matches('/'))
        .parse()
        .ok()?;
    // The ingress answers its statistics only to the cluster admin and nodes.
    let req = http::Request::get(uri)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .ok()?;
    let read = async {
        let resp = http.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        // A node's answer is read up to 4 MiB (statistics of ~10,000 Services).
        let body = http_body_util::Limited::new(resp.into_body(), 4 << 20)
            .collect()
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), read).await.ok()?
}

type HttpClient = hyper_util::client::legacy::Client<wisp_client::NodeConnector, Empty<Bytes>>;

/// Average concurrency between two readings of a busy counter (request-µs): its growth over
/// the time passed. `None` without a previous reading or when the counter went back (the
/// ingress restarted): the reading becomes the new baseline.
pub fn rate(previous: Option<(Instant, u64)>, now: Instant, busy_us: u64) -> Option<f64> {
    let (t, b) = previous?;
    if busy_us < b || now <= t {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    Some((busy_us - b) as f64 / now.duration_since(t).as_micros().max(1) as f64)
}

/// The window a Function's traffic summary covers.
pub const METRICS_WINDOW: Duration = Duration::from_secs(60);
/// A Function's summary is written at most this often (and only when it changed).
pub const METRICS_WRITE_PERIOD: Duration = Duration::from_secs(10);
/// Readings of one Service kept this far apart (the newest replaces a closer one).
const READING_SPACING: Duration = Duration::from_secs(5);
/// Summaries written in one tick, at most (the rest in the next ones).
const SUMMARIES_PER_TICK: usize = 20;

/// One reading of one Service's counters on one node.
#[derive(Clone, Debug)]
struct Reading {
    at: Instant,
    requests: u64,
    errors: u64,
    cold_starts: u64,
    in_flight: u64,
    buckets: Vec<u64>,
}

/// A Service's traffic on one node over the window: its growth between the oldest reading in
/// the window and the newest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Growth {
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub in_flight: u64,
    pub buckets: Vec<u64>,
}

/// Adds `reading` to `history`: a counter that went back (the ingress restarted) clears what
/// came before; the newest replaces one taken less than [`READING_SPACING`] after the one
/// before it; the newest reading at least [`METRICS_WINDOW`] old stays as the window's start.
fn keep(history: &mut std::collections::VecDeque<Reading>, reading: Reading, now: Instant) {
    if history.back().is_some_and(|b| {
        reading.requests < b.requests || reading.errors < b.errors || reading.cold_starts < b.cold_starts
    }) {
        history.clear();
    }
    let close = history.len() >= 2
        && history
            .get(history.len() - 2)
            .is_some_and(|p| now.duration_since(p.at) < READING_SPACING);
    if close {
        history.pop_back();
    }
    history.push_back(reading);
    while history.len() > 2
        && history
            .get(1)
            .is_some_and(|r| now.duration_since(r.at) >= METRICS_WINDOW)
    {
        history.pop_front();
    }
}

/// The growth over `history` (oldest first); none when a counter went back (an ingress
/// restarted) between its ends, or with one reading.
fn growth(history: &std::collections::VecDeque<Reading>) -> Option<Growth> {
    let (first, last) = (history.front()?, history.back()?);
    if last.requests < first.requests || last.at <= first.at {
        return None;
    }
    let buckets = last
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(first.buckets.get(i).copied().unwrap_or(0)))
        .collect();
    Some(Growth {
        seconds: last.at.duration_since(first.at).as_secs_f64(),
        requests: last.requests - first.requests,
        errors: last.errors.saturating_sub(first.errors),
        cold_starts: last.cold_starts.saturating_sub(first.cold_starts),
        in_flight: last.in_flight,
        buckets,
    })
}

/// A Function's summary from the growths of its Services on every node.
pub fn summary(growths: &[Growth]) -> wisp_api::FunctionMetrics {
    let mut buckets = vec![0u64; wisp_api::LATENCY_BOUNDS_MS.len() + 1];
    let mut m = wisp_api::FunctionMetrics::default();
    for g in growths {
        for (i, n) in g.buckets.iter().enumerate() {
            if let Some(b) = buckets.get_mut(i) {
                *b = b.saturating_add(*n);
            }
        }
        #[allow(clippy::cast_precision_loss)]
        if g.seconds > 0.0 {
            m.requests_per_second += g.requests as f64 / g.seconds;
            m.errors_per_second += g.errors as f64 / g.seconds;
        }
        m.cold_starts = m.cold_starts.saturating_add(g.cold_starts);
        m.in_flight = m.in_flight.saturating_add(g.in_flight);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        {
            m.window_seconds = m.window_seconds.max(g.seconds.round() as u32);
        }
    }
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    m.requests_per_second = round(m.requests_per_second, 2);
    m.errors_per_second = round(m.errors_per_second, 2);
    m.p50_ms = wisp_api::latency_quantile(&buckets, 0.5).map(|v| round(v, 2));
    m.p99_ms = wisp_api::latency_quantile(&buckets, 0.99).map(|v| round(v, 2));
    m
}

/// What the autoscaler remembers between ticks.
#[derive(Default)]
struct State {
    windows: HashMap<(String, String), Window>,
    /// Readings of each (node, namespace, Service) over the last [`METRICS_WINDOW`].
    history: HashMap<(String, String, String), std::collections::VecDeque<Reading>>,
    /// When each Function's (namespace, name) summary was last written.
    summarized: HashMap<(String, String), Instant>,
    /// Last busy reading per (node, namespace, Service).
    busy: HashMap<(String, String, String), (Instant, u64)>,
    /// A connection pool per node's port (node → its address, its CA, the pool), kept while
    /// the node keeps both.
    agents: HashMap<String, (SocketAddr, String, HttpClient)>,
}

/// One node's port to read: the node, the statistics' URL, the pool that trusts its CA.
type Scrape = (String, String, HttpClient);

impl State {
    /// The nodes' ports to read this tick (checked as everyone checks them,
    /// [`wisp_client::node_port`]), each with the pool that trusts that node's CA only. Never
    /// the API server's address (`api`, when its URL names an IP address), nor an address two
    /// nodes claim (one of them lies); then the second value is true: part of the traffic is
    /// unknown, and nothing may be scaled down on it.
    fn agents(&mut self, nodes: &[std::sync::Arc<Node>], api: Option<SocketAddr>) -> (Vec<Scrape>, bool) {
        let ports: Vec<(String, SocketAddr, String)> = nodes
            .iter()
            .filter_map(|n| match wisp_client::node_port(n) {
                Ok((addr, ca)) if Some(addr) != api => Some((n.metadata.name.clone(), addr, ca.to_owned())),
                Ok(_) => None,
                Err(why) => {
                    tracing::debug!(node = %n.metadata.name, %why, "not reading this node's stats");
                    None
                }
            })
            .collect();
        let mut claims: HashMap<SocketAddr, usize> = HashMap::new();
        for (_, addr, _) in &ports {
            *claims.entry(*addr).or_default() += 1;
        }
        let mut now = HashMap::new();
        let mut shared = false;
        for (name, addr, ca) in ports {
            if claims.get(&addr).copied().unwrap_or(0) > 1 {
                tracing::warn!(node = %name, %addr, "two nodes claim this agent address: reading neither");
                shared = true;
                continue;
            }
            let http = match self.agents.remove(&name) {
                Some((a, known, http)) if a == addr && known == ca => http,
                _ => match wisp_client::node_connector(&ca) {
                    Ok(c) => {
                        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                            .build(c)
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "cannot read this node's stats");
                        continue;
                    }
                },
            };
            now.insert(name, (addr, ca, http));
        }
        self.agents = now;
        let scrapes = self
            .agents
            .iter()
            .map(|(name, (addr, _, http))| (name.clone(), format!("https://{addr}"), http.clone()))
            .collect();
        (scrapes, shared)
    }
}

/// One Service's traffic over every ingress this tick.
#[derive(Default)]
struct Traffic {
    concurrency: f64,
    in_flight: usize,
    last_request_ms: u64,
}

/// Runs the autoscaler until `shutdown`.
pub async fn run(informers: Informers, config: AutoscalerConfig, shutdown: CancellationToken) {
    let caches = Caches {
        functions: informers.store(),
        revisions: informers.store(),
        nodes: informers.store(),
        deployments: informers.store(),
    };
    let client = informers.client().clone();
    wisp_runtime::recording(client.clone(), "autoscaler", "", &shutdown, async |events| {
        let mut state = State::default();
        let mut ticker = tokio::time::interval(config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if !caches.ready() {
                continue;
            }
            if let Err(e) = tick(&client, &caches, &config, &mut state, &events).await {
                tracing::warn!(error = %e, "autoscaler tick failed");
            }
        }
    })
    .await;
}

/// Reads every ingress at once; per Service the summed concurrency (each ingress's own busy
/// growth, so an ingress missing from one tick never counts double in the next). Returns
/// whether any ingress could not be read.
async fn traffic(
    agents: Vec<Scrape>,
    token: &str,
    state: &mut State,
    revisions: &std::collections::HashSet<(String, String)>,
) -> (HashMap<(String, String), Traffic>, bool) {
    let reads = futures::future::join_all(agents.iter().map(|(_, url, http)| scrape(http, url, token))).await;
    let urls: Vec<String> = agents.into_iter().map(|(node, _, _)| node).collect();
    let now = Instant::now();
    let mut out: HashMap<(String, String), Traffic> = HashMap::new();
    let mut failed = false;
    for (url, read) in urls.iter().zip(reads) {
        let Some(samples) = read else {
            tracing::debug!(node = %url, "cannot read the node's stats");
            failed = true;
            continue;
        };
        for s in samples {
            let key = (url.clone(), s.namespace.clone(), s.name.clone());
            let r = rate(state.busy.get(&key).copied(), now, s.busy_us).unwrap_or(0.0);
            // Of a Function's revisions only, their buckets as many as there are bounds.
            if revisions.contains(&(s.namespace.clone(), s.name.clone())) {
                let mut buckets = s.latency_buckets.clone();
                buckets.truncate(wisp_api::LATENCY_BOUNDS_MS.len() + 1);
                let reading = Reading {
                    at: now,
                    requests: s.requests,
                    errors: s.errors,
                    cold_starts: s.cold_starts,
                    in_flight: u64::try_from(s.in_flight).unwrap_or(u64::MAX),
                    buckets,
                };
                keep(state.history.entry(key.clone()).or_default(), reading, now);
            }
            state.busy.insert(key, (now, s.busy_us));
            let t = out.entry((s.namespace, s.name)).or_default();
            t.concurrency += r;
            // Requests held by the activator are in flight already.
            t.in_flight = t.in_flight.saturating_add(s.in_flight);
            t.last_request_ms = t.last_request_ms.max(s.last_request_ms);
        }
    }
    state.busy.retain(|(u, _, _), _| urls.contains(u));
    state.history.retain(|(u, _, _), h| {
        urls.contains(u)
            && h.back()
                .is_some_and(|r| now.duration_since(r.at) < METRICS_WINDOW)
    });
    (out, failed)
}

/// What a tick reads: the process's shared watch caches, never a list per tick.
struct Caches {
    functions: Store<Function>,
    revisions: Store<Revision>,
    nodes: Store<Node>,
    deployments: Store<Deployment>,
}

impl Caches {
    fn ready(&self) -> bool {
        self.functions.ready() && self.revisions.ready() && self.nodes.ready() && self.deployments.ready()
    }
}

async fn tick(
    client: &Client,
    caches: &Caches,
    config: &AutoscalerConfig,
    state: &mut State,
    events: &wisp_runtime::Recorder,
) -> Result<(), wisp_client::ClientError> {
    let revisions = caches.revisions.list();
    if revisions.is_empty() {
        state.windows.clear();
        return Ok(());
    }
    let nodes = caches.nodes.list();
    let (agents, shared) = state.agents(&nodes, wisp_client::url_addr(client.server()));
    let revision_keys: std::collections::HashSet<(String, String)> = revisions
        .iter()
        .map(|r| {
            (
                r.metadata.namespace.clone().unwrap_or_default(),
                r.metadata.name.clone(),
            )
        })
        .collect();
    let (totals, scrape_failed) = traffic(
        agents,
        config.stats_token.as_deref().unwrap_or(client.token()),
        state,
        &revision_keys,
    )
    .await;
    let scrape_failed = scrape_failed || shared;
    let now = Instant::now();
    let now_ms = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
    let mut live = std::collections::HashSet::new();
    for rev in revisions {
        let ns = rev.metadata.namespace.clone().unwrap_or_default();
        let name = rev.metadata.name.clone();
        let Some(f) = rev
            .metadata
            .labels
            .get(crate::function::FUNCTION_LABEL)
            .and_then(|f| {
                caches
                    .functions
                    .get(&ObjectRef::new(f.as_str()).within(ns.clone()))
            })
        else {
            continue;
        };
        let key = (ns.clone(), name.clone());
        live.insert(key.clone());
        let t = totals.get(&key);
        let in_flight = t.map_or(0, |t| t.in_flight);
        #[allow(clippy::cast_precision_loss)]
        let concurrency = t.map_or(0.0, |t| t.concurrency).max(in_flight as f64);
        // The last request as the ingresses saw it, else as recorded on the revision (an
        // ingress that restarted or could not be read does not make it look idle).
        let recorded = rev
            .status
            .as_ref()
            .and_then(|s| s.last_request_time.as_deref())
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .and_then(|t| u64::try_from(t.as_millisecond()).ok())
            .unwrap_or(0);
        let seen = t.map_or(0, |t| t.last_request_ms);
        let last_request_ms = seen.max(recorded);
        let window = state.windows.entry(key).or_default();
        window.push(now, concurrency, config.stable_window);
        let deployments = client.api::<Deployment>(Some(&ns));
        // From the cache: a scale written on a stale copy fails its CAS (409) and the next
        // tick decides again on a fresher one.
        let Some(d) = caches
            .deployments
            .get(&ObjectRef::new(name.clone()).within(ns.clone()))
        else {
            continue;
        };
        let mut d = (*d).clone();
        let wasm = rev.spec.template.spec.containers.iter().all(|c| c.wasm.is_some());
        // The bounds the Function controller gave the revision (its share of the Function's);
        // a revision it has not written yet is the new one, coming up on the Function's own.
        let (is_routed, min, max) = match rev.status.as_ref().filter(|s| s.max_scale > 0) {
            Some(s) => (s.routed, s.min_scale, s.max_scale),
            None => (true, f.spec.scaling.min_scale, f.spec.scaling.max_scale),
        };
        let inputs = Inputs {
            current: u32::try_from(d.spec.replicas.max(0)).unwrap_or(0),
            min,
            max,
            target: f.spec.scaling.target_concurrency.unwrap_or(if wasm {
                DEFAULT_TARGET_WASM
            } else {
                DEFAULT_TARGET_CONTAINER
            }),
            idle_for: (last_request_ms > 0)
                .then(|| Duration::from_millis(now_ms.saturating_sub(last_request_ms))),
            in_flight_now: in_flight,
            scale_to_zero_after: f.spec.scaling.scale_to_zero_after_duration(),
            routed: is_routed,
        };
        let mut desired = decide(window, now, config, &inputs);
        if scrape_failed {
            // Part of the traffic is unknown this tick: never scale down on it.
            desired = desired.max(inputs.current);
        }
        if desired != inputs.current {
            tracing::info!(function = %f.metadata.name, revision = %name, namespace = %ns, from = inputs.current,
                to = desired, in_flight, concurrency, "scaling");
            d.spec.replicas = i32::try_from(desired).unwrap_or(i32::MAX);
            if inputs.current == 0 || desired == 0 {
                // Woken here, not by a traced request, or back to zero: no earlier start's
                // trace goes on.
                d.metadata.annotations.remove(wisp_api::TRACEPARENT_ANNOTATION);
            }
            match deployments.replace(&d).await {
                Ok(_) if desired == 0 => events.normal(
                    wisp_api::ObjectReference::to(f.as_ref()),
                    REASON_SCALED_TO_ZERO,
                    format!(
                        "revision {name} scaled from {} to zero after {} s without requests",
                        inputs.current,
                        inputs.idle_for.unwrap_or_default().as_secs()
                    ),
                ),
                Ok(_) if inputs.current == 0 => events.normal(
                    wisp_api::ObjectReference::to(f.as_ref()),
                    REASON_ACTIVATED,
                    format!("revision {name} scaled from zero to {desired} ({in_flight} requests in flight)"),
                ),
                Ok(_) => {}
                Err(e) if e.code() == Some(409) => {}
                Err(e) => {
                    tracing::warn!(revision = %name, namespace = %ns, error = %e, "cannot scale");
                }
            }
        }
        if seen > recorded {
            let stamp = jiff::Timestamp::from_millisecond(i64::try_from(seen).unwrap_or(0))
                .map(|t| t.to_string())
                .ok();
            let mut next = (*rev).clone();
            next.status.get_or_insert_with(Default::default).last_request_time = stamp;
            let _ = client.api::<Revision>(Some(&ns)).replace_status(&next).await;
        }
    }
    state.windows.retain(|k, _| live.contains(k));
    summarize(client, caches, state).await;
    Ok(())
}

/// Writes each Function's traffic over the last minute into its status (at most every
/// [`METRICS_WRITE_PERIOD`], only when it changed; a compare-and-swap on the cached copy, so
/// a write of the Function controller in between wins and the next tick tries again).
async fn summarize(client: &Client, caches: &Caches, state: &mut State) {
    let now = Instant::now();
    // Each Function's revisions, once per tick.
    let mut revisions: HashMap<(String, String), std::collections::HashSet<String>> = HashMap::new();
    for r in caches.revisions.list() {
        if let (Some(ns), Some(f)) = (
            r.metadata.namespace.clone(),
            r.metadata.labels.get(crate::function::FUNCTION_LABEL),
        ) {
            revisions
                .entry((ns, f.clone()))
                .or_default()
                .insert(r.metadata.name.clone());
        }
    }
    let mut growths: HashMap<(String, String), Vec<Growth>> = HashMap::new();
    for ((_, ns, svc), h) in &state.history {
        if let Some(g) = growth(h) {
            growths.entry((ns.clone(), svc.clone())).or_default().push(g);
        }
    }
    let mut written = 0;
    for f in caches.functions.list() {
        if written >= SUMMARIES_PER_TICK {
            break;
        }
        let ns = f.metadata.namespace.clone().unwrap_or_default();
        let key = (ns.clone(), f.metadata.name.clone());
        if state
            .summarized
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < METRICS_WRITE_PERIOD)
        {
            continue;
        }
        let of_function: Vec<Growth> = revisions
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|rev| growths.get(&(ns.clone(), rev.clone())))
            .flatten()
            .cloned()
            .collect();
        // No reading in the window (no ingress reports it): no figures, rather than old ones.
        let metrics = (!of_function.is_empty()).then(|| summary(&of_function));
        let current = f.status.as_ref().and_then(|s| s.metrics.clone());
        if current == metrics {
            continue;
        }
        let mut next = (*f).clone();
        next.status.get_or_insert_with(Default::default).metrics = metrics;
        written += 1;
        // Written or not, the Function waits its period: a failing write is not retried
        // every tick.
        state.summarized.insert(key, now);
        match client.api::<Function>(Some(&ns)).replace_status(&next).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(404 | 409)) => {}
            Err(e) => {
                tracing::debug!(function = %f.metadata.name, error = %e, "cannot write the traffic summary");
            }
        }
    }
    state
        .summarized
        .retain(|_, t| now.duration_since(*t) < METRICS_WINDOW * 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nodes write decides where the autoscaler shows its credential: a node's port
    /// only, never the API server's address, never an address two nodes claim (which marks
    /// the tick's traffic as partly unknown); a node's pool lives while its CA does.
    #[tokio::test]
    async fn it_reads_each_nodes_port_once_and_never_a_shared_or_the_api_address() {
        let node = |name: &str, port: u16, ca: &str| {
            let mut n = <Node as wisp_api::Resource>::new(wisp_api::ObjectMeta::named(name));
            n.status = Some(wisp_api::NodeStatus {
                addresses: vec![wisp_api::NodeAddress {
                    type_: "InternalIP".into(),
                    address: "127.0.0.1".into(),
                }],
                agent_url: Some(format!("https://127.0.0.1:{port}")),
                agent_ca: Some(ca.to_owned()),
                ..wisp_api::NodeStatus::default()
            });
            std::sync::Arc::new(n)
        };
        let ca = || {
            wisp_tls::Ca::create_named(wisp_tls::NODE_CA)
                .expect("ca")
                .cert_pem()
                .to_owned()
        };
        let (a, b) = (ca(), ca());
        let mut state = State::default();
        let api = Some(SocketAddr::from(([127, 0, 0, 1], 7700)));
        let nodes = [node("a", 9001, &a), node("b", 9002, &b), node("api", 7700, &a)];
        let (scrapes, shared) = state.agents(&nodes, api);
        let mut read: Vec<(String, String)> =
            scrapes.iter().map(|(n, u, _)| (n.clone(), u.clone())).collect();
        read.sort();
        assert_eq!(
            read,
            [
                ("a".to_owned(), "https://127.0.0.1:9001".to_owned()),
                ("b".to_owned(), "https://127.0.0.1:9002".to_owned())
            ],
            "not the API server's address"
        );
        assert!(!shared);
        // A liar copies b's address and CA: neither is read, and the tick knows it.
        let liar = node("liar", 9002, &b);
        let (scrapes, shared) = state.agents(&[node("a", 9001, &a), node("b", 9002, &b), liar], api);
        assert_eq!(scrapes.len(), 1);
        assert!(shared, "part of the traffic is unknown");
        // A node that restarts with a new CA: a pool trusting the new one.
        let c = ca();
        state.agents(&[node("a", 9001, &a)], api);
        state.agents(&[node("a", 9001, &c)], api);
        assert_eq!(
            state.agents.get("a").map(|(_, ca, _)| ca.as_str()),
            Some(c.as_str())
        );
    }

    fn inputs(current: u32) -> Inputs {
        Inputs {
            current,
            min: 0,
            max: 10,
            target: 10,
            idle_for: Some(Duration::from_secs(1)),
            in_flight_now: 0,
            scale_to_zero_after: Duration::from_secs(30),
            routed: true,
        }
    }

    #[test]
    fn concurrency_is_the_rate_of_busy_time_and_restarts_rebaseline() {
        let t0 = Instant::now();
        assert_eq!(rate(None, t0, 5_000_000), None, "first reading: a baseline");
        // 2.5 s of request time in 1 s: 2.5 requests in flight on average.
        let r = rate(Some((t0, 1_000_000)), t0 + Duration::from_secs(1), 3_500_000);
        assert!(r.is_some_and(|r| (r - 2.5).abs() < 1e-9), "{r:?}");
        assert_eq!(
            rate(Some((t0, 9_000_000)), t0 + Duration::from_secs(1), 10),
            None,
            "the ingress restarted: no spike"
        );
    }

    #[test]
    fn desired_is_average_concurrency_over_target() {
        let c = AutoscalerConfig::default();
        let mut w = Window::default();
        let t0 = Instant::now();
        for s in 0..10 {
            w.push(t0 + Duration::from_secs(s), 35.0, c.stable_window);
        }
        assert_eq!(decide(&mut w, t0 + Duration::from_secs(9), &c, &inputs(4)), 4);
        let mut i = inputs(4);
        i.max = 3;
        assert_eq!(
            decide(&mut w, t0 + Duration::from_secs(9), &c, &i),
            3,
            "clamped to max"
        );
    }

    #[test]
    fn a_burst_panics_up_and_never_down_while_panicking() {
        let c = AutoscalerConfig::default();
        let mut w = Window::default();
        let t0 = Instant::now();
        for s in 0..54 {
            w.push(t0 + Duration::from_secs(s), 10.0, c.stable_window);
        }
        for s in 54..60 {
            w.push(t0 + Duration::from_secs(s), 80.0, c.stable_window);
        }
        let now = t0 + Duration::from_secs(59);
        // Stable average (54·10 + 6·80)/60 = 17 → 2 pods; the panic window (the samples of
        // seconds 53..=59) averages (10 + 6·80)/7 = 70 → 7 pods ≥ 2 × 1: panic.
        assert_eq!(decide(&mut w, now, &c, &inputs(1)), 7);
        // Load drops: still panicking, so no scale-down below the current 7.
        w.push(now + Duration::from_secs(1), 0.0, c.stable_window);
        assert_eq!(decide(&mut w, now + Duration::from_secs(1), &c, &inputs(7)), 7);
        // A stable window later, panic is over and the stable average decides.
        for s in 61..130 {
            w.push(t0 + Duration::from_secs(s), 0.0, c.stable_window);
        }
        assert_eq!(
            decide(&mut w, t0 + Duration::from_secs(129), &c, &inputs(7)),
            1,
            "kept by the recent request"
        );
    }

    /// A revision that lost its traffic goes to zero once nothing is in flight (its requests
    /// went to the new one), not after `scaleToZeroAfter`.
    #[test]
    fn a_revision_without_traffic_goes_to_zero_once_idle() {
        let c = AutoscalerConfig::default();
        let mut w = Window::default();
        let now = Instant::now();
        let mut i = inputs(3);
        i.routed = false;
        assert_eq!(decide(&mut w, now, &c, &i), 0);
        i.in_flight_now = 2;
        assert!(
            decide(&mut w, now, &c, &i) >= 1,
            "requests in flight finish first"
        );
    }

    #[test]
    fn idle_past_scale_to_zero_after_goes_to_zero_but_not_before() {
        let c = AutoscalerConfig::default();
        let mut w = Window::default();
        let t0 = Instant::now();
        w.push(t0, 0.0, c.stable_window);
        let mut i = inputs(1);
        i.idle_for = Some(Duration::from_secs(10));
        assert_eq!(decide(&mut w, t0, &c, &i), 1, "requested 10 s ago: kept");
        i.idle_for = Some(Duration::from_secs(31));
        assert_eq!(
            decide(&mut w, t0, &c, &i),
            0,
            "idle for longer than scaleToZeroAfter"
        );
        i.in_flight_now = 1;
        assert_eq!(decide(&mut w, t0, &c, &i), 1, "never with a request in flight");
        i.in_flight_now = 0;
        i.min = 2;
        assert_eq!(decide(&mut w, t0, &c, &i), 2, "minScale wins");
    }
}

#[cfg(test)]
mod metrics_tests {
    use std::collections::VecDeque;

    use super::*;

    fn reading(at: Instant, requests: u64, errors: u64, bucket: usize) -> Reading {
        let mut buckets = vec![0; wisp_api::LATENCY_BOUNDS_MS.len() + 1];
        buckets[bucket] = requests;
        Reading {
            at,
            requests,
            errors,
            cold_starts: requests / 100,
            in_flight: 2,
            buckets,
        }
    }

    #[test]
    fn a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing() {
        let t = Instant::now();
        // Node a: 600 requests in (2, 5] ms over 60 s; node b: 300 in (5, 10] over 30 s.
        let a: VecDeque<Reading> = [
            reading(t, 0, 0, 4),
            reading(t + Duration::from_secs(60), 600, 6, 4),
        ]
        .into();
        let b: VecDeque<Reading> = [
            reading(t, 0, 0, 5),
            reading(t + Duration::from_secs(30), 300, 0, 5),
        ]
        .into();
        let growths: Vec<Growth> = [&a, &b].into_iter().filter_map(growth).collect();
        assert_eq!(growths.len(), 2);
        let m = summary(&growths);
        assert_eq!(m.requests_per_second, 20.0, "10/s on each node");
        assert_eq!(m.errors_per_second, 0.1);
        assert_eq!(m.window_seconds, 60);
        assert_eq!(m.in_flight, 4);
        assert_eq!(m.cold_starts, 9);
        // 600 of 900 within 5 ms: the median in (2, 5], p99 in (5, 10].
        let (p50, p99) = (m.p50_ms.expect("p50"), m.p99_ms.expect("p99"));
        assert!(p50 > 2.0 && p50 <= 5.0, "{p50}");
        assert!(p99 > 5.0 && p99 <= 10.0, "{p99}");
        // An ingress that restarted (its counters went back): no growth, not a negative one.
        let restarted: VecDeque<Reading> = [
            reading(t, 500, 0, 4),
            reading(t + Duration::from_secs(5), 3, 0, 4),
        ]
        .into();
        assert_eq!(growth(&restarted), None);
        assert_eq!(
            growth(&[reading(t, 1, 0, 0)].into()),
            None,
            "one reading is no window"
        );
        let idle = summary(&[]);
        assert_eq!((idle.requests_per_second, idle.p50_ms), (0.0, None));
    }

    #[test]
    fn readings_are_spaced_kept_for_a_window_and_forgotten_at_a_restart() {
        let t = Instant::now();
        let mut h = VecDeque::new();
        // One a second for two minutes: a reading every 5 s or so, the last one always.
        for s in 0..=120u64 {
            let at = t + Duration::from_secs(s);
            keep(&mut h, reading(at, s * 10, 0, 4), at);
        }
        assert!(h.len() <= 16, "{} readings kept", h.len());
        let g = growth(&h).expect("growth");
        assert!(
            (60.0..=66.0).contains(&g.seconds),
            "a window of about a minute: {}",
            g.seconds
        );
        assert_eq!(g.requests, (g.seconds as u64) * 10);
        assert_eq!(h.back().map(|r| r.requests), Some(1200), "the newest is kept");
        // The ingress restarted: its counters start again, the earlier readings are dropped.
        let at = t + Duration::from_secs(121);
        keep(&mut h, reading(at, 3, 0, 4), at);
        assert_eq!(h.len(), 1);
        assert_eq!(growth(&h), None);
    }
}
