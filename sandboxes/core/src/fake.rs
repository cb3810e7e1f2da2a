//! An in-memory runtime for tests of what sits on the [`Sandbox`] contract (the node agent,
//! the ingress): no wasmtime, no Docker, yet it behaves — a state machine per sandbox,
//! programs with exit codes and logs, `wait`, stop with a grace period, kill, adoption
//! through `list`, and HTTP sandboxes answered in process by a handler the test sets. It
//! passes the same conformance suite as the real runtimes.
//!
//! Code is "fetched" from what the test [`provide`](FakeSandbox::provide)s (anything else fails
//! `prepare` with [`SandboxError::Fetch`]), each artifact with the [`Kind`] the runtime
//! reports for it. A process's argv (`command` then `args`) says what it does:
//! * `exit CODE LINE` — prints `LINE` on stdout and on stderr, exits with `CODE`;
//! * `sleep LINE` — prints `LINE` on stdout, then runs until stopped (exit 0) or killed;
//! * `ignore-stop LINE` — as `sleep`, but a stop is ignored: it ends only when killed (after
//!   the stop's grace period, with 137);
//! * anything else — prints `fake: unknown program …` on stderr and exits with 127.
//!
//! An HTTP sandbox serves while it runs; a stop lets its requests in flight finish within the
//! grace period (exit 0), else ends them (137).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{
    Endpoint, ExitStatus, HandleError, HttpBody, InProcessHttp, Kind, LogLine, LogOptions, LogStream, Result,
    Sandbox, SandboxError, SandboxId, SandboxSpec, SandboxStatus, Source, State,
};

/// Answers an in-process request for a sandbox.
pub type Handler = Arc<
    dyn Fn(&SandboxId, http::Request<HttpBody>) -> BoxFuture<'static, http::Response<HttpBody>> + Send + Sync,
>;

/// The exit code of a killed sandbox (128 + SIGKILL, as a container's).
pub const KILLED: i32 = 137;

/// A response body from bytes, in the contract's body type.
pub fn body(bytes: impl Into<Bytes>) -> HttpBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The default handler: `200 <sandbox id> <method> <path>`.
fn echo() -> Handler {
    Arc::new(|id, req| {
        let text = format!("{id} {} {}", req.method(), req.uri().path());
        async move {
            let mut resp = http::Response::new(body(text));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            resp
        }
        .boxed()
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    None,
    Stop,
    Kill,
}

/// Captured lines; followers wake on every new line and when the sandbox has exited.
struct Logs {
    lines: Mutex<Vec<LogLine>>,
    /// (lines captured, closed)
    seen: watch::Sender<(usize, bool)>,
}

impl Logs {
    fn new() -> Self {
        Self {
            lines: Mutex::default(),
            seen: watch::Sender::new((0, false)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<LogLine>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, stream: LogStream, line: &str) {
        let n = {
            let mut lines = self.lock();
            lines.push(LogLine {
                stream,
                line: line.to_owned(),
                at: SystemTime::now(),
            });
            lines.len()
        };
        self.seen.send_modify(|s| s.0 = n);
    }

    fn close(&self) {
        self.seen.send_modify(|s| s.1 = true);
    }

    fn stream(self: &Arc<Self>, options: LogOptions) -> BoxStream<'static, LogLine> {
        let start = {
            let lines = self.lock();
            options.tail.map_or(0, |t| lines.len().saturating_sub(t))
        };
        if !options.follow {
            let lines = self.lock()[start..].to_vec();
            return futures::stream::iter(lines).boxed();
        }
        let rx = self.seen.subscribe();
        futures::stream::unfold((self.clone(), start, rx), |(logs, at, mut rx)| async move {
            loop {
                // Marked seen before the lines are read: a line pushed after this wakes us.
                let closed = rx.borrow_and_update().1;
                let next = logs.lock().get(at).cloned();
                if let Some(line) = next {
                    return Some((line, (logs, at + 1, rx)));
                }
                if closed || rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .boxed()
    }
}

struct Entry {
    spec: SandboxSpec,
    kind: Kind,
    state: watch::Sender<State>,
    signal: watch::Sender<Signal>,
    logs: Arc<Logs>,
    /// HTTP requests being answered.
    in_flight: watch::Sender<usize>,
}

impl Entry {
    fn status(&self) -> SandboxStatus {
        let state = self.state.borrow().clone();
        let endpoint = (self.kind == Kind::Http && matches!(state, State::Running { .. }))
            .then_some(Endpoint::InProcess);
        SandboxStatus {
            id: self.spec.id.clone(),
            state,
            endpoint,
            listen: None,
            labels: self.spec.labels.clone(),
        }
    }

    fn exited(&self) -> Option<ExitStatus> {
        match &*self.state.borrow() {
            State::Exited {
                exit_code, reason, ..
            } => Some(ExitStatus {
                exit_code: *exit_code,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// Records the exit (the first one only) and ends log followers.
    fn finish(&self, exit_code: i32, reason: Option<&str>) {
        self.state.send_if_modified(|s| {
            if matches!(s, State::Exited { .. }) {
                return false;
            }
            *s = State::Exited {
                exit_code,
                reason: reason.map(str::to_owned),
                finished_at: SystemTime::now(),
            };
            true
        });
        self.logs.close();
    }

    async fn wait(&self) -> ExitStatus {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`: `wait_for` cannot fail while we hold it.
        let _ = rx.wait_for(|s| matches!(s, State::Exited { .. })).await;
        self.exited().unwrap_or(ExitStatus {
            exit_code: KILLED,
            reason: Some("Killed".into()),
        })
    }

    async fn signalled(&self, at_least: Signal) -> Signal {
        let mut rx = self.signal.subscribe();
        let wanted = |s: &Signal| match at_least {
            Signal::Kill => *s == Signal::Kill,
            _ => *s != Signal::None,
        };
        match rx.wait_for(wanted).await {
            Ok(s) => *s,
            Err(_) => Signal::Kill,
        }
    }

    fn serving(&self) -> bool {
        self.kind == Kind::Http
            && matches!(*self.state.borrow(), State::Running { .. })
            && *self.signal.borrow() == Signal::None
    }

    /// What the process does, until it exits.
    async fn run(self: Arc<Self>) {
        let argv: Vec<&str> = self
            .spec
            .command
            .iter()
            .chain(&self.spec.args)
            .map(String::as_str)
            .collect();
        match argv.as_slice() {
            ["exit", code, line] => {
                self.logs.push(LogStream::Stdout, line);
                self.logs.push(LogStream::Stderr, line);
                match code.parse() {
                    Ok(code) => self.finish(code, (code != 0).then_some("Error")),
                    Err(_) => self.finish(2, Some("Error")),
                }
            }
            ["sleep", line] => {
                self.logs.push(LogStream::Stdout, line);
                match self.signalled(Signal::Stop).await {
                    Signal::Kill => self.finish(KILLED, Some("Killed")),
                    _ => self.finish(0, Some("Completed")),
                }
            }
            ["ignore-stop", line] => {
                self.logs.push(LogStream::Stdout, line);
                self.signalled(Signal::Kill).await;
                self.finish(KILLED, Some("Killed"));
            }
            other => {
                self.logs
                    .push(LogStream::Stderr, &format!("fake: unknown program {other:?}"));
                self.finish(127, Some("Error"));
            }
        }
    }
}

struct Inner {
    runtime: &'static str,
    artifacts: Mutex<Vec<(Source, Kind)>>,
    sandboxes: Mutex<HashMap<SandboxId, Arc<Entry>>>,
    handler: RwLock<Handler>,
    health: Mutex<Option<std::result::Result<String, String>>>,
    /// The processes' tasks: aborted when the runtime is dropped.
    tasks: Mutex<JoinSet<()>>,
}

/// The in-memory runtime. Cheap to clone (clones share their sandboxes).
#[derive(Clone)]
pub struct FakeSandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSandbox")
            .field("runtime", &self.inner.runtime)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeSandbox {
    /// A runtime answering to `runtime` (e.g. `"wasm"`), with no artifacts and the echo handler.
    pub fn new(runtime: &'static str) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime,
                artifacts: Mutex::default(),
                sandboxes: Mutex::default(),
                handler: RwLock::new(echo()),
                health: Mutex::default(),
                tasks: Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// Makes `source` fetchable; its code runs as `kind`.
    pub fn provide(&self, source: Source, kind: Kind) -> &Self {
        let mut artifacts = lock(&self.inner.artifacts);
        artifacts.retain(|(s, _)| *s != source);
        artifacts.push((source, kind));
        self
    }

    /// Answers in-process requests with `handler` from now on.
    pub fn set_handler(&self, handler: Handler) {
        *self.inner.handler.write().unwrap_or_else(PoisonError::into_inner) = handler;
    }

    /// What [`Sandbox::health`] reports: `None`, nothing to check (the default); `Ok`, the
    /// runtime's service answers; `Err`, it does not.
    pub fn set_health(&self, health: Option<std::result::Result<String, String>>) {
        *lock(&self.inner.health) = health;
    }

    fn kind_of(&self, source: &Source) -> Result<Kind> {
        lock(&self.inner.artifacts)
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                SandboxError::fetch(
                    format!("{source:?}"),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the fake runtime was given no such artifact",
                    ),
                )
            })
    }

    fn entry(&self, id: &SandboxId) -> Result<Arc<Entry>> {
        lock(&self.inner.sandboxes)
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(id.clone()))
    }

    fn spawn(&self, entry: Arc<Entry>) {
        let mut tasks = lock(&self.inner.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(entry.run());
    }

    async fn stop_entry(&self, entry: &Arc<Entry>, grace: Duration) -> ExitStatus {
        if let Some(done) = entry.exited() {
            return done;
        }
        if matches!(*entry.state.borrow(), State::Created) {
            entry.signal.send_replace(Signal::Kill);
            entry.finish(KILLED, Some("Killed"));
            return entry.wait().await;
        }
        entry.signal.send_if_modified(|s| {
            let first = *s == Signal::None;
            if first {
                *s = Signal::Stop;
            }
            first
        });
        if entry.kind == Kind::Http {
            let mut rx = entry.in_flight.subscribe();
            let drained = tokio::time::timeout(grace, rx.wait_for(|n| *n == 0)).await;
            if matches!(drained, Ok(Ok(_))) {
                entry.finish(0, Some("Completed"));
            } else {
                entry.signal.send_replace(Signal::Kill);
                entry.finish(KILLED, Some("Killed"));
            }
        } else if tokio::time::timeout(grace, entry.wait()).await.is_err() {
            entry.signal.send_replace(Signal::Kill);
        }
        entry.wait().await
    }
}

impl Sandbox for FakeSandbox {
    fn runtime(&self) -> &'static str {
        self.inner.runtime
    }

    fn prepare<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(self.kind_of(&spec.source).map(drop)))
    }

    fn create<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<()>> {
        let created = (|| {
            let kind = self.kind_of(&spec.source)?;
            let mut map = lock(&self.inner.sandboxes);
            if map.contains_key(&spec.id) {
                return Err(SandboxError::AlreadyExists(spec.id.clone()));
            }
            let entry = Entry {
                spec: spec.clone(),
                kind,
                state: watch::Sender::new(State::Created),
                signal: watch::Sender::new(Signal::None),
                logs: Arc::new(Logs::new()),
                in_flight: watch::Sender::new(0),
            };
            map.insert(spec.id.clone(), Arc::new(entry));
            Ok(())
        })();
        Box::pin(std::future::ready(created))
    }

    fn start<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>> {
        async move {
            let entry = self.entry(id)?;
            let started = entry.state.send_if_modified(|s| {
                if !matches!(s, State::Created) {
                    return false;
                }
                *s = State::Running {
                    started_at: SystemTime::now(),
                };
                true
            });
            if !started {
                return Err(SandboxError::WrongState {
                    id: id.clone(),
                    reason: "already started".into(),
                });
            }
            if entry.kind == Kind::Process {
                self.spawn(entry);
            } else {
                entry.logs.push(LogStream::Stdout, "serving HTTP in process");
            }
            Ok(())
        }
        .boxed()
    }

    fn stop<'a>(&'a self, id: &'a SandboxId, grace: Duration) -> BoxFuture<'a, Result<ExitStatus>> {
        async move {
            let entry = self.entry(id)?;
            Ok(self.stop_entry(&entry, grace).await)
        }
        .boxed()
    }

    fn kill<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>> {
        async move {
            let entry = self.entry(id)?;
            entry.signal.send_replace(Signal::Kill);
            let running_process =
                entry.kind == Kind::Process && matches!(*entry.state.borrow(), State::Running { .. });
            if running_process {
                // The process records its exit as it ends.
                entry.wait().await;
            } else {
                entry.finish(KILLED, Some("Killed"));
            }
            Ok(())
        }
        .boxed()
    }

    fn wait<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<ExitStatus>> {
        async move { Ok(self.entry(id)?.wait().await) }.boxed()
    }

    fn status<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<SandboxStatus>> {
        Box::pin(std::future::ready(self.entry(id).map(|e| e.status())))
    }

    fn logs<'a>(
        &'a self,
        id: &'a SandboxId,
        options: LogOptions,
    ) -> BoxFuture<'a, Result<BoxStream<'static, LogLine>>> {
        Box::pin(std::future::ready(self.entry(id).map(|e| e.logs.stream(options))))
    }

    fn delete<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<()>> {
        let deleted = (|| {
            let mut map = lock(&self.inner.sandboxes);
            let entry = map.get(id).ok_or_else(|| SandboxError::NotFound(id.clone()))?;
            if matches!(*entry.state.borrow(), State::Running { .. }) {
                return Err(SandboxError::WrongState {
                    id: id.clone(),
                    reason: "still running: stop or kill it first".into(),
                });
            }
            if let Some(entry) = map.remove(id) {
                entry.signal.send_replace(Signal::Kill);
                entry.logs.close();
            }
            Ok(())
        })();
        Box::pin(std::future::ready(deleted))
    }

    /// Nothing runs, so nothing is used: zeros for a known sandbox.
    fn usage<'a>(&'a self, id: &'a SandboxId) -> BoxFuture<'a, Result<crate::Usage>> {
        Box::pin(std::future::ready(
            self.entry(id).map(|_| crate::Usage::default()),
        ))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<SandboxStatus>>> {
        let mut all: Vec<_> = lock(&self.inner.sandboxes).values().map(|e| e.status()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Box::pin(std::future::ready(Ok(all)))
    }

    fn kind<'a>(&'a self, spec: &'a SandboxSpec) -> BoxFuture<'a, Result<Kind>> {
        Box::pin(std::future::ready(self.kind_of(&spec.source)))
    }

    fn health(&self) -> Option<BoxFuture<'_, Result<String>>> {
        let health = lock(&self.inner.health).clone()?;
        let runtime = self.inner.runtime;
        Some(Box::pin(std::future::ready(health.map_err(|e| {
            SandboxError::unavailable(format!("the {runtime} runtime's service"), e)
        }))))
    }

    fn in_process_http(&self) -> Option<&dyn InProcessHttp> {
        Some(self)
    }
}

/// Decrements a sandbox's in-flight count when the request ends (answered or abandoned).
struct InFlight(Arc<Entry>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl InProcessHttp for FakeSandbox {
    fn is_serving(&self, id: &SandboxId) -> bool {
        self.entry(id).is_ok_and(|e| e.serving())
    }

    fn handle<'a>(
        &'a self,
        id: &'a SandboxId,
        request: http::Request<HttpBody>,
    ) -> BoxFuture<'a, std::result::Result<http::Response<HttpBody>, HandleError>> {
        async move {
            let entry = self.entry(id).map_err(|_| HandleError::NotFound(id.clone()))?;
            if !entry.serving() {
                return Err(HandleError::NotServing(id.clone()));
            }
            entry.in_flight.send_modify(|n| *n += 1);
            let _in_flight = InFlight(entry.clone());
            let handler = self
                .inner
                .handler
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            tokio::select! {
                resp = handler(id, request) => Ok(resp),
                _ = entry.signalled(Signal::Kill) => {
                    Err(HandleError::Unavailable("the sandbox was killed".into()))
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::FutureExt;
    use http_body_util::BodyExt;

    use super::{FakeSandbox, body};
    use crate::conformance::Fixtures;
    use crate::{HandleError, Kind, Sandbox, SandboxId, SandboxSpec, Source, State};

    struct FakeFixtures;

    fn program(id: SandboxId, argv: &[&str]) -> SandboxSpec {
        let mut spec = SandboxSpec::new(id, Source::Image("fake/program".into()), Kind::Process);
        spec.args = argv.iter().map(|&a| a.to_owned()).collect();
        spec
    }

    impl Fixtures for FakeFixtures {
        fn exits(&self, id: SandboxId, code: i32, line: &str) -> SandboxSpec {
            program(id, &["exit", &code.to_string(), line])
        }
        fn runs_until_stopped(&self, id: SandboxId, line: &str) -> SandboxSpec {
            program(id, &["sleep", line])
        }
        fn broken(&self, id: SandboxId) -> SandboxSpec {
            SandboxSpec::new(id, Source::Image("fake/never-provided".into()), Kind::Process)
        }
    }

    async fn fake() -> Option<(Arc<dyn Sandbox>, Arc<dyn Fixtures>, ())> {
        let fake = FakeSandbox::new("fake");
        fake.provide(Source::Image("fake/program".into()), Kind::Process);
        Some((Arc::new(fake), Arc::new(FakeFixtures), ()))
    }

    /// The fake runtime passes the conformance suite every real runtime passes.
    mod conformance {
        use super::fake;
        crate::sandbox_conformance!(fake());
    }

    fn http_spec(fake: &FakeSandbox, name: &str) -> SandboxSpec {
        let source = Source::WasmDigest("sha256:web".into());
        fake.provide(source.clone(), Kind::Http);
        SandboxSpec::new(SandboxId::new(name, "main"), source, Kind::Process)
    }

    async fn run(fake: &FakeSandbox, spec: &mut SandboxSpec) {
        fake.prepare(spec).await.expect("prepare");
        spec.kind = fake.kind(spec).await.expect("kind");
        fake.create(spec).await.expect("create");
        fake.start(&spec.id).await.expect("start");
    }

    fn get(path: &str) -> http::Request<crate::HttpBody> {
        http::Request::get(path).body(body("")).expect("request")
    }

    #[tokio::test]
    async fn http_sandboxes_answer_in_process_with_the_handler_while_they_run() {
        let fake = FakeSandbox::new("wasm");
        let mut spec = http_spec(&fake, "web");
        run(&fake, &mut spec).await;
        assert_eq!(spec.kind, Kind::Http, "the kind comes from the artifact");
        let http = fake.in_process_http().expect("in process");
        assert!(http.is_serving(&spec.id));
        let resp = http.handle(&spec.id, get("/a")).await.expect("answered");
        let text = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&text[..], b"web/main GET /a");
        fake.set_handler(Arc::new(|_, _| {
            async {
                http::Response::builder()
                    .status(418)
                    .body(body("teapot"))
                    .expect("response")
            }
            .boxed()
        }));
        let resp = http.handle(&spec.id, get("/")).await.expect("answered");
        assert_eq!(resp.status(), 418);
        let exit = fake
            .stop(&spec.id, Duration::from_millis(100))
            .await
            .expect("stop");
        assert_eq!(exit.exit_code, 0, "nothing in flight: a clean stop");
        assert!(!http.is_serving(&spec.id));
        assert!(matches!(
            http.handle(&spec.id, get("/")).await,
            Err(HandleError::NotServing(_))
        ));
        assert!(matches!(
            http.handle(&SandboxId::new("ghost", "main"), get("/")).await,
            Err(HandleError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn stopping_an_http_sandbox_waits_for_its_requests_then_kills_them() {
        let fake = FakeSandbox::new("wasm");
        let (release, released) = tokio::sync::watch::channel(false);
        fake.set_handler(Arc::new(move |_, _| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                http::Response::new(body("late"))
            }
            .boxed()
        }));
        let mut spec = http_spec(&fake, "slow");
        run(&fake, &mut spec).await;
        let in_flight = {
            let fake = fake.clone();
            let id = spec.id.clone();
            tokio::spawn(async move {
                let http = fake.in_process_http().expect("in process");
                http.handle(&id, get("/")).await.map(|r| r.status())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let exit = fake
            .stop(&spec.id, Duration::from_millis(50))
            .await
            .expect("stop");
        assert_eq!(exit.exit_code, super::KILLED, "its request outlived the grace");
        assert!(matches!(
            in_flight.await.expect("joined"),
            Err(HandleError::Unavailable(_))
        ));
        drop(release);
        // The sandbox is gone for good: a new one with the same handler finishes its request.
        let mut again = http_spec(&fake, "quick");
        run(&fake, &mut again).await;
        assert!(matches!(
            fake.status(&again.id).await.expect("status").state,
            State::Running { .. }
        ));
    }

    #[tokio::test]
    async fn a_process_that_ignores_stop_is_killed_after_the_grace_period() {
        let fake = FakeSandbox::new("fake");
        fake.provide(Source::Image("fake/program".into()), Kind::Process);
        let mut spec = program(SandboxId::new("stubborn", "main"), &["ignore-stop", "x"]);
        run(&fake, &mut spec).await;
        let started = tokio::time::Instant::now();
        let exit = fake
            .stop(&spec.id, Duration::from_millis(100))
            .await
            .expect("stop");
        assert_eq!(exit.exit_code, super::KILLED);
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "the grace was given"
        );
        let mut unknown = program(SandboxId::new("what", "main"), &["dance"]);
        run(&fake, &mut unknown).await;
        assert_eq!(fake.wait(&unknown.id).await.expect("wait").exit_code, 127);
    }

    #[tokio::test]
    async fn health_is_reported_only_when_set() {
        let fake = FakeSandbox::new("docker");
        assert!(fake.health().is_none());
        fake.set_health(Some(Err("daemon down".into())));
        let e = fake.health().expect("checked").await.expect_err("down");
        assert!(e.to_string().contains("daemon down"), "{e}");
        fake.set_health(Some(Ok("1.0".into())));
        assert_eq!(fake.health().expect("checked").await.expect("up"), "1.0");
    }
}
