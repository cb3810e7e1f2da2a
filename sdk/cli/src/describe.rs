//! `wisp describe`: an object as people read it — who and what it is, the state that matters
//! for its kind (a pod's containers and why they wait, a Function's URL and replicas), then
//! the rest of its spec and status as indented `Key: value` lines, never raw YAML, and never
//! a Secret's values.

use serde_json::{Map, Value};
use wisp_api::{DynamicObject, KindInfo};

use crate::output::{age, printable, s};

/// Labels are padded to this width, like kubectl's.
const WIDTH: usize = 14;

fn line(out: &mut String, indent: usize, label: &str, value: impl std::fmt::Display) {
    let pad = " ".repeat(indent);
    let label = format!("{}:", printable(label));
    let value = printable(&value.to_string());
    out.push_str(&format!(
        "{pad}{label:<w$}{value}\n",
        w = WIDTH.max(label.len() + 1)
    ));
}

/// `restartPolicy` → `Restart Policy`, `podIP` → `Pod IP`.
fn title(key: &str) -> String {
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in key.chars() {
        if c.is_ascii_uppercase() && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit()) {
            out.push(' ');
        }
        out.push(c);
        prev = Some(c);
    }
    let mut chars = out.chars();
    chars.next().map_or_else(String::new, |f| {
        f.to_uppercase().collect::<String>() + chars.as_str()
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(x) => Some(x.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        _ => None,
    }
}

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// One field, nested objects indented under it, lists of objects as `- ` items.
fn field(out: &mut String, indent: usize, key: &str, v: &Value) {
    if empty(v) {
        return;
    }
    let label = title(key);
    match v {
        Value::Object(m) => {
            out.push_str(&format!("{}{label}:\n", " ".repeat(indent)));
            fields(out, indent + 2, m);
        }
        Value::Array(items) if items.iter().all(|i| scalar(i).is_some()) => {
            let joined: Vec<String> = items.iter().filter_map(scalar).collect();
            line(out, indent, &label, joined.join(", "));
        }
        Value::Array(items) => {
            out.push_str(&format!("{}{label}:\n", " ".repeat(indent)));
            for item in items {
                let mut sub = String::new();
                match item {
                    Value::Object(m) => fields(&mut sub, indent + 4, m),
                    other => sub.push_str(&format!(
                        "{}{}\n",
                        " ".repeat(indent + 4),
                        scalar(other).unwrap_or_default()
                    )),
                }
                // The item's first line carries the dash.
                let mut lines = sub.lines();
                if let Some(first) = lines.next() {
                    out.push_str(&format!("{}- {}\n", " ".repeat(indent + 2), first.trim_start()));
                }
                for l in lines {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        other => line(out, indent, &label, scalar(other).unwrap_or_default()),
    }
}

fn fields(out: &mut String, indent: usize, m: &Map<String, Value>) {
    for (k, v) in m {
        field(out, indent, k, v);
    }
}

fn pairs(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A condition list as `Type=Status (Reason): message` lines.
fn conditions(out: &mut String, o: &Value) {
    let Some(cs) = o.pointer("/status/conditions").and_then(Value::as_array) else {
        return;
    };
    if cs.is_empty() {
        return;
    }
    out.push_str("Conditions:\n");
    for c in cs {
        let reason = s(c, "/reason");
        let message = s(c, "/message");
        let mut text = format!("{}={}", s(c, "/type"), s(c, "/status"));
        if !reason.is_empty() {
            text.push_str(&format!(" ({reason})"));
        }
        if !message.is_empty() {
            text.push_str(&format!(": {message}"));
        }
        out.push_str(&format!("  {text}\n"));
    }
}

/// A container state as one phrase: `Running since …`, `Waiting: CrashLoopBackOff (…)`.
fn state(st: &Value) -> String {
    if let Some(r) = st.get("running") {
        return format!("Running since {}", s(r, "/startedAt"));
    }
    if let Some(w) = st.get("waiting") {
        let message = s(w, "/message");
        return if message.is_empty() {
            format!("Waiting: {}", s(w, "/reason"))
        } else {
            format!("Waiting: {} ({message})", s(w, "/reason"))
        };
    }
    if let Some(t) = st.get("terminated") {
        return format!(
            "Terminated: {} (exit code {}) at {}",
            s(t, "/reason"),
            s(t, "/exitCode"),
            s(t, "/finishedAt")
        );
    }
    "Unknown".into()
}

fn pod(out: &mut String, o: &Value) -> &'static [&'static str] {
    line(out, 0, "Node", or_none(s(o, "/spec/nodeName")));
    let mut phase = s(o, "/status/phase");
    let reason = s(o, "/status/reason");
    if !reason.is_empty() {
        phase.push_str(&format!(" ({reason})"));
    }
    line(out, 0, "Status", or_none(phase));
    let message = s(o, "/status/message");
    if !message.is_empty() {
        line(out, 0, "Message", message);
    }
    line(out, 0, "IP", or_none(s(o, "/status/podIP")));
    let statuses = o.pointer("/status/containerStatuses").and_then(Value::as_array);
    out.push_str("Containers:\n");
    for c in o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = s(c, "/name");
        out.push_str(&format!("  {name}:\n"));
        if let Some(image) = c.get("image").and_then(Value::as_str) {
            line(out, 4, "Image", image);
        }
        if let Some(wasm) = c.get("wasm").and_then(Value::as_str) {
            line(out, 4, "Wasm", wasm);
        }
        let st = statuses.and_then(|ss| ss.iter().find(|st| s(st, "/name") == name));
        match st {
            Some(st) => {
                line(
                    out,
                    4,
                    "State",
                    st.get("state").map_or_else(|| "Unknown".into(), state),
                );
                if let Some(last) = st.get("lastState").filter(|l| !empty(l)) {
                    line(out, 4, "Last State", state(last));
                }
                line(out, 4, "Ready", s(st, "/ready"));
                line(out, 4, "Restart Count", s(st, "/restartCount"));
            }
            None => line(out, 4, "State", "Not started"),
        }
        let mut rest = c.as_object().cloned().unwrap_or_default();
        for k in ["name", "image", "wasm"] {
            rest.remove(k);
        }
        fields(out, 4, &rest);
    }
    conditions(out, o);
    &[
        "containers",
        "nodeName",
        "phase",
        "reason",
        "message",
        "podIP",
        "containerStatuses",
        "conditions",
    ]
}

fn function(out: &mut String, o: &Value) -> &'static [&'static str] {
    line(out, 0, "URL", or_none(s(o, "/status/url")));
    line(
        out,
        0,
        "Replicas",
        format!(
            "{} ready of {} desired",
            s(o, "/status/readyReplicas").parse::<i64>().unwrap_or(0),
            s(o, "/status/desiredReplicas").parse::<i64>().unwrap_or(0)
        ),
    );
    line(out, 0, "Latest", or_none(s(o, "/status/latestCreatedRevision")));
    line(out, 0, "Last Request", or_none(s(o, "/status/lastRequestTime")));
    conditions(out, o);
    &[
        "url",
        "readyReplicas",
        "desiredReplicas",
        "latestCreatedRevision",
        "lastRequestTime",
        "conditions",
    ]
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

/// Everything but `skip` of a top-level section (`spec`, `status`), under its title.
fn section(out: &mut String, name: &str, v: &Value, skip: &[&str]) {
    let mut m = match v {
        Value::Object(m) => m.clone(),
        other => {
            field(out, 0, name, other);
            return;
        }
    };
    m.retain(|k, v| !skip.contains(&k.as_str()) && !empty(v));
    if m.is_empty() {
        return;
    }
    out.push_str(&format!("{}:\n", title(name)));
    fields(out, 2, &m);
}

pub fn describe(kind: &KindInfo, obj: &DynamicObject) -> String {
    let m = &obj.metadata;
    let o = serde_json::to_value(obj).unwrap_or_default();
    let mut out = String::new();
    line(&mut out, 0, "Name", &m.name);
    if let Some(ns) = &m.namespace {
        line(&mut out, 0, "Namespace", ns);
    }
    line(&mut out, 0, "Kind", kind.kind);
    line(&mut out, 0, "Labels", pairs(&m.labels));
    if !m.annotations.is_empty() {
        line(&mut out, 0, "Annotations", pairs(&m.annotations));
    }
    line(
        &mut out,
        0,
        "Created",
        format!(
            "{} ({} ago)",
            m.creation_timestamp.as_deref().unwrap_or("?"),
            age(m.creation_timestamp.as_deref())
        ),
    );
    for r in &m.owner_references {
        line(&mut out, 0, "Controlled By", format!("{}/{}", r.kind, r.name));
    }
    if m.deletion_timestamp.is_some() {
        line(
            &mut out,
            0,
            "Deleting",
            "since ".to_owned() + m.deletion_timestamp.as_deref().unwrap_or("?"),
        );
    }
    let skip: &[&str] = match kind.plural {
        "pods" => pod(&mut out, &o),
        "functions" => function(&mut out, &o),
        _ => &[],
    };
    for (name, v) in &obj.body {
        match (kind.plural, name.as_str()) {
            // Never a Secret's values: their keys and sizes.
            ("secrets", "data" | "stringData") => {
                let sizes = v
                    .as_object()
                    .map(|d| {
                        d.iter()
                            .map(|(k, v)| {
                                let len = v.as_str().map_or(0, |b| b.len() / 4 * 3);
                                format!("{k}: about {len} bytes")
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                out.push_str("Data:\n");
                for l in sizes {
                    out.push_str(&format!("  {l}\n"));
                }
            }
            (_, "spec" | "status") => section(&mut out, name, v, skip),
            _ => field(&mut out, 0, name, v),
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> DynamicObject {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn a_pod_reads_as_its_node_state_and_containers_not_yaml() {
        let kind = wisp_api::kind_by_plural("pods").expect("pods");
        let text = describe(
            kind,
            &obj(json!({
                "apiVersion": "wisp.dev/v1", "kind": "Pod",
                "metadata": {"name": "crash", "namespace": "default", "labels": {"app": "c"},
                             "creationTimestamp": "2026-12-07T10:00:00Z"},
                "spec": {"restartPolicy": "Always", "containers": [
                    {"name": "main", "wasm": "sha256:abc", "args": ["exit", "3"]}]},
                "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [
                    {"name": "main", "ready": false, "restartCount": 4,
                     "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 8s"}},
                     "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "finishedAt": "t"}}}]}
            })),
        );
        for want in [
            "Name:         crash",
            "Labels:       app=c",
            "Status:       Running",
            "Containers:\n  main:\n    Wasm:         sha256:abc",
            "State:        Waiting: CrashLoopBackOff (back-off 8s)",
            "Last State:   Terminated: Error (exit code 3) at t",
            "Restart Count: 4",
            "Args:         exit, 3",
            "Restart Policy: Always",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        assert!(
            !text.contains("containerStatuses") && !text.contains("{"),
            "{text}"
        );
    }

    #[test]
    fn a_secret_shows_its_keys_never_its_values() {
        let kind = wisp_api::kind_by_plural("secrets").expect("secrets");
        let text = describe(
            kind,
            &obj(json!({
                "apiVersion": "wisp.dev/v1", "kind": "Secret",
                "metadata": {"name": "db", "namespace": "default"},
                "data": {"password": "aHVudGVyMg=="}
            })),
        );
        assert!(text.contains("password: about 9 bytes"), "{text}");
        let text = describe(
            kind,
            &obj(json!({
                "apiVersion": "wisp.dev/v1", "kind": "Secret",
                "metadata": {"name": "x", "namespace": "default", "annotations": {"a": "\u{1b}[2Jcleared\nforged: line"}}
            })),
        );
        assert!(
            !text.contains('\u{1b}') && text.contains("\\u{1b}[2Jcleared\\nforged"),
            "{text}"
        );
        assert!(!text.contains("aHVudGVyMg"), "{text}");
    }

    #[test]
    fn nested_lists_and_names_read_as_words() {
        assert_eq!(title("podIP"), "Pod IP");
        assert_eq!(title("scaleToZeroAfter"), "Scale To Zero After");
        let mut out = String::new();
        field(
            &mut out,
            0,
            "ports",
            &json!([{"containerPort": 8080, "protocol": "TCP"}, {"containerPort": 9090}]),
        );
        assert_eq!(
            out,
            "Ports:\n  - Container Port: 8080\n    Protocol:     TCP\n  - Container Port: 9090\n"
        );
    }
}
