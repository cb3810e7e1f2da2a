//! Crash safety: SIGKILL `wisp` while 16 clients write; after a restart every acknowledged
//! write is there and resourceVersion never goes backwards.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use wisp_client::ListParams;
use wisp_e2e::{Options, Wisp};

#[derive(Clone, Default)]
struct Acked {
    /// (name, resourceVersion) of every acknowledged create.
    created: Vec<(String, i64)>,
    /// Per client: the last acknowledged value of its counter object.
    counters: Vec<i64>,
    max_rv: i64,
}

fn rv_of(o: &wisp_api::DynamicObject) -> i64 {
    o.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("numeric resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let mut w = Wisp::start(Options::default()).expect("start wisp");
    let kind = wisp_api::kind_by_plural("configmaps").expect("kind");
    let clients = 16;
    let acked = Arc::new(Mutex::new(Acked {
        counters: vec![-1; clients],
        ..Acked::default()
    }));
    let mut last_max = 0;
    for round in 0..3 {
        let c = w.client();
        // Counter objects exist before the writers start.
        if round == 0 {
            for t in 0..clients {
                let o = json!({"apiVersion":"wisp.dev/v1","kind":"ConfigMap","metadata":{"name":format!("ctr-{t}")},"data":{"n":"-1"}});
                c.create_dyn(kind, Some("default"), &o).await.expect("counter");
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..clients {
            let c = c.clone();
            let acked = acked.clone();
            tasks.spawn(async move {
                for i in 0..100_000 {
                    let name = format!("r{round}-c{t}-{i}");
                    let o = json!({"apiVersion":"wisp.dev/v1","kind":"ConfigMap","metadata":{"name":name},"data":{"i":i.to_string()}});
                    let Ok(made) = c.create_dyn(kind, Some("default"), &o).await else { return };
                    let rv = rv_of(&made);
                    {
                        let mut a = acked.lock().expect("lock");
                        a.created.push((name, rv));
                        a.max_rv = a.max_rv.max(rv);
                    }
                    let value = i64::from(round) * 1_000_000 + i;
                    let ctr = json!({"apiVersion":"wisp.dev/v1","kind":"ConfigMap","metadata":{"name":format!("ctr-{t}")},"data":{"n":value.to_string()}});
                    let Ok(updated) = c.replace_dyn(kind, Some("default"), &format!("ctr-{t}"), &ctr).await else { return };
                    let mut a = acked.lock().expect("lock");
                    a.counters[t] = value;
                    a.max_rv = a.max_rv.max(rv_of(&updated));
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        w.kill();
        // Every writer stops at its first failed request.
        tokio::time::timeout(Duration::from_secs(30), async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .expect("writers stop once the server is gone");
        w.restart().expect("restart wisp");
        let c = w.client();
        let list = c
            .list_dyn(kind, Some("default"), &ListParams::default())
            .await
            .expect("list after restart");
        let list_rv: i64 = list
            .metadata
            .resource_version
            .as_deref()
            .expect("rv")
            .parse()
            .expect("numeric");
        let present: std::collections::HashMap<String, i64> = list
            .items
            .iter()
            .map(|o| (o.metadata.name.clone(), rv_of(o)))
            .collect();
        let a = acked.lock().expect("lock").clone();
        assert!(
            a.created.len() > 50,
            "round {round}: the writers made progress ({} writes)",
            a.created.len()
        );
        for (name, rv) in &a.created {
            let found = present
                .get(name)
                .unwrap_or_else(|| panic!("round {round}: acknowledged create {name} lost"));
            assert_eq!(found, rv, "{name} kept its resourceVersion");
        }
        for (t, acked_value) in a.counters.iter().enumerate() {
            let obj = list
                .items
                .iter()
                .find(|o| o.metadata.name == format!("ctr-{t}"))
                .expect("counter");
            let n: i64 = obj.body["data"]["n"]
                .as_str()
                .expect("n")
                .parse()
                .expect("number");
            assert!(
                n >= *acked_value,
                "round {round}: counter {t} went back from {acked_value} to {n}"
            );
        }
        assert!(
            list_rv >= a.max_rv,
            "round {round}: list revision {list_rv} < acknowledged {}",
            a.max_rv
        );
        assert!(a.max_rv >= last_max);
        last_max = a.max_rv;
        // A new write after the restart gets a larger resourceVersion than anything before.
        let probe = json!({"apiVersion":"wisp.dev/v1","kind":"ConfigMap","metadata":{"name":format!("probe-{round}")}});
        let made = c
            .create_dyn(kind, Some("default"), &probe)
            .await
            .expect("write after restart");
        assert!(
            rv_of(&made) > last_max,
            "resourceVersion went backwards after restart"
        );
    }
}
