//! Rendering objects: tables (comfy-table), YAML, JSON, names.

use anyhow::Context;
use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;
use wisp_api::{DynamicObject, KindInfo, WatchEvent};

use crate::cli::OutputFormat;

fn ptr<'a>(obj: &'a Value, p: &str) -> Option<&'a Value> {
    obj.pointer(p).filter(|v| !v.is_null())
}

pub(crate) fn s(obj: &Value, p: &str) -> String {
    match ptr(obj, p) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): what a tenant wrote (an image
/// name in an Event's message, an annotation) never drives the terminal.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A duration in milliseconds as `3.5ms` (empty when absent).
fn ms(obj: &Value, p: &str) -> String {
    ptr(obj, p)
        .and_then(Value::as_f64)
        .map_or_else(String::new, |v| format!("{v}ms"))
}

fn n(obj: &Value, p: &str) -> i64 {
    ptr(obj, p).and_then(Value::as_i64).unwrap_or(0)
}

fn condition(obj: &Value, type_: &str) -> String {
    ptr(obj, "/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        })
        .and_then(|c| c.get("status").and_then(Value::as_str))
        .map_or_else(
            || "Unknown".to_owned(),
            |st| {
                if st == "True" {
                    type_.to_owned()
                } else {
                    format!("Not{type_}")
                }
            },
        )
}

pub fn age(created: Option<&str>) -> String {
    let Some(ts) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    short((jiff::Timestamp::now().as_second() - ts.as_second()).max(0))
}

/// Seconds as `42s`, `5m`, `3h`, `2d`.
fn short(secs: i64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// (header, value) columns for a kind; `wide` adds the extra ones.
fn columns(kind: &KindInfo, o: &Value, wide: bool) -> Vec<(&'static str, String)> {
    let mut c = match kind.plural {
        "pods" => {
            let total = ptr(o, "/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let statuses = ptr(o, "/status/containerStatuses").and_then(Value::as_array);
            let ready = statuses.map_or(0, |cs| {
                cs.iter()
                    .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
                    .count()
            });
            let restarts: i64 = statuses.map_or(0, |cs| {
                cs.iter()
                    .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                    .sum()
            });
            vec![
                ("READY", format!("{ready}/{total}")),
                ("STATUS", s(o, "/status/phase")),
                ("RESTARTS", restarts.to_string()),
            ]
        }
        "deployments" => vec![
            (
                "READY",
                format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas")),
            ),
            ("UP-TO-DATE", n(o, "/status/updatedReplicas").to_string()),
            ("AVAILABLE", n(o, "/status/availableReplicas").to_string()),
        ],
        "replicasets" => vec![
            ("DESIRED", n(o, "/spec/replicas").to_string()),
            ("CURRENT", n(o, "/status/replicas").to_string()),
            ("READY", n(o, "/status/readyReplicas").to_string()),
        ],
        "services" => vec![("SELECTOR", s(o, "/spec/selector"))],
        "nodes" => vec![
            ("STATUS", condition(o, "Ready")),
            ("RUNTIMES", s(o, "/status/runtimes")),
        ],
        "namespaces" => vec![("STATUS", {
            let p = s(o, "/status/phase");
            if p.is_empty() { "Active".into() } else { p }
        })],
        "functions" => vec![
            ("URL", s(o, "/status/url")),
            (
                "READY",
                format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/status/desiredReplicas")
                ),
            ),
            ("LATEST", s(o, "/status/latestCreatedRevision")),
            ("REQ/S", s(o, "/status/metrics/requestsPerSecond")),
            ("P50", ms(o, "/status/metrics/p50Ms")),
            ("P99", ms(o, "/status/metrics/p99Ms")),
            ("LAST REQUEST", s(o, "/status/lastRequestTime")),
        ],
        "revisions" => vec![
            ("FUNCTION", s(o, "/metadata/labels/wisp.dev~1function")),
            ("TRAFFIC", format!("{}%", n(o, "/status/percent"))),
            (
                "READY",
                format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/status/desiredReplicas")
                ),
            ),
            ("LAST REQUEST", s(o, "/status/lastRequestTime")),
        ],
        "routes" => vec![("HOST", s(o, "/spec/host")), ("PATH", s(o, "/spec/pathPrefix"))],
        "jobs" => vec![
            ("SUCCEEDED", n(o, "/status/succeeded").to_string()),
            ("FAILED", n(o, "/status/failed").to_string()),
        ],
        "configmaps" | "secrets" => {
            vec![(
                "DATA",
                ptr(o, "/data")
                    .and_then(Value::as_object)
                    .map_or(0, serde_json::Map::len)
                    .to_string(),
            )]
        }
        _ => vec![],
    };
    if wide {
        match kind.plural {
            "pods" => {
                c.push(("NODE", s(o, "/spec/nodeName")));
                c.push(("IP", s(o, "/status/podIP")));
            }
            "deployments" | "replicasets" => c.push(("SELECTOR", s(o, "/spec/selector/matchLabels"))),
            "routes" => c.push(("BACKENDS", {
                ptr(o, "/spec/backends")
                    .and_then(Value::as_array)
                    .map_or_else(String::new, |bs| {
                        bs.iter()
                            .map(|b| format!("{}:{}", s(b, "/service"), s(b, "/weight")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
            })),
            _ => {}
        }
    }
    c
}

/// When an event was last seen (for sorting): its `lastTimestamp`, else its creation.
pub fn last_seen(obj: &DynamicObject) -> String {
    obj.body
        .get("lastTimestamp")
        .and_then(Value::as_str)
        .or(obj.metadata.creation_timestamp.as_deref())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or_else(String::new, |t| format!("{:020}", t.as_millisecond()))
}

/// `pod/web` for an event's involved object.
fn involved(o: &Value) -> String {
    let kind = s(o, "/involvedObject/kind").to_lowercase();
    format!("{kind}/{}", s(o, "/involvedObject/name"))
}

/// An event's age column: since last seen, with the span it covers when it repeated
/// (`5s (x12 over 3m)`, like kubectl).
fn event_age(o: &Value) -> String {
    let last = ptr(o, "/lastTimestamp").and_then(Value::as_str);
    let count = n(o, "/count");
    let seen = age(last.or(ptr(o, "/metadata/creationTimestamp").and_then(Value::as_str)));
    if count > 1 {
        let first = ptr(o, "/firstTimestamp").and_then(Value::as_str);
        format!("{seen} (x{count} over {})", span(first, last))
    } else {
        seen
    }
}

/// The time between two RFC 3339 stamps, as `age` writes it.
fn span(from: Option<&str>, to: Option<&str>) -> String {
    let parse = |t: Option<&str>| t.and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match (parse(from), parse(to)) {
        (Some(a), Some(b)) => short((b.as_second() - a.as_second()).max(0)),
        _ => "?".into(),
    }
}

fn event_columns(o: &Value, wide: bool) -> Vec<(&'static str, String)> {
    let mut c = vec![
        ("LAST SEEN", event_age(o)),
        ("TYPE", s(o, "/type")),
        ("REASON", s(o, "/reason")),
        ("OBJECT", involved(o)),
    ];
    if wide {
        let from = match (s(o, "/reportingComponent"), s(o, "/reportingInstance")) {
            (c, i) if i.is_empty() => c,
            (c, i) => format!("{c}, {i}"),
        };
        c.push(("FROM", from));
        c.push(("NAME", s(o, "/metadata/name")));
    }
    c.push(("MESSAGE", printable(&s(o, "/message"))));
    c
}

/// The `Events:` section of `describe`: the object's events (of this object, not of an
/// earlier one of the same name), oldest first.
pub fn events_section(obj: &DynamicObject, mut events: Vec<DynamicObject>) -> String {
    let uid = obj.metadata.uid.as_deref();
    events.retain(|e| {
        let theirs = e
            .body
            .get("involvedObject")
            .and_then(|o| o.get("uid"))
            .and_then(Value::as_str);
        theirs.is_none() || theirs == uid
    });
    if events.is_empty() {
        return "Events:       <none>".into();
    }
    events.sort_by_key(last_seen);
    let rows = events
        .iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .map(|o| {
            vec![
                s(&o, "/type"),
                s(&o, "/reason"),
                event_age(&o),
                printable(&s(&o, "/reportingComponent")),
                printable(&s(&o, "/message")),
            ]
        })
        .collect();
    let t = table(&["Type", "Reason", "Age", "From", "Message"], rows);
    let mut out = String::from("Events:\n");
    for line in t.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

fn row(
    kind: &KindInfo,
    obj: &DynamicObject,
    wide: bool,
    with_ns: bool,
) -> anyhow::Result<(Vec<&'static str>, Vec<String>)> {
    let value = serde_json::to_value(obj)?;
    let mut headers = Vec::new();
    let mut cells = Vec::new();
    if with_ns && kind.namespaced {
        headers.push("NAMESPACE");
        cells.push(obj.metadata.namespace.clone().unwrap_or_default());
    }
    if kind.plural == "events" {
        for (h, v) in event_columns(&value, wide) {
            headers.push(h);
            cells.push(v);
        }
        return Ok((headers, cells));
    }
    headers.push("NAME");
    cells.push(obj.metadata.name.clone());
    for (h, v) in columns(kind, &value, wide) {
        headers.push(h);
        cells.push(v);
    }
    headers.push("AGE");
    cells.push(age(obj.metadata.creation_timestamp.as_deref()));
    Ok((headers, cells))
}

pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}

fn say(text: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{text}");
    }
}

pub fn print_objects(
    kind: &KindInfo,
    objs: &[DynamicObject],
    format: Option<OutputFormat>,
    with_ns: bool,
) -> anyhow::Result<()> {
    match format {
        Some(OutputFormat::Json) => {
            for o in objs {
                say(&serde_json::to_string_pretty(o)?);
            }
        }
        Some(OutputFormat::Yaml) => {
            for (i, o) in objs.iter().enumerate() {
                if i > 0 {
                    say("---");
                }
                say(serde_saphyr::to_string(o)
                    .context("cannot render YAML")?
                    .trim_end());
            }
        }
        Some(OutputFormat::Name) => {
            for o in objs {
                say(&format!("{}/{}", kind.singular, o.metadata.name));
            }
        }
        Some(OutputFormat::Wide) | None => {
            let wide = format == Some(OutputFormat::Wide);
            let mut headers = Vec::new();
            let mut rows = Vec::new();
            for o in objs {
                let (h, r) = row(kind, o, wide, with_ns)?;
                headers = h;
                rows.push(r);
            }
            if !rows.is_empty() {
                say(&table(&headers, rows));
            }
        }
    }
    Ok(())
}

pub fn print_event(
    kind: &KindInfo,
    ev: &WatchEvent<DynamicObject>,
    format: Option<OutputFormat>,
    with_ns: bool,
) -> anyhow::Result<()> {
    match format {
        Some(OutputFormat::Json) => say(&serde_json::to_string(ev)?),
        _ => {
            let (_, mut cells) = row(kind, &ev.object, format == Some(OutputFormat::Wide), with_ns)?;
            cells.insert(0, format!("{:?}", ev.type_).to_uppercase());
            say(&cells.join("  "));
        }
    }
    Ok(())
}
