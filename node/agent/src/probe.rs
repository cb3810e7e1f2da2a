//! HTTP readiness checks of containers reached over a socket (docker): one GET on a fresh
//! connection, the status code or nothing.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Sends `request` to `addr` and returns the response status (the body is read and
/// dropped), or `None` when nothing answers.
pub(crate) async fn get(addr: SocketAddr, request: http::Request<Empty<Bytes>>) -> Option<http::StatusCode> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    // Aborted when this function returns or its caller gives up on it (a probe timeout).
    let _conn = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
    let mut request = request;
    if let Ok(host) = http::HeaderValue::from_str(&addr.to_string()) {
        request.headers_mut().insert(http::header::HOST, host);
    }
    let response = sender.send_request(request).await.ok();
    match response {
        Some(r) => {
            let status = r.status();
            r.into_body().collect().await.ok()?;
            Some(status)
        }
        None => None,
    }
}
