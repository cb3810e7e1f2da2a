//! The activator: a request for a Service without a ready endpoint waits in a bounded queue
//! while the Service wakes. The first waiter of a burst activates it (its Deployment, named
//! like the Service as a Function's is, goes from 0 to 1 replica through the API); every
//! waiter is released as soon as an endpoint is ready. A full queue answers 503 with
//! `Retry-After`; a Service that does not wake in time, 504.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use wisp_api::{Deployment, ObjectReference};
use wisp_client::Client;

use crate::Ingress;
use crate::proxy::{Body, text};
use crate::table::{Backend, ServiceState};

/// The Event of a Service woken from zero by a request.
pub const REASON_COLD_START: &str = "ColdStart";

/// Holds the request until `svc` has a backend; returns it, or the error response.
pub(crate) async fn wait(
    ingress: &Ingress,
    svc: &Arc<ServiceState>,
    local_only: bool,
    gateway: bool,
) -> Result<Arc<Backend>, Response<Body>> {
    let config = &ingress.inner.config;
    if local_only {
        // Forwarded by another node's ingress for a pod of ours that is gone: say so at once
        // (the sender may try another backend) rather than hold the request.
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "service {}/{} has no ready endpoint on this node",
                svc.namespace, svc.name
            ),
        ));
    }
    if svc.queued.fetch_add(1, Ordering::AcqRel) >= config.queue_limit {
        svc.queued.fetch_sub(1, Ordering::AcqRel);
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "service {}/{} is starting and {} requests already wait for it; retry shortly",
                svc.namespace, svc.name, config.queue_limit
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(r);
    }
    let _queued = Dequeue(svc);
    let mut ready = svc.ready.subscribe();
    // One activation per burst: the first waiter stamps the time; a stamp older than the
    // queue timeout (every waiter of that burst gave up) lets the next one try again.
    let now = now_ms();
    let stamp = svc.activated_ms.load(Ordering::Acquire);
    // Set for the request that activates: its wait is the cold start's length.
    let mut woke: Option<tokio::time::Instant> = None;
    let stale = stamp == 0
        || now.saturating_sub(stamp) > u64::try_from(config.queue_timeout.as_millis()).unwrap_or(u64::MAX);
    if stale
        && svc
            .activated_ms
            .compare_exchange(stamp, now.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        woke = Some(tokio::time::Instant::now());
        tracing::Span::current().record("wisp.activated", true);
        svc.cold_starts.fetch_add(1, Ordering::Relaxed);
        ingress
            .inner
            .metrics
            .cold_starts
            .get_or_create(&crate::metrics::ServiceLabels::of(svc))
            .inc();
        tracing::info!(service = %svc.name, namespace = %svc.namespace, "activating a service with no ready endpoint");
        let client = ingress.inner.client.clone();
        let (ns, name) = (svc.namespace.clone(), svc.name.clone());
        let stopping = ingress.inner.stopping.clone();
        // The cold start's trace goes on from here through the Deployment it scales.
        let span = tracing::info_span!(
            target: wisp_telemetry::TARGET,
            "activate",
            wisp.namespace = %svc.namespace,
            wisp.deployment = %svc.name,
        );
        ingress.inner.tasks.spawn(tracing::Instrument::instrument(
            async move {
                tokio::select! {
                    () = activate(&client, &ns, &name) => {}
                    () = stopping.cancelled() => {}
                }
            },
            span,
        ));
    }
    // The node agent's word that one of its pods is ready wakes this request directly: it
    // admits the pod as a backend itself rather than wait for the table's next rebuild; so
    // does a change in the ingress's caches (the pod may reach them after the agent's word).
    let mut local = config
        .local_readiness
        .as_ref()
        .map(wisp_node::LocalReadiness::subscribe);
    let mut caches = ingress.inner.caches_changed.subscribe();
    let deadline = tokio::time::Instant::now() + config.queue_timeout;
    loop {
        let pick = || svc.pick(local_only, |b| ingress.usable(b, gateway));
        let listed = *ready.borrow_and_update() > 0;
        // None usable among those listed (remote-only backends for a request through the
        // gateway, a sandbox that is stopping): this node's newly ready pods may still be.
        let picked = listed
            .then(pick)
            .flatten()
            .or_else(|| if ingress.admit_local(svc) { pick() } else { None });
        if let Some(b) = picked {
            // Awake: the next request at zero activates again. (Not merely listed: a
            // listed backend that is not usable — a pod still stopping after a scale to
            // zero — must not let each request of the burst activate once more.)
            svc.activated_ms.store(0, Ordering::Release);
            if let Some(began) = woke {
                cold_start_event(ingress, svc, began.elapsed());
            }
            return Ok(b);
        }
        tokio::select! {
            changed = ready.changed() => if changed.is_err() { break },
            () = crate::local_change(&mut local) => {}
            changed = caches.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    Err(text(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "service {}/{} has no ready endpoint after {:?}",
            svc.namespace, svc.name, config.queue_timeout
        ),
    ))
}

/// A `ColdStart` Event of the Function the Service serves (the Service itself if no
/// Function made it), with how long the first request waited.
fn cold_start_event(ingress: &Ingress, svc: &ServiceState, waited: Duration) {
    let key = wisp_runtime::ObjectRef::new(svc.name.as_str()).within(svc.namespace.as_str());
    let service = ingress.inner.caches.services.get(&key);
    let function = service
        .as_ref()
        .and_then(|s| s.metadata.labels.get(wisp_api::FUNCTION_LABEL).cloned());
    let object = match (&function, &service) {
        (Some(f), _) => ObjectReference {
            kind: "Function".into(),
            namespace: Some(svc.namespace.clone()),
            name: f.clone(),
            ..ObjectReference::default()
        },
        (None, Some(s)) => ObjectReference::to(s.as_ref()),
        (None, None) => return,
    };
    let ms = waited.as_secs_f64() * 1000.0;
    ingress.inner.events.normal(
        object,
        REASON_COLD_START,
        format!(
            "woke {}/{} from zero: the first request waited {ms:.1} ms",
            svc.namespace, svc.name
        ),
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Dequeue<'a>(&'a ServiceState);

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Scales the Service's Deployment from zero to one replica (compare-and-swap; nothing when
/// it is not at zero or there is none), with the cold start's trace context in its
/// [`wisp_api::TRACEPARENT_ANNOTATION`] (removed when this start is not traced, so an
/// old trace is not continued).
async fn activate(client: &Client, namespace: &str, name: &str) {
    let traceparent = wisp_telemetry::traceparent(&tracing::Span::current());
    let api = client.api::<Deployment>(Some(namespace));
    for _ in 0..10 {
        let mut d = match api.get_opt(name).await {
            Ok(Some(d)) if d.spec.replicas == 0 => d,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, service = name, "activator cannot read the deployment");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        d.spec.replicas = 1;
        // This start's trace, or none: never an earlier start's.
        match &traceparent {
            Some(tp) => {
                d.metadata
                    .annotations
                    .insert(wisp_api::TRACEPARENT_ANNOTATION.into(), tp.clone());
            }
            None => {
                d.metadata.annotations.remove(wisp_api::TRACEPARENT_ANNOTATION);
            }
        }
        match api.replace(&d).await {
            Ok(_) => return,
            Err(e) if e.code() == Some(409) => {}
            Err(e) => {
                tracing::warn!(error = %e, service = name, "activator cannot scale the deployment");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
