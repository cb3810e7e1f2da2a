//! Serving HTTP in process: the capability a runtime offers when it can answer a request for
//! one of its sandboxes without a socket (wasm: a fresh instance per request, called
//! directly). The node's ingress and the agent's readiness probes use it through
//! [`InProcessHttp`], never naming the runtime.
//!
//! Bodies are one boxed type each way ([`HttpBody`]), the type the ingress already carries, so
//! handing a request over costs no re-boxing of its body.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::StatusCode;

use crate::SandboxId;

/// Any error, boxed (a body's or a cause's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body handed across the contract.
pub type HttpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Why a request got no response from a sandbox served in process.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("sandbox {0} not found")]
    NotFound(SandboxId),
    #[error("sandbox {0} is not serving HTTP")]
    NotServing(SandboxId),
    #[error("the guest did not answer within {0:?}")]
    DeadlineExceeded(Duration),
    #[error("the guest exceeded its memory limit")]
    OutOfMemory,
    #[error("the guest failed: {0}")]
    Guest(String),
    #[error("cannot run the guest: {0}")]
    Unavailable(String),
    #[error(
        "namespace {namespace:?} already has {slots} requests running on this node (its share); retry shortly"
    )]
    Busy { namespace: String, slots: u32 },
}

impl HandleError {
    /// The HTTP status an ingress answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) | Self::NotServing(_) | Self::Unavailable(_) | Self::Busy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::OutOfMemory | Self::Guest(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Nothing ran: the sandbox is gone or no longer takes requests (it stopped between the
    /// pick and the call), so another backend may be tried.
    pub fn is_not_serving(&self) -> bool {
        matches!(self, Self::NotServing(_) | Self::NotFound(_))
    }
}

/// A runtime that serves some of its sandboxes' HTTP in process. Object-safe: an ingress keeps
/// an `Arc<dyn InProcessHttp>`, an agent reaches it through [`Sandbox::in_process_http`].
///
/// [`Sandbox::in_process_http`]: crate::Sandbox::in_process_http
pub trait InProcessHttp: Send + Sync {
    /// Whether `id` is a started HTTP sandbox of this runtime taking requests now (a caller
    /// checks before it picks it, so a stopping sandbox's request goes elsewhere).
    fn is_serving(&self, id: &SandboxId) -> bool;

    /// Serves one request with sandbox `id`; the response streams as the guest writes it.
    /// [`HandleError::is_not_serving`] errors mean nothing ran.
    fn handle<'a>(
        &'a self,
        id: &'a SandboxId,
        request: http::Request<HttpBody>,
    ) -> BoxFuture<'a, Result<http::Response<HttpBody>, HandleError>>;
}

#[cfg(test)]
mod tests {
    use super::HandleError;
    use crate::SandboxId;

    #[test]
    fn only_a_sandbox_that_is_gone_or_not_serving_may_be_retried() {
        let id = SandboxId::new("u", "c");
        assert!(HandleError::NotFound(id.clone()).is_not_serving());
        assert!(HandleError::NotServing(id).is_not_serving());
        assert!(!HandleError::OutOfMemory.is_not_serving());
        assert!(!HandleError::Unavailable("stopped".into()).is_not_serving());
        assert_eq!(HandleError::OutOfMemory.status().as_u16(), 500);
        assert_eq!(
            HandleError::DeadlineExceeded(std::time::Duration::from_secs(1))
                .status()
                .as_u16(),
            504
        );
    }
}
