//! A watch that survives: lists, watches from the list's resourceVersion, reconnects from the
//! last resourceVersion it saw (events and BOOKMARKs) after a disconnect, and re-lists when
//! the server answers 410 Gone (history compacted).

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use wisp_api::{EventType, Resource};

use crate::{Api, ClientError, ListParams, Result};

/// What a [`Watcher`] yields.
#[derive(Clone, Debug)]
pub enum WatcherEvent<T> {
    /// A full (re)list: the complete current set; replace any cache with it.
    Restarted(Vec<T>),
    /// An object was created or changed.
    Applied(T),
    /// An object was deleted (its last state).
    Deleted(T),
}

#[derive(Clone, Debug)]
pub struct WatchParams {
    pub list: ListParams,
    /// Wait between reconnect attempts (doubles up to 30x on repeated failures).
    pub retry: Duration,
}

impl Default for WatchParams {
    fn default() -> Self {
        Self {
            list: ListParams::default(),
            retry: Duration::from_millis(200),
        }
    }
}

enum Phase<T: Resource> {
    List,
    Watch {
        rv: String,
    },
    Streaming {
        rv: String,
        stream: BoxStream<'static, Result<wisp_api::WatchEvent<T>>>,
    },
}

/// A resumable watch over one kind. Call [`Watcher::next`] in a loop.
pub struct Watcher<T: Resource> {
    api: Api<T>,
    params: WatchParams,
    phase: Option<Phase<T>>,
    failures: u32,
}

impl<T: Resource> Watcher<T> {
    pub fn new(api: Api<T>, params: WatchParams) -> Self {
        Self {
            api,
            params,
            phase: Some(Phase::List),
            failures: 0,
        }
    }

    async fn backoff(&mut self, err: &ClientError) {
        self.failures = (self.failures + 1).min(5);
        let wait = self.params.retry * 2u32.pow(self.failures - 1);
        tracing::debug!(error = %err, ?wait, kind = T::KIND, "watch interrupted; retrying");
        tokio::time::sleep(wait).await;
    }

    /// The next event. Connection errors are retried with backoff, never returned; the only
    /// errors returned are ones retrying cannot fix (401, 403, 404 of the kind).
    pub async fn next(&mut self) -> Result<WatcherEvent<T>> {
        loop {
            match self.phase.take().unwrap_or(Phase::List) {
                Phase::List => match self.api.list(&self.params.list).await {
                    Ok(list) => {
                        self.failures = 0;
                        let rv = list.metadata.resource_version.unwrap_or_default();
                        self.phase = Some(Phase::Watch { rv });
                        return Ok(WatcherEvent::Restarted(list.items));
                    }
                    Err(e) if fatal(&e) => return Err(e),
                    Err(e) => {
                        self.phase = Some(Phase::List);
                        self.backoff(&e).await;
                    }
                },
                Phase::Watch { rv } => match self.api.watch(&self.params.list, Some(&rv)).await {
                    Ok(stream) => self.phase = Some(Phase::Streaming { rv, stream }),
                    Err(e) if e.code() == Some(410) => self.phase = Some(Phase::List),
                    Err(e) if fatal(&e) => return Err(e),
                    Err(e) => {
                        self.phase = Some(Phase::Watch { rv });
                        self.backoff(&e).await;
                    }
                },
                Phase::Streaming { rv, mut stream } => match stream.next().await {
                    None => {
                        // The server ended the stream (timeout, shutdown): pause briefly so a
                        // server that keeps closing at once is not hammered.
                        tokio::time::sleep(self.params.retry).await;
                        self.phase = Some(Phase::Watch { rv });
                    }
                    // An event this client cannot decode would fail again after every
                    // reconnect: report it instead of looping.
                    Some(Err(e @ ClientError::Decode { .. })) => return Err(e),
                    Some(Err(e)) if e.code() == Some(410) => self.phase = Some(Phase::List),
                    Some(Err(e)) => {
                        self.phase = Some(Phase::Watch { rv });
                        self.backoff(&e).await;
                    }
                    Some(Ok(ev)) => {
                        self.failures = 0;
                        let new_rv = ev.object.metadata().resource_version.clone().unwrap_or(rv);
                        self.phase = Some(Phase::Streaming { rv: new_rv, stream });
                        match ev.type_ {
                            EventType::Added | EventType::Modified => {
                                return Ok(WatcherEvent::Applied(ev.object));
                            }
                            EventType::Deleted => return Ok(WatcherEvent::Deleted(ev.object)),
                            EventType::Bookmark | EventType::Error => {}
                        }
                    }
                },
            }
        }
    }
}

fn fatal(e: &ClientError) -> bool {
    matches!(e.code(), Some(400 | 401 | 403 | 404 | 422))
}
