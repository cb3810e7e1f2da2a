//! The function author's commands: `wisp new`, `build`, `deploy`, `invoke`, and `logs` of a
//! whole function or job. A project is a directory with a `wisp.toml` ([`manifest`]).

pub mod builder;
pub mod component;
pub mod dev;
pub mod manifest;
pub mod traffic;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use wisp_api::{Function, Pod, PodPhase};
use wisp_client::{Client, ListParams};

use crate::cli::{BuildArgs, DeployArgs, Global, InvokeArgs, NewArgs, PushArgs};
use crate::resources::{client, describe_error};
use manifest::{JOB_LABEL, Kind, Project};

/// What a long step is doing: a spinner on a terminal, plain lines otherwise (a log, CI).
pub(crate) struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub(crate) fn start(message: &str) -> Self {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() {
            say(message);
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new_spinner().with_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(Some(bar))
    }

    /// A new message (printed as a line when there is no terminal).
    pub(crate) fn update(&self, message: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(message.to_owned()),
            None => say(message),
        }
    }

    /// Done: the spinner gives way to `message`.
    pub(crate) fn finish(self, message: &str) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
        say(message);
    }
}

pub(crate) fn say(line: &str) {
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
}

pub(crate) fn complain(line: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{line}");
    }
}

/// `wisp new NAME --template T` (or `--list`).
pub fn new(args: &NewArgs) -> anyhow::Result<()> {
    if args.list {
        for t in wisp_templates::TEMPLATES {
            say(&format!(
                "{:<12} {}\n{:<12} needs: {}",
                t.name, t.summary, "", t.needs
            ));
        }
        return Ok(());
    }
    let Some(name) = &args.name else {
        bail!(
            "name the project: `wisp new NAME --template http-rust` (`wisp new --list` shows the templates)"
        );
    };
    let errs = wisp_api::validation::validate_dns1123_label(name, "NAME");
    if let Some(e) = errs.first() {
        bail!("{name:?} cannot name a function: {}", e.message);
    }
    let template = wisp_templates::find(&args.template).ok_or_else(|| {
        let known: Vec<&str> = wisp_templates::TEMPLATES.iter().map(|t| t.name).collect();
        anyhow!(
            "no template {:?}; the templates are: {}",
            args.template,
            known.join(", ")
        )
    })?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty: choose another name or --dir",
            dir.display()
        );
    }
    for (path, text) in template.render(name) {
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("cannot write {}", target.display()))?;
    }
    say(&format!(
        "created {} from template {} (needs once: {})\n\n  cd {}\n  wisp deploy --wait\n  wisp invoke {name}",
        dir.display(),
        template.name,
        template.needs,
        dir.display()
    ));
    Ok(())
}

/// Build the project when its component is stale (always with `force`), then check it.
pub(crate) async fn build_checked(project: &Project, force: bool) -> anyhow::Result<builder::Built> {
    if force || builder::stale(project) {
        builder::run_build(project).await?;
    }
    let built = builder::check(project)?;
    say(&format!("component {}", built.summary()));
    Ok(built)
}

/// `wisp build`.
pub async fn build(args: &BuildArgs) -> anyhow::Result<()> {
    let project = Project::load(&args.path)?;
    build_checked(&project, true).await?;
    Ok(())
}

/// `wisp deploy`: build if stale, upload, create or update, wait, print the URL.
pub async fn deploy(global: &Global, args: &DeployArgs) -> anyhow::Result<()> {
    let project = Project::load(&args.path)?;
    let ns = project.namespace(args.namespace.as_deref()).to_owned();
    if args.dry_run {
        let built = build_checked(&project, false).await?;
        let yaml = match project.kind() {
            Kind::Http => serde_saphyr::to_string(&project.function(&ns, &built.digest)),
            Kind::Job => serde_saphyr::to_string(&project.job_pod(
                &ns,
                &format!("{}-xxxxx", project.name()),
                &built.digest,
            )),
        }
        .context("cannot print the object")?;
        say(&yaml);
        return Ok(());
    }
    let client = client(global)?;
    // Before a build that may take minutes: is the server there, and does the token work?
    client
        .whoami()
        .await
        .map_err(|e| anyhow!("{}", describe_error(&e)))?;
    let built = build_checked(&project, false).await?;
    upload(&client, &built).await?;
    let timeout = Duration::from_secs(args.timeout);
    match project.kind() {
        Kind::Http => deploy_function(&client, &project, &ns, &built.digest, args, timeout).await,
        Kind::Job => deploy_job(&client, &project, &ns, &built.digest, args.wait, timeout).await,
    }
}

pub(crate) async fn upload(client: &Client, built: &builder::Built) -> anyhow::Result<()> {
    let has = client
        .has_blob(&built.digest)
        .await
        .map_err(|e| anyhow!("{}", describe_error(&e)))?;
    if has {
        say(&format!("upload skipped: the server has {}", built.digest));
        return Ok(());
    }
    let started = Instant::now();
    let progress = Progress::start(&format!(
        "uploading {} ({})",
        built.path.display(),
        component::size(built.bytes.len() as u64)
    ));
    client
        .put_blob(bytes::Bytes::from(built.bytes.clone()))
        .await
        .map_err(|e| anyhow!("cannot upload {}: {}", built.path.display(), describe_error(&e)))?;
    progress.finish(&format!(
        "uploaded {} ({}) in {} ms",
        built.digest,
        component::size(built.bytes.len() as u64),
        started.elapsed().as_millis()
    ));
    Ok(())
}

async fn deploy_function(
    client: &Client,
    project: &Project,
    ns: &str,
    digest: &str,
    args: &DeployArgs,
    timeout: Duration,
) -> anyhow::Result<()> {
    let wait = args.wait;
    let api = client.api::<Function>(Some(ns));
    let mut want = project.function(ns, digest);
    let name = project.name();
    let fail = |e: wisp_client::ClientError| anyhow!("function/{name}: {}", describe_error(&e));
    let mut stored = None;
    if args.tag.is_some() && args.traffic.is_none() {
        bail!("--tag names the new revision of a split: use it with --traffic");
    }
    for _ in 0..8 {
        let existing = api.get_opt(name).await.map_err(fail)?;
        if let Some(percent) = args.traffic {
            let current = existing.as_ref().ok_or_else(|| {
                anyhow!("function/{name} does not exist yet: its first deploy takes all of its traffic (no --traffic)")
            })?;
            want.spec.traffic = traffic::split(current, percent, args.tag.as_deref())?;
        } else if let Some(current) = &existing {
            // A deploy keeps the split there is (`rollout promote` ends it).
            want.spec.traffic.clone_from(&current.spec.traffic);
            let latest: u32 = current
                .spec
                .traffic
                .iter()
                .filter(|t| t.latest_revision)
                .map(|t| t.percent)
                .sum();
            if !current.spec.traffic.is_empty() && latest < 100 {
                complain(&format!(
                    "note: function/{name} keeps its traffic split: the new revision gets {latest}% \
                     (`wisp rollout promote {name}` sends it all)"
                ));
            }
        }
        match existing {
            None => match api.create(&want).await {
                Ok(f) => {
                    say(&format!("function/{name} created"));
                    stored = Some(f);
                    break;
                }
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(fail(e)),
            },
            Some(current) if current.spec == want.spec => {
                say(&format!("function/{name} unchanged"));
                stored = Some(current);
                break;
            }
            Some(current) => {
                let mut next = current.clone();
                next.spec = want.spec.clone();
                match api.replace(&next).await {
                    Ok(f) => {
                        say(&format!("function/{name} configured"));
                        stored = Some(f);
                        break;
                    }
                    Err(e) if e.code() == Some(409) => {}
                    Err(e) => return Err(fail(e)),
                }
            }
        }
    }
    let stored =
        stored.ok_or_else(|| anyhow!("function/{name}: changed by someone else 8 times in a row"))?;
    let generation = stored.metadata.generation.unwrap_or(0);
    // The controller has seen this version (and, with --wait, it is Ready: pods up, or at zero).
    let deadline = Instant::now() + timeout;
    let mut last_reason = String::new();
    let mut progress = Some(Progress::start(&format!("waiting for function/{name}")));
    loop {
        let f = api.get(name).await.map_err(fail)?;
        let status = f.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0) >= generation;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let is_ready = ready.is_some_and(|c| c.status == "True");
        if observed && (!wait || is_ready) {
            if let Some(p) = progress.take() {
                p.finish(&format!("function/{name} observed (generation {generation})"));
            }
            if wait {
                say(&format!(
                    "function/{name} ready: {}/{} replicas{}",
                    status.ready_replicas,
                    status.desired_replicas,
                    if status.desired_replicas == 0 {
                        " (at zero: the first request wakes it)"
                    } else {
                        ""
                    }
                ));
            }
            let url = status
                .url
                .ok_or_else(|| anyhow!("function/{name} has no URL yet"))?;
            say(&format!("url: {url}"));
            return Ok(());
        }
        // Reasons that waiting does not fix.
        if let Some(c) = ready.filter(|c| {
            observed && matches!(c.reason.as_deref(), Some("NameConflict" | "TrafficNotResolved"))
        }) {
            bail!(
                "function/{name}: {}: {}",
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default()
            );
        }
        if let Some(c) = ready {
            let reason = format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default()
            );
            if reason != last_reason && observed {
                if let Some(p) = &progress {
                    p.update(&format!("waiting for function/{name}: {reason}"));
                }
                last_reason = reason;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "function/{name} is not ready after {} s{}",
                timeout.as_secs(),
                if last_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {last_reason}")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Jobs keep this many finished pods of earlier runs (for `wisp logs`).
const JOB_HISTORY: usize = 3;

async fn deploy_job(
    client: &Client,
    project: &Project,
    ns: &str,
    digest: &str,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = project.name();
    let pods = client.api::<Pod>(Some(ns));
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
    let pod_name = format!("{name}-{suffix}");
    let fail = |e: wisp_client::ClientError| anyhow!("job {name}: {}", describe_error(&e));
    pods.create(&project.job_pod(ns, &pod_name, digest))
        .await
        .map_err(fail)?;
    say(&format!("job {name}: pod/{pod_name} created"));
    // Earlier runs past the history, finished ones only.
    let mut earlier = job_pods(client, ns, name).await?;
    earlier.retain(|p| {
        p.metadata.name != pod_name && matches!(p.phase(), PodPhase::Succeeded | PodPhase::Failed)
    });
    for old in earlier.iter().rev().skip(JOB_HISTORY.saturating_sub(1)) {
        let _ = pods.delete(&old.metadata.name).await;
    }
    if !wait {
        say(&format!("follow it: wisp logs {name} -f"));
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let pod = pods.get(&pod_name).await.map_err(fail)?;
        if let Some(code) = exit_code(&pod) {
            let phase = pod.phase();
            say(&format!("job {name}: pod/{pod_name} {phase:?}, exit code {code}"));
            if phase == PodPhase::Failed {
                bail!("job {name} failed with exit code {code} (`wisp logs {name}` shows its output)");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "job {name}: pod/{pod_name} has not finished after {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A finished pod's exit code (its first container's).
pub fn exit_code(pod: &Pod) -> Option<i32> {
    if !matches!(pod.phase(), PodPhase::Succeeded | PodPhase::Failed) {
        return None;
    }
    let status = pod.status.as_ref()?;
    Some(
        status
            .container_statuses
            .iter()
            .find_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
            .unwrap_or(i32::from(pod.phase() == PodPhase::Failed)),
    )
}

/// The pods of job `name`, oldest first.
pub async fn job_pods(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<Pod>> {
    pods_labelled(client, ns, &format!("{JOB_LABEL}={name}")).await
}

pub async fn pods_labelled(client: &Client, ns: &str, selector: &str) -> anyhow::Result<Vec<Pod>> {
    let params = ListParams {
        label_selector: Some(selector.to_owned()),
        ..ListParams::default()
    };
    let mut items = client
        .api::<Pod>(Some(ns))
        .list(&params)
        .await
        .map_err(|e| anyhow!("{}", describe_error(&e)))?
        .items;
    items.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    Ok(items)
}

/// `wisp invoke NAME`: one request to a Function through the ingress.
pub async fn invoke(global: &Global, args: &InvokeArgs) -> anyhow::Result<()> {
    let client = client(global)?;
    let ns = args.namespace.as_deref().unwrap_or("default");
    let f = client
        .api::<Function>(Some(ns))
        .get(&args.name)
        .await
        .map_err(|e| anyhow!("function/{}: {}", args.name, describe_error(&e)))?;
    let url = f.status.and_then(|s| s.url).ok_or_else(|| {
        anyhow!(
            "function/{} has no URL yet (is the controller running?)",
            args.name
        )
    })?;
    let body = match &args.data {
        None => Vec::new(),
        Some(d) => match d.strip_prefix('@') {
            Some(file) => std::fs::read(file).with_context(|| format!("--data @{file}: cannot read it"))?,
            None => d.clone().into_bytes(),
        },
    };
    let path = args.path.as_deref().unwrap_or("");
    let response = crate::author::http::send(&url, path, args.method.as_deref(), &args.headers, body).await?;
    let cold = response
        .headers
        .iter()
        .find(|(k, _)| k == "x-wisp-cold-start")
        .is_some_and(|(_, v)| v == "true");
    let waited = response
        .headers
        .iter()
        .find(|(k, _)| k == "x-wisp-cold-start-ms")
        .map(|(_, v)| v.clone());
    let start = if cold {
        format!("cold start, waited {} ms", waited.unwrap_or_else(|| "?".into()))
    } else {
        "warm".to_owned()
    };
    complain(&format!(
        "{} {} — {start}, {} ms in all",
        response.status,
        response.url,
        response.elapsed.as_millis()
    ));
    if args.verbose {
        for (k, v) in &response.headers {
            complain(&format!("{k}: {v}"));
        }
    }
    use std::io::Write;
    let mut out = std::io::stdout();
    out.write_all(&response.body)?;
    out.flush()?;
    if response.status >= 400 {
        bail!("the function answered {}", response.status);
    }
    Ok(())
}

pub mod http;

/// `wisp push oci://registry/repo:tag`: a component file, or the project's (built if stale).
pub async fn push(args: &PushArgs) -> anyhow::Result<()> {
    let reference = args.reference.strip_prefix("oci://").ok_or_else(|| {
        anyhow!(
            "{:?}: name the target as oci://registry/repository:tag",
            args.reference
        )
    })?;
    let r = wisp_api::OciRef::parse(reference).map_err(|why| anyhow!("{}: {why}", args.reference))?;
    if r.tag.is_none() || r.digest.is_some() {
        bail!(
            "{}: push to a tag (oci://registry/repository:tag); the digest is the registry's answer",
            args.reference
        );
    }
    let (path, bytes) = if args.path.extension().is_some_and(|e| e == "wasm") {
        let bytes =
            std::fs::read(&args.path).with_context(|| format!("cannot read {}", args.path.display()))?;
        component::inspect(&bytes)
            .with_context(|| format!("{} is not a Wisp component", args.path.display()))?;
        (args.path.clone(), bytes)
    } else {
        let project = Project::load(&args.path)?;
        let built = build_checked(&project, false).await?;
        (built.path, built.bytes)
    };
    let creds = match (&args.username, &args.password) {
        (Some(u), Some(p)) => Some(wisp_oci::Credentials {
            username: u.clone(),
            password: p.clone(),
        }),
        (Some(_), None) => bail!("--username needs a password: set WISP_REGISTRY_PASSWORD"),
        _ => None,
    };
    let size = component::size(bytes.len() as u64);
    let component_digest = wisp_oci::digest_of(&bytes);
    let manifest = wisp_oci::push(&r, bytes::Bytes::from(bytes), creds.as_ref())
        .await
        .map_err(|e| anyhow!("oci://{}", wisp_oci::chain(&e)))?;
    say(&format!(
        "pushed {} ({size}, component {component_digest})\npinned: oci://{}/{}@{manifest}",
        path.display(),
        r.registry,
        r.repository
    ));
    Ok(())
}

/// Whether `name` is a Function or a job with pods.
pub async fn exists(client: &Client, ns: &str, name: &str) -> anyhow::Result<bool> {
    let function = client
        .api::<Function>(Some(ns))
        .get_opt(name)
        .await
        .map_err(|e| anyhow!("{}", describe_error(&e)))?;
    Ok(function.is_some() || !job_pods(client, ns, name).await?.is_empty())
}

/// The pods `wisp logs NAME` follows when NAME is a Function or a job rather than a pod.
pub async fn pods_of(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<Pod>> {
    let function = client
        .api::<Function>(Some(ns))
        .get_opt(name)
        .await
        .map_err(|e| anyhow!("{}", describe_error(&e)))?;
    if function.is_some() {
        return pods_labelled(
            client,
            ns,
            &format!("{}={name}", wisp_controllers::function::FUNCTION_LABEL),
        )
        .await;
    }
    job_pods(client, ns, name).await
}
