use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wisp_api::{ConfigMap, Event, EventSeverity, ObjectMeta, ObjectReference, Resource};
use wisp_apiserver::testutil;

use super::{Recorder, RecorderConfig, clean};

fn config(min_interval_ms: u64) -> RecorderConfig {
    RecorderConfig {
        min_interval: Duration::from_millis(min_interval_ms),
        ..RecorderConfig::default()
    }
}

async fn events(client: &wisp_client::Client) -> Vec<Event> {
    client
        .api::<Event>(Some("default"))
        .list(&wisp_client::ListParams::default())
        .await
        .expect("list events")
        .items
}

async fn wait_for(client: &wisp_client::Client, check: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    for _ in 0..200 {
        let evs = events(client).await;
        if check(&evs) {
            return evs;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("events never became as expected: {:?}", events(client).await);
}

async fn object(client: &wisp_client::Client, name: &str) -> ObjectReference {
    let cm = client
        .api::<ConfigMap>(Some("default"))
        .create(&ConfigMap::new(ObjectMeta::namespaced("default", name)))
        .await
        .expect("configmap");
    ObjectReference::to(&cm)
}

#[tokio::test]
async fn repeats_are_one_event_with_a_count_written_at_most_once_per_interval() {
    let (client, stop, _server) = testutil::started().await;
    let (rec, task) = Recorder::new(client.clone(), "test-component", "n1", config(300));
    let run = tokio::spawn(task.run(stop.clone()));
    let cm = object(&client, "web").await;
    for i in 0..40 {
        rec.warning(cm.clone(), "BackOff", format!("try {i}"));
    }
    rec.normal(cm.clone(), "Started", "started");
    let evs = wait_for(&client, |evs| {
        evs.iter().any(|e| e.reason == "Started")
            && evs
                .iter()
                .find(|e| e.reason == "BackOff")
                .is_some_and(|e| e.count == 40)
    })
    .await;
    assert_eq!(evs.len(), 2, "{evs:?}");
    let backoff = evs.iter().find(|e| e.reason == "BackOff").expect("BackOff");
    assert_eq!(backoff.type_, EventSeverity::Warning);
    assert_eq!(backoff.message, "try 39");
    assert_eq!(backoff.involved_object.uid, cm.uid);
    assert_eq!(
        (
            backoff.reporting_component.as_str(),
            backoff.reporting_instance.as_str()
        ),
        ("test-component", "n1")
    );
    // Written once for the first and once for the rest, not forty times.
    let generation = backoff.metadata.generation.unwrap_or(0);
    assert!(generation <= 3, "{generation} writes for 40 occurrences");
    // A burst after the interval adds to the count.
    tokio::time::sleep(Duration::from_millis(400)).await;
    rec.warning(cm.clone(), "BackOff", "again");
    rec.warning(cm.clone(), "BackOff", "again");
    wait_for(&client, |evs| {
        evs.iter()
            .any(|e| e.reason == "BackOff" && e.count == 42 && e.message == "again")
    })
    .await;
    stop.cancel();
    run.await.expect("task");
}

#[tokio::test]
async fn a_second_recorder_counts_on_the_same_event_and_a_deleted_one_is_made_again() {
    let (client, stop, _server) = testutil::started().await;
    let cm = object(&client, "job").await;
    for _ in 0..2 {
        let (rec, task) = Recorder::new(client.clone(), "agent", "n1", config(50));
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(task.run(shutdown.clone()));
        rec.warning(cm.clone(), "Unhealthy", "probe failed");
        rec.warning(cm.clone(), "Unhealthy", "probe failed");
        // Shutting down writes what is pending.
        shutdown.cancel();
        run.await.expect("task");
    }
    let evs = events(&client).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].count, 4);
    let first = evs[0].first_timestamp.clone();
    // Expired and deleted: the next occurrence makes it again, counting from one.
    client
        .api::<Event>(Some("default"))
        .delete(&evs[0].metadata.name)
        .await
        .expect("delete");
    let (rec, task) = Recorder::new(client.clone(), "agent", "n1", config(50));
    let run = tokio::spawn(task.run(stop.clone()));
    rec.warning(cm.clone(), "Unhealthy", "probe failed");
    let evs = wait_for(&client, |evs| evs.len() == 1).await;
    assert_eq!(evs[0].count, 1);
    assert_ne!(evs[0].first_timestamp, first);
    stop.cancel();
    run.await.expect("task");
}

#[tokio::test]
async fn events_of_a_missing_namespace_are_dropped_not_retried_forever() {
    let (client, _stop, _server) = testutil::started().await;
    let (rec, mut task) = Recorder::new(client, "agent", "", config(10));
    let gone = ObjectReference {
        kind: "Pod".into(),
        namespace: Some("nowhere".into()),
        name: "p".into(),
        ..ObjectReference::default()
    };
    rec.warning(gone, "BackOff", "x");
    let occurrence = task.rx.recv().await.expect("queued");
    task.note(occurrence);
    assert_eq!(task.entries.len(), 1);
    task.write_next().await;
    assert!(task.entries.is_empty(), "refused (404): forgotten, not retried");
    assert!(task.per_namespace.is_empty());
    assert!(Recorder::disabled().tx.is_none());
}

#[tokio::test]
async fn one_namespace_cannot_take_every_write_or_fill_the_memory() {
    let (client, _stop, _server) = testutil::started().await;
    let cfg = RecorderConfig {
        namespace_writes_per_second: 2,
        namespace_remembered: 3,
        queue: 2,
        ..config(10)
    };
    let (rec, mut task) = Recorder::new(client, "agent", "", cfg);
    let pod = |ns: &str, name: &str| ObjectReference {
        kind: "Pod".into(),
        namespace: Some(ns.into()),
        name: name.into(),
        ..ObjectReference::default()
    };
    // The queue holds two: the rest are dropped and counted, never waited for.
    for i in 0..5 {
        rec.warning(pod("default", &format!("p{i}")), "BackOff", "x");
    }
    assert_eq!(task.dropped.load(std::sync::atomic::Ordering::Relaxed), 3);
    while let Ok(o) = task.rx.try_recv() {
        task.note(o);
    }
    // At most three remembered for one namespace; another namespace still has room.
    for i in 2..6 {
        task.note(super::Occurrence {
            object: pod("default", &format!("p{i}")),
            severity: EventSeverity::Warning,
            reason: "BackOff".into(),
            message: "x".into(),
            at: jiff::Timestamp::now(),
        });
    }
    assert_eq!(task.per_namespace.get("default"), Some(&3));
    task.note(super::Occurrence {
        object: pod("kube", "q"),
        severity: EventSeverity::Warning,
        reason: "BackOff".into(),
        message: "x".into(),
        at: jiff::Timestamp::now(),
    });
    assert_eq!(task.per_namespace.get("kube"), Some(&1));
    // Two writes a second for "default": the third is held a second, not written.
    let now = tokio::time::Instant::now();
    assert!(task.spend("default", now).is_ok() && task.spend("default", now).is_ok());
    let held = task.spend("default", now).expect_err("over its budget");
    assert!(held > now && held <= now + std::time::Duration::from_secs(1));
    assert!(task.spend("kube", now).is_ok(), "another namespace has its own");
}

#[test]
fn messages_are_cut_at_a_character_and_control_characters_escaped() {
    assert_eq!(clean("h\u{e9}llo"), "h\u{e9}llo");
    assert_eq!(clean("image \u{1b}[31mred\nline"), "image \\u{1b}[31mred\\nline");
    let long = "\u{e9}".repeat(wisp_api::EVENT_MESSAGE_MAX);
    let cut = clean(&long);
    assert!(cut.len() <= wisp_api::EVENT_MESSAGE_MAX && cut.len() > wisp_api::EVENT_MESSAGE_MAX - 2);
    let mut e = Event::new(ObjectMeta::namespaced("ns", "x.1"));
    e.involved_object = ObjectReference {
        kind: "Pod".into(),
        name: "web".into(),
        ..ObjectReference::default()
    };
    e.reason = "BackOff".into();
    e.count = 1;
    e.reporting_component = "agent".into();
    e.message = clean("bad \u{7}bell\r\n");
    assert!(e.validate().is_empty(), "{:?}", e.validate());
}
