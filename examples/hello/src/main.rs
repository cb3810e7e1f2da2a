//! `hello`: the smallest Wisp function, a `wasi:http/proxy` component.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    Ok(Response::new("Hello from Wisp".to_owned().into()))
}
