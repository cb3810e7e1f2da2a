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
use wasmtime_wasi_http::{Error, WasiBody};
use wisp_sandbox::EgressPolicy;

/// The connection's I/O, driven by wasi-http after the response head arrived.
pub(crate) type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a request's body is waited for before its refusal is answered.
const REFUSED_BODY_LIMIT: usize = 1 << 20;
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(2);

/// Answers a request that was never sent with `error`, once the guest has finished writing
/// its body (read and dropped: at most 1 MiB, 2 s). A guest that writes the body while it
/// awaits the response (wstd does) would otherwise see the body's stream closed under it
/// ("connection reset") instead of why the request went nowhere, whichever it noticed first.
pub(crate) async fn refuse(body: WasiBody, error: Error) -> Result<(http::Response<WasiBody>, Io), Error> {
    let drain = async move {
        let mut body = body;
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, bytes::Bytes::len);
            if read > REFUSED_BODY_LIMIT {
                break;
            }
        }
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
/// URI's host as the server name.
pub(crate) async fn send(
    mut request: http::Request<WasiBody>,
    addrs: Vec<SocketAddr>,
    connect_timeout: Option<Duration>,
    first_byte_timeout: Option<Duration>,
) -> Result<(http::Response<WasiBody>, Io), Error> {
    let tls = request.uri().scheme() == Some(&Scheme::HTTPS);
    let host = request.uri().host().unwrap_or_default().to_owned();
    let connect_timeout = connect_timeout.unwrap_or(CONNECT_TIMEOUT);
    let stream = match connect(&addrs, &host, tls, connect_timeout).await {
        Ok(s) => s,
        Err(e) => return refuse(request.into_body(), e).await,
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    // The request line carries the path only (not a proxy request).
    let pq = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(pq)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
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
    Ok((response.map(|b| b.map_err(Error::from).boxed_unsync()), io))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal waits for the body's end, but not past 1 MiB of it or 2 s.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_waits_for_the_body_within_bounds() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
        let started = tokio::time::Instant::now();
        let answer = tokio::spawn(refuse(body, Error::ConnectionRefused));
        // A body that never ends: answered after the wait, with the refusal.
        assert!(matches!(
            answer.await.expect("task"),
            Err(Error::ConnectionRefused)
        ));
        assert!(started.elapsed() >= REFUSED_BODY_WAIT);
        drop(tx);

        // A body past the limit: answered as soon as it is past, without waiting for the rest.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed_unsync();
        let started = tokio::time::Instant::now();
        let answer = tokio::spawn(refuse(body, Error::ConnectionRefused));
        let chunk = bytes::Bytes::from(vec![0u8; 64 * 1024]);
        for _ in 0..=REFUSED_BODY_LIMIT / chunk.len() {
            tx.send(Ok(hyper::body::Frame::data(chunk.clone())))
                .await
                .expect("read");
        }
        assert!(matches!(
            answer.await.expect("task"),
            Err(Error::ConnectionRefused)
        ));
        assert!(started.elapsed() < REFUSED_BODY_WAIT);
        assert!(tx.is_closed(), "the body is dropped, not read to its end");
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
