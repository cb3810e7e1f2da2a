//! A guest's outbound HTTP request, sent only to an address the node's egress policy allows:
//! the host is resolved here, every address checked (`wisp_sandbox::EgressPolicy`: no
//! loopback, link-local, private ranges or node listeners unless the admin allows them), and
//! the connection made to the address that was checked — never resolved a second time, so a
//! name that rebinds between the check and the connection cannot move the request. HTTPS is
//! verified against the public web roots with the request's host name.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};
use wisp_sandbox::EgressPolicy;

/// The connection's I/O, driven by wasi-http after the response head arrived.
pub(crate) type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a refusal waits for the end of the request's body.
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(2);

/// Answers a request that was never sent with `error`, once the guest has finished writing
/// its body (read and dropped; for at most 2 s). A guest that writes the body while it
/// awaits the response (wstd does) would otherwise see the body's stream closed under it
/// ("connection reset") instead of why the request went nowhere, whichever it noticed first.
/// A guest that waits for the response before it ends the body learns why after the 2 s.
pub(crate) async fn refuse(body: WasiBody, error: Error) -> Result<(http::Response<WasiBody>, Io), Error> {
    let drain = async move {
        let mut body = body;
        while let Some(Ok(_)) = body.frame().await {}
    };
    // Past the wait the body is dropped anyway: the guest then sees its stream closed.
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, drain).await;
    Err(error)
}

/// The addresses of `host:port` the policy allows, or why there are none.
pub(crate) async fn resolve(policy: &EgressPolicy, host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((bare, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(_)) => {
                return Err(Error::DnsError {
                    rcode: Some("address not found".into()),
                    info_code: None,
                });
            }
            Err(_) => return Err(Error::DnsTimeout),
        },
    };
    let mut allowed = Vec::new();
    for a in addrs {
        match policy.check(a) {
            Ok(()) => allowed.push(a),
            Err(why) => {
                tracing::debug!(host, addr = %a, %why, "outbound address refused by the egress policy");
            }
        }
    }
    if allowed.is_empty() {
        return Err(Error::DestinationIpProhibited);
    }
    Ok(allowed)
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

fn tls_config() -> Arc<tokio_rustls::rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<tokio_rustls::rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = tokio_rustls::rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                tokio_rustls::rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// A connection to the first of `addrs` that answers, in TLS to `host` when `tls`.
async fn connect(
    addrs: &[SocketAddr],
    host: &str,
    tls: bool,
    timeout: Duration,
) -> Result<Box<dyn Stream>, Error> {
    let mut last = Error::ConnectionRefused;
    let mut tcp = None;
    for &addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = Error::Connect(e),
            Err(_) => last = Error::ConnectionTimeout,
        }
    }
    let tcp = tcp.ok_or(last)?;
    if !tls {
        return Ok(Box::new(tcp));
    }
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[').trim_end_matches(']').to_owned(),
    )
    .map_err(|_| Error::HttpRequestUriInvalid)?;
    let connector = tokio_rustls::TlsConnector::from(tls_config());
    let s = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Tls)?;
    Ok(Box::new(s))
}

/// Sends `request` to one of `addrs` (checked already), speaking TLS for `https` with the
/// URI's host as the server name. Until the request is handed to the connection, a failure
/// is answered as a refusal ([`refuse`]); after, the body is the connection's.
pub(crate) async fn send(
    mut request: http::Request<WasiBody>,
    addrs: Vec<SocketAddr>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, Io), Error> {
    let (connect_timeout, first_byte_timeout, between_bytes_timeout) = options
        .map_or((None, None, None), |o| {
            (o.connect_timeout, o.first_byte_timeout, o.between_bytes_timeout)
        });
    let tls = request.uri().scheme() == Some(&Scheme::HTTPS);
    let host = request.uri().host().unwrap_or_default().to_owned();
    let connect_timeout = connect_timeout.unwrap_or(CONNECT_TIMEOUT);
    // The request line carries the path only (not a proxy request).
    let pq = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    let handshake = async {
        let stream = connect(&addrs, &host, tls, connect_timeout).await?;
        let uri = http::Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(Error::from)?;
        Ok::<_, Error>((uri, sender, conn))
    };
    let (uri, mut sender, conn) = match handshake.await {
        Ok(h) => h,
        Err(e) => return refuse(request.into_body(), e).await,
    };
    *request.uri_mut() = uri;
    let mut conn = Box::pin(conn);
    let mut conn_done = false;
    let send = tokio::time::timeout(
        first_byte_timeout.unwrap_or(FIRST_BYTE_TIMEOUT),
        sender.send_request(request),
    );
    tokio::pin!(send);
    let response = loop {
        tokio::select! {
            r = &mut send => break r.map_err(|_| Error::ConnectionReadTimeout)?.map_err(Error::from)?,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                c.map_err(Error::from)?;
            }
        }
    };
    let io: Io = Box::new(async move {
        if conn_done {
            return Ok(());
        }
        conn.await.map_err(Error::from)
    });
    let response = response.map(|b| b.map_err(Error::from).boxed_unsync());
    let response = match between_bytes_timeout {
        Some(gap) => response.map(|body| BetweenBytes::new(body, gap).boxed_unsync()),
        None => response,
    };
    Ok((response, io))
}

/// The guest's `between-bytes-timeout`: a response body that fails with
/// `ConnectionReadTimeout` when its next frame takes longer than `gap`.
struct BetweenBytes {
    body: WasiBody,
    gap: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BetweenBytes {
    fn new(body: WasiBody, gap: Duration) -> Self {
        Self {
            body,
            gap,
            timer: Box::pin(tokio::time::sleep(gap)),
        }
    }
}

impl hyper::body::Body for BetweenBytes {
    type Data = bytes::Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.gap;
                this.timer.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending if this.timer.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request's body as a guest writes it: frames sent on the returned channel.
    pub(crate) fn guest_body() -> (
        tokio::sync::mpsc::Sender<Result<hyper::body::Frame<bytes::Bytes>, Error>>,
        WasiBody,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        (tx, body.boxed_unsync())
    }

    /// A refusal is answered when the body ends, or after 2 s of a body that does not.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_waits_for_the_body_at_most_two_seconds() {
        let (tx, body) = guest_body();
        let started = tokio::time::Instant::now();
        let answer = refuse(body, Error::ConnectionRefused).await;
        assert!(matches!(answer, Err(Error::ConnectionRefused)));
        assert!(started.elapsed() >= REFUSED_BODY_WAIT);
        assert!(tx.is_closed(), "the body is dropped after the wait");

        // However large the body: 4 MiB, read to its end.
        let (tx, body) = guest_body();
        let started = tokio::time::Instant::now();
        let answer = tokio::spawn(refuse(body, Error::ConnectionRefused));
        let chunk = bytes::Bytes::from(vec![0u8; 64 * 1024]);
        for _ in 0..64 {
            tx.send(Ok(hyper::body::Frame::data(chunk.clone())))
                .await
                .expect("read");
        }
        drop(tx);
        assert!(matches!(
            answer.await.expect("task"),
            Err(Error::ConnectionRefused)
        ));
        assert_eq!(started.elapsed(), Duration::ZERO, "answered as the body ended");
    }

    /// Sends to `uri` at `addr` a body the test keeps open for a while: no answer comes
    /// before the body ends (the body is still read then); the answer after.
    async fn answer_after_the_body(
        uri: String,
        addr: SocketAddr,
    ) -> Result<(http::Response<WasiBody>, Io), Error> {
        let (tx, body) = guest_body();
        let request = http::Request::builder().uri(uri).body(body).expect("request");
        let answer = tokio::spawn(send(request, vec![addr], None));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!answer.is_finished(), "answered before the body ended");
        tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"payload",
        ))))
        .await
        .expect("the body is still read");
        drop(tx);
        answer.await.expect("task")
    }

    /// An address that does not answer: the guest's body is read to its end, then the
    /// connect error is the answer.
    #[tokio::test]
    async fn a_failed_connection_is_answered_after_the_body() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let answer = answer_after_the_body(format!("http://{addr}/"), addr).await;
        assert!(matches!(answer, Err(Error::Connect(_))), "{:?}", answer.err());
    }

    /// A TLS handshake that fails is answered after the body, as the connect error is.
    #[tokio::test]
    async fn a_failed_tls_handshake_is_answered_after_the_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and hangs up at once.
        let server = tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        });
        let answer = answer_after_the_body(format!("https://localhost:{}/", addr.port()), addr).await;
        assert!(matches!(answer, Err(Error::Tls(_))), "{:?}", answer.err());
        server.abort();
    }

    /// The between-bytes timeout: each frame within the gap restarts it, a stall past it
    /// ends the body with `ConnectionReadTimeout`, exactly one gap after the last frame.
    #[tokio::test(start_paused = true)]
    async fn between_bytes_restarts_with_each_frame_and_ends_a_stall() {
        let gap = Duration::from_millis(200);
        let (tx, body) = guest_body();
        let mut body = BetweenBytes::new(body, gap);
        let sender = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"x"))))
                    .await
                    .expect("read");
            }
            // Then nothing, with the body still open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for _ in 0..5 {
            let frame = body.frame().await.expect("a frame").expect("data within the gap");
            assert!(frame.is_data());
        }
        let last = tokio::time::Instant::now();
        let stalled = body.frame().await.expect("an answer");
        assert!(
            matches!(stalled, Err(Error::ConnectionReadTimeout)),
            "{stalled:?}"
        );
        assert_eq!(last.elapsed(), gap, "one gap after the last frame");
        sender.abort();
    }

    /// The guest's between-bytes timeout ends a response body that stalls.
    #[tokio::test]
    async fn a_stalled_response_body_fails_after_the_between_bytes_timeout() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await.expect("read");
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await
                .expect("write");
            // Then nothing, until the test ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let request = http::Request::builder()
            .uri(format!("http://{addr}/"))
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request");
        let options = RequestOptions {
            between_bytes_timeout: Some(Duration::from_millis(500)),
            ..RequestOptions::default()
        };
        let (response, io) = send(request, vec![addr], Some(options)).await.expect("response");
        let io = tokio::spawn(Box::into_pin(io));
        let mut body = response.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"hello"[..]));
        // Without the timeout this waits for the server's 60 s: 10 s is the test's limit.
        let stalled = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the body ended before the test's limit")
            .expect("an end");
        assert!(
            matches!(stalled, Err(Error::ConnectionReadTimeout)),
            "{stalled:?}"
        );
        server.abort();
        io.abort();
    }

    #[tokio::test]
    async fn names_and_addresses_are_checked_after_resolution() {
        let policy = EgressPolicy::default();
        for (host, port) in [
            ("127.0.0.1", 80),
            ("localhost", 8080),
            ("169.254.169.254", 80),
            ("[::1]", 80),
        ] {
            assert!(
                matches!(
                    resolve(&policy, host, port).await,
                    Err(Error::DestinationIpProhibited)
                ),
                "{host} must be refused"
            );
        }
        let open = EgressPolicy::new(
            vec![wisp_sandbox::egress::parse_cidr("127.0.0.0/8").expect("cidr")],
            vec![],
        );
        let ok = resolve(&open, "localhost", 8080).await.expect("allowed");
        assert!(
            ok.iter().all(|a| a.ip().is_loopback() && a.port() == 8080),
            "{ok:?}"
        );
        let listener = EgressPolicy::new(open.allow.clone(), vec!["127.0.0.1:8080".parse().expect("addr")]);
        assert!(
            resolve(&listener, "127.0.0.1", 8080).await.is_err(),
            "a node listener stays refused"
        );
    }
}
