//! wisp-http owns serving an HTTP service on a listener — the loop every Wisp server (API
//! server, node agent, ingress, the CLI's `up`) shares: accept (under a global and a
//! per-address connection cap), serve HTTP/1.1 and h2c — or, with
//! [`serve_tls`], TLS (rustls; ALPN picks `h2` or `http/1.1`) — with a first-byte, handshake
//! and header-read timeout, and on shutdown drain the connections still in flight for a grace period.
//!
//! Connections are served on the caller's runtime, or (the ingress) on event loops of their
//! own: threads with a single-threaded runtime each, every connection handed to the loop that
//! has the fewest open and served there to its end, with whatever it spawns (an in-process
//! guest's request task). Nothing of a request then crosses threads: with a work-stealing
//! runtime, each request woke an idle worker that found nothing to do — at one connection a
//! quarter of the requests per second (BENCHMARKS.md, "warm throughput"). An event loop may
//! also busy-poll after traffic ([`ServeOptions::busy_poll`], see the `spin` module); zero turns it off.
//!
//! It must not know what it serves (routing, auth and limits are the servers' own layers),
//! and every task and thread it starts ends with the shutdown token and is waited for by
//! [`serve`] before it returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
pub use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tower::util::BoxCloneService;

/// A server's request handler, as every Wisp server builds it.
pub type HttpService<B> = BoxCloneService<Request<Incoming>, Response<B>, Infallible>;

#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Time allowed to read a request's headers (HTTP/1); `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// How long in-flight requests may finish after shutdown.
    pub grace: Duration,
    /// Event loops of their own for the connections (see the module docs); 0: serve them on
    /// the caller's runtime.
    pub event_loops: usize,
    /// How long an event loop keeps polling for work, instead of sleeping, after one of its
    /// connections last read or wrote (see `spin`); zero: it sleeps at once. Only with
    /// event loops.
    pub busy_poll: Duration,
    /// Connections open at once; past it no more are accepted until one closes (they wait
    /// in the listen backlog). 0: no limit.
    pub max_connections: usize,
    /// Speak HTTP/1.1 only (no h2c): for servers whose clients never need HTTP/2.
    pub http1_only: bool,
    /// Connections one remote address may have open at once (loopback excepted: the
    /// machine's own processes); past it a new one is closed at once. 0: no limit.
    pub max_connections_per_ip: usize,
}

/// A connection's places — under [`ServeOptions::max_connections`] and its address's share —
/// held while it is open.
type Permit = (Option<tokio::sync::OwnedSemaphorePermit>, Option<PeerSlot>);

/// Open connections per remote address.
#[derive(Clone, Default)]
struct Peers(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection of an address, until dropped.
struct PeerSlot {
    peers: Peers,
    ip: std::net::IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Peers {
    /// A place for a connection from `ip`, or `None` when it has `max` open already.
    fn enter(&self, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// The connections one runtime serves, and their graceful shutdown.
struct Connections<B> {
    service: HttpService<B>,
    /// A connection that sends no byte for this long is closed (hyper's header-read timeout
    /// starts only once it knows the protocol, i.e. after the first bytes).
    first_byte: Option<Duration>,
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    tracker: TaskTracker,
    /// TLS is terminated here, in the connection's task, before HTTP.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl<B> Connections<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn new(service: HttpService<B>, options: ServeOptions, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        if let Some(t) = options.header_read_timeout {
            builder.http1().timer(TokioTimer::new()).header_read_timeout(t);
            // An HTTP/2 connection that stops answering pings is closed.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(t))
                .keep_alive_timeout(t)
                .max_concurrent_streams(256);
        }
        if options.http1_only {
            builder = builder.http1_only();
        }
        Self {
            service,
            first_byte: options.header_read_timeout,
            builder,
            graceful: GracefulShutdown::new(),
            tracker: TaskTracker::new(),
            tls,
        }
    }

    /// Serves one connection in a task on the current runtime; `done` runs when it ends.
    fn serve(&self, stream: TcpStream, peer: SocketAddr, done: impl FnOnce() + Send + 'static) {
        let _ = stream.set_nodelay(true);
        let stream = FirstByte::new(spin::Touching(stream), self.first_byte);
        if let Some(tls) = &self.tls {
            let tls = tls.clone();
            let builder = self.builder.clone();
            let service = self.service.clone();
            let watcher = self.graceful.watcher();
            // A client that opens a connection and never finishes its handshake is cut off
            // like one that never sends a request.
            let handshake = self.first_byte.unwrap_or(Duration::from_secs(10));
            self.tracker.spawn(async move {
                match tokio::time::timeout(handshake, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let conn =
                            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                        if let Err(e) = watcher.watch(conn.into_owned()).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "no TLS handshake within {handshake:?}"),
                }
                done();
            });
            return;
        }
        let conn = self.builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(self.service.clone()),
        );
        let conn = self.graceful.watch(conn.into_owned());
        self.tracker.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            done();
        });
    }

    /// Lets the connections in flight finish for `grace`.
    async fn drain(self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish within {grace:?}");
        }
    }
}

/// A stream whose first byte must arrive before a deadline: a client that connects and sends
/// nothing is cut off instead of holding a connection (and a file descriptor) for good.
struct FirstByte<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByte<S> {
    fn new(inner: S, within: Option<Duration>) -> Self {
        Self {
            inner,
            deadline: within.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByte<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.deadline.is_some() {
            if buf.filled().len() > before {
                self.deadline = None;
            } else if polled.is_pending()
                && let Some(d) = self.deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request within the header read timeout",
                )));
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByte<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One event loop: its thread takes connections from `conns` until it closes or `shutdown`.
struct EventLoop {
    conns: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr, Permit)>,
    /// Connections open on this loop.
    open: Arc<AtomicUsize>,
    /// Fires (or closes) when the loop has drained and stopped.
    stopped: oneshot::Receiver<()>,
    /// Its thread, joined once it has stopped.
    thread: std::thread::JoinHandle<()>,
}

impl EventLoop {
    fn start<B>(
        index: usize,
        service: HttpService<B>,
        options: ServeOptions,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (conns, mut rx) = mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr, Permit)>();
        let (stopped_tx, stopped) = oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("wisp-http-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let here = Connections::new(service, options, tls);
                    // Aborted when dropped: before the drain, or if this loop panics.
                    let spinner = (!options.busy_poll.is_zero())
                        .then(|| AbortOnDropHandle::new(tokio::spawn(spin::spinner(options.busy_poll))));
                    loop {
                        let (stream, peer, permit) = tokio::select! {
                            () = shutdown.cancelled() => break,
                            next = rx.recv() => match next {
                                Some(c) => c,
                                None => break,
                            },
                        };
                        let counted = counted.clone();
                        match TcpStream::from_std(stream) {
                            Ok(stream) => here.serve(stream, peer, move || {
                                counted.fetch_sub(1, Ordering::Relaxed);
                                drop(permit);
                            }),
                            Err(e) => {
                                counted.fetch_sub(1, Ordering::Relaxed);
                                tracing::warn!(%peer, error = %e, "cannot take over a connection");
                            }
                        }
                    }
                    drop(spinner);
                    here.drain(options.grace).await;
                });
                // Tasks the connections left behind (a guest still streaming) end with the
                // runtime, here.
                drop(runtime);
                let _ = stopped_tx.send(());
            })?;
        Ok(Self {
            conns,
            open,
            stopped,
            thread,
        })
    }
}

/// Serves `service` on `listener` (HTTP/1.1 and h2c) until `shutdown`, then lets in-flight
/// connections finish for `options.grace`.
pub async fn serve<B>(
    listener: TcpListener,
    service: HttpService<B>,
    options: ServeOptions,
    shutdown: CancellationToken,
) where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(listener, service, options, None, shutdown).await;
}

/// [`serve`] over TLS with `config` (its ALPN decides between HTTP/2 and HTTP/1.1; a client
/// that offers none gets HTTP/1.1 or h2 by the preface, as over plain TCP).
pub async fn serve_tls<B>(
    listener: TcpListener,
    service: HttpService<B>,
    options: ServeOptions,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    serve_with(listener, service, options, Some(acceptor), shutdown).await;
}

async fn serve_with<B>(
    listener: TcpListener,
    service: HttpService<B>,
    options: ServeOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut loops = Vec::with_capacity(options.event_loops);
    for i in 0..options.event_loops {
        match EventLoop::start(i, service.clone(), options, tls.clone(), shutdown.clone()) {
            Ok(l) => loops.push(l),
            // Served here instead (the caller's runtime).
            Err(e) => tracing::warn!(error = %e, "cannot start an event loop"),
        }
    }
    let here = Connections::new(service, options, tls);
    let cap =
        (options.max_connections > 0).then(|| Arc::new(tokio::sync::Semaphore::new(options.max_connections)));
    let peers = Peers::default();
    loop {
        let global = match &cap {
            Some(cap) => tokio::select! {
                () = shutdown.cancelled() => break,
                p = cap.clone().acquire_owned() => p.ok(),
            },
            None => None,
        };
        let (stream, peer): (TcpStream, SocketAddr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = peer.ip();
        let per_ip = if options.max_connections_per_ip == 0 || ip.is_loopback() {
            None
        } else {
            match peers.enter(ip, options.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, "too many connections from this address: closed");
                    drop(stream);
                    continue;
                }
            }
        };
        let permit: Permit = (global, per_ip);
        let Some(target) = loops.iter().min_by_key(|l| l.open.load(Ordering::Relaxed)) else {
            here.serve(stream, peer, move || drop(permit));
            continue;
        };
        // A loop that stopped (it cannot, short of a bug) gives the connection back: it is
        // served here.
        let handed = stream.into_std().map_err(|e| e.to_string()).and_then(|s| {
            target.open.fetch_add(1, Ordering::Relaxed);
            target.conns.send((s, peer, permit)).map_err(|e| {
                target.open.fetch_sub(1, Ordering::Relaxed);
                let (s, _, permit) = e.0;
                match TcpStream::from_std(s) {
                    Ok(s) => {
                        here.serve(s, peer, move || drop(permit));
                        "the event loop stopped; served on the caller's runtime".to_owned()
                    }
                    Err(e) => e.to_string(),
                }
            })
        });
        if let Err(e) = handed {
            tracing::warn!(%peer, error = %e, "connection not handed to an event loop");
        }
    }
    here.drain(options.grace).await;
    for l in loops {
        drop(l.conns);
        let _ = l.stopped.await;
        // It has stopped (or panicked): the join returns at once.
        let thread = l.thread;
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::error!("an event loop panicked");
        }
    }
}

/// Busy polling: an event loop that has just served a request keeps polling its sockets for a
/// short while, rather than going to sleep in `epoll_wait` and being woken by the kernel when
/// the next request arrives — a wake-up that costs tens of microseconds on a virtual machine,
/// as much as serving a small request in process. Go's scheduler spins the same way before it
/// parks a thread. Costs CPU: up to the window's length after each burst of traffic on a loop,
/// nothing on an idle one — but a connection that reads or writes more often than the window
/// (a guest streaming a body in small pieces) keeps its loop polling for as long as it lasts.
/// Only the served connections count as traffic: a loop waiting on a slow backend sleeps.
///
/// For single-threaded runtimes only (the event loops): the spinner and the streams meet in
/// thread-locals. It rests on tokio's current-thread scheduler polling its I/O driver with a
/// zero timeout when a task has yielded (`park_yield`), which is worth re-checking when tokio
/// is upgraded.
pub(crate) mod spin {
    use std::cell::{Cell, RefCell};
    use std::io::IoSlice;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    thread_local! {
        /// When a connection of this thread's event loop last read or wrote.
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
        /// The spinner, while it waits for traffic.
        static IDLE: RefCell<Option<Waker>> = const { RefCell::new(None) };
        /// Turns the spinner has polled (for the tests).
        #[cfg(test)]
        static TURNS: Cell<u64> = const { Cell::new(0) };
    }

    fn touch() {
        LAST.set(Some(Instant::now()));
        if let Some(w) = IDLE.take() {
            w.wake();
        }
    }

    /// `r`, noting the traffic when the I/O it reports happened.
    fn touched<T>(r: Poll<T>) -> Poll<T> {
        if r.is_ready() {
            touch();
        }
        r
    }

    fn recent(window: Duration) -> bool {
        LAST.get().is_some_and(|t| t.elapsed() < window)
    }

    /// Runs on an event loop as long as it lives: while its connections had traffic within
    /// `window`, yields at every turn, so that the loop polls its sockets without blocking
    /// instead of sleeping; then waits, costing nothing, for the next traffic.
    pub(crate) async fn spinner(window: Duration) {
        loop {
            std::future::poll_fn(|cx| {
                if recent(window) {
                    Poll::Ready(())
                } else {
                    IDLE.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            while recent(window) {
                // Let the kernel run another thread on this core (the client's, on a
                // machine this small) rather than spin over it.
                std::thread::yield_now();
                #[cfg(test)]
                TURNS.set(TURNS.get() + 1);
                tokio::task::yield_now().await;
            }
        }
    }

    /// A stream that notes, for its thread's spinner, when it reads or writes.
    pub(crate) struct Touching<S>(pub(crate) S);

    impl<S: AsyncRead + Unpin> AsyncRead for Touching<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            touched(Pin::new(&mut self.0).poll_read(cx, buf))
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Touching<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            touched(Pin::new(&mut self.0).poll_write(cx, buf))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            touched(Pin::new(&mut self.0).poll_write_vectored(cx, bufs))
        }

        fn is_write_vectored(&self) -> bool {
            self.0.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[cfg(test)]
    mod tests {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_util::task::AbortOnDropHandle;

        use super::*;

        fn waiting() -> bool {
            IDLE.with_borrow(Option::is_some)
        }

        #[tokio::test]
        async fn the_spinner_polls_after_traffic_for_its_window_then_sleeps() {
            let window = Duration::from_millis(200);
            let spinner = AbortOnDropHandle::new(tokio::spawn(spinner(window)));
            tokio::task::yield_now().await;
            assert!(waiting(), "no traffic yet: the spinner sleeps");
            let before = TURNS.get();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(TURNS.get(), before, "without traffic the spinner does not poll");

            let (mut client, server) = tokio::io::duplex(64);
            let mut server = Touching(server);
            client.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.expect("read");
            let read_at = Instant::now();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            // Each of our yields lets the spinner take a turn (unless the window has passed).
            let spun = TURNS.get() - before;
            if read_at.elapsed() < window {
                assert!(
                    spun >= 5,
                    "within the window after a read the spinner polls ({spun} turns)"
                );
                assert!(!waiting());
            } else {
                assert!(spun >= 1, "the spinner polled after the read");
            }

            // Past the window it waits again, and takes no more turns.
            tokio::time::sleep(window + Duration::from_millis(50)).await;
            tokio::task::yield_now().await;
            assert!(waiting(), "past the window, the spinner sleeps");
            let parked = TURNS.get();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(TURNS.get(), parked, "a sleeping spinner does not poll");

            // A write counts as traffic too.
            server.write_all(b"pong").await.expect("write");
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            assert!(TURNS.get() > parked, "a write wakes the spinner");
            drop(spinner);
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server answering each request with the name of the thread that served it.
    async fn thread_names(event_loops: usize) -> (SocketAddr, CancellationToken, AbortOnDropHandle<()>) {
        capped(event_loops, 0).await
    }

    /// [`thread_names`] with at most `max_connections` open at once.
    async fn capped(
        event_loops: usize,
        max_connections: usize,
    ) -> (SocketAddr, CancellationToken, AbortOnDropHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = BoxCloneService::new(tower::service_fn(|_req: Request<Incoming>| async {
            let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
        }));
        let options = ServeOptions {
            header_read_timeout: Some(Duration::from_secs(5)),
            grace: Duration::from_secs(1),
            event_loops,
            busy_poll: Duration::ZERO,
            max_connections,
            http1_only: false,
            max_connections_per_ip: 0,
        };
        let shutdown = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(serve(listener, service, options, shutdown.clone())));
        (addr, shutdown, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = BoxCloneService::new(tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }));
        let options = ServeOptions {
            header_read_timeout: Some(Duration::from_millis(300)),
            grace: Duration::from_secs(1),
            event_loops: 0,
            busy_poll: Duration::ZERO,
            max_connections: 0,
            http1_only: false,
            max_connections_per_ip: 0,
        };
        let shutdown = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(serve(listener, service, options, shutdown.clone())));
        // Silent, and silent after the h2c preface: both are hung up on.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut h2 = TcpStream::connect(addr).await.expect("connect");
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        for conn in [&mut silent, &mut h2] {
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "a connection sending nothing stayed open");
        }
        // One that talks is served.
        let mut ok = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(ask(&mut ok).await, "ok");
        shutdown.cancel();
        task.await.expect("join");
    }

    #[test]
    fn an_address_gets_its_share_of_connections_and_no_more() {
        let peers = Peers::default();
        let ip: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
        let a = peers.enter(ip, 2).expect("first");
        let _b = peers.enter(ip, 2).expect("second");
        assert!(peers.enter(ip, 2).is_none(), "a third from the same address");
        assert!(
            peers.enter("10.1.2.4".parse().expect("ip"), 2).is_some(),
            "another address"
        );
        drop(a);
        assert!(
            peers.enter(ip, 2).is_some(),
            "a closed connection frees its place"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_connection_cap_a_connection_waits_until_one_closes() {
        for event_loops in [0, 2] {
            let (addr, shutdown, task) = capped(event_loops, 2).await;
            let mut a = TcpStream::connect(addr).await.expect("connect");
            let mut b = TcpStream::connect(addr).await.expect("connect");
            ask(&mut a).await;
            ask(&mut b).await;
            // A third: accepted by the kernel, not served while two are open.
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let waiting = tokio::time::timeout(Duration::from_millis(300), ask(&mut c)).await;
            assert!(waiting.is_err(), "served past the cap ({event_loops} loops)");
            drop(a);
            // Its request was sent already: it is answered once a place is free.
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .expect("served once a connection closed")
                .expect("read");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            shutdown.cancel();
            drop((b, c));
            task.await.expect("join");
        }
    }

    /// One request on `conn`: the body (the serving thread's name).
    async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(conn: &mut S) -> String {
        conn.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.parse().ok())
                    .expect("content-length");
                if body.len() >= len {
                    return body[..len].to_owned();
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn event_loops_keep_a_connection_on_one_thread_and_share_connections_out() {
        let (addr, shutdown, task) = thread_names(2).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        let mut names = Vec::new();
        for _ in 0..20 {
            names.push(ask(&mut first).await);
        }
        assert!(names[0].starts_with("wisp-http-"), "{names:?}");
        assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
        // With that connection open, the next goes to the other loop.
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let other = ask(&mut second).await;
        assert!(other.starts_with("wisp-http-"), "{other}");
        assert_ne!(other, names[0]);
        // Shutdown: both loops drain (idle keep-alive connections are closed) and stop.
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stopped in time")
            .expect("join");
    }

    #[tokio::test]
    async fn without_event_loops_connections_are_served_on_the_callers_runtime() {
        let (addr, shutdown, task) = thread_names(0).await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..3 {
            let name = ask(&mut conn).await;
            assert!(!name.starts_with("wisp-http-"), "{name}");
        }
        shutdown.cancel();
        task.await.expect("join");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_serves_http1_and_h2_by_alpn_and_plain_http_gets_no_answer() {
        let ca = wisp_tls::Ca::create().expect("ca");
        let serving = ca.issue(&["localhost".to_owned()], true).expect("issue");
        let config = wisp_tls::server_config(&serving, &[b"h2", b"http/1.1"]).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = BoxCloneService::new(tower::service_fn(|req: Request<Incoming>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "{:?}",
                req.version()
            )))))
        }));
        let options = ServeOptions {
            header_read_timeout: Some(Duration::from_secs(2)),
            grace: Duration::from_secs(1),
            event_loops: 1,
            busy_poll: Duration::ZERO,
            max_connections: 0,
            http1_only: false,
            max_connections_per_ip: 0,
        };
        let shutdown = CancellationToken::new();
        let task = AbortOnDropHandle::new(tokio::spawn(serve_tls(
            listener,
            service,
            options,
            config,
            shutdown.clone(),
        )));
        let connect = |alpn: &'static [u8]| {
            let mut client = wisp_tls::client_config(Some(ca.cert_pem())).expect("client");
            client.alpn_protocols = vec![alpn.to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            async move {
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                connector.connect(name, tcp).await.expect("handshake")
            }
        };
        let mut h1 = connect(b"http/1.1").await;
        assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(ask(&mut h1).await, "HTTP/1.1");
        let h2 = connect(b"h2").await;
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
                .await
                .expect("h2 handshake");
        let driver = AbortOnDropHandle::new(tokio::spawn(conn));
        let resp = sender
            .send_request(
                Request::get("https://localhost/")
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .expect("h2 request");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"HTTP/2.0");
        drop(driver);
        // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the plain connection was left open");
        assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"), "{got:?}");
        shutdown.cancel();
        task.await.expect("join");
    }
}
