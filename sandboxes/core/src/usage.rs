//! What a sandbox uses: CPU time (cumulative, so a rate comes from two readings) and memory
//! now. Runtimes that run guests in this process time the polls that run them
//! ([`cpu_timed`]): the monotonic clock read around each poll (20 ns, where the thread CPU
//! clock is a system call of 300–400 ns, two per poll, several polls a request: ~8 % of a
//! warm Wasm request). Time a guest spends waiting never counts; a poll preempted by the OS
//! counts the time it was off the CPU too.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// A sandbox's usage at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time used since the sandbox started, in nanoseconds (for guests run in this
    /// process: the time their polls ran, see [`cpu_timed`]).
    pub cpu_ns: u64,
    /// Memory in use now, in bytes (a container's working set; a Wasm sandbox's linear
    /// memories of every live instance).
    pub memory_bytes: u64,
}

/// Runs `f`, adding the time each of its polls takes (on whichever thread) to `used`, in
/// nanoseconds: summed here, added to `used` once `f` is ready or after a poll of 1 ms or
/// more (so a long guest shows while it runs), keeping the shared counter off the path of
/// each poll.
pub async fn cpu_timed<F: Future>(used: &AtomicU64, f: F) -> F::Output {
    const PUBLISH_NS: u64 = 1_000_000;
    let mut f = std::pin::pin!(f);
    let mut pending: u64 = 0;
    std::future::poll_fn(|cx| {
        let start = std::time::Instant::now();
        let polled = f.as_mut().poll(cx);
        let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        pending = pending.saturating_add(took);
        if polled.is_ready() || pending >= PUBLISH_NS {
            used.fetch_add(std::mem::take(&mut pending), Ordering::Relaxed);
        }
        polled
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU time this thread has used, in nanoseconds.
    fn thread_cpu_ns() -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
    }

    #[tokio::test]
    async fn cpu_time_counts_spinning_polls_and_not_sleeping() {
        let used = AtomicU64::new(0);
        let spun = cpu_timed(&used, async {
            // Spin until this thread has used 50 ms of CPU, then sleep a second.
            let start = thread_cpu_ns();
            let mut n = 0u64;
            while thread_cpu_ns() - start < 50_000_000 {
                n = std::hint::black_box(n.wrapping_add(1));
            }
            let spun = thread_cpu_ns() - start;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            spun
        })
        .await;
        let counted = used.load(Ordering::Relaxed);
        // The spin and the little around it; none of the second asleep.
        assert!(counted >= spun, "{counted} ns counted for {spun} ns spun");
        assert!(
            counted < spun + 900_000_000,
            "{counted} ns counted for {spun} ns spun and 1 s asleep"
        );
    }
}
