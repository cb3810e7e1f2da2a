//! One HTTP request to a function's URL, as `wisp invoke` makes it. A host under
//! `localhost` (`hello.default.localhost`) is loopback (RFC 6761), whatever the resolver says.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};

pub struct Answer {
    pub url: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
    pub elapsed: Duration,
}

/// Where to connect for `host`: loopback for `localhost` and its subdomains.
pub fn connect_host(host: &str) -> &str {
    if host == "localhost" || host.ends_with(".localhost") {
        "127.0.0.1"
    } else {
        host
    }
}

/// Send `method` (GET, or POST when there is a body) to `base` + `path` with `headers`
/// (`name:value`).
pub async fn send(
    base: &str,
    path: &str,
    method: Option<&str>,
    headers: &[String],
    body: Vec<u8>,
) -> anyhow::Result<Answer> {
    let url = join(base, path);
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: only http:// URLs can be invoked (TLS at the ingress is not built yet)");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("{url} has no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let target = format!(
        "http://{}:{port}{}",
        connect_host(authority.host()),
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let method = match method {
        Some(m) => http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow!("--method {m:?} is not an HTTP method"))?,
        None if body.is_empty() => http::Method::GET,
        None => http::Method::POST,
    };
    let mut req = http::Request::builder()
        .method(method)
        .uri(&target)
        .header(http::header::HOST, authority.as_str());
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("-H {h:?}: a header is `name: value`"))?;
        req = req.header(k.trim(), v.trim());
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body)))
        .with_context(|| format!("cannot make a request to {url}"))?;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let started = Instant::now();
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("no answer from {url} (connected to {target})"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .with_context(|| format!("the answer from {url} broke off"))?
        .to_bytes();
    Ok(Answer {
        url,
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    })
}

/// `http://h:1/` + `/a` → `http://h:1/a`.
fn join(base: &str, path: &str) -> String {
    if path.is_empty() {
        return base.to_owned();
    }
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names_are_loopback_and_paths_join() {
        assert_eq!(connect_host("hello.default.localhost"), "127.0.0.1");
        assert_eq!(connect_host("example.com"), "example.com");
        assert_eq!(join("http://h:1/", "/a"), "http://h:1/a");
        assert_eq!(join("http://h:1/api", "x"), "http://h:1/api/x");
        assert_eq!(join("http://h:1/", ""), "http://h:1/");
    }
}
