//! The dashboard at `/ui`: server-rendered pages (maud), one stylesheet and one small script
//! embedded in the binary, live updates over server-sent events.
//!
//! It holds no authority of its own: a person logs in with a token (a form; the session is an
//! `HttpOnly`, `SameSite=Strict` cookie naming it, server side), and every page is made of API
//! requests with that token, through the same authentication, authorization and fairness as
//! any client's — a namespace token's pages show its namespace only, because the API shows it
//! nothing else. Every form carries the session's CSRF token; the login form a double-submit
//! one. Pages are sent with a strict Content-Security-Policy (no inline script or style).

mod pages;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::ApiServer;
use crate::body::{ApiBody, full};
use crate::error::ApiError;

/// `__Host-`: set by this host only, over TLS, for every path (a sibling host cannot plant it).
const SESSION_COOKIE: &str = "__Host-wisp_session";
const LOGIN_CSRF_COOKIE: &str = "__Host-wisp_login_csrf";
/// At most this many sessions per token; a further login ends its oldest.
const SESSIONS_PER_TOKEN: usize = 8;
/// A log stream lasts at most this long (the page's script starts another).
const LOGS_FOR: Duration = Duration::from_secs(1800);
/// A session lasts this long after its login.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions are kept; a login past it drops the oldest.
const MAX_SESSIONS: usize = 10_000;
/// A form body is read up to this size.
const MAX_FORM: usize = 16 * 1024;
/// How often a live page is rendered again, and for how long one stream lasts (the script
/// reconnects).
const LIVE_EVERY: Duration = Duration::from_secs(2);
const LIVE_FOR: Duration = Duration::from_secs(300);

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("app.js");

struct Session {
    token: String,
    csrf: String,
    created: Instant,
}

/// The dashboard's sessions, and the history its charts draw.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    history: History,
}

/// How often each Function's figures are kept for the charts, and how many (15 minutes).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SAMPLES: usize = 90;

/// Each Function's requests/s and p99 (its status's last-minute summary), every
/// [`SAMPLE_EVERY`] for the last 15 minutes, by `namespace/name`.
#[derive(Default)]
struct History {
    map: Mutex<HashMap<String, VecDeque<Sample>>>,
}

/// Requests/s and p99 (ms) at one moment.
type Sample = (f64, Option<f64>);

impl History {
    fn of(&self, ns: &str, name: &str) -> Vec<Sample> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&format!("{ns}/{name}"))
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Keeps one point of every Function's figures (read from the store: the charts are drawn
/// only for Functions the viewer's own API requests return).
pub(crate) async fn sample(state: &crate::State) {
    let Some(kind) = wisp_api::kind_by_plural("functions") else {
        return;
    };
    let target = crate::resources::Target {
        kind,
        namespace: None,
        name: None,
    };
    let listing = match state.store.list(&target.prefix()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the Functions for the dashboard's charts");
            return;
        }
    };
    let mut seen = HashMap::new();
    for kv in &listing.items {
        let Ok(f) = serde_json::from_slice::<wisp_api::Function>(&kv.value) else {
            continue;
        };
        let m = f.status.as_ref().and_then(|s| s.metrics.as_ref());
        let point = (m.map_or(0.0, |m| m.requests_per_second), m.and_then(|m| m.p99_ms));
        let key = format!(
            "{}/{}",
            f.metadata.namespace.as_deref().unwrap_or_default(),
            f.metadata.name
        );
        seen.insert(key, point);
    }
    let mut map = state
        .ui
        .history
        .map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.retain(|k, _| seen.contains_key(k));
    for (k, p) in seen {
        let q = map.entry(k).or_default();
        if q.len() >= SAMPLES {
            q.pop_front();
        }
        q.push_back(p);
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 24];
    // getrandom fails only where the OS has no randomness; a zeroed id would then be refused
    // below (never stored).
    if getrandom::fill(&mut b).is_err() {
        return String::new();
    }
    hex::encode(b)
}

impl Sessions {
    fn create(&self, token: String) -> Option<(String, String)> {
        let (id, csrf) = (random_hex(), random_hex());
        if id.is_empty() || csrf.is_empty() {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        // One token's logins end its own oldest sessions, never another's.
        let oldest_of = |map: &HashMap<String, Session>, token: Option<&str>| {
            map.iter()
                .filter(|(_, s)| token.is_none_or(|t| s.token == t))
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        };
        if map.values().filter(|s| s.token == token).count() >= SESSIONS_PER_TOKEN
            && let Some(oldest) = oldest_of(&map, Some(&token))
        {
            map.remove(&oldest);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = oldest_of(&map, None)
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                token,
                csrf: csrf.clone(),
                created: Instant::now(),
            },
        );
        Some((id, csrf))
    }

    /// The session's (token, CSRF token), if it is live.
    fn get(&self, id: &str) -> Option<(String, String)> {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id)
            .filter(|s| s.created.elapsed() < SESSION_TTL)
            .map(|s| (s.token.clone(), s.csrf.clone()))
    }

    fn live(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
}

fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Constant-time equality of two secrets.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secured(mut resp: Response<ApiBody>) -> Response<ApiBody> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

fn html(code: StatusCode, page: maud::Markup) -> Response<ApiBody> {
    let mut r = Response::new(full(page.into_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secured(r)
}

fn redirect(to: &str) -> Response<ApiBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secured(r)
}

fn asset(body: &'static str, kind: &'static str) -> Response<ApiBody> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    secured(r)
}

fn set_cookie(resp: &mut Response<ApiBody>, name: &str, value: &str, max_age: u64) {
    let c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Reads an `application/x-www-form-urlencoded` body: bounded in size and in time, as every
/// body the server reads (a client that trickles it is cut off).
async fn form<B>(server: &ApiServer, req: Request<B>) -> Result<HashMap<String, String>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let bytes =
        crate::body::read_limited(&parts.headers, body, MAX_FORM, server.state.config.body_timeouts).await?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

/// What a page is made with: the API, as the person logged in.
pub(crate) struct Viewer<'a> {
    server: &'a ApiServer,
    token: String,
    pub(crate) csrf: String,
    pub(crate) who: crate::WhoAmI,
}

impl Viewer<'_> {
    /// GET `path` on the API with the viewer's token.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let req = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| ApiError::Internal(format!("{path}: {e}")))?;
        let resp = self.call(req).await;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::Internal(format!("{path}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<wisp_api::Status>(&body)
                .map(|s| s.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(match status.as_u16() {
                401 => ApiError::Unauthorized(message),
                403 => ApiError::Forbidden(message),
                404 => ApiError::NotFound(message),
                429 => ApiError::TooManyRequests {
                    message,
                    retry_after_secs: 1,
                },
                503 => ApiError::Unavailable(message),
                _ => ApiError::Internal(format!("{path}: {status}: {message}")),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::Internal(format!("{path}: {e}")))
    }

    /// The server's handler, as a boxed `Send` future (the handler's future holds this one: the
    /// box ends the cycle).
    pub(crate) fn call(
        &self,
        req: Request<http_body_util::Empty<Bytes>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ApiBody>> + Send + '_>> {
        Box::pin(self.server.handle(req))
    }

    /// The namespace the viewer's pages show: its own for a namespace token, all for the
    /// admin.
    pub(crate) fn namespace(&self) -> Option<&str> {
        self.who.namespace.as_deref()
    }

    /// A list of `plural` in the viewer's namespace (all of them for the admin).
    pub(crate) async fn list<T: DeserializeOwned + Default>(&self, plural: &str) -> Result<Vec<T>, ApiError> {
        let path = match self.namespace() {
            Some(ns) => format!("/apis/wisp.dev/v1/namespaces/{ns}/{plural}"),
            None => format!("/apis/wisp.dev/v1/{plural}"),
        };
        Ok(self.get::<wisp_api::List<T>>(&path).await?.items)
    }
}

impl ApiServer {
    /// Everything under `/ui`.
    pub(crate) async fn ui<B>(&self, req: Request<B>, segments: &[&str]) -> Response<ApiBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        match (&method, segments) {
            (&Method::GET, ["style.css"]) => return asset(STYLE, "text/css; charset=utf-8"),
            (&Method::GET, ["app.js"]) => return asset(SCRIPT, "text/javascript; charset=utf-8"),
            (&Method::GET, ["login"]) => {
                let csrf = random_hex();
                let mut r = html(StatusCode::OK, pages::login(&csrf, None));
                set_cookie(&mut r, LOGIN_CSRF_COOKIE, &csrf, 3600);
                return r;
            }
            (&Method::POST, ["login"]) => return self.login(req).await,
            _ => {}
        }
        let session = cookie(&req, SESSION_COOKIE).map(str::to_owned);
        let Some((token, csrf)) = session.as_deref().and_then(|id| self.state.ui.get(id)) else {
            return redirect("/ui/login");
        };
        if method == Method::POST {
            // Every form carries the session's CSRF token.
            let fields = match form(self, req).await {
                Ok(f) => f,
                Err(e) => return html(StatusCode::BAD_REQUEST, pages::error_page(&e.to_string())),
            };
            if !fields.get("csrf").is_some_and(|c| same(c, &csrf)) {
                return html(
                    StatusCode::FORBIDDEN,
                    pages::error_page("the form's CSRF token does not match this session: reload the page"),
                );
            }
            return match segments {
                ["logout"] => {
                    if let Some(id) = &session {
                        self.state.ui.remove(id);
                    }
                    let mut r = redirect("/ui/login");
                    set_cookie(&mut r, SESSION_COOKIE, "", 0);
                    r
                }
                _ => html(StatusCode::NOT_FOUND, pages::error_page("no such form")),
            };
        }
        if method != Method::GET {
            return html(
                StatusCode::METHOD_NOT_ALLOWED,
                pages::error_page("GET or POST only"),
            );
        }
        let mut viewer = Viewer {
            server: self,
            token,
            csrf,
            who: crate::WhoAmI::default(),
        };
        match viewer.get::<crate::WhoAmI>("/apis/wisp.dev/v1/whoami").await {
            Ok(w) if matches!(w.kind.as_str(), "admin" | "namespace") => viewer.who = w,
            Ok(w) => {
                return html(
                    StatusCode::FORBIDDEN,
                    pages::error_page(&format!(
                        "the dashboard is for the admin and namespace tokens, not a {} credential",
                        w.kind
                    )),
                );
            }
            // The token was revoked (or its namespace deleted) since the login.
            Err(ApiError::Unauthorized(_)) => {
                if let Some(id) = &session {
                    self.state.ui.remove(id);
                }
                return redirect("/ui/login");
            }
            Err(e) => {
                return html(
                    StatusCode::from_u16(e.code()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    pages::error_page(&e.to_string()),
                );
            }
        }
        let session = session.unwrap_or_default();
        match segments {
            ["live", rest @ ..] => {
                live(
                    self,
                    viewer,
                    session,
                    rest.iter().map(|s| (*s).to_owned()).collect(),
                )
                .await
            }
            ["logs", ns, pod] => pages::log_stream(&viewer, &session, ns, pod).await,
            _ => match pages::page(&viewer, segments).await {
                Ok(markup) => html(StatusCode::OK, markup),
                Err(e) => html(
                    StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    pages::error_page(&e.to_string()),
                ),
            },
        }
    }

    async fn login<B>(&self, req: Request<B>) -> Response<ApiBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let expected = cookie(&req, LOGIN_CSRF_COOKIE).map(str::to_owned);
        let fields = match form(self, req).await {
            Ok(f) => f,
            Err(e) => return html(StatusCode::BAD_REQUEST, pages::error_page(&e.to_string())),
        };
        let fresh = random_hex();
        let again = |code, msg: &str| {
            let mut r = html(code, pages::login(&fresh, Some(msg)));
            set_cookie(&mut r, LOGIN_CSRF_COOKIE, &fresh, 3600);
            r
        };
        let csrf_ok = match (expected, fields.get("csrf")) {
            (Some(e), Some(f)) => !e.is_empty() && same(&e, f),
            _ => false,
        };
        if !csrf_ok {
            return again(StatusCode::FORBIDDEN, "the form expired: log in again");
        }
        let token = fields
            .get("token")
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        if token.is_empty() {
            return again(StatusCode::BAD_REQUEST, "token: a token is needed");
        }
        let viewer = Viewer {
            server: self,
            token: token.clone(),
            csrf: String::new(),
            who: crate::WhoAmI::default(),
        };
        match viewer.get::<crate::WhoAmI>("/apis/wisp.dev/v1/whoami").await {
            Ok(w) if matches!(w.kind.as_str(), "admin" | "namespace") => {}
            Ok(w) => {
                return again(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "token: a {} credential cannot use the dashboard (admin or namespace tokens only)",
                        w.kind
                    ),
                );
            }
            Err(ApiError::Unauthorized(_)) => {
                return again(StatusCode::UNAUTHORIZED, "token: not a valid token");
            }
            Err(e) => {
                return again(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot check the token: {e}"),
                );
            }
        }
        let Some((id, _)) = self.state.ui.create(token) else {
            return again(StatusCode::SERVICE_UNAVAILABLE, "no randomness for a session id");
        };
        let mut r = redirect("/ui");
        set_cookie(&mut r, SESSION_COOKIE, &id, SESSION_TTL.as_secs());
        set_cookie(&mut r, LOGIN_CSRF_COOKIE, "", 0);
        r
    }
}

/// One server-sent event named `name` with `html` as its data, a `data:` field per line (a
/// carriage return would end a line too: it is dropped).
fn event(name: &str, html: &str) -> Bytes {
    let mut out = format!("event: {name}\n");
    for line in html.replace('\r', "").split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// 204: tells the page's `EventSource` to stop reconnecting.
fn no_stream() -> Response<ApiBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    secured(r)
}

/// `text/event-stream` of a page's `<main>`, rendered again every [`LIVE_EVERY`] (a `main`
/// event with the HTML) for [`LIVE_FOR`] while the session lasts; the script swaps it in and
/// reconnects. A page that cannot be rendered now (a pod gone, a refusal) answers 204, which
/// stops the reconnecting.
async fn live(
    server: &ApiServer,
    viewer: Viewer<'_>,
    session: String,
    segments: Vec<String>,
) -> Response<ApiBody> {
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let Ok(first) = pages::main_of(&viewer, &seg).await else {
        return no_stream();
    };
    let first = event("main", &first.into_string());
    let server = server.clone();
    let Viewer { token, csrf, who, .. } = viewer;
    let stopping = server.state.shutdown.clone();
    let started = Instant::now();
    let stream = futures::stream::unfold(Some(first), move |ready| {
        let server = server.clone();
        let (token, csrf, who) = (token.clone(), csrf.clone(), who.clone());
        let (segments, session) = (segments.clone(), session.clone());
        let stopping = stopping.clone();
        async move {
            if let Some(first) = ready {
                return Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(first)), None));
            }
            tokio::select! {
                () = tokio::time::sleep(LIVE_EVERY) => {}
                () = stopping.cancelled() => return None,
            }
            // Logged out or expired: the stream ends with the session.
            if started.elapsed() > LIVE_FOR || !server.state.ui.live(&session) {
                return None;
            }
            let viewer = Viewer {
                server: &server,
                token,
                csrf,
                who,
            };
            let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
            let main = pages::main_of(&viewer, &seg).await.ok()?;
            Some((
                Ok(hyper::body::Frame::data(event("main", &main.into_string()))),
                None,
            ))
        }
    });
    let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    secured(r)
}

#[cfg(test)]
mod tests;
