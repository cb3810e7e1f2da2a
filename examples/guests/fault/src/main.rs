//! `fault`: a `wasi:http/proxy` component that misbehaves on demand, so the sandbox can show
//! that a guest fault ends that request only.
//!
//! Routes: `/loop` (spins forever), `/alloc?mb=N&hold_ms=M` (allocates and touches N MiB,
//! default 1024, and holds them M ms before answering),
//! `/trap` (panics, i.e. traps), `/count` (increments a global: always 1 with a fresh instance
//! per request), `/read?path=P` (reads a file), `/env?name=N`, `/fetch?url=U` (outbound GET; answers the upstream's status and body),
//! `/mark?ms=N` (increments a counter alone on its own memory page, prints `marked N`, then
//! waits N ms before answering with it: always 1 with a fresh, fully reset instance per
//! request), anything else: `fault ok`.

use std::sync::atomic::{AtomicU32, Ordering};

use wstd::http::body::Body;
use wstd::http::{Client, Error, Request, Response, StatusCode};

static COUNT: AtomicU32 = AtomicU32::new(0);

/// A counter with a 4 KiB host page of linear memory to itself: after `/mark` increments it,
/// nothing else in the instance touches that page again.
#[repr(C, align(4096))]
struct OwnPage(AtomicU32);
static MARK: OwnPage = OwnPage(AtomicU32::new(0));

fn query<'a>(request: &'a Request<Body>, key: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let ok = StatusCode::OK;
    Ok(match request.uri().path() {
        "/loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "/alloc" => {
            let mb: usize = query(&request, "mb").and_then(|v| v.parse().ok()).unwrap_or(1024);
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mb {
                chunks.push(vec![1u8; 1 << 20]);
            }
            let total: usize = chunks.iter().map(|c| c.len()).sum();
            // Held this long before the answer (and the instance's end) gives it back.
            let hold: u64 = query(&request, "hold_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            wstd::task::sleep(wstd::time::Duration::from_millis(hold)).await;
            text(ok, format!("allocated {} MiB", total >> 20))
        }
        "/trap" => panic!("the guest traps on purpose"),
        "/count" => text(ok, format!("{}", COUNT.fetch_add(1, Ordering::SeqCst) + 1)),
        "/mark" => {
            let ms: u64 = query(&request, "ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            let n = MARK.0.fetch_add(1, Ordering::SeqCst) + 1;
            println!("marked {n}");
            wstd::task::sleep(wstd::time::Duration::from_millis(ms)).await;
            text(ok, format!("{n}"))
        }
        "/read" => {
            let path = query(&request, "path").unwrap_or("/");
            match std::fs::read_to_string(path) {
                Ok(s) => text(ok, s),
                Err(e) => text(StatusCode::FORBIDDEN, format!("read {path}: {e}")),
            }
        }
        "/write" => {
            let path = query(&request, "path").unwrap_or("/");
            match std::fs::write(path, b"written") {
                Ok(()) => text(ok, "written".into()),
                Err(e) => text(StatusCode::FORBIDDEN, format!("write {path}: {e}")),
            }
        }
        "/env" => {
            let name = query(&request, "name").unwrap_or("");
            match std::env::var(name) {
                Ok(v) => text(ok, v),
                Err(_) => text(StatusCode::NOT_FOUND, format!("{name} unset")),
            }
        }
        "/fetch" => {
            let url = query(&request, "url").unwrap_or("http://localhost/");
            let outbound = Request::get(url).body(Body::empty())?;
            match Client::new().send(outbound).await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let mut body = r.into_body();
                    let text_body = body.str_contents().await.map(str::to_owned).unwrap_or_default();
                    text(ok, format!("upstream {status}: {text_body}"))
                }
                Err(e) => text(StatusCode::BAD_GATEWAY, format!("fetch {url}: {e:?}")),
            }
        }
        _ => text(ok, "fault ok".into()),
    })
}
