//! The sandbox conformance suite: every runtime passes the same lifecycle, log, stop/kill,
//! delete and adoption checks. A runtime provides [`Fixtures`] (specs for a few small
//! programs) and expands one test per case with
//! [`sandbox_conformance!`](crate::sandbox_conformance).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::{LABEL_POD_UID, LogOptions, LogStream, Sandbox, SandboxError, SandboxId, SandboxSpec, State};

/// Specs for the programs the suite runs, in the runtime's own packaging.
pub trait Fixtures: Send + Sync {
    /// Prints `line` on stdout and `line` on stderr, then exits with `code`.
    fn exits(&self, id: SandboxId, code: i32, line: &str) -> SandboxSpec;
    /// Prints `line` on stdout, then runs until stopped or killed.
    fn runs_until_stopped(&self, id: SandboxId, line: &str) -> SandboxSpec;
    /// A spec whose code cannot be fetched or loaded.
    fn broken(&self, id: SandboxId) -> SandboxSpec;
}

#[macro_export]
macro_rules! sandbox_conformance {
    ($make:expr) => {
        $crate::sandbox_conformance!(@cases $make;
            lifecycle_reports_exit_code, logs_are_captured, logs_follow_until_exit,
            stop_ends_a_running_sandbox, kill_ends_a_running_sandbox, delete_removes,
            duplicate_create_fails, unknown_ids_are_not_found, list_returns_labels,
            broken_source_fails_prepare, sandboxes_are_independent);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                // `None`: the runtime is not there and the suite is skipped (the maker
                // decides when that is allowed and says so).
                let Some((sandbox, fixtures, _guard)) = $make.await else { return };
                $crate::conformance::$case(sandbox, fixtures).await;
            }
        )*
    };
}

type S = Arc<dyn Sandbox>;
type F = Arc<dyn Fixtures>;

fn id(name: &str) -> SandboxId {
    SandboxId::new(&format!("uid-{name}"), "main")
}

async fn run(s: &S, spec: &SandboxSpec) {
    s.prepare(spec).await.expect("prepare");
    s.create(spec).await.expect("create");
    s.start(&spec.id).await.expect("start");
}

async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("in time")
}

pub async fn lifecycle_reports_exit_code(s: S, f: F) {
    let spec = f.exits(id("exit"), 3, "hello");
    s.prepare(&spec).await.expect("prepare");
    s.create(&spec).await.expect("create");
    assert!(matches!(
        s.status(&spec.id).await.expect("status").state,
        State::Created
    ));
    s.start(&spec.id).await.expect("start");
    let exit = within(30, s.wait(&spec.id)).await.expect("wait");
    assert_eq!(exit.exit_code, 3);
    match s.status(&spec.id).await.expect("status").state {
        State::Exited { exit_code, .. } => assert_eq!(exit_code, 3),
        other => panic!("expected Exited, got {other:?}"),
    }
    // Waiting again on an exited sandbox answers at once with the same status.
    assert_eq!(within(5, s.wait(&spec.id)).await.expect("wait").exit_code, 3);
    let zero = f.exits(id("zero"), 0, "ok");
    run(&s, &zero).await;
    assert_eq!(within(30, s.wait(&zero.id)).await.expect("wait").exit_code, 0);
}

pub async fn logs_are_captured(s: S, f: F) {
    let spec = f.exits(id("logs"), 0, "captured-line");
    run(&s, &spec).await;
    within(30, s.wait(&spec.id)).await.expect("wait");
    let lines: Vec<_> = s
        .logs(&spec.id, LogOptions::default())
        .await
        .expect("logs")
        .collect()
        .await;
    assert!(
        lines
            .iter()
            .any(|l| l.stream == LogStream::Stdout && l.line == "captured-line"),
        "stdout captured: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == LogStream::Stderr && l.line == "captured-line"),
        "stderr captured"
    );
    let tail: Vec<_> = s
        .logs(
            &spec.id,
            LogOptions {
                follow: false,
                tail: Some(1),
            },
        )
        .await
        .expect("logs")
        .collect()
        .await;
    assert_eq!(tail.len(), 1, "tail limits the lines");
}

pub async fn logs_follow_until_exit(s: S, f: F) {
    let spec = f.runs_until_stopped(id("follow"), "first-line");
    run(&s, &spec).await;
    let mut stream = s
        .logs(
            &spec.id,
            LogOptions {
                follow: true,
                tail: None,
            },
        )
        .await
        .expect("logs");
    let first = within(30, stream.next()).await.expect("a line");
    assert_eq!(first.line, "first-line");
    s.stop(&spec.id, Duration::from_millis(200)).await.expect("stop");
    // A follow stream ends once the sandbox has exited.
    within(30, async { while stream.next().await.is_some() {} }).await;
}

pub async fn stop_ends_a_running_sandbox(s: S, f: F) {
    let spec = f.runs_until_stopped(id("stop"), "up");
    run(&s, &spec).await;
    assert!(matches!(
        s.status(&spec.id).await.expect("status").state,
        State::Running { .. }
    ));
    // A running sandbox's usage can be read (what it is depends on the runtime).
    s.usage(&spec.id).await.expect("usage of a running sandbox");
    let started = Instant::now();
    let exit = within(30, s.stop(&spec.id, Duration::from_millis(500)))
        .await
        .expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stop honours its grace period"
    );
    assert!(matches!(
        s.status(&spec.id).await.expect("status").state,
        State::Exited { .. }
    ));
    assert_eq!(within(5, s.wait(&spec.id)).await.expect("wait"), exit);
}

pub async fn kill_ends_a_running_sandbox(s: S, f: F) {
    let spec = f.runs_until_stopped(id("kill"), "up");
    run(&s, &spec).await;
    s.kill(&spec.id).await.expect("kill");
    let exit = within(15, s.wait(&spec.id)).await.expect("wait");
    assert_ne!(exit.exit_code, 0, "a killed sandbox did not succeed");
}

pub async fn delete_removes(s: S, f: F) {
    let spec = f.exits(id("delete"), 0, "x");
    run(&s, &spec).await;
    within(30, s.wait(&spec.id)).await.expect("wait");
    s.delete(&spec.id).await.expect("delete");
    assert!(matches!(s.status(&spec.id).await, Err(SandboxError::NotFound(_))));
    assert!(!s.list().await.expect("list").iter().any(|st| st.id == spec.id));
    // The same id can be created again after a delete.
    s.create(&spec).await.expect("re-create");
    s.delete(&spec.id).await.expect("delete a never-started sandbox");
}

pub async fn duplicate_create_fails(s: S, f: F) {
    let spec = f.exits(id("dup"), 0, "x");
    s.prepare(&spec).await.expect("prepare");
    s.create(&spec).await.expect("create");
    assert!(matches!(
        s.create(&spec).await,
        Err(SandboxError::AlreadyExists(_))
    ));
    s.delete(&spec.id).await.expect("delete");
}

pub async fn unknown_ids_are_not_found(s: S, _f: F) {
    let ghost = id("ghost");
    assert!(matches!(s.start(&ghost).await, Err(SandboxError::NotFound(_))));
    assert!(matches!(s.status(&ghost).await, Err(SandboxError::NotFound(_))));
    assert!(matches!(s.kill(&ghost).await, Err(SandboxError::NotFound(_))));
    assert!(matches!(s.delete(&ghost).await, Err(SandboxError::NotFound(_))));
    assert!(matches!(s.wait(&ghost).await, Err(SandboxError::NotFound(_))));
    assert!(matches!(s.usage(&ghost).await, Err(SandboxError::NotFound(_))));
}

pub async fn list_returns_labels(s: S, f: F) {
    let mut spec = f.runs_until_stopped(id("labels"), "x");
    spec.labels.insert(LABEL_POD_UID.into(), "uid-labels".into());
    run(&s, &spec).await;
    let all = s.list().await.expect("list");
    let mine = all.iter().find(|st| st.id == spec.id).expect("listed");
    assert_eq!(
        mine.labels.get(LABEL_POD_UID).map(String::as_str),
        Some("uid-labels")
    );
    s.kill(&spec.id).await.expect("kill");
}

pub async fn broken_source_fails_prepare(s: S, f: F) {
    let spec = f.broken(id("broken"));
    match s.prepare(&spec).await {
        Err(SandboxError::Fetch { .. } | SandboxError::Compile { .. } | SandboxError::InvalidSpec(_)) => {}
        other => panic!("expected a fetch/compile error, got {other:?}"),
    }
}

pub async fn sandboxes_are_independent(s: S, f: F) {
    let long = f.runs_until_stopped(id("long"), "x");
    let short = f.exits(id("short"), 7, "y");
    run(&s, &long).await;
    run(&s, &short).await;
    assert_eq!(within(30, s.wait(&short.id)).await.expect("wait").exit_code, 7);
    assert!(
        matches!(
            s.status(&long.id).await.expect("status").state,
            State::Running { .. }
        ),
        "one sandbox exiting leaves the other running"
    );
    s.kill(&long.id).await.expect("kill");
}
