//! Guest stdout/stderr: a bounded per-sandbox line buffer with a broadcast for `follow`, and
//! the WASI output streams that feed it line by line.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wisp_sandbox::{LogLine, LogOptions, LogStream};

/// The longest line kept; longer output is split.
const MAX_LINE: usize = 16 * 1024;

struct Inner {
    lines: VecDeque<LogLine>,
    /// `None` once the sandbox has exited: followers then end.
    live: Option<broadcast::Sender<LogLine>>,
}

/// The last `capacity` lines of one sandbox.
pub(crate) struct LogBuffer {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl LogBuffer {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let (tx, _) = broadcast::channel(1024);
        Arc::new(Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                live: Some(tx),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, stream: LogStream, line: String) {
        let line = LogLine {
            stream,
            line,
            at: SystemTime::now(),
        };
        let mut inner = self.lock();
        if inner.lines.len() == self.capacity {
            inner.lines.pop_front();
        }
        if let Some(tx) = &inner.live {
            // No receiver is not an error.
            let _ = tx.send(line.clone());
        }
        inner.lines.push_back(line);
    }

    /// The sandbox exited: followers end after the lines they have not read yet.
    pub(crate) fn close(&self) {
        self.lock().live = None;
    }

    pub(crate) fn stream(&self, options: LogOptions) -> BoxStream<'static, LogLine> {
        let inner = self.lock();
        let skip = options.tail.map_or(0, |n| inner.lines.len().saturating_sub(n));
        let past: Vec<LogLine> = inner.lines.iter().skip(skip).cloned().collect();
        let live = if options.follow {
            inner.live.as_ref().map(broadcast::Sender::subscribe)
        } else {
            None
        };
        drop(inner);
        let past = futures::stream::iter(past);
        match live {
            // A lagging follower skips what it missed rather than failing.
            Some(rx) => past
                .chain(BroadcastStream::new(rx).filter_map(|l| async move { l.ok() }))
                .boxed(),
            None => past.boxed(),
        }
    }
}

/// One of a guest's output streams, split into lines into a [`LogBuffer`].
#[derive(Clone)]
pub(crate) struct LineSink {
    buffer: Arc<LogBuffer>,
    stream: LogStream,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LineSink {
    pub(crate) fn new(buffer: Arc<LogBuffer>, stream: LogStream) -> Self {
        Self {
            buffer,
            stream,
            pending: Arc::default(),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        self.buffer
            .push(self.stream, String::from_utf8_lossy(bytes).into_owned());
    }

    pub(crate) fn write_bytes(&self, mut bytes: &[u8]) {
        let mut pending = self.pending();
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            if pending.is_empty() {
                self.emit(&bytes[..nl]);
            } else {
                pending.extend_from_slice(&bytes[..nl]);
                self.emit(&pending);
                pending.clear();
            }
            bytes = &bytes[nl + 1..];
        }
        pending.extend_from_slice(bytes);
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            self.emit(&pending);
            *pending = rest;
        }
    }

    /// Emits an unterminated last line, if any.
    pub(crate) fn finish(&self) {
        let mut pending = self.pending();
        if !pending.is_empty() {
            self.emit(&pending);
            pending.clear();
        }
    }
}

impl IsTerminal for LineSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LineSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LineSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineSink {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_bounded_and_followed() {
        let buffer = LogBuffer::new(3);
        let sink = LineSink::new(buffer.clone(), LogStream::Stdout);
        sink.write_bytes(b"a\nb");
        sink.write_bytes(b"c\r\nd\ne\n");
        let mut follow = buffer.stream(LogOptions {
            follow: true,
            tail: Some(1),
        });
        sink.write_bytes(b"tail");
        sink.finish();
        buffer.close();
        let mut seen = Vec::new();
        while let Some(l) = follow.next().await {
            seen.push(l.line);
        }
        assert_eq!(seen, ["e", "tail"]);
        let all: Vec<_> = buffer
            .stream(LogOptions::default())
            .map(|l| l.line)
            .collect()
            .await;
        assert_eq!(all, ["d", "e", "tail"], "only the last 3 lines are kept");
    }
}
