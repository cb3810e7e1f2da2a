//! The cluster issuer: a Route with `tls: {secretName: S, issuer: cluster}` gets a certificate
//! for its host from the cluster CA, written into Secret `S` (type `tls`) of its namespace —
//! again when the host changes, and when the certificate is [`RENEW_AFTER`] old. A Secret `S`
//! the issuer did not write (no `wisp.dev/issued-for` annotation) is the namespace's own and
//! is never overwritten. The Secret stays when the Route goes (as cert-manager's do).
//!
//! A Route's host is admitted only when its namespace may claim it, so the CA issues
//! certificates only for names the namespace holds.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use wisp_api::{ObjectMeta, Resource, Route, Secret};
use wisp_client::Client;
use wisp_runtime::Action;

use crate::Error;

/// The host a Secret's certificate was issued for (set by the issuer only).
pub const ISSUED_FOR: &str = "wisp.dev/issued-for";
/// When it was issued (Unix seconds).
pub const ISSUED_AT: &str = "wisp.dev/issued-at";
/// The Route it was issued for: one Route per Secret (two Routes naming one Secret for two
/// hosts would otherwise take it from each other on every pass).
pub const ISSUED_TO: &str = "wisp.dev/issued-to-route";
/// Certificates are valid a year; they are issued again after this.
pub const RENEW_AFTER: Duration = Duration::from_secs(300 * 24 * 3600);

/// Issues a certificate for a host: (PEM chain, PEM key).
pub type IssueFn = Arc<dyn Fn(&str) -> Result<(String, String), String> + Send + Sync>;

/// The cluster CA, as the controllers see it.
#[derive(Clone)]
pub struct Issuer(pub IssueFn);

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issuer")
    }
}

pub struct Context {
    pub client: Client,
    pub issuer: Issuer,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub async fn reconcile(route: Arc<Route>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (Some(tls), Some(host), Some(ns)) = (
        route.spec.tls.as_ref(),
        route.spec.host.as_ref(),
        route.metadata.namespace.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    if tls.issuer.as_deref() != Some(wisp_api::ISSUER_CLUSTER) {
        return Ok(Action::await_change());
    }
    let api = ctx.client.api::<Secret>(Some(ns));
    let existing = api.get_opt(&tls.secret_name).await?;
    if let Some(s) = &existing {
        let notes = &s.metadata.annotations;
        let Some(issued_for) = notes.get(ISSUED_FOR) else {
            tracing::warn!(namespace = ns, route = %route.metadata.name, secret = %tls.secret_name,
                "the Route asks the cluster to issue into a Secret the cluster did not write: left as it is");
            return Ok(Action::await_change());
        };
        let age = notes
            .get(ISSUED_AT)
            .and_then(|t| t.parse::<u64>().ok())
            .map(|t| now().saturating_sub(t));
        if issued_for == host && age.is_some_and(|a| a < RENEW_AFTER.as_secs()) {
            return Ok(Action::requeue(Duration::from_secs(24 * 3600)));
        }
        if let Some(other) = notes.get(ISSUED_TO).filter(|r| **r != route.metadata.name)
            && ctx
                .client
                .api::<Route>(Some(ns))
                .get_opt(other)
                .await?
                .is_some_and(|r| {
                    r.spec
                        .tls
                        .as_ref()
                        .is_some_and(|t| t.secret_name == tls.secret_name)
                })
        {
            tracing::warn!(namespace = ns, route = %route.metadata.name, secret = %tls.secret_name,
                holder = %other, "the Secret holds the certificate of another Route: give each Route its own");
            return Ok(Action::await_change());
        }
        if s.immutable == Some(true) {
            tracing::warn!(namespace = ns, secret = %tls.secret_name, "the Secret is immutable: no new certificate");
            return Ok(Action::await_change());
        }
    }
    let (cert, key) = (ctx.issuer.0)(host).map_err(|e| {
        tracing::warn!(namespace = ns, host, error = %e, "cannot issue a certificate");
        Error::Issue(e)
    })?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut secret = existing.unwrap_or_else(|| Secret::new(ObjectMeta::namespaced(ns, &tls.secret_name)));
    secret.type_ = wisp_api::SECRET_TYPE_TLS.into();
    secret.data = [
        ("tls.crt".to_owned(), b64(&cert)),
        ("tls.key".to_owned(), b64(&key)),
    ]
    .into();
    secret.string_data.clear();
    secret
        .metadata
        .annotations
        .insert(ISSUED_FOR.into(), host.clone());
    secret
        .metadata
        .annotations
        .insert(ISSUED_AT.into(), now().to_string());
    secret
        .metadata
        .annotations
        .insert(ISSUED_TO.into(), route.metadata.name.clone());
    if secret.metadata.resource_version.is_some() {
        api.replace(&secret).await?;
    } else {
        api.create(&secret).await?;
    }
    tracing::info!(namespace = ns, host, secret = %tls.secret_name, "certificate issued by the cluster CA");
    Ok(Action::requeue(Duration::from_secs(24 * 3600)))
}
