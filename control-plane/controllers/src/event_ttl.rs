//! Events expire: every Event whose `lastTimestamp` (or, without one, its creation) is older
//! than the TTL is deleted. Looked at every tenth of the TTL (at most every minute); an Event
//! raised again in the meantime lives on (its delete is a compare-and-swap on the version
//! read).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wisp_api::{Event, Resource};
use wisp_client::{Client, ListParams};

/// Default TTL, like the Kubernetes API server's `--event-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// How often expired Events are looked for, with `ttl`.
pub fn period(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Whether `event` was last seen longer than `ttl` before `now`.
pub fn expired(event: &Event, ttl: Duration, now: jiff::Timestamp) -> bool {
    let last = event
        .last_timestamp
        .as_deref()
        .or(event.metadata().creation_timestamp.as_deref())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let Some(last) = last else { return false };
    let Ok(ttl) = jiff::SignedDuration::try_from(ttl) else {
        return false;
    };
    now.duration_since(last) > ttl
}

/// Deletes the expired Events of every namespace; how many.
pub async fn sweep(client: &Client, ttl: Duration) -> Result<usize, crate::Error> {
    let api = client.api::<Event>(None);
    let list = api.list_all(&ListParams::default(), 500).await?;
    let now = jiff::Timestamp::now();
    let mut deleted = 0;
    let mut failed = None;
    for e in list.items.iter().filter(|e| expired(e, ttl, now)) {
        let api = client.api::<Event>(e.metadata.namespace.as_deref());
        let name = &e.metadata.name;
        // Only as read: an Event raised again since lives on.
        let gone = match e.metadata.resource_version.as_deref() {
            Some(rv) => api.delete_at(name, rv).await,
            None => api.delete(name).await,
        };
        match gone {
            Ok(_) => deleted += 1,
            Err(err) if matches!(err.code(), Some(404 | 409)) => {}
            Err(err) => failed = Some(err),
        }
    }
    match failed {
        Some(err) if deleted == 0 => Err(err.into()),
        _ => Ok(deleted),
    }
}

/// Expires Events until `shutdown`.
pub async fn run(client: Client, ttl: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(period(ttl));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match sweep(&client, ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired events deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot expire events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_expires_a_ttl_after_it_was_last_seen() {
        let ttl = Duration::from_secs(3600);
        let now: jiff::Timestamp = "2026-12-07T12:00:00Z".parse().expect("time");
        let mut e = Event::default();
        e.metadata.creation_timestamp = Some("2026-12-07T09:00:00Z".into());
        assert!(expired(&e, ttl, now), "by its creation");
        e.last_timestamp = Some("2026-12-07T11:30:00Z".into());
        assert!(!expired(&e, ttl, now), "seen again since");
        e.last_timestamp = Some("2026-12-07T10:59:59Z".into());
        assert!(expired(&e, ttl, now));
        e.last_timestamp = Some("garbage".into());
        e.metadata.creation_timestamp = None;
        assert!(!expired(&e, ttl, now), "never on a time it cannot read");
        assert_eq!(period(ttl), Duration::from_secs(60));
        assert_eq!(period(Duration::from_secs(5)), Duration::from_secs(1));
    }
}
