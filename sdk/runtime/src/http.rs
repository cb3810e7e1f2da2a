//! Serving an HTTP service on a listener until a shutdown token fires, then draining the
//! connections still in flight for a grace period — the loop every Wisp server (API server,
//! node agent, ingress) shares.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneService;

/// A server's request handler, as every Wisp server builds it.
pub type HttpService<B> = BoxCloneService<Request<Incoming>, Response<B>, Infallible>;

#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Time allowed to read a request's headers (HTTP/1); `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// How long in-flight requests may finish after shutdown.
    pub grace: Duration,
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
    let tracker = TaskTracker::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(t) = options.header_read_timeout {
        builder.http1().timer(TokioTimer::new()).header_read_timeout(t);
    }
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
        let conn = graceful.watch(conn.into_owned());
        tracker.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within {:?}", options.grace);
    }
}
