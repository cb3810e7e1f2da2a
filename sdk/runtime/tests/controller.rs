//! A controller against a real API server over loopback: every ConfigMap labelled
//! `role=source` gets a copy `<name>-copy` (labelled `role=copy`, owned by the source).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use backon::ExponentialBuilder;
use tokio_util::sync::CancellationToken;
use wisp_api::{ConfigMap, ObjectMeta, OwnerReference, Resource};
use wisp_client::{Api, Client, ListParams, WatchParams};
use wisp_runtime::{Action, Config, Controller};

struct Ctx {
    api: Api<ConfigMap>,
    /// When each reconcile of a source started.
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
}

fn params(selector: &str) -> WatchParams {
    WatchParams {
        list: ListParams {
            label_selector: Some(selector.into()),
            ..ListParams::default()
        },
        ..WatchParams::default()
    }
}

fn source(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let mut meta = ObjectMeta::namespaced("default", name);
    meta.labels.insert("role".into(), "source".into());
    ConfigMap {
        data: data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..ConfigMap::new(meta)
    }
}

async fn reconcile(src: Arc<ConfigMap>, ctx: Arc<Ctx>) -> anyhow::Result<Action> {
    let name = src.metadata.name.clone();
    let attempt = {
        let mut attempts = ctx.attempts.lock().expect("lock");
        let list = attempts.entry(name.clone()).or_default();
        list.push(Instant::now());
        list.len()
    };
    if src.data.contains_key("fail-until") && attempt < 3 {
        bail!("attempt {attempt} of {name} fails on purpose");
    }
    let copy_name = format!("{name}-copy");
    let data: BTreeMap<String, String> = src.data.clone();
    match ctx.api.get_opt(&copy_name).await? {
        Some(copy) if copy.data == data => {}
        Some(mut copy) => {
            copy.data = data;
            ctx.api.replace(&copy).await?;
        }
        None => {
            let mut meta = ObjectMeta::namespaced("default", copy_name);
            meta.labels.insert("role".into(), "copy".into());
            meta.owner_references.push(OwnerReference {
                api_version: wisp_api::API_VERSION.into(),
                kind: ConfigMap::KIND.into(),
                name: name.clone(),
                uid: src.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
            });
            ctx.api
                .create(&ConfigMap {
                    data,
                    ..ConfigMap::new(meta)
                })
                .await?;
        }
    }
    Ok(Action::await_change())
}

/// Polls the copy of `name` until its data is `want`.
async fn wait_copy(api: &Api<ConfigMap>, name: &str, want: &[(&str, &str)]) -> anyhow::Result<()> {
    let want: BTreeMap<String, String> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let copy = api.get_opt(&format!("{name}-copy")).await?;
        if copy.as_ref().is_some_and(|c| c.data == want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("copy of {name} never became {want:?}; last seen {copy:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn controller_reconciles_configmaps_against_a_real_api_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn wisp_store::Store> =
        Arc::new(wisp_store::EmbeddedStore::open(dir.path(), Default::default())?);
    let shutdown = CancellationToken::new();
    let server = wisp_apiserver::ApiServer::new(
        store,
        wisp_apiserver::Config::new(dir.path().join("blobs")),
        shutdown.clone(),
    );
    let token = server
        .bootstrap()
        .await?
        .context("fresh store gives an admin token")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let serving = tokio::spawn(wisp_apiserver::serve(server, listener, shutdown.clone()));
    let client = Client::new(&url, &token);
    let api: Api<ConfigMap> = client.api(Some("default"));

    // One object exists before the controller starts, the rest arrive while it runs.
    api.create(&source("early", &[("k", "1")])).await?;

    let ctx = Arc::new(Ctx {
        api: api.clone(),
        attempts: Mutex::default(),
    });
    let config = Config {
        backoff: ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_factor(2.0)
            .without_max_times(),
        ..Config::default()
    };
    let controller = Controller::new(api.clone(), params("role=source"))
        .owns::<ConfigMap>(api.clone(), params("role=copy"))
        .with_config(config);
    let stop = CancellationToken::new();
    let policy = |_: Arc<ConfigMap>, _: &anyhow::Error, _: Arc<Ctx>| Action::await_change();
    let running = tokio::spawn(controller.run(reconcile, policy, ctx.clone(), stop.clone()));

    wait_copy(&api, "early", &[("k", "1")]).await?;
    api.create(&source("late", &[("k", "a")])).await?;
    wait_copy(&api, "late", &[("k", "a")]).await?;

    // A change is reconciled again.
    let mut late = api.get("late").await?;
    late.data.insert("k".into(), "b".into());
    api.replace(&late).await?;
    wait_copy(&api, "late", &[("k", "b")]).await?;

    // Deleting an owned copy triggers its owner, which recreates it.
    api.delete("early-copy").await?;
    wait_copy(&api, "early", &[("k", "1")]).await?;

    // A failing reconcile is retried with growing delays until it succeeds.
    api.create(&source("flaky", &[("fail-until", "3")])).await?;
    wait_copy(&api, "flaky", &[("fail-until", "3")]).await?;
    let times = ctx.attempts.lock().expect("lock")["flaky"].clone();
    assert!(times.len() >= 3, "expected retries, got {} attempts", times.len());
    let (gap1, gap2) = (times[1] - times[0], times[2] - times[1]);
    assert!(gap1 >= Duration::from_millis(190), "first retry after {gap1:?}");
    assert!(gap2 >= Duration::from_millis(390), "second retry after {gap2:?}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), running).await??;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), serving).await???;
    Ok(())
}
