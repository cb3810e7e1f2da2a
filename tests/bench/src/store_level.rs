//! Store level: the `wisp_store::Store` trait called directly, no HTTP, no JSON handling
//! beyond the bytes of a ready-made ConfigMap.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use wisp_store::{Revision, Store};

use crate::drive::{Deliveries, Worker, drive, watch_delivery};
use crate::report::Row;
use crate::scenario::{Sizes, config_map, ops_row, watch_rows};

const LEVEL: &str = "store";

fn value(name: &str, seq: usize) -> anyhow::Result<Bytes> {
    Ok(serde_json::to_vec(&config_map(name, seq))?.into())
}

struct Create {
    store: Arc<dyn Store>,
    prefix: String,
    value: Bytes,
}

impl Worker for Create {
    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            self.store.get("/bench/warmup").await?;
            Ok(())
        }
        .boxed()
    }

    fn op(&mut self, seq: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            let key = format!("{}{seq:06}", self.prefix);
            self.store.create(&key, self.value.clone(), None).await?;
            Ok(())
        }
        .boxed()
    }
}

struct Update {
    store: Arc<dyn Store>,
    key: String,
    /// Two values to alternate between, so every update changes the bytes.
    values: [Bytes; 2],
    rev: Revision,
}

impl Worker for Update {
    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            self.rev = self.store.create(&self.key, self.values[0].clone(), None).await?;
            Ok(())
        }
        .boxed()
    }

    fn op(&mut self, seq: usize) -> BoxFuture<'_, anyhow::Result<()>> {
        async move {
            let v = self.values[(seq + 1) % 2].clone();
            // Compare-and-swap on the revision this client last wrote.
            self.rev = self.store.update(&self.key, v, Some(self.rev)).await?;
            Ok(())
        }
        .boxed()
    }
}

/// Creates and updates with each client count, then watch delivery.
pub async fn run(backend: &'static str, store: Arc<dyn Store>, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &clients in &sizes.clients {
        let workers = (0..clients)
            .map(|c| {
                Ok(Create {
                    store: store.clone(),
                    prefix: format!("/bench/create-{clients}/{c}/"),
                    value: value(&format!("create-{clients}-{c}"), c)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let o = drive(workers, sizes.ops, sizes.cap).await?;
        crate::progress(&format!(
            "{backend}/{LEVEL}: create x{clients}: {:.0} ops/s",
            o.rate()
        ));
        rows.push(ops_row(backend, LEVEL, "create", clients, sizes.ops, o));
    }
    for &clients in &sizes.clients {
        let workers = (0..clients)
            .map(|c| {
                let name = format!("update-{clients}-{c}");
                Ok(Update {
                    store: store.clone(),
                    key: format!("/bench/update-{clients}/{c}"),
                    values: [value(&name, 0)?, value(&name, 1)?],
                    rev: 0,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let o = drive(workers, sizes.ops, sizes.cap).await?;
        crate::progress(&format!(
            "{backend}/{LEVEL}: update x{clients}: {:.0} ops/s",
            o.rate()
        ));
        rows.push(ops_row(backend, LEVEL, "update (CAS)", clients, sizes.ops, o));
    }

    const PREFIX: &str = "/bench/watch/";
    let after = store.revision().await?;
    let mut watchers: Vec<Deliveries> = Vec::with_capacity(sizes.watchers);
    for _ in 0..sizes.watchers {
        let stream = store
            .watch(PREFIX, after)
            .await
            .context("opening a store watch")?;
        watchers.push(
            stream
                .map(|ev| {
                    let ev = ev?;
                    Ok(ev.kv.key.strip_prefix(PREFIX).and_then(|i| i.parse().ok()))
                })
                .boxed(),
        );
    }
    let writer = store.clone();
    let payload = value("watch", 0)?;
    let o = watch_delivery(
        watchers,
        sizes.watch_writes,
        sizes.watch_span,
        Box::new(move |i| {
            let store = writer.clone();
            let v = payload.clone();
            async move {
                store.create(&format!("{PREFIX}{i:06}"), v, None).await?;
                Ok(())
            }
            .boxed()
        }),
    )
    .await?;
    crate::progress(&format!(
        "{backend}/{LEVEL}: watch delivery p99 {:?}",
        o.from_send.percentile(99.0).unwrap_or_default()
    ));
    rows.extend(watch_rows(backend, LEVEL, sizes, o));
    Ok(rows)
}
