//! The dashboard's pages. Every value shown comes from the API as the viewer; maud escapes
//! all of it.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use maud::{DOCTYPE, Markup, html};
use wisp_api::{Event, EventSeverity, Function, Namespace, Node, Pod};

use super::{Viewer, secured};
use crate::body::ApiBody;
use crate::error::ApiError;

/// A name as the API takes it in a path (no `/`, `%`, `?` or anything else that could steer a
/// request elsewhere).
fn name_ok(s: &str) -> Result<&str, ApiError> {
    if !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        Ok(s)
    } else {
        Err(ApiError::NotFound(format!("{s:?} is not a name")))
    }
}

/// A page's `<head>`: `title` · Wisp, the stylesheet and the script.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Wisp" }
            link rel="stylesheet" href="/ui/style.css";
            script src="/ui/app.js" defer {}
        }
    }
}

fn layout(viewer: &Viewer<'_>, title: &str, live: &str, main: Markup) -> Markup {
    let scope = viewer
        .namespace()
        .map_or_else(|| "cluster admin".to_owned(), |ns| format!("namespace {ns}"));
    let nav: &[(&str, &str)] = if viewer.namespace().is_some() {
        &[
            ("/ui", "Overview"),
            ("/ui/functions", "Functions"),
            ("/ui/pods", "Pods"),
            ("/ui/namespaces", "Namespace"),
        ]
    } else {
        &[
            ("/ui", "Overview"),
            ("/ui/functions", "Functions"),
            ("/ui/pods", "Pods"),
            ("/ui/nodes", "Nodes"),
            ("/ui/namespaces", "Namespaces"),
        ]
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    a.brand href="/ui" { "Wisp" }
                    nav aria-label="Main" {
                        ul {
                            @for (href, label) in nav {
                                li { a href=(href) { (label) } }
                            }
                        }
                    }
                    div.session {
                        span.scope { (scope) }
                        button #theme type="button" aria-label="Switch between light and dark theme" { "Theme" }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main data-live=(live) { (main) }
            }
        }
    }
}

/// The login page.
pub(super) fn login(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                main #main.login {
                    h1 { "Wisp" }
                    form method="post" action="/ui/login" {
                        @if let Some(e) = error { p.error role="alert" { (e) } }
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="off" required;
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Log in" }
                    }
                    p.hint { "An admin token, or a namespace's token (" code { "wisp token create -n NAMESPACE" } ")." }
                }
            }
        }
    }
}

pub(super) fn error_page(message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Error"))
            body { main #main { h1 { "Cannot show this" } p.error role="alert" { (message) } p { a href="/ui" { "Back to the overview" } } } }
        }
    }
}

/// A whole page.
pub(super) async fn page(viewer: &Viewer<'_>, segments: &[&str]) -> Result<Markup, ApiError> {
    let main = main_of(viewer, segments).await?;
    let title = match segments {
        [] => "Overview".to_owned(),
        [what] => capitalized(what),
        [what, ns, name] => format!("{} {ns}/{name}", capitalized(what.trim_end_matches('s'))),
        _ => "Wisp".to_owned(),
    };
    let live = if segments.is_empty() {
        String::from("/ui/live")
    } else {
        format!("/ui/live/{}", segments.join("/"))
    };
    Ok(layout(viewer, &title, &live, main))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// A page's `<main>` (the part live updates replace).
pub(super) async fn main_of(viewer: &Viewer<'_>, segments: &[&str]) -> Result<Markup, ApiError> {
    match segments {
        [] => overview(viewer).await,
        ["functions"] => functions(viewer).await,
        ["functions", ns, name] => function(viewer, name_ok(ns)?, name_ok(name)?).await,
        ["pods"] => pods(viewer).await,
        ["pods", ns, name] => pod(viewer, name_ok(ns)?, name_ok(name)?).await,
        ["nodes"] => nodes(viewer).await,
        ["namespaces"] => namespaces(viewer).await,
        _ => Err(ApiError::NotFound("no such page".into())),
    }
}

fn ready_of(f: &Function) -> (i32, i32) {
    f.status
        .as_ref()
        .map_or((0, 0), |s| (s.ready_replicas, s.desired_replicas))
}

/// Bytes as GiB with one decimal.
fn gib(bytes: i64) -> String {
    #[allow(clippy::cast_precision_loss)] // a display of memory sizes
    let g = bytes as f64 / f64::from(1u32 << 30);
    format!("{g:.1} GiB")
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC, as stored).
fn short_time(t: Option<&str>) -> String {
    t.map(|t| t.get(..19).unwrap_or(t).replace('T', " "))
        .unwrap_or_default()
}

/// A sparkline of `values` (oldest first) as inline SVG, `w`×`h`, with a text alternative.
fn chart(values: &[f64], w: u32, h: u32, label: &str) -> Markup {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let n = values.len().max(2) - 1;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            #[allow(clippy::cast_precision_loss)] // at most 90 points
            let x = f64::from(w) * i as f64 / n as f64;
            let y = f64::from(h)
                - 1.0
                - if max > 0.0 {
                    (f64::from(h) - 2.0) * v / max
                } else {
                    0.0
                };
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let alt = format!(
        "{label}, last {} minutes: now {:.1}, highest {max:.1}",
        values.len().div_ceil(6),
        values.last().copied().unwrap_or(0.0)
    );
    html! {
        svg.chart role="img" aria-label=(alt) width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) {
            title { (alt) }
            @if values.len() > 1 { polyline fill="none" stroke="currentColor" stroke-width="1.5" points=(points.join(" ")) {} }
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1} ms"))
}

fn events_table(events: &[Event]) -> Markup {
    html! {
        @if events.is_empty() { p.muted { "No events." } } @else {
            table {
                caption { "Events, latest first" }
                thead { tr { th scope="col" { "Type" } th scope="col" { "Reason" } th scope="col" { "Object" } th scope="col" { "Message" } th scope="col" { "Count" } th scope="col" { "Last seen" } } }
                tbody {
                    @for e in events {
                        tr.warning[matches!(e.type_, EventSeverity::Warning)] {
                            td { (format!("{:?}", e.type_)) }
                            td { (e.reason) }
                            td { (e.involved_object.kind) "/" (e.involved_object.name) }
                            td { (e.message) }
                            td { (e.count) }
                            td { time datetime=(e.last_timestamp.as_deref().unwrap_or("")) { (short_time(e.last_timestamp.as_deref())) } }
                        }
                    }
                }
            }
        }
    }
}

/// The viewer's Events (newest first), those `keep` selects, at most `n`.
async fn events(
    viewer: &Viewer<'_>,
    keep: impl Fn(&Event) -> bool,
    n: usize,
) -> Result<Vec<Event>, ApiError> {
    let mut all: Vec<Event> = viewer
        .list::<Event>("events")
        .await?
        .into_iter()
        .filter(|e| keep(e))
        .collect();
    all.sort_by(|a, b| b.last_timestamp.cmp(&a.last_timestamp));
    all.truncate(n);
    Ok(all)
}

/// The last 20 Events of object `kind` `ns/name`.
async fn events_of(viewer: &Viewer<'_>, kind: &str, ns: &str, name: &str) -> Result<Vec<Event>, ApiError> {
    events(
        viewer,
        |e| {
            e.involved_object.kind == kind
                && e.involved_object.name == name
                && e.metadata.namespace.as_deref() == Some(ns)
        },
        20,
    )
    .await
}

async fn overview(viewer: &Viewer<'_>) -> Result<Markup, ApiError> {
    let functions = viewer.list::<Function>("functions").await?;
    let pods = viewer.list::<Pod>("pods").await?;
    let nodes: Option<Vec<Node>> = match viewer.namespace() {
        None => Some(
            viewer
                .get::<wisp_api::List<Node>>("/apis/wisp.dev/v1/nodes")
                .await?
                .items,
        ),
        Some(_) => None,
    };
    let warnings = events(viewer, |e| matches!(e.type_, EventSeverity::Warning), 10).await?;
    let running = pods.iter().filter(|p| p.is_ready()).count();
    let rps: f64 = functions
        .iter()
        .filter_map(|f| f.status.as_ref()?.metrics.as_ref())
        .map(|m| m.requests_per_second)
        .sum();
    // (A sum of no floats is -0.0.)
    let rps = if rps > 0.0 { rps } else { 0.0 };
    Ok(html! {
        h1 { "Overview" }
        section aria-labelledby="totals" {
            h2 #totals { "Now" }
            dl.tiles {
                div { dt { "Functions" } dd #functions-count { (functions.len()) } }
                div { dt { "Pods ready" } dd { (running) " / " (pods.len()) } }
                div { dt { "Requests/s" } dd #total-rps { (format!("{rps:.1}")) } }
                @if let Some(nodes) = &nodes { div { dt { "Nodes ready" } dd { (nodes.iter().filter(|n| n.is_ready()).count()) " / " (nodes.len()) } } }
            }
        }
        @if let Some(nodes) = &nodes {
            section aria-labelledby="nodes-h" {
                h2 #nodes-h { "Nodes" }
                (nodes_table(nodes))
            }
        }
        section aria-labelledby="warnings" {
            h2 #warnings { "Recent warnings" }
            (events_table(&warnings))
        }
    })
}

fn nodes_table(nodes: &[Node]) -> Markup {
    html! {
        table {
            caption { "Nodes" }
            thead { tr { th scope="col" { "Name" } th scope="col" { "Ready" } th scope="col" { "Runtimes" } th scope="col" { "CPU" } th scope="col" { "Memory" } th scope="col" { "Pods" } } }
            tbody {
                @for n in nodes {
                    @let cap = n.status.as_ref().map(|s| &s.capacity);
                    tr {
                        td { (n.metadata.name) }
                        td { @if n.is_ready() { "Ready" } @else { strong { "Not ready" } } }
                        td { (n.status.as_ref().map(|s| s.runtimes.join(", ")).unwrap_or_default()) }
                        td { (cap.and_then(|c| c.get("cpu")).map(ToString::to_string).unwrap_or_default()) }
                        td { (cap.and_then(|c| c.get("memory")).map(|q| gib(q.value())).unwrap_or_default()) }
                        td { (cap.and_then(|c| c.get("pods")).map(ToString::to_string).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// A Function's URL, when it is a web address.
fn url_of(f: &Function) -> Option<&str> {
    f.status
        .as_ref()
        .and_then(|s| s.url.as_deref())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
}

async fn functions(viewer: &Viewer<'_>) -> Result<Markup, ApiError> {
    let mut fs = viewer.list::<Function>("functions").await?;
    fs.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Ok(html! {
        h1 { "Functions" }
        @if fs.is_empty() { p.muted { "No functions yet: " code { "wisp new" } " then " code { "wisp deploy" } "." } } @else {
            table #functions {
                caption { "Functions, their replicas and their traffic over the last minute" }
                thead { tr { th scope="col" { "Namespace" } th scope="col" { "Name" } th scope="col" { "URL" } th scope="col" { "Ready" } th scope="col" { "Requests/s" } th scope="col" { "15 min" } th scope="col" { "p50" } th scope="col" { "p99" } th scope="col" { "Cold starts" } } }
                tbody {
                    @for f in &fs {
                        @let ns = f.metadata.namespace.as_deref().unwrap_or_default();
                        @let m = f.status.as_ref().and_then(|s| s.metrics.as_ref());
                        @let (ready, desired) = ready_of(f);
                        tr data-function=(f.metadata.name) {
                            td { (ns) }
                            td { a href=(format!("/ui/functions/{ns}/{}", f.metadata.name)) { (f.metadata.name) } }
                            td { @if let Some(u) = url_of(f) { a href=(u) rel="noopener noreferrer" { (u) } } }
                            td { (ready) " / " (desired) }
                            td.rps { (m.map_or_else(|| "0.0".into(), |m| format!("{:.1}", m.requests_per_second))) }
                            td { (chart(&viewer.server.state.ui.history.of(ns, &f.metadata.name).iter().map(|p| p.0).collect::<Vec<_>>(), 90, 20, "Requests per second")) }
                            td { (ms(m.and_then(|m| m.p50_ms))) }
                            td { (ms(m.and_then(|m| m.p99_ms))) }
                            td { (m.map_or(0, |m| m.cold_starts)) }
                        }
                    }
                }
            }
        }
    })
}

fn pods_table(pods: &[Pod]) -> Markup {
    html! {
        table #pods {
            caption { "Pods" }
            thead { tr { th scope="col" { "Namespace" } th scope="col" { "Name" } th scope="col" { "Phase" } th scope="col" { "Ready" } th scope="col" { "Node" } th scope="col" { "Restarts" } } }
            tbody {
                @for p in pods {
                    @let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                    @let restarts: i32 = p.status.as_ref().map_or(0, |s| s.container_statuses.iter().map(|c| c.restart_count).sum());
                    tr {
                        td { (ns) }
                        td { a href=(format!("/ui/pods/{ns}/{}", p.metadata.name)) { (p.metadata.name) } }
                        td { (format!("{:?}", p.phase())) }
                        td { @if p.is_ready() { "yes" } @else { "no" } }
                        td { (p.spec.node_name.as_deref().unwrap_or("–")) }
                        td { (restarts) }
                    }
                }
            }
        }
    }
}

async fn function(viewer: &Viewer<'_>, ns: &str, name: &str) -> Result<Markup, ApiError> {
    let f: Function = viewer
        .get(&format!("/apis/wisp.dev/v1/namespaces/{ns}/functions/{name}"))
        .await?;
    let selector: String =
        form_urlencoded::byte_serialize(format!("{}={name}", wisp_api::FUNCTION_LABEL).as_bytes()).collect();
    let pods = viewer
        .get::<wisp_api::List<Pod>>(&format!(
            "/apis/wisp.dev/v1/namespaces/{ns}/pods?labelSelector={selector}"
        ))
        .await?
        .items;
    let evs = events_of(viewer, "Function", ns, name).await?;
    let m = f.status.as_ref().and_then(|s| s.metrics.as_ref());
    let (ready, desired) = ready_of(&f);
    let history = viewer.server.state.ui.history.of(ns, name);
    let rps: Vec<f64> = history.iter().map(|p| p.0).collect();
    let p99: Vec<f64> = history.iter().map(|p| p.1.unwrap_or(0.0)).collect();
    Ok(html! {
        h1 { "Function " (ns) "/" (name) }
        dl.tiles {
            div { dt { "URL" } dd { @if let Some(u) = url_of(&f) { a href=(u) rel="noopener noreferrer" { (u) } } @else { "–" } } }
            div { dt { "Ready" } dd { (ready) " / " (desired) } }
            div { dt { "Requests/s" } dd #rps { (m.map_or_else(|| "0.0".into(), |m| format!("{:.1}", m.requests_per_second))) } }
            div { dt { "p50 / p99" } dd { (ms(m.and_then(|m| m.p50_ms))) " / " (ms(m.and_then(|m| m.p99_ms))) } }
            div { dt { "Cold starts (last minute)" } dd { (m.map_or(0, |m| m.cold_starts)) } }
            div { dt { "Latest revision" } dd { (f.status.as_ref().and_then(|s| s.latest_ready_revision.as_deref()).unwrap_or("–")) } }
        }
        section aria-labelledby="charts" {
            h2 #charts { "Last 15 minutes" }
            div.charts {
                figure { (chart(&rps, 320, 80, "Requests per second")) figcaption { "Requests/s" } }
                figure { (chart(&p99, 320, 80, "p99 latency in ms")) figcaption { "p99 (ms)" } }
            }
        }
        @let traffic = f.status.as_ref().map(|s| s.traffic.as_slice()).unwrap_or_default();
        @if !traffic.is_empty() {
            section aria-labelledby="traffic" {
                h2 #traffic { "Traffic" }
                ul { @for t in traffic { li { (t.revision_name) ": " (t.percent) " %" } } }
            }
        }
        section aria-labelledby="pods-h" { h2 #pods-h { "Pods" } (pods_table(&pods)) }
        section aria-labelledby="events-h" { h2 #events-h { "Events" } (events_table(&evs)) }
    })
}

async fn pods(viewer: &Viewer<'_>) -> Result<Markup, ApiError> {
    let mut pods = viewer.list::<Pod>("pods").await?;
    pods.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Ok(html! { h1 { "Pods" } (pods_table(&pods)) })
}

async fn pod(viewer: &Viewer<'_>, ns: &str, name: &str) -> Result<Markup, ApiError> {
    let p: Pod = viewer
        .get(&format!("/apis/wisp.dev/v1/namespaces/{ns}/pods/{name}"))
        .await?;
    let evs = events_of(viewer, "Pod", ns, name).await?;
    let containers: Vec<&str> = p.spec.containers.iter().map(|c| c.name.as_str()).collect();
    Ok(html! {
        h1 { "Pod " (ns) "/" (name) }
        dl.tiles {
            div { dt { "Phase" } dd { (format!("{:?}", p.phase())) } }
            div { dt { "Ready" } dd { @if p.is_ready() { "yes" } @else { "no" } } }
            div { dt { "Node" } dd { (p.spec.node_name.as_deref().unwrap_or("–")) } }
            div { dt { "Containers" } dd { (containers.join(", ")) } }
        }
        section aria-labelledby="events-h" { h2 #events-h { "Events" } (events_table(&evs)) }
        section aria-labelledby="logs-h" {
            h2 #logs-h { "Logs" }
            // Filled by the script from the log stream (it stays when the rest is updated).
            pre #logs data-stream=(format!("/ui/logs/{ns}/{name}")) aria-label="Live logs" tabindex="0" {}
        }
    })
}

async fn nodes(viewer: &Viewer<'_>) -> Result<Markup, ApiError> {
    let nodes = viewer
        .get::<wisp_api::List<Node>>("/apis/wisp.dev/v1/nodes")
        .await?
        .items;
    Ok(html! { h1 { "Nodes" } (nodes_table(&nodes)) })
}

async fn namespaces(viewer: &Viewer<'_>) -> Result<Markup, ApiError> {
    let list: Vec<Namespace> = match viewer.namespace() {
        Some(ns) => vec![viewer.get(&format!("/apis/wisp.dev/v1/namespaces/{ns}")).await?],
        None => {
            viewer
                .get::<wisp_api::List<Namespace>>("/apis/wisp.dev/v1/namespaces")
                .await?
                .items
        }
    };
    Ok(html! {
        h1 { "Namespaces" }
        table {
            caption { "Namespaces" }
            thead { tr { th scope="col" { "Name" } th scope="col" { "Created" } } }
            tbody { @for n in &list { tr { td { (n.metadata.name) } td { (short_time(n.metadata.creation_timestamp.as_deref())) } } } }
        }
    })
}

/// `text/event-stream` of a pod's log lines (its first container's, the last 200 then new
/// ones), read from the API as the viewer, while the session lasts and for at most
/// [`super::LOGS_FOR`]; an `end` event when the log ends (the script stops: reconnecting would
/// repeat the last 200 lines). A pod that cannot be read answers 204.
pub(super) async fn log_stream(viewer: &Viewer<'_>, session: &str, ns: &str, pod: &str) -> Response<ApiBody> {
    use futures::StreamExt;
    /// A line longer than this is sent in pieces.
    const MAX_LINE: usize = 64 * 1024;
    let (Ok(ns), Ok(pod)) = (name_ok(ns), name_ok(pod)) else {
        return super::no_stream();
    };
    let Ok(p) = viewer
        .get::<Pod>(&format!("/apis/wisp.dev/v1/namespaces/{ns}/pods/{pod}"))
        .await
    else {
        return super::no_stream();
    };
    let container = p
        .spec
        .containers
        .first()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let container: String = form_urlencoded::byte_serialize(container.as_bytes()).collect();
    let path = format!(
        "/apis/wisp.dev/v1/namespaces/{ns}/pods/{pod}/log?follow=true&tailLines=200&container={container}"
    );
    let Ok(req) = Request::get(&path)
        .header(header::AUTHORIZATION, format!("Bearer {}", viewer.token))
        .body(http_body_util::Empty::<Bytes>::new())
    else {
        return super::no_stream();
    };
    let resp = viewer.call(req).await;
    if !resp.status().is_success() {
        return super::no_stream();
    }
    let server = viewer.server.clone();
    let session = session.to_owned();
    let mut partial: Vec<u8> = Vec::new();
    let lines = http_body_util::BodyStream::new(resp.into_body())
        .take_until(tokio::time::sleep(super::LOGS_FOR))
        .take_while(|frame| futures::future::ready(frame.is_ok()))
        // Logged out or expired: the stream ends with the session.
        .take_while(move |_| futures::future::ready(server.state.ui.live(&session)))
        .map(move |frame| {
            let data = frame.ok().and_then(|f| f.into_data().ok()).unwrap_or_default();
            partial.extend_from_slice(&data);
            let mut out = String::new();
            loop {
                let end = match partial.iter().position(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    None if partial.len() > MAX_LINE => partial.len(),
                    None => break,
                };
                let line: Vec<u8> = partial.drain(..end).collect();
                let line = String::from_utf8_lossy(&line).replace(['\r', '\n'], "");
                out.push_str("data: ");
                out.push_str(&line);
                out.push_str("\n\n");
            }
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(out)))
        })
        .chain(futures::stream::once(async {
            Ok(hyper::body::Frame::data(Bytes::from_static(
                b"event: end\ndata: \n\n",
            )))
        }));
    let mut r = Response::new(http_body_util::StreamBody::new(lines).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    secured(r)
}
