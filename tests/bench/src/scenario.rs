//! The scenarios both levels run, their sizes, and how their outcomes become table rows.

use std::collections::BTreeMap;
use std::time::Duration;

use wisp_api::{ConfigMap, ObjectMeta, Resource};

use crate::drive::{Outcome, WatchOutcome};
use crate::report::Row;

/// Sizes of one run (from the command line).
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Operations per create or update scenario, split between its clients.
    pub ops: usize,
    /// Time cap of one create or update scenario.
    pub cap: Duration,
    /// Client counts to run creates and updates with.
    pub clients: Vec<usize>,
    /// Watchers in the watch delivery scenario.
    pub watchers: usize,
    /// Writes the watchers must see.
    pub watch_writes: usize,
    /// Time the writes are spread over.
    pub watch_span: Duration,
}

/// The object every scenario writes: a small ConfigMap (about 200 bytes of JSON).
pub fn config_map(name: &str, seq: usize) -> ConfigMap {
    let mut cm = ConfigMap::new(ObjectMeta::namespaced("default", name));
    let mut data = BTreeMap::new();
    data.insert("seq".to_owned(), seq.to_string());
    data.insert("value".to_owned(), "x".repeat(64));
    cm.data = data;
    cm
}

/// The row of a create or update scenario.
pub fn ops_row(
    backend: &'static str,
    level: &'static str,
    scenario: &str,
    clients: usize,
    wanted: usize,
    o: Outcome,
) -> Row {
    Row {
        backend,
        level,
        scenario: scenario.to_owned(),
        clients: clients.to_string(),
        done: o.done,
        wanted,
        rate: Some(o.rate()),
        note: o.note(),
        latencies: o.latencies,
    }
}

/// The two rows of a watch delivery scenario: measured from send and from acknowledgement.
pub fn watch_rows(backend: &'static str, level: &'static str, sizes: &Sizes, o: WatchOutcome) -> [Row; 2] {
    let note = o.note();
    let clients = format!("1 writer, {} watchers", sizes.watchers);
    let name = |from: &str| {
        format!(
            "watch delivery, {} writes over {:.1} s, from write {from}",
            sizes.watch_writes,
            sizes.watch_span.as_secs_f64()
        )
    };
    [
        Row {
            backend,
            level,
            scenario: name("sent"),
            clients: clients.clone(),
            done: o.from_send.len(),
            wanted: o.wanted,
            rate: None,
            latencies: o.from_send,
            note: note.clone(),
        },
        Row {
            backend,
            level,
            scenario: name("acknowledged"),
            clients,
            done: o.from_ack.len(),
            wanted: o.wanted,
            rate: None,
            latencies: o.from_ack,
            note,
        },
    ]
}
