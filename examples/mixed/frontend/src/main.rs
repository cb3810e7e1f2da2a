//! `frontend`: a Wasm function in front of a container service. It calls `$BACKEND_URL`
//! (a Service name such as `http://backend.default.svc`, which the pod must allow in
//! `allowedOutboundHosts`) with the request's path and answers `frontend -> <backend's body>`.

use wstd::http::body::Body;
use wstd::http::{Client, Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let base = std::env::var("BACKEND_URL").unwrap_or_else(|_| "http://backend.default.svc".into());
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let outgoing = Request::get(format!("{}{path}", base.trim_end_matches('/'))).body(Body::empty())?;
    match Client::new().send(outgoing).await {
        Ok(response) => {
            let status = response.status();
            let text = response.into_body().str_contents().await?.to_owned();
            let mut out = Response::new(format!("frontend -> {text}").into());
            *out.status_mut() = status;
            Ok(out)
        }
        Err(e) => {
            let mut out = Response::new(format!("frontend: backend {base} unreachable: {e}").into());
            *out.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(out)
        }
    }
}
