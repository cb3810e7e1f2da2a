//! `wasi:http/proxy` components: the in-process request hook. Every request gets a fresh
//! `Store` built from the sandbox's prepared template, instantiated from its `ProxyPre`, with
//! the memory limiter and an epoch deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wisp_sandbox::HandleError;

use crate::host::{CtxTemplate, Host};

/// What one request's task ended with.
enum Outcome {
    Done,
    Failed(String),
    /// The node's instance pool is full (every slot in use).
    PoolFull(String),
    Deadline,
    Cancelled,
}

pub(crate) struct Request<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) pre: &'a ProxyPre<Host>,
    pub(crate) template: &'a Arc<CtxTemplate>,
    pub(crate) deadline: Duration,
    pub(crate) epoch_tick: Duration,
    pub(crate) tasks: &'a tokio_util::task::TaskTracker,
    pub(crate) cancel: &'a tokio_util::sync::CancellationToken,
}

impl Request<'_> {
    /// A fresh store for one request: a [`Host`] built from the sandbox's template, the memory
    /// limiter, and an epoch deadline that yields every tick and traps once `deadline` has
    /// passed. Every instance this crate creates for a `wasi:http/proxy` sandbox starts here.
    fn store(&self) -> Result<Store<Host>, HandleError> {
        let host = self
            .template
            .build()
            .map_err(|e| HandleError::Unavailable(e.to_string()))?;
        let mut store = Store::new(self.engine, host);
        store.limiter(|h| &mut h.limiter);
        // Yield to the executor every tick (a spinning guest does not hold a worker thread) and
        // trap once the deadline has passed.
        let tick_nanos = self.epoch_tick.as_nanos().max(1);
        let mut ticks_left = self.deadline.as_nanos().div_ceil(tick_nanos).max(1);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            ticks_left = ticks_left.saturating_sub(1);
            Ok(if ticks_left == 0 {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Ok(store)
    }
}

/// How long one [`WasmSandbox::instantiate_only`] took, split where a request would call the
/// guest.
///
/// [`WasmSandbox::instantiate_only`]: crate::WasmSandbox::instantiate_only
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstantiateTimings {
    /// Building the store (WASI and WASI-HTTP contexts from the template, limiter, deadline)
    /// and instantiating the component in it.
    pub instantiate: Duration,
    /// Dropping the store: the instance's memories, tables and stack go back to the pool (or
    /// are unmapped, without pooling). A request pays this too, after its response.
    pub teardown: Duration,
}

/// Times one store + instantiation exactly as [`handle`] builds them, without calling the
/// guest; the instance is dropped right away.
pub(crate) async fn instantiate_only(r: Request<'_>) -> Result<InstantiateTimings, HandleError> {
    let started = Instant::now();
    let mut store = r.store()?;
    let instantiated = r.pre.instantiate_async(&mut store).await;
    let instantiate = started.elapsed();
    if let Err(e) = instantiated {
        return Err(if store.data().limiter.denied {
            HandleError::OutOfMemory
        } else {
            HandleError::Guest(format!("{e:#}"))
        });
    }
    let dropping = Instant::now();
    drop(store);
    Ok(InstantiateTimings {
        instantiate,
        teardown: dropping.elapsed(),
    })
}

/// Cancels a request's guest when dropped before [`Disarm::disarm`]: the client went away
/// (the future waiting for the response head, or the response body before its end, was
/// dropped), so the guest stops instead of running on to its deadline.
struct CancelOnDrop(Option<tokio_util::sync::CancellationToken>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.cancel();
        }
    }
}

/// A guest's response body that cancels the guest if it is dropped before its end.
pub(crate) struct Watched {
    inner: HyperOutgoingBody,
    guard: CancelOnDrop,
    /// The body was seen to end (hyper may stop polling once `is_end_stream` says so).
    ended: std::sync::atomic::AtomicBool,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.ended.load(std::sync::atomic::Ordering::Relaxed) {
            self.guard.disarm();
        }
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) {
            this.guard.disarm();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.ended.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) async fn handle<B>(
    r: Request<'_>,
    req: hyper::Request<B>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<hyper::Response<Watched>, HandleError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let mut store = r.store()?;
    let scheme = match req.uri().scheme_str() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (incoming, out) = {
        let http = store.data_mut();
        let mut view = http.http();
        let incoming = view
            .new_incoming_request(scheme, req)
            .map_err(|e| HandleError::Unavailable(format!("{e:#}")))?;
        let out = view
            .new_response_outparam(tx)
            .map_err(|e| HandleError::Unavailable(format!("{e:#}")))?;
        (incoming, out)
    };
    let pre = r.pre.clone();
    let cancel = r.cancel.clone();
    let gone = tokio_util::sync::CancellationToken::new();
    let mut guard = CancelOnDrop(Some(gone.clone()));
    let deadline = r.deadline;
    let counters = r.template.usage.clone();
    // The guest keeps running after it has sent the response head, to stream the body, so the
    // call lives in a task tracked by the sandbox.
    let tasks = r.tasks.clone();
    // The guest runs in the caller's span when traces are made: its outgoing requests are
    // children of it.
    let span = if tracing::enabled!(target: wisp_telemetry::TARGET, tracing::Level::INFO) {
        tracing::Span::current()
    } else {
        tracing::Span::none()
    };
    let task = r.tasks.spawn(tracing::Instrument::instrument(
        async move {
            let outcome = {
                let call = wisp_sandbox::usage::cpu_timed(&counters.cpu_ns, async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, out)
                        .await
                });
                tokio::select! {
                    r = tokio::time::timeout(deadline, call) => match r {
                        Ok(Ok(())) => Outcome::Done,
                        Ok(Err(e)) => match e.downcast_ref::<wasmtime::Trap>() {
                            Some(wasmtime::Trap::Interrupt) => Outcome::Deadline,
                            _ if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                                Outcome::PoolFull(format!("{e:#}"))
                            }
                            _ => Outcome::Failed(format!("{e:#}")),
                        },
                        Err(_) => Outcome::Deadline,
                    },
                    () = cancel.cancelled() => Outcome::Cancelled,
                    () = gone.cancelled() => Outcome::Cancelled,
                }
            };
            // The namespace's slot is free again once the guest is done.
            drop(slot);
            let denied = store.data().limiter.denied;
            // The only request in flight in this sandbox, answered: give the woken handler a
            // chance to send the response before the store is dropped — which resets the
            // instance's memory for the pool (the pages it dirtied, or a `memset` of up to
            // `keep_resident` without the pagemap scan) and would otherwise run first, on this
            // worker thread. A hint to the scheduler, not a guarantee (a yielded task runs after
            // the worker's ready ones). With other requests in flight the reset runs at once:
            // yielding would keep slots busy under load.
            if matches!(outcome, Outcome::Done) && tasks.len() <= 1 {
                tokio::task::yield_now().await;
            }
            drop(store);
            (outcome, denied)
        },
        span,
    ));
    match rx.await {
        Ok(Ok(response)) => {
            let armed = CancelOnDrop(guard.0.take());
            Ok(response.map(|inner| Watched {
                inner,
                guard: armed,
                ended: std::sync::atomic::AtomicBool::new(false),
            }))
        }
        Ok(Err(code)) => Err(guest_error_code(code)),
        Err(_) => match task.await {
            Ok((_, true)) => Err(HandleError::OutOfMemory),
            Ok((Outcome::Deadline, false)) => Err(HandleError::DeadlineExceeded(deadline)),
            Ok((Outcome::Failed(e), false)) => Err(HandleError::Guest(e)),
            Ok((Outcome::PoolFull(e), false)) => Err(HandleError::Unavailable(e)),
            Ok((Outcome::Cancelled, false)) => {
                Err(HandleError::Unavailable("the sandbox was stopped".into()))
            }
            Ok((Outcome::Done, false)) => Err(HandleError::Guest(
                "the guest returned without setting a response".into(),
            )),
            Err(e) => Err(HandleError::Guest(format!("request task failed: {e}"))),
        },
    }
}

fn guest_error_code(code: ErrorCode) -> HandleError {
    HandleError::Guest(format!("the guest answered with an error: {code:?}"))
}
