//! User commands: apply, get, describe, delete, token create|list|revoke.

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use serde_json::Value;
use wisp_api::{KindInfo, kind_by_name};
use wisp_client::{Client, ClientError, ListParams};

use crate::cli::{
    ApplyArgs, DeleteArgs, DescribeArgs, GetArgs, Global, LogsArgs, OutputFormat, TokenCreateArgs,
};
use crate::manifests::{Document, read_all};
use crate::output;

pub fn client(global: &Global) -> anyhow::Result<Client> {
    client_trusting(global, None)
}

/// [`client`], trusting `pinned` (PEM) as the server's CA when given (a CA read by its
/// fingerprint: `wisp node --ca-cert-hash`).
pub fn client_trusting(global: &Global, pinned: Option<String>) -> anyhow::Result<Client> {
    let path = global
        .config
        .clone()
        .unwrap_or_else(wisp_client::Config::default_path);
    let file = match (&global.server, &global.token) {
        (Some(_), Some(_)) => None,
        _ => Some(wisp_client::Config::load(&path)?),
    };
    let server = global
        .server
        .clone()
        .or_else(|| file.as_ref().map(|f| f.server.clone()));
    let token = global
        .token
        .clone()
        .or_else(|| file.as_ref().map(|f| f.token.clone()));
    let ca = match &global.ca_file {
        _ if pinned.is_some() => pinned,
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--ca-file {}: cannot read it", f.display()))?,
        ),
        // The config's CA, also when --server and --token are given, for the same server.
        None => match file {
            Some(f) => f.ca,
            None => wisp_client::Config::load(&path)
                .ok()
                .filter(|f| server.as_deref() == Some(f.server.as_str()))
                .and_then(|f| f.ca),
        },
    };
    if let (Some(f), Some(s)) = (&global.ca_file, &server)
        && s.starts_with("http://")
    {
        bail!(
            "--ca-file {} is given but the server {s} is plain HTTP: the token would cross the \
             network in clear text; use its https:// URL",
            f.display()
        );
    }
    match (server, token) {
        (Some(s), Some(t)) => Client::with_ca(&s, &t, ca.as_deref()).with_context(|| match &global.ca_file {
            Some(f) => format!("--ca-file {}", f.display()),
            None => format!("the CA in {}", path.display()),
        }),
        _ => bail!(
            "no server or token: pass --server/--token or write {}",
            path.display()
        ),
    }
}

/// `wisp context list|use|set`.
pub fn context(global: &Global, command: crate::cli::ContextCommand) -> anyhow::Result<()> {
    use crate::cli::ContextCommand;
    let path = global
        .config
        .clone()
        .unwrap_or_else(wisp_client::Config::default_path);
    let mut file = wisp_client::config::ConfigFile::read(&path)?;
    let current = file.current().map(|(name, _)| name);
    match command {
        ContextCommand::List => {
            let all = file.all();
            if all.is_empty() {
                bail!(
                    "no contexts in {} (`wisp up` writes one, `wisp context set` adds one)",
                    path.display()
                );
            }
            for (name, c) in all {
                let mark = if current.as_deref() == Some(name.as_str()) {
                    "*"
                } else {
                    " "
                };
                say(&format!("{mark} {name:<16} {}", c.server));
            }
            Ok(())
        }
        ContextCommand::Use { name } => {
            let all = file.all();
            if !all.contains_key(&name) {
                let known: Vec<String> = all.into_keys().collect();
                bail!(
                    "no context {name:?} in {}; there are: {}",
                    path.display(),
                    known.join(", ")
                );
            }
            if let Some((legacy, c)) = file.current().filter(|_| file.current_context.is_none()) {
                file.set(&legacy, c);
            }
            file.current_context = Some(name.clone());
            file.write(&path)?;
            say(&format!("current context: {name}"));
            Ok(())
        }
        ContextCommand::Set(args) => {
            // Only the same context's values carry over: a new context never inherits another
            // cluster's token.
            let base = file.all().get(&args.name).cloned();
            let server = args
                .server
                .or_else(|| base.as_ref().map(|c| c.server.clone()))
                .ok_or_else(|| anyhow!("context {:?} needs --context-server", args.name))?;
            let token = args
                .token
                .or_else(|| base.as_ref().map(|c| c.token.clone()))
                .ok_or_else(|| anyhow!("context {:?} needs --context-token", args.name))?;
            if args.namespace.is_some() {
                bail!("--context-namespace is not supported yet: pass -n or set WISP_NAMESPACE");
            }
            let ca = match &args.ca_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("--context-ca-file {}: cannot read it", f.display()))?,
                ),
                None => base.and_then(|c| c.ca),
            };
            if let Some(pem) = &ca {
                wisp_client::Client::with_ca(&server, &token, Some(pem))
                    .with_context(|| "--context-ca-file: not a PEM certificate")?;
            }
            file.set(&args.name, wisp_client::Config { server, token, ca });
            file.write(&path)?;
            say(&format!("context {} set", args.name));
            Ok(())
        }
    }
}

pub fn kind(name: &str) -> anyhow::Result<&'static KindInfo> {
    kind_by_name(name).ok_or_else(|| {
        let known: Vec<&str> = wisp_api::KINDS.iter().map(|k| k.plural).collect();
        anyhow!("unknown kind {name:?}; known kinds: {}", known.join(", "))
    })
}

/// Render an API error with its field causes.
pub fn describe_error(e: &ClientError) -> String {
    match e {
        ClientError::Api(status) => {
            let mut out = status.message.clone();
            if let Some(details) = &status.details {
                for c in &details.causes {
                    out.push_str(&format!("\n  - {}: {}", c.field, c.message));
                }
            }
            out
        }
        // The whole chain: "cannot reach the Wisp API at …: connection refused".
        other => {
            let mut out = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                let text = c.to_string();
                if !out.contains(&text) {
                    out.push_str(": ");
                    out.push_str(&text);
                }
                cause = c.source();
            }
            out
        }
    }
}

fn namespace_for(kind: &KindInfo, doc_ns: Option<&str>, flag: Option<&str>) -> Option<String> {
    kind.namespaced
        .then(|| doc_ns.or(flag).unwrap_or("default").to_owned())
}

struct Resolved {
    kind: &'static KindInfo,
    namespace: Option<String>,
    name: String,
}

fn resolve(doc: &Document, flag_ns: Option<&str>) -> anyhow::Result<Resolved> {
    let kind_name = doc
        .value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{}: kind: required", doc.origin))?;
    let kind = kind_by_name(kind_name)
        .filter(|k| k.kind == kind_name)
        .ok_or_else(|| anyhow!("{}: kind: unknown kind {kind_name:?}", doc.origin))?;
    let meta = doc.value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let doc_ns = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str);
    Ok(Resolved {
        kind,
        namespace: namespace_for(kind, doc_ns, flag_ns),
        name,
    })
}

pub(crate) fn say(line: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
}

fn complain(line: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{line}");
    }
}

pub async fn apply(global: &Global, args: ApplyArgs) -> anyhow::Result<()> {
    let docs = read_all(&args.files)?;
    if docs.is_empty() {
        bail!("no objects found in {}", args.files.join(", "));
    }
    let client = client(global)?;
    let mut failures = 0;
    for doc in &docs {
        let doc = match upload_components(&client, doc).await {
            Ok(d) => d,
            Err(e) => {
                failures += 1;
                complain(&format!("error: {e:#}"));
                continue;
            }
        };
        if let Err(e) = apply_one(&client, &doc, args.namespace.as_deref()).await {
            failures += 1;
            complain(&format!("error: {e:#}"));
        }
    }
    if failures > 0 {
        bail!("{failures} of {} objects failed", docs.len());
    }
    Ok(())
}

/// Component files named by `wasm:` (relative to the manifest) are uploaded to the API's
/// blob store and replaced by their digests, so any node can fetch them.
async fn upload_components(client: &Client, doc: &Document) -> anyhow::Result<Document> {
    let mut out = Document {
        origin: doc.origin.clone(),
        value: doc.value.clone(),
        base: doc.base.clone(),
    };
    for slot in crate::manifests::component_files(&mut out.value) {
        let name = slot.as_str().unwrap_or_default().to_owned();
        let path = doc.base.join(&name);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: wasm: cannot read component file {name:?} (looked at {})",
                doc.origin,
                path.display()
            )
        })?;
        let digest = client
            .put_blob(bytes::Bytes::from(bytes))
            .await
            .with_context(|| format!("{}: cannot upload {}", doc.origin, path.display()))?;
        *slot = Value::from(digest);
    }
    Ok(out)
}

async fn apply_one(client: &Client, doc: &Document, flag_ns: Option<&str>) -> anyhow::Result<()> {
    let r = resolve(doc, flag_ns)?;
    let ns = r.namespace.as_deref();
    let label = format!("{}/{}", r.kind.singular, r.name);
    let fail = |e: ClientError| anyhow!("{} {label}: {}", doc.origin, describe_error(&e));
    // Read, then replace at the revision read. A controller writing the object's status in
    // between makes that a 409: read again and retry (the author's fields still win).
    for _ in 0..8 {
        let existing = if r.name.is_empty() {
            None
        } else {
            match client.get_dyn(r.kind, ns, &r.name).await {
                Ok(o) => Some(o),
                Err(e) if e.code() == Some(404) => None,
                Err(e) => return Err(fail(e)),
            }
        };
        let Some(current) = existing else {
            client.create_dyn(r.kind, ns, &doc.value).await.map_err(fail)?;
            say(&format!("{label} created"));
            return Ok(());
        };
        let mut value = doc.value.clone();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert(
                "resourceVersion".into(),
                Value::from(current.metadata.resource_version.clone()),
            );
        }
        match client.replace_dyn(r.kind, ns, &r.name, &value).await {
            Ok(updated) => {
                let verb = if updated.metadata.resource_version == current.metadata.resource_version {
                    "unchanged"
                } else {
                    "configured"
                };
                say(&format!("{label} {verb}"));
                return Ok(());
            }
            Err(e) if e.code() == Some(409) => continue,
            Err(e) => return Err(fail(e)),
        }
    }
    Err(anyhow!(
        "{} {label}: the object kept changing while being applied; try again",
        doc.origin
    ))
}

pub async fn get(global: &Global, args: GetArgs) -> anyhow::Result<()> {
    let kind = kind(&args.kind)?;
    let client = client(global)?;
    let ns = if args.all_namespaces {
        None
    } else {
        namespace_for(kind, None, args.namespace.as_deref())
    };
    let format = args.output;
    if let Some(name) = &args.name {
        let obj = client
            .get_dyn(kind, ns.as_deref(), name)
            .await
            .map_err(|e| anyhow!(describe_error(&e)))?;
        output::print_objects(kind, &[obj], format, args.all_namespaces)?;
        return Ok(());
    }
    let field_selector = match &args.for_object {
        None => None,
        Some(_) if kind.plural != "events" => {
            bail!("--for selects the events of an object: use it with `wisp get events`")
        }
        Some(target) => Some(events_of(target)?),
    };
    let params = ListParams {
        label_selector: args.selector.clone(),
        field_selector,
    };
    let mut list = client
        .list_dyn_all(kind, ns.as_deref(), &params, args.chunk_size.max(1))
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?;
    if kind.plural == "events" {
        list.items.sort_by_key(output::last_seen);
    }
    if format.is_none() && list.items.is_empty() && !args.watch {
        complain(&match &ns {
            Some(n) => format!("No {} found in namespace {n}.", kind.plural),
            None => format!("No {} found.", kind.plural),
        });
    } else if format == Some(OutputFormat::Json) && !args.watch {
        say(&serde_json::to_string_pretty(&list)?);
    } else if format == Some(OutputFormat::Yaml) && !args.watch {
        say(&serde_saphyr::to_string(&list).context("cannot render YAML")?);
    } else {
        output::print_objects(kind, &list.items, format, args.all_namespaces)?;
    }
    if args.watch {
        let rv = list.metadata.resource_version.clone();
        let mut stream = client
            .watch_dyn(kind, ns.as_deref(), &params, rv.as_deref())
            .await
            .map_err(|e| anyhow!(describe_error(&e)))?;
        while let Some(ev) = stream.next().await {
            let ev = ev.map_err(|e| anyhow!(describe_error(&e)))?;
            if ev.type_ == wisp_api::EventType::Bookmark {
                continue;
            }
            output::print_event(kind, &ev, format, args.all_namespaces)?;
        }
    }
    Ok(())
}

pub async fn describe(global: &Global, args: DescribeArgs) -> anyhow::Result<()> {
    let kind = kind(&args.kind)?;
    let client = client(global)?;
    let ns = namespace_for(kind, None, args.namespace.as_deref());
    let obj = client
        .get_dyn(kind, ns.as_deref(), &args.name)
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?;
    let mut text = crate::describe::describe(kind, &obj);
    if kind.namespaced && kind.plural != "events" {
        let events = wisp_api::kind_by_plural("events").context("the events kind")?;
        let params = ListParams {
            label_selector: None,
            field_selector: Some(format!(
                "involvedObject.kind={},involvedObject.name={}",
                kind.kind, obj.metadata.name
            )),
        };
        // Events are read where the token may read them; a token that may not says so.
        let section = match client.list_dyn_all(events, ns.as_deref(), &params, 500).await {
            Ok(list) => output::events_section(&obj, list.items),
            Err(e) => format!("Events:       <cannot be read: {}>", describe_error(&e)),
        };
        text.push('\n');
        text.push_str(&section);
    }
    say(&text);
    Ok(())
}

/// The field selector of `--for KIND/NAME`.
fn events_of(target: &str) -> anyhow::Result<String> {
    let Some((k, name)) = target
        .split_once('/')
        .filter(|(k, n)| !k.is_empty() && !n.is_empty())
    else {
        bail!("--for {target:?}: expected KIND/NAME, e.g. pod/web or function/hello");
    };
    let kind = kind(k).with_context(|| format!("--for {target:?}"))?;
    if name.contains(',') || name.contains('=') {
        bail!("--for {target:?}: {name:?} is not an object name");
    }
    Ok(format!(
        "involvedObject.kind={},involvedObject.name={name}",
        kind.kind
    ))
}

pub async fn delete(global: &Global, args: DeleteArgs) -> anyhow::Result<()> {
    let client = client(global)?;
    let mut targets = Vec::new();
    if !args.files.is_empty() {
        for doc in read_all(&args.files)? {
            let r = resolve(&doc, args.namespace.as_deref())?;
            targets.push(r);
        }
    } else {
        let (Some(k), Some(name)) = (&args.kind, &args.name) else {
            bail!("usage: wisp delete KIND NAME, or wisp delete -f FILE");
        };
        let kind = kind(k)?;
        targets.push(Resolved {
            kind,
            namespace: namespace_for(kind, None, args.namespace.as_deref()),
            name: name.clone(),
        });
    }
    let mut failures = 0;
    for t in &targets {
        match client.delete_dyn(t.kind, t.namespace.as_deref(), &t.name).await {
            Ok(_) => say(&format!("{}/{} deleted", t.kind.singular, t.name)),
            Err(e) => {
                failures += 1;
                complain(&format!(
                    "error: {}/{}: {}",
                    t.kind.singular,
                    t.name,
                    describe_error(&e)
                ));
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} deletions failed", targets.len());
    }
    Ok(())
}

pub async fn token_create(global: &Global, args: TokenCreateArgs) -> anyhow::Result<()> {
    let client = client(global)?;
    let req = wisp_client::TokenRequest {
        namespace: args.namespace.clone(),
        node: args.node.clone(),
        ttl_seconds: args
            .ttl
            .as_deref()
            .map(|t| {
                wisp_api::validation::parse_duration(t)
                    .map(|d| d.as_secs().max(1))
                    .map_err(|e| anyhow!("--ttl {t:?}: {e}"))
            })
            .transpose()?,
    };
    let issued = client
        .issue_token(&req)
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?;
    say(&issued.token);
    Ok(())
}

pub async fn token_list(global: &Global) -> anyhow::Result<()> {
    let client = client(global)?;
    let tokens = client
        .list_tokens()
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?;
    let rows = tokens
        .into_iter()
        .map(|t| {
            vec![
                t.id,
                t.kind,
                t.namespace.or(t.node).unwrap_or_else(|| "-".into()),
                t.created_at.unwrap_or_else(|| "-".into()),
                t.expires_at.unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    say(&crate::output::table(
        &["ID", "KIND", "SCOPE", "CREATED", "EXPIRES"],
        rows,
    ));
    Ok(())
}

pub async fn token_revoke(global: &Global, id: &str) -> anyhow::Result<()> {
    let client = client(global)?;
    let t = client
        .revoke_token(id)
        .await
        .map_err(|e| anyhow!(describe_error(&e)))?;
    say(&format!("token {} ({}) revoked", t.id, t.kind));
    Ok(())
}

/// `wisp logs POD [-c C] [-f] [--tail N]`: the API server proxies to the pod's node.
pub async fn logs(global: &Global, args: LogsArgs) -> anyhow::Result<()> {
    let client = client(global)?;
    let ns = args.namespace.clone().unwrap_or_else(|| "default".into());
    match client.api::<wisp_api::Pod>(Some(&ns)).get_opt(&args.pod).await {
        Ok(Some(_)) => return pod_logs(&client, &ns, &args.pod, &args, None).await,
        Ok(None) => {}
        Err(e) => bail!("pod {ns}/{}: {}", args.pod, describe_error(&e)),
    }
    // Not a pod: a Function's or a job's pods, each line prefixed by its pod.
    let mut seen = std::collections::BTreeSet::new();
    let mut streams = tokio::task::JoinSet::new();
    loop {
        let pods = crate::author::pods_of(&client, &ns, &args.pod).await?;
        if pods.is_empty() && seen.is_empty() && !crate::author::exists(&client, &ns, &args.pod).await? {
            bail!(
                "no pod, Function or job {ns}/{} (a job is known by its pods)",
                args.pod
            );
        }
        for pod in pods {
            let name = pod.metadata.name.clone();
            if !seen.insert(name.clone()) {
                continue;
            }
            let (client, ns, args) = (client.clone(), ns.clone(), args.clone());
            let exit = crate::author::exit_code(&pod);
            let prefix = format!("[{name}] ");
            if args.follow {
                streams.spawn(async move { pod_logs(&client, &ns, &name, &args, Some(&prefix)).await });
            } else {
                pod_logs(&client, &ns, &name, &args, Some(&prefix)).await?;
                if let Some(code) = exit {
                    say(&format!("{prefix}exited with code {code}"));
                }
            }
        }
        if !args.follow {
            return Ok(());
        }
        // New pods (scaling up, a job's next run) join the stream.
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            Some(done) = streams.join_next() => {
                if let Ok(Err(e)) = done {
                    complain(&format!("warning: {e:#}"));
                }
            }
        }
    }
}

/// One pod's log, each line after `prefix` when there is one.
async fn pod_logs(
    client: &Client,
    ns: &str,
    pod: &str,
    args: &LogsArgs,
    prefix: Option<&str>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let mut query = Vec::new();
    if let Some(c) = &args.container {
        query.push(format!("container={c}"));
    }
    if args.follow {
        query.push("follow=true".to_owned());
    }
    if let Some(n) = args.tail {
        query.push(format!("tailLines={n}"));
    }
    let mut path = format!("/apis/wisp.dev/v1/namespaces/{ns}/pods/{pod}/log");
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let resp = client
        .raw(http::Method::GET, &path, None)
        .await
        .map_err(|e| anyhow!("logs of pod {ns}/{pod}: {}", describe_error(&e)))?;
    let mut body = resp.into_body();
    let mut out = tokio::io::stdout();
    let mut partial: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the log stream broke off")?;
        let Ok(data) = frame.into_data() else { continue };
        let Some(prefix) = prefix else {
            out.write_all(&data).await?;
            out.flush().await?;
            continue;
        };
        // Whole lines only, so that pods' lines do not interleave mid-line (a line longer
        // than 64 KiB is cut).
        partial.extend_from_slice(&data);
        if partial.len() > 64 * 1024 && !partial.contains(&b'\n') {
            partial.push(b'\n');
        }
        let mut text = Vec::new();
        while let Some(i) = partial.iter().position(|b| *b == b'\n') {
            text.extend_from_slice(prefix.as_bytes());
            text.extend(partial.drain(..=i));
        }
        out.write_all(&text).await?;
        out.flush().await?;
    }
    if let Some(prefix) = prefix.filter(|_| !partial.is_empty()) {
        partial.push(b'\n');
        out.write_all(prefix.as_bytes()).await?;
        out.write_all(&partial).await?;
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::describe_error;
    use wisp_client::ClientError;

    #[test]
    fn a_transport_error_is_printed_with_its_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = ClientError::Connect {
            url: "http://127.0.0.1:1".into(),
            source: Box::new(io),
        };
        assert_eq!(
            describe_error(&e),
            "cannot reach the Wisp API at http://127.0.0.1:1: connection refused"
        );
    }
}
