//! Request and response body helpers.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use crate::error::ApiError;

/// Every response body: a full buffer or a stream (watch).
pub type ApiBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

pub fn json_response<T: Serialize>(code: StatusCode, value: &T) -> Response<ApiBody> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(full(body));
            *resp.status_mut() = code;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => error_response(&ApiError::Internal(format!("cannot encode response: {e}"))),
    }
}

pub fn error_response(err: &ApiError) -> Response<ApiBody> {
    let status = err.status();
    let code = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let ApiError::TooManyRequests { retry_after_secs, .. } = err
        && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// How long a request body may take: at most `idle` between two pieces of it, `total` in
/// all. A client that sends slowly (slowloris) is cut off rather than holding a permit.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeouts {
    pub idle: std::time::Duration,
    pub total: std::time::Duration,
}

impl BodyTimeouts {
    /// The next frame of `body`, or 408 past the idle time or the deadline.
    pub(crate) async fn next_frame<B>(
        &self,
        mut body: std::pin::Pin<&mut B>,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Result<hyper::body::Frame<Bytes>, B::Error>>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
    {
        let until = deadline.min(tokio::time::Instant::now() + self.idle);
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(frame) => Ok(frame),
            Err(_) => Err(ApiError::RequestTimeout(format!(
                "the request body was not received in time (at most {:?} between pieces, {:?} in all)",
                self.idle, self.total
            ))),
        }
    }
}

/// Read a request body, refusing more than `limit` bytes with 413 and a body that takes
/// longer than `timeouts` allow with 408.
pub async fn read_limited<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: usize,
    timeouts: BodyTimeouts,
) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // Read (and drop) a moderately oversize body first: a server that answers and closes
        // while the client is still sending makes the client see a broken pipe instead of
        // the 413. Past the drain cap the connection is simply closed.
        drain(body, limit.saturating_mul(DRAIN_FACTOR), timeouts).await;
        return Err(ApiError::TooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + timeouts.total;
    while let Some(frame) = timeouts.next_frame(body.as_mut(), deadline).await? {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("cannot read request body: {}", e.into())))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(body, limit.saturating_mul(DRAIN_FACTOR), timeouts).await;
                return Err(ApiError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// An oversize body is read and dropped up to this many times the limit before the 413.
const DRAIN_FACTOR: usize = 4;

/// Reads and drops up to `cap` bytes of `body`, within `timeouts`.
async fn drain<B>(body: B, cap: usize, timeouts: BodyTimeouts)
where
    B: hyper::body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + timeouts.total;
    while seen <= cap {
        match timeouts.next_frame(body.as_mut(), deadline).await {
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}
