//! What one `Store` holds: the WASI and WASI-HTTP contexts built from a sandbox's prepared
//! template (exactly its env, args and preopens — nothing ambient), a memory limiter summed
//! over all of the instance's memories, and the outbound-HTTP allow list.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};
use wisp_sandbox::{LogStream, SandboxError, SandboxSpec};

use crate::logs::{LineSink, LogBuffer};

/// Most elements any one table may hold (bounds `funcref` tables a guest grows).
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Most host resources (streams, requests, fields…) one store may hold at once.
const MAX_RESOURCES: usize = 100_000;

/// Everything needed to build a fresh [`Host`] for one store, prepared once per sandbox.
pub(crate) struct CtxTemplate {
    env: Vec<(String, String)>,
    args: Vec<String>,
    preopens: Vec<(std::path::PathBuf, String, FsPerms)>,
    stdout: LineSink,
    stderr: LineSink,
    memory_bytes: Option<usize>,
    outbound: Arc<[String]>,
    /// Where calls to cluster Services (`<service>.<namespace>.svc`) go: the node's ingress.
    pub(crate) gateway: Option<std::net::SocketAddr>,
    /// Where other outbound calls may connect (checked on the resolved address).
    pub(crate) egress: Arc<wisp_sandbox::EgressPolicy>,
    namespace: Option<Arc<str>>,
    /// What the sandbox's instances use together (every store's limiter counts into it).
    pub(crate) usage: Arc<Counters>,
}

/// A sandbox's usage, kept current by its instances: CPU time of the polls that ran guest
/// code, and the linear memory of every live store.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cpu_ns: std::sync::atomic::AtomicU64,
    pub(crate) memory_bytes: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub(crate) fn usage(&self) -> wisp_sandbox::Usage {
        wisp_sandbox::Usage {
            cpu_ns: self.cpu_ns.load(std::sync::atomic::Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl CtxTemplate {
    pub(crate) fn new(spec: &SandboxSpec, program: &str, logs: &Arc<LogBuffer>) -> Self {
        let mut args = Vec::with_capacity(spec.command.len() + spec.args.len() + 1);
        args.push(program.to_owned());
        args.extend(spec.command.iter().chain(&spec.args).cloned());
        Self {
            env: spec.env.clone(),
            args,
            preopens: spec
                .mounts
                .iter()
                .map(|m| {
                    let perms = if m.read_only {
                        FsPerms::ReadOnly
                    } else {
                        FsPerms::ReadWrite
                    };
                    (m.host_path.clone(), m.guest_path.clone(), perms)
                })
                .collect(),
            stdout: LineSink::new(logs.clone(), LogStream::Stdout),
            stderr: LineSink::new(logs.clone(), LogStream::Stderr),
            memory_bytes: spec
                .limits
                .memory_bytes
                .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
            outbound: spec.allowed_outbound_hosts.iter().cloned().collect(),
            gateway: None,
            egress: Arc::default(),
            namespace: spec
                .labels
                .get(wisp_sandbox::LABEL_NAMESPACE)
                .map(|n| Arc::from(n.as_str())),
            usage: Arc::default(),
        }
    }

    /// The memory cap when the spec sets none.
    pub(crate) fn default_memory(&mut self, cap: Option<usize>) {
        if self.memory_bytes.is_none() {
            self.memory_bytes = cap;
        }
    }

    /// Checks the mounts can be opened, so a bad spec fails at create, not per request.
    pub(crate) fn validate(&self) -> Result<(), SandboxError> {
        for (host, guest, _) in &self.preopens {
            if !host.is_dir() {
                return Err(SandboxError::InvalidSpec(format!(
                    "mount {guest}: {} is not a directory",
                    host.display()
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn sinks(&self) -> [&LineSink; 2] {
        [&self.stdout, &self.stderr]
    }

    /// A fresh store state: no inherited stdio, env, args or network.
    pub(crate) fn build(&self) -> Result<Host, SandboxError> {
        let mut b = WasiCtxBuilder::new();
        b.envs(&self.env)
            .args(&self.args)
            .stdout(self.stdout.clone())
            .stderr(self.stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        for (host, guest, perms) in &self.preopens {
            b.preopened_dir(host, guest, *perms)
                .map_err(|e| SandboxError::runtime(format!("cannot open mount {}", host.display()), e))?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Ok(Host {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table,
            hooks: Outbound {
                allowed: self.outbound.clone(),
                gateway: self.gateway,
                egress: self.egress.clone(),
                namespace: self.namespace.clone(),
            },
            limiter: Limiter {
                memory_cap: self.memory_bytes,
                memory_used: 0,
                denied: false,
                sandbox: Some(self.usage.clone()),
                last_growth: None,
            },
        })
    }
}

/// The `T` of every `Store<T>` this crate creates.
pub(crate) struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    pub(crate) limiter: Limiter,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Memory cap summed over every linear memory of the store, plus bounded tables.
pub(crate) struct Limiter {
    memory_cap: Option<usize>,
    memory_used: usize,
    /// A growth was refused: a trap that follows is reported as `OOMKilled`.
    pub(crate) denied: bool,
    /// The sandbox's counters: growths add to its memory, the store's end takes it back.
    sandbox: Option<Arc<Counters>>,
    /// The last growth allowed: (memory used before it, bytes), undone if it fails.
    last_growth: Option<(usize, usize)>,
}

impl Limiter {
    /// Adds (or takes back) `bytes` to the sandbox's memory, never past 0 or `u64::MAX`
    /// (one `fetch_add`/`fetch_sub` for any real size; a compare-and-swap loop only for the
    /// sizes a 64-bit memory could ask for).
    fn add(&self, bytes: usize, up: bool) {
        let Some(c) = &self.sandbox else { return };
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        if bytes < 1 << 48 {
            // Taken back only what was added: no underflow.
            if up {
                c.memory_bytes
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            } else {
                c.memory_bytes
                    .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        let _ = c.memory_bytes.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |m| {
                Some(if up {
                    m.saturating_add(bytes)
                } else {
                    m.saturating_sub(bytes)
                })
            },
        );
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.add(self.memory_used, false);
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.memory_used.saturating_sub(current).saturating_add(desired);
        if self.memory_cap.is_some_and(|cap| after > cap) {
            self.denied = true;
            return Ok(false);
        }
        // Counted now; taken back if the growth then fails (`memory_grow_failed`): past a
        // memory's own maximum, or when the pool or the OS cannot give the pages.
        let grown = desired.saturating_sub(current);
        self.last_growth = Some((self.memory_used, grown));
        self.add(grown, true);
        self.memory_used = after;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Only a growth this limiter allowed (wasmtime may report a failure it never asked
        // about).
        if let Some((before, grown)) = self.last_growth.take() {
            self.add(grown, false);
            self.memory_used = before;
        }
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The outbound-HTTP policy: only the hosts the spec lists (`host` or `host:port`), and of
/// their addresses only those the node's egress policy allows.
struct Outbound {
    allowed: Arc<[String]>,
    gateway: Option<std::net::SocketAddr>,
    egress: Arc<wisp_sandbox::EgressPolicy>,
    /// The guest's namespace: the only one whose Services it may call by name.
    namespace: Option<Arc<str>>,
}

impl Outbound {
    fn own_service(&self, host: &str) -> bool {
        let ns = host
            .strip_suffix(".svc")
            .and_then(|rest| rest.split_once('.'))
            .map(|(_, ns)| ns);
        ns.is_some() && ns == self.namespace.as_deref()
    }
}

/// A cluster Service's name: `<service>.<namespace>.svc`.
pub(crate) fn is_service_host(host: &str) -> bool {
    host.strip_suffix(".svc")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(svc, ns)| !svc.is_empty() && !ns.is_empty() && !ns.contains('.'))
}

impl Outbound {
    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        self.allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(&format!("{host}:{port}")))
    }
}

/// How long a call to a Service waits for its first byte unless the guest says otherwise:
/// longer than the ingress waits for the Service (it answers 504 then).
const SERVICE_FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    /// A guest's outgoing request, in a `guest.http` span (a child of the request the guest
    /// is serving) whose `traceparent` the request carries unless the guest set its own.
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            target: wisp_telemetry::TARGET,
            "guest.http",
            otel.kind = "client",
            http.request.method = %request.method(),
            server.address = wisp_telemetry::bounded(request.uri().host().unwrap_or_default()),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if span.is_disabled() {
            return self.send(request, options, fut);
        }
        let mut request = request;
        // A guest that carries its own trace context keeps it (its own instrumentation).
        if !request.headers().contains_key("traceparent") && !request.headers().contains_key("tracestate") {
            wisp_telemetry::inject(&span, request.headers_mut());
        }
        let sending = Box::into_pin(self.send(request, options, fut));
        let recording = span.clone();
        Box::new(
            async move {
                let r = sending.await;
                match &r {
                    Ok((resp, _)) => {
                        recording.record("http.response.status_code", resp.status().as_u16());
                        if resp.status().is_server_error() {
                            recording.record("otel.status_code", "ERROR");
                        }
                    }
                    Err(e) => {
                        recording.record("error.type", wisp_telemetry::bounded(&format!("{e:?}")));
                        recording.record("otel.status_code", "ERROR");
                    }
                }
                r
            }
            .instrument(span),
        )
    }
}

impl Outbound {
    fn send(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        use crate::outbound::refuse;
        use wasmtime_wasi_http::Error;
        // A URI with user information (`user@host`) is refused, as `fetch()` refuses one: the
        // Host header wasi-http writes from it would name more than the host checked here.
        if request
            .uri()
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            tracing::debug!("outbound request with user information in its URI refused");
            return Box::new(refuse(request.into_body(), Error::HttpRequestUriInvalid));
        }
        if !self.allows(request.uri()) {
            tracing::debug!(uri = %request.uri(), "outbound request denied");
            return Box::new(refuse(request.into_body(), Error::HttpRequestDenied));
        }
        let mut request = request;
        let host = request.uri().host().unwrap_or_default().to_owned();
        let host = host.as_str();
        // Service names as the ingress reads them: in any case, with or without a final dot.
        // Anything under `.svc` is the guest's own Service or nothing.
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name.ends_with(".svc") && !(is_service_host(&name) && self.own_service(&name)) {
            tracing::debug!(uri = %request.uri(), "outbound request to another namespace's Service denied");
            return Box::new(refuse(request.into_body(), Error::HttpRequestDenied));
        }
        if is_service_host(&name) {
            let Some(gateway) = self.gateway else {
                return Box::new(refuse(request.into_body(), Error::DestinationNotFound));
            };
            // A Service is reached through the node's ingress, in plain HTTP on loopback, by
            // a Host header that is the name checked above and nothing else.
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str)
                .to_owned();
            match http::Uri::builder()
                .scheme("http")
                .authority(gateway.to_string())
                .path_and_query(path)
                .build()
            {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return Box::new(refuse(request.into_body(), Error::HttpRequestUriInvalid)),
            }
            match http::HeaderValue::from_str(&name) {
                Ok(v) => {
                    request.headers_mut().insert(http::header::HOST, v);
                }
                Err(_) => return Box::new(refuse(request.into_body(), Error::HttpRequestUriInvalid)),
            }
            // The ingress bounds the wait for a Service's answer (504 past it); the guest's
            // own first-byte timeout still holds.
            let options = wasmtime_wasi_http::RequestOptions {
                first_byte_timeout: options
                    .and_then(|o| o.first_byte_timeout)
                    .or(Some(SERVICE_FIRST_BYTE_TIMEOUT)),
                ..options.unwrap_or_default()
            };
            return Box::new(crate::outbound::send(request, vec![gateway], Some(options)));
        }
        // Anything else: resolved here and sent to an address the egress policy allows.
        let egress = self.egress.clone();
        let host = host.to_owned();
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(match request.uri().scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
        Box::new(async move {
            let addrs = match crate::outbound::resolve(&egress, &host, port).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(host, port, "outbound request refused by the node's egress policy");
                    return refuse(request.into_body(), e).await;
                }
            };
            crate::outbound::send(request, addrs, options).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_hosts() {
        let o = Outbound {
            allowed: Arc::from(vec![]),
            gateway: None,
            egress: Arc::default(),
            namespace: Some(Arc::from("team-a")),
        };
        assert!(o.own_service("db.team-a.svc"));
        assert!(!o.own_service("db.team-b.svc"), "another namespace's Service");
        assert!(!o.own_service("example.com"));
        assert!(is_service_host("backend.default.svc"));
        assert!(!is_service_host("backend.svc"));
        assert!(!is_service_host("a.b.c.svc"));
        assert!(!is_service_host("example.com"));
    }

    /// Every refusal (not listed, another namespace's Service, no way to Services, an address
    /// the egress policy refuses) is answered as soon as the guest has written its body, so
    /// the guest learns why instead of finding its body's stream closed under it.
    #[tokio::test(start_paused = true)]
    async fn a_refused_request_keeps_the_guests_body_until_it_ends_then_says_why() {
        let outbound = || Outbound {
            allowed: Arc::from(vec![
                "127.0.0.1:9".to_owned(),
                "db.team-b.svc".to_owned(),
                "db.team-b.svc.".to_owned(),
                "a.db.team-b.svc".to_owned(),
                "db.team-a.svc".to_owned(),
            ]),
            gateway: None,
            egress: Arc::default(),
            namespace: Some(Arc::from("team-a")),
        };
        for (url, why) in [
            ("http://example.com/", "HttpRequestDenied"),
            ("http://db.team-b.svc/", "HttpRequestDenied"),
            ("http://db.team-a.svc/", "DestinationNotFound"),
            // User information that would make the Host header name team-b's Service.
            ("http://db.team-b.svc:x@db.team-a.svc/", "HttpRequestUriInvalid"),
            // Other spellings of team-b's Service name, and names under .svc that are none.
            ("http://DB.TEAM-B.SVC/", "HttpRequestDenied"),
            ("http://db.team-b.svc./", "HttpRequestDenied"),
            ("http://a.db.team-b.svc/", "HttpRequestDenied"),
            ("http://127.0.0.1:9/", "DestinationIpProhibited"),
        ] {
            let (tx, body) = crate::outbound::tests::guest_body();
            let request = http::Request::builder().uri(url).body(body).expect("request");
            let mut o = outbound();
            let answer = tokio::spawn(async move {
                Box::into_pin(o.send(request, None, Box::new(async { Ok(()) })))
                    .await
                    .map(|_| ())
            });
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!answer.is_finished(), "{url}: answered before the body ended");
            tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                b"payload",
            ))))
            .await
            .unwrap_or_else(|_| panic!("{url}: the body was dropped while the guest wrote it"));
            drop(tx);
            let ended = tokio::time::Instant::now();
            let err = answer.await.expect("task").expect_err(url);
            assert_eq!(format!("{err:?}"), why, "{url}");
            assert_eq!(
                ended.elapsed(),
                std::time::Duration::ZERO,
                "{url}: answered as the body ended"
            );
        }
    }

    /// A call to a Service goes to the node's gateway as an origin-form request whose Host is
    /// the name checked (in lower case), whatever Host the request carried.
    #[tokio::test]
    async fn a_service_call_reaches_the_gateway_by_the_checked_name_only() {
        use http_body_util::BodyExt as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gateway = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("write");
            String::from_utf8_lossy(&head).into_owned()
        });
        let mut o = Outbound {
            allowed: Arc::from(vec!["db.team-a.svc".to_owned()]),
            gateway: Some(gateway),
            egress: Arc::default(),
            namespace: Some(Arc::from("team-a")),
        };
        let request = http::Request::builder()
            .uri("https://DB.team-a.svc/p?q=1")
            .header(http::header::HOST, "db.team-b.svc")
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request");
        let (response, io) = Box::into_pin(o.send(request, None, Box::new(async { Ok(()) })))
            .await
            .expect("answered");
        let io = tokio::spawn(Box::into_pin(io));
        assert_eq!(response.status(), http::StatusCode::OK);
        let head = server.await.expect("server").to_ascii_lowercase();
        assert!(head.starts_with("get /p?q=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: db.team-a.svc\r\n"), "{head}");
        assert!(!head.contains("team-b"), "{head}");
        io.abort();
    }

    #[test]
    fn outbound_allow_list_matches_host_or_host_port() {
        let o = Outbound {
            gateway: None,
            egress: Arc::default(),
            namespace: None,
            allowed: Arc::from(vec!["api.example.com".to_owned(), "127.0.0.1:8080".to_owned()]),
        };
        let ok = |u: &str| o.allows(&u.parse().expect("uri"));
        assert!(ok("https://api.example.com/x"));
        assert!(ok("http://API.example.com:9999/"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(!ok("http://127.0.0.1:8081/"));
        assert!(!ok("http://127.0.0.1/"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("/relative"));
    }

    #[test]
    fn memory_is_summed_over_memories() {
        let counters = Arc::new(Counters::default());
        let mut l = Limiter {
            memory_cap: Some(100),
            memory_used: 0,
            denied: false,
            sandbox: Some(counters.clone()),
            last_growth: None,
        };
        assert!(l.memory_growing(0, 60, None).expect("grow"));
        assert!(!l.memory_growing(0, 60, None).expect("second memory"));
        assert!(l.denied);
        assert!(l.memory_growing(60, 100, None).expect("grow the first"));
        let mut other = Limiter {
            memory_cap: None,
            memory_used: 0,
            denied: false,
            sandbox: Some(counters.clone()),
            last_growth: None,
        };
        assert!(other.memory_growing(0, 30, None).expect("another store"));
        assert_eq!(
            counters.usage().memory_bytes,
            130,
            "the sandbox counts both stores"
        );
        // A growth allowed here that then fails (past the memory's maximum, no pages): not
        // counted, and the store's own tally is as before.
        assert!(other.memory_growing(30, 1 << 40, None).expect("asked"));
        other
            .memory_grow_failed(wasmtime::Error::msg("no pages"))
            .expect("taken back");
        assert_eq!(counters.usage().memory_bytes, 130);
        assert_eq!(other.memory_used, 30);
        // A failure reported without a growth asked first changes nothing.
        other
            .memory_grow_failed(wasmtime::Error::msg("unasked"))
            .expect("ignored");
        assert_eq!((counters.usage().memory_bytes, other.memory_used), (130, 30));
        drop(l);
        assert_eq!(
            counters.usage().memory_bytes,
            30,
            "a store's end gives its memory back"
        );
        drop(other);
        assert_eq!(counters.usage().memory_bytes, 0);
    }
}
