//! {{name}}: a Wisp HTTP function (a `wasi:http/proxy` component). `wisp deploy` builds it,
//! uploads it and gives it a URL; it scales to zero when idle and wakes on the next request.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/healthz" => Ok(Response::new("ok\n".to_owned().into())),
        p if p.starts_with("/echo") => {
            // The request body, back to the caller.
            let body = request.into_body().str_contents().await?.to_owned();
            Ok(Response::new(body.into()))
        }
        _ => {
            // `[env]` in wisp.toml becomes the component's environment.
            let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
            let text = format!("{greeting} from {{name}} at {path}\n");
            let mut response = Response::new(text.into());
            if path != "/" {
                *response.status_mut() = StatusCode::NOT_FOUND;
            }
            Ok(response)
        }
    }
}
