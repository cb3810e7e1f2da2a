//! `config-secret`: configuration from a ConfigMap and a Secret, both as environment variables
//! (`GREETING`, `API_TOKEN`) and as files (`/config/motd`, `/secrets/token`), as wisp.toml maps
//! them. It never prints the secret: it says whether the two copies agree and how long it is.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "(no GREETING)".into());
    let motd = std::fs::read_to_string("/config/motd").unwrap_or_else(|e| format!("(no /config/motd: {e})"));
    let token_env = std::env::var("API_TOKEN").unwrap_or_default();
    let token_file = std::fs::read_to_string("/secrets/token").unwrap_or_default();
    let secret = if token_env.is_empty() {
        "no API_TOKEN".to_owned()
    } else {
        format!(
            "API_TOKEN has {} characters; /secrets/token {}",
            token_env.len(),
            if token_file.trim() == token_env {
                "matches"
            } else {
                "differs"
            }
        )
    };
    Ok(Response::new(
        format!("{greeting}\n{}\n{secret}\n", motd.trim()).into(),
    ))
}
