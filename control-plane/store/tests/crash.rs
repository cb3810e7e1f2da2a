//! Crash safety of the embedded store itself: a child process (this test binary again) writes
//! as fast as it can and reports each write once it is acknowledged; it is killed with
//! SIGKILL mid-stream. The redb file alone (its last durable commit) lacks most of those
//! writes — they were only in the write-ahead log — and reopening the store brings back
//! every acknowledged one, with its revision, and deletes stay deleted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wisp_store::Store;
use wisp_store::embedded::{EmbeddedOptions, EmbeddedStore};

const CHILD: &str = "WISP_STORE_CRASH_CHILD";
const TEST: &str = "acknowledged_writes_survive_sigkill_and_come_back_from_the_log";

fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // No idle checkpoint while the test runs, even if this process is descheduled for a
        // while on a loaded machine: everything after the first write stays in the log only.
        let options = EmbeddedOptions {
            lease_tick: Duration::from_secs(30),
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(std::path::Path::new(dir), options).expect("open");
        let mut out = std::io::stdout().lock();
        store
            .create("/counter", Bytes::from_static(b"-1"), None)
            .await
            .expect("counter");
        for i in 0u64.. {
            let key = format!("/items/{i:08}");
            let rev = store
                .create(&key, Bytes::from(format!("value {i}")), None)
                .await
                .expect("create");
            store
                .update("/counter", Bytes::from(i.to_string()), None)
                .await
                .expect("update");
            // Every third item is deleted again right away.
            let deleted = i % 3 == 2;
            if deleted {
                store.delete(&key, Some(rev)).await.expect("delete");
            }
            writeln!(out, "{i} {rev} {}", u8::from(deleted)).expect("stdout");
            out.flush().expect("flush");
        }
    });
}

#[test]
fn acknowledged_writes_survive_sigkill_and_come_back_from_the_log() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut proc = Command::new(std::env::current_exe().expect("test binary"))
        .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer");
    let stdout = proc.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // (item, revision, deleted) of every acknowledged write.
    let mut acked: Vec<(u64, i64, bool)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 400 {
        assert!(
            Instant::now() < deadline,
            "the writer acknowledged only {} writes",
            acked.len()
        );
        let line = lines.next().expect("the writer ended early").expect("read");
        let mut f = line.split(' ');
        let (Some(i), Some(rev), Some(del)) = (f.next(), f.next(), f.next()) else {
            continue; // the test harness's own output
        };
        let (Ok(i), Ok(rev)) = (i.parse(), rev.parse()) else {
            continue;
        };
        acked.push((i, rev, del == "1"));
    }
    proc.kill().expect("SIGKILL");
    // What it acknowledged before it died.
    for line in lines.map_while(Result::ok) {
        let mut f = line.split(' ');
        if let (Some(Ok(i)), Some(Ok(rev)), Some(del)) =
            (f.next().map(str::parse), f.next().map(str::parse), f.next())
        {
            acked.push((i, rev, del == "1"));
        }
    }
    proc.wait().expect("reap");

    // The redb file by itself: most acknowledged writes are not in it (only in the log), so
    // what follows shows the log bringing them back, not redb having them anyway.
    {
        let db = redb::Database::create(dir.path().join("wisp.redb")).expect("open redb");
        let txn = redb::ReadableDatabase::begin_read(&db).expect("read");
        let kv: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("kv");
        let table = txn.open_table(kv).expect("kv table");
        let in_redb = acked
            .iter()
            .filter(|(i, _, del)| {
                !del && table
                    .get(format!("/items/{i:08}").as_str())
                    .expect("get")
                    .is_some()
            })
            .count();
        let live = acked.iter().filter(|(_, _, del)| !del).count();
        assert!(
            in_redb < live / 2,
            "{in_redb} of {live} acknowledged items already durable in redb: the log was not needed"
        );
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("reopen");
        let last = acked.last().expect("acked").0;
        for (i, rev, deleted) in &acked {
            let got = store.get(&format!("/items/{i:08}")).await.expect("get");
            if *deleted {
                assert!(got.is_none(), "item {i} was deleted, and is back");
            } else {
                let kv = got.unwrap_or_else(|| panic!("acknowledged item {i} (revision {rev}) is lost"));
                assert_eq!(kv.mod_revision, *rev, "item {i}");
                assert_eq!(kv.value, Bytes::from(format!("value {i}")));
            }
        }
        let counter = store.get("/counter").await.expect("get").expect("counter");
        let n: u64 = std::str::from_utf8(&counter.value)
            .expect("utf8")
            .parse()
            .expect("number");
        assert!(
            n >= last,
            "counter {n} is behind the last acknowledged update {last}"
        );
        let max_rev = acked.iter().map(|(_, rev, _)| *rev).max().unwrap_or(0);
        assert!(store.revision().await.expect("revision") >= max_rev);
        // And the store goes on: a new write gets a newer revision.
        let rev = store
            .create("/after", Bytes::from_static(b"x"), None)
            .await
            .expect("write after reopen");
        assert!(rev > max_rev);
    });
}
