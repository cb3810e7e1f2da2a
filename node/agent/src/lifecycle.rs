//! The pod lifecycle as a pure state machine: no I/O, only the decisions. The worker
//! (`crate::worker`) feeds it what happened (preparation done or failed, a container
//! started or exited, a probe result) and asks it what to do next and what the pod's status
//! is.
//!
//! Stages: `Pending` (accepted, nothing done yet) → `Preparing` (fetch + compile/pull,
//! config resolved) → `Running` (containers started; exited ones restarted per
//! `restartPolicy` after an exponential backoff, reported as `CrashLoopBackOff`) →
//! `Succeeded` / `Failed` once every container has exited for good.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use wisp_api::{PodPhase, RestartPolicy};
use wisp_sandbox::ExitStatus;

/// Waiting reasons shown in container statuses.
pub const REASON_PREPARING: &str = "Preparing";
pub const REASON_CRASH_LOOP: &str = "CrashLoopBackOff";

/// Restart delays: `base · 2^(n-1)` for the n-th consecutive failure, capped at `max`; a
/// container that ran for `reset_after` before exiting starts again from `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// Delay before the restart that follows the `failures`-th consecutive failure (≥ 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Pending,
    Preparing,
    Running,
    Done(PodPhase),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    pub exit: ExitStatus,
    pub started_at: Option<SystemTime>,
    pub finished_at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Waiting { reason: String, message: Option<String> },
    Running { since: Instant, started_at: SystemTime },
    Terminated(Terminated),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub state: ContainerState,
    pub last_terminated: Option<Terminated>,
    /// Times the container was started again after exiting.
    pub restarts: i32,
    /// Consecutive failures (for the backoff).
    failures: u32,
    /// When a pending restart (or preparation retry) is due.
    pub retry_at: Option<Instant>,
    pub ready: bool,
}

impl Container {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: ContainerState::Waiting {
                reason: REASON_PREPARING.into(),
                message: None,
            },
            last_terminated: None,
            restarts: 0,
            failures: 0,
            retry_at: None,
            ready: false,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }
}

/// One pod's lifecycle.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    policy: RestartPolicy,
    backoff: Backoff,
    stage: Stage,
    containers: Vec<Container>,
    /// Consecutive preparation failures (for the backoff).
    prepare_failures: u32,
    /// When the next preparation attempt is due after a failure.
    prepare_retry_at: Option<Instant>,
    /// Why the pod failed or is stuck, for the pod status.
    pub message: Option<String>,
}

impl Lifecycle {
    pub fn new<'a>(
        policy: RestartPolicy,
        backoff: Backoff,
        containers: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            policy,
            backoff,
            stage: Stage::Pending,
            containers: containers.into_iter().map(Container::new).collect(),
            prepare_failures: 0,
            prepare_retry_at: None,
            message: None,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn containers(&self) -> &[Container] {
        &self.containers
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    fn container_mut(&mut self, name: &str) -> Option<&mut Container> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    /// Preparation starts (or starts again).
    pub fn preparing(&mut self) {
        if matches!(self.stage, Stage::Pending | Stage::Preparing) {
            self.stage = Stage::Preparing;
            self.prepare_retry_at = None;
        }
    }

    /// Whether preparation should run now.
    pub fn should_prepare(&self, now: Instant) -> bool {
        matches!(self.stage, Stage::Pending | Stage::Preparing)
            && self.prepare_retry_at.is_none_or(|t| t <= now)
    }

    /// Preparation failed with `reason` (e.g. `ArtifactPullBackOff`): every container waits
    /// with it, and preparation is retried after the backoff. Returns when.
    pub fn prepare_failed(&mut self, now: Instant, reason: &str, message: &str) -> Instant {
        self.prepare_failures += 1;
        let at = now + self.backoff.delay(self.prepare_failures);
        self.prepare_retry_at = Some(at);
        self.stage = Stage::Preparing;
        for c in &mut self.containers {
            c.state = ContainerState::Waiting {
                reason: reason.to_owned(),
                message: Some(message.to_owned()),
            };
        }
        self.message = Some(message.to_owned());
        at
    }

    /// Retry preparing no later than `at` (a runtime that was down is checked often, so
    /// pods start soon after it returns rather than after a long backoff).
    pub fn retry_prepare_by(&mut self, at: Instant) {
        if let Some(t) = self.prepare_retry_at.as_mut() {
            *t = (*t).min(at);
        }
    }

    /// Everything is prepared: containers may start.
    pub fn prepared(&mut self) {
        if matches!(self.stage, Stage::Pending | Stage::Preparing) {
            self.stage = Stage::Running;
            self.prepare_failures = 0;
            self.prepare_retry_at = None;
            self.message = None;
        }
    }

    /// Containers to start now: never started yet, or with a restart that is due.
    pub fn due_starts(&self, now: Instant) -> Vec<String> {
        if self.stage != Stage::Running {
            return Vec::new();
        }
        self.containers
            .iter()
            .filter(|c| match &c.state {
                ContainerState::Waiting { .. } => c.retry_at.is_none_or(|t| t <= now),
                _ => false,
            })
            .map(|c| c.name.clone())
            .collect()
    }

    /// A container started (or was adopted running since `started_at`).
    pub fn started(&mut self, name: &str, now: Instant, started_at: SystemTime) {
        if let Some(c) = self.container_mut(name) {
            c.state = ContainerState::Running {
                since: now,
                started_at,
            };
            c.retry_at = None;
            c.ready = false;
        }
    }

    /// A container could not be started (created or started): it is retried after the
    /// backoff like a crash.
    pub fn start_failed(&mut self, name: &str, now: Instant, reason: &str, message: &str) {
        let backoff = self.backoff;
        if let Some(c) = self.container_mut(name) {
            c.failures += 1;
            c.retry_at = Some(now + backoff.delay(c.failures));
            c.state = ContainerState::Waiting {
                reason: reason.to_owned(),
                message: Some(message.to_owned()),
            };
            c.ready = false;
        }
    }

    /// A container exited. Decides per `restartPolicy` whether it restarts (after the
    /// backoff, waiting as `CrashLoopBackOff`) and, when nothing is left to run, the pod's
    /// final phase. Returns the restart time, if any.
    pub fn exited(&mut self, name: &str, exit: ExitStatus, now: Instant, at: SystemTime) -> Option<Instant> {
        let policy = self.policy;
        let backoff = self.backoff;
        let c = self.container_mut(name)?;
        let (ran_for, started_at) = match &c.state {
            ContainerState::Running { since, started_at } => (now - *since, Some(*started_at)),
            _ => (Duration::ZERO, None),
        };
        let failed = exit.exit_code != 0;
        let terminated = Terminated {
            exit,
            started_at,
            finished_at: at,
        };
        c.ready = false;
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        let retry = if restart {
            if ran_for >= backoff.reset_after {
                c.failures = 0;
            }
            c.failures += 1;
            let at = now + backoff.delay(c.failures);
            c.retry_at = Some(at);
            c.restarts += 1;
            c.last_terminated = Some(terminated);
            c.state = ContainerState::Waiting {
                reason: REASON_CRASH_LOOP.into(),
                message: Some(format!(
                    "back-off {:?} restarting container {name}",
                    backoff.delay(c.failures)
                )),
            };
            Some(at)
        } else {
            c.retry_at = None;
            c.state = ContainerState::Terminated(terminated);
            None
        };
        self.settle();
        retry
    }

    /// The pod is done when every container has terminated for good.
    fn settle(&mut self) {
        if self.stage != Stage::Running {
            return;
        }
        let finals: Option<Vec<&Terminated>> = self
            .containers
            .iter()
            .map(|c| match &c.state {
                ContainerState::Terminated(t) => Some(t),
                _ => None,
            })
            .collect();
        if let Some(finals) = finals {
            let ok = finals.iter().all(|t| t.exit.exit_code == 0);
            self.stage = Stage::Done(if ok { PodPhase::Succeeded } else { PodPhase::Failed });
        }
    }

    /// Readiness of a running container (probe result, or "started" without a probe).
    pub fn set_ready(&mut self, name: &str, ready: bool) -> bool {
        match self.container_mut(name) {
            Some(c) if c.is_running() && c.ready != ready => {
                c.ready = ready;
                true
            }
            _ => false,
        }
    }

    /// The pod is ready when every container runs and is ready.
    pub fn ready(&self) -> bool {
        self.stage == Stage::Running && self.containers.iter().all(|c| c.is_running() && c.ready)
    }

    pub fn phase(&self) -> PodPhase {
        match self.stage {
            Stage::Pending | Stage::Preparing => PodPhase::Pending,
            Stage::Running => PodPhase::Running,
            Stage::Done(p) => p,
        }
    }

    /// The earliest pending retry (preparation or container restart).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let restarts = self.containers.iter().filter_map(|c| match c.state {
            ContainerState::Waiting { .. } if self.stage == Stage::Running => c.retry_at,
            _ => None,
        });
        restarts.chain(self.prepare_retry_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitStatus {
        ExitStatus {
            exit_code: code,
            reason: None,
        }
    }

    fn running(policy: RestartPolicy, names: &[&str]) -> Lifecycle {
        let mut l = Lifecycle::new(policy, Backoff::default(), names.iter().copied());
        l.preparing();
        l.prepared();
        let now = Instant::now();
        for n in l.due_starts(now) {
            l.started(&n, now, SystemTime::now());
        }
        l
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=11).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.delay(u32::MAX), b.max, "no overflow");
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_restarts_with_growing_delays() {
        let mut l = running(RestartPolicy::Always, &["main"]);
        let mut delays = Vec::new();
        for _ in 0..4 {
            let t0 = Instant::now();
            let at = l
                .exited("main", exit(1), Instant::now(), SystemTime::now())
                .expect("restart");
            assert_eq!(l.phase(), PodPhase::Running, "a restarting pod stays Running");
            assert!(!l.ready());
            let c = l.container("main").expect("main");
            assert!(
                matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == REASON_CRASH_LOOP)
            );
            assert!(l.due_starts(Instant::now()).is_empty(), "not before the backoff");
            assert_eq!(l.next_wakeup(), Some(at));
            tokio::time::advance(at - Instant::now()).await;
            assert_eq!(l.due_starts(Instant::now()), ["main"]);
            delays.push((Instant::now() - t0).as_secs());
            l.started("main", Instant::now(), SystemTime::now());
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(l.container("main").expect("main").restarts, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_resets_after_a_long_healthy_run() {
        let mut l = running(RestartPolicy::Always, &["main"]);
        for _ in 0..3 {
            let at = l
                .exited("main", exit(1), Instant::now(), SystemTime::now())
                .expect("restart");
            tokio::time::advance(at - Instant::now()).await;
            l.started("main", Instant::now(), SystemTime::now());
        }
        // Ran for longer than reset_after: the next delay is the base again.
        tokio::time::advance(Backoff::default().reset_after).await;
        let at = l
            .exited("main", exit(1), Instant::now(), SystemTime::now())
            .expect("restart");
        assert_eq!(at - Instant::now(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn on_failure_restarts_failures_only_and_succeeds() {
        let mut l = running(RestartPolicy::OnFailure, &["main"]);
        assert!(
            l.exited("main", exit(3), Instant::now(), SystemTime::now())
                .is_some()
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.due_starts(Instant::now()), ["main"]);
        l.started("main", Instant::now(), SystemTime::now());
        assert!(
            l.exited("main", exit(0), Instant::now(), SystemTime::now())
                .is_none()
        );
        assert_eq!(l.phase(), PodPhase::Succeeded);
        let c = l.container("main").expect("main");
        assert_eq!(c.restarts, 1);
        assert_eq!(c.last_terminated.as_ref().map(|t| t.exit.exit_code), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn never_fails_the_pod_when_all_containers_are_done() {
        let mut l = running(RestartPolicy::Never, &["a", "b"]);
        assert!(
            l.exited("a", exit(0), Instant::now(), SystemTime::now())
                .is_none()
        );
        assert_eq!(l.phase(), PodPhase::Running, "b still runs");
        assert!(
            l.exited("b", exit(2), Instant::now(), SystemTime::now())
                .is_none()
        );
        assert_eq!(l.phase(), PodPhase::Failed);
        assert!(l.due_starts(Instant::now()).is_empty());
        assert_eq!(l.next_wakeup(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn preparation_failures_back_off_then_recover() {
        let mut l = Lifecycle::new(RestartPolicy::Always, Backoff::default(), ["main"]);
        assert_eq!(l.phase(), PodPhase::Pending);
        assert!(l.should_prepare(Instant::now()));
        l.preparing();
        let at = l.prepare_failed(Instant::now(), "ArtifactPullBackOff", "blob missing");
        assert_eq!(at - Instant::now(), Duration::from_secs(1));
        assert!(!l.should_prepare(Instant::now()));
        assert_eq!(l.next_wakeup(), Some(at));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.should_prepare(Instant::now()));
        let at = l.prepare_failed(Instant::now(), "ArtifactPullBackOff", "blob missing");
        assert_eq!(at - Instant::now(), Duration::from_secs(2), "doubles");
        tokio::time::advance(Duration::from_secs(2)).await;
        l.preparing();
        l.prepared();
        assert_eq!(l.phase(), PodPhase::Running);
        assert_eq!(l.due_starts(Instant::now()), ["main"]);
        assert!(l.message.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ready_needs_every_container_running_and_ready() {
        let mut l = running(RestartPolicy::Always, &["a", "b"]);
        assert!(!l.ready());
        assert!(l.set_ready("a", true));
        assert!(!l.set_ready("a", true), "no change");
        assert!(!l.ready());
        l.set_ready("b", true);
        assert!(l.ready());
        l.exited("b", exit(1), Instant::now(), SystemTime::now());
        assert!(!l.ready(), "a crashed container makes the pod unready");
        assert!(!l.set_ready("b", true), "a waiting container cannot be ready");
    }

    #[tokio::test(start_paused = true)]
    async fn start_failures_are_retried_with_backoff() {
        let mut l = Lifecycle::new(RestartPolicy::Always, Backoff::default(), ["main"]);
        l.preparing();
        l.prepared();
        l.start_failed("main", Instant::now(), "CreateContainerError", "boom");
        assert!(l.due_starts(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.due_starts(Instant::now()), ["main"]);
    }
}
