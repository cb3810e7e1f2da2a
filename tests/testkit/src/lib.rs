//! What every test suite of Wisp shares, so that each rule lives in one place:
//!
//! - [`eventually`], [`try_eventually`] and [`Wait`]: poll a condition until it holds, and fail naming what was
//!   awaited (and the probe's last error) when it does not within the time given;
//! - [`guests`]: where this repository's guest components are built;
//! - [`wait_pod`]: a pod's state, awaited through the API;
//! - [`required`]: the rule for a test that needs a real part the machine may lack (the
//!   Docker engine, schemathesis): with `CI` set it fails the test with the reason, elsewhere
//!   it prints a notice and the test skips.
//!
//! Test-only code of the crates themselves sits behind their `test-util` features
//! (`wisp-apiserver`'s `TestServer`, `wisp-store`'s, the Docker sandbox's image helpers,
//! `wisp-sandbox`'s `fake`), so none of it is in a release build.

pub mod guests;

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// How long [`eventually`] waits.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// How often [`eventually`] polls.
pub const INTERVAL: Duration = Duration::from_millis(25);

/// What a probe returns: whether the condition holds yet and, if so, its value.
///
/// `bool` and `Option<T>` for probes that cannot fail; `Result<bool, E>` and
/// `Result<Option<T>, E>` for probes that may, where an error ends the wait at once.
pub trait Probe<T> {
    fn outcome(self) -> anyhow::Result<Option<T>>;
}

impl Probe<()> for bool {
    fn outcome(self) -> anyhow::Result<Option<()>> {
        Ok(self.then_some(()))
    }
}

impl<T> Probe<T> for Option<T> {
    fn outcome(self) -> anyhow::Result<Option<T>> {
        Ok(self)
    }
}

impl<E: Into<anyhow::Error>> Probe<()> for Result<bool, E> {
    fn outcome(self) -> anyhow::Result<Option<()>> {
        self.map(|held| held.then_some(())).map_err(Into::into)
    }
}

impl<T, E: Into<anyhow::Error>> Probe<T> for Result<Option<T>, E> {
    fn outcome(self) -> anyhow::Result<Option<T>> {
        self.map_err(Into::into)
    }
}

/// A wait for a condition: [`wait`]`("what").within(d).every(d).until(probe)`.
#[derive(Debug, Clone)]
pub struct Wait {
    what: String,
    within: Duration,
    every: Duration,
}

/// A wait for `what` (named in the error), [`TIMEOUT`] at most, polling every [`INTERVAL`].
pub fn wait(what: impl Into<String>) -> Wait {
    Wait {
        what: what.into(),
        within: TIMEOUT,
        every: INTERVAL,
    }
}

impl Wait {
    #[must_use]
    pub fn within(self, within: Duration) -> Self {
        Self { within, ..self }
    }

    #[must_use]
    pub fn every(self, every: Duration) -> Self {
        Self { every, ..self }
    }

    /// Polls `probe` until it yields a value (then returns it with how long that took), the
    /// time is up, or the probe fails.
    pub async fn until<T, P, F>(self, mut probe: F) -> Result<(T, Duration), WaitError>
    where
        P: Probe<T>,
        F: AsyncFnMut() -> P,
    {
        let started = Instant::now();
        loop {
            match probe().await.outcome() {
                Ok(Some(value)) => return Ok((value, started.elapsed())),
                Ok(None) if started.elapsed() >= self.within => {
                    return Err(WaitError {
                        what: self.what,
                        within: self.within,
                        cause: None,
                    });
                }
                Ok(None) => tokio::time::sleep(self.every).await,
                Err(cause) => {
                    return Err(WaitError {
                        what: self.what,
                        within: self.within,
                        cause: Some(cause),
                    });
                }
            }
        }
    }
}

/// A wait that ended without its condition.
#[derive(Debug)]
pub struct WaitError {
    what: String,
    within: Duration,
    /// The probe's error, when that ended the wait.
    cause: Option<anyhow::Error>,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            None => write!(f, "timed out after {:?} waiting for {}", self.within, self.what),
            Some(cause) => write!(f, "while waiting for {}: {cause:#}", self.what),
        }
    }
}

impl std::error::Error for WaitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_ref()
            .map(|c| c.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// Polls `probe` every [`INTERVAL`] until it yields a value, and returns it; panics naming
/// `what` after [`TIMEOUT`] or when the probe fails.
#[allow(clippy::panic)]
pub async fn eventually<T, P, F>(what: &str, probe: F) -> T
where
    P: Probe<T>,
    F: AsyncFnMut() -> P,
{
    match wait(what).until(probe).await {
        Ok((value, _)) => value,
        Err(e) => panic!("{e}"),
    }
}

/// [`eventually`] for a test that returns a `Result`: the probe may fail (with `?`), and the
/// timeout or its failure is this function's error.
pub async fn try_eventually<T, F>(what: &str, probe: F) -> anyhow::Result<T>
where
    F: AsyncFnMut() -> anyhow::Result<Option<T>>,
{
    Ok(wait(what).until(probe).await?.0)
}

/// Polls pod `default/<name>` until `check` holds and returns it; fails after `secs` with the
/// pod's last status.
pub async fn wait_pod(
    client: &wisp_client::Client,
    name: &str,
    secs: u64,
    check: impl Fn(&wisp_api::Pod) -> bool,
) -> anyhow::Result<wisp_api::Pod> {
    let api = client.api::<wisp_api::Pod>(Some("default"));
    let mut last = None;
    let waited = wait(format!("pod {name} to reach the expected state"))
        .within(Duration::from_secs(secs))
        .every(Duration::from_millis(20))
        .until(async || -> anyhow::Result<Option<wisp_api::Pod>> {
            let pod = api.get(name).await?;
            if check(&pod) {
                return Ok(Some(pod));
            }
            last = pod.status;
            Ok(None)
        })
        .await;
    match waited {
        Ok((pod, _)) => Ok(pod),
        Err(e) => anyhow::bail!("{e}; last status: {last:#?}"),
    }
}

/// Read object `name`, `change` it and replace it, again while a controller's write in between
/// makes the replace a conflict (409), at most 20 times.
pub async fn update<T: wisp_api::Resource + Clone>(
    api: &wisp_client::Api<T>,
    name: &str,
    change: impl Fn(&mut T),
) -> anyhow::Result<T> {
    for attempt in 0.. {
        let mut obj = api.get(name).await?;
        change(&mut obj);
        match api.replace(&obj).await {
            Ok(stored) => return Ok(stored),
            Err(e) if e.code() == Some(409) && attempt < 20 => {}
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}

/// The rule for a test that needs a real part this machine may lack: `ready` says whether it
/// is there (`Err` with the reason when not). In CI (`CI` set) a missing part fails the test
/// with the reason; elsewhere the test prints a notice and should return (`None`).
#[allow(clippy::panic, clippy::print_stderr)]
pub fn required<T>(test: &str, ready: Result<T, String>) -> Option<T> {
    match ready {
        Ok(v) => Some(v),
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("{test}: this test must run in CI, but {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason} (set CI=1 to make this a failure)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_condition_that_comes_true_returns_its_value() {
        let polls = AtomicU32::new(0);
        let v = eventually("the third poll", async || {
            let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
            (n >= 3).then_some(n)
        })
        .await;
        assert_eq!(v, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_condition_that_never_holds_times_out_naming_it() {
        let err = wait("the moon")
            .within(Duration::from_millis(100))
            .until(async || false)
            .await
            .expect_err("never true");
        assert!(err.to_string().contains("waiting for the moon"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_probe_ends_the_wait_with_its_cause() {
        let polls = AtomicU32::new(0);
        let err = wait("a value")
            .until(async || -> anyhow::Result<Option<u8>> {
                polls.fetch_add(1, Ordering::SeqCst);
                anyhow::bail!("the server said 500")
            })
            .await
            .expect_err("fails");
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        assert!(err.to_string().contains("the server said 500"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn a_part_that_is_there_is_used() {
        assert_eq!(required("t", Ok::<_, String>(7)), Some(7));
    }
}
