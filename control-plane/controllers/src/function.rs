//! The Function controller: a Function expands to a Deployment, a Service and a Route of the
//! same name, owned by it (garbage collection removes them with it), and its status shows the
//! URL and the ready/desired replicas.
//!
//! Replicas: the Deployment starts at `minScale`; afterwards its `spec.replicas` belongs to the
//! autoscaler and this controller only keeps it within `[minScale, maxScale]`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wisp_api::{
    Condition, Deployment, Function, FunctionStatus, LabelSelector, ObjectMeta, OwnerReference, Resource,
    Route, RouteBackend, Service, ServicePort,
};
use wisp_client::{Api, Client};
use wisp_runtime::{Action, ObjectRef, Store};

use crate::Error;

/// Label on a Function's pods (and the selector of its Service).
pub const FUNCTION_LABEL: &str = "wisp.dev/function";
/// The port a Function's Service exposes.
pub const SERVICE_PORT: u16 = 80;

pub struct Context {
    pub client: Client,
    pub(crate) status: crate::StatusDelay,
    /// Watch caches of the kinds a Function expands to: a reconcile (one per change of the
    /// Function or of its Deployment, several per scale-up) reads its children from them, not
    /// from the API. A stale copy costs a conflict on write and a retry, never a wrong write.
    pub(crate) deployments: Store<Deployment>,
    pub(crate) services: Store<Service>,
    pub(crate) routes: Store<Route>,
    /// A Function's default host is `<name>.<namespace>.<cluster_domain>`.
    pub(crate) cluster_domain: String,
}

fn owner(f: &Function) -> OwnerReference {
    OwnerReference {
        api_version: wisp_api::API_VERSION.into(),
        kind: Function::KIND.into(),
        name: f.metadata.name.clone(),
        uid: f.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
    }
}

fn meta(f: &Function) -> ObjectMeta {
    let ns = f.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut m = ObjectMeta::namespaced(ns, f.metadata.name.clone());
    m.labels = BTreeMap::from([(FUNCTION_LABEL.to_owned(), f.metadata.name.clone())]);
    m.owner_references = vec![owner(f)];
    m
}

/// The host a Function answers on: its route's, or `<name>.<namespace>.<cluster domain>`
/// (with the default domain `localhost` that resolves to loopback, so
/// `curl http://hello.default.localhost:8080/` works on a laptop).
pub fn host_of(f: &Function, cluster_domain: &str) -> String {
    f.spec
        .route
        .as_ref()
        .and_then(|r| r.host.clone())
        .unwrap_or_else(|| {
            format!(
                "{}.{}.{cluster_domain}",
                f.metadata.name,
                f.metadata.namespace.as_deref().unwrap_or("default")
            )
        })
}

fn path_of(f: &Function) -> String {
    f.spec
        .route
        .as_ref()
        .map_or_else(|| "/".to_owned(), |r| r.path_prefix.clone())
}

/// The Deployment a Function wants, given the replicas it has now (`None`: not created yet).
pub fn desired_deployment(f: &Function, current_replicas: Option<i32>) -> Deployment {
    let mut d = Deployment::new(meta(f));
    let sc = &f.spec.scaling;
    let min = i32::try_from(sc.min_scale).unwrap_or(i32::MAX);
    let max = i32::try_from(sc.max_scale).unwrap_or(i32::MAX).max(min);
    d.spec.replicas = current_replicas.unwrap_or(min).clamp(min, max);
    let mut template = f.spec.template.clone();
    template
        .metadata
        .labels
        .insert(FUNCTION_LABEL.into(), f.metadata.name.clone());
    d.spec.template = template;
    d.spec.selector = LabelSelector::from_labels(BTreeMap::from([(
        FUNCTION_LABEL.to_owned(),
        f.metadata.name.clone(),
    )]));
    d
}

pub fn desired_service(f: &Function) -> Service {
    let mut s = Service::new(meta(f));
    s.spec.selector = BTreeMap::from([(FUNCTION_LABEL.to_owned(), f.metadata.name.clone())]);
    let target = f
        .spec
        .template
        .spec
        .containers
        .iter()
        .find_map(|c| c.ports.first().map(|p| p.container_port));
    s.spec.ports = vec![ServicePort {
        name: Some("http".into()),
        port: SERVICE_PORT,
        target_port: target,
        ..ServicePort::default()
    }];
    s
}

pub fn desired_route(f: &Function, cluster_domain: &str) -> Route {
    let mut r = Route::new(meta(f));
    r.spec.host = Some(host_of(f, cluster_domain));
    r.spec.path_prefix = path_of(f);
    r.spec.backends = vec![RouteBackend {
        service: f.metadata.name.clone(),
        port: Some(SERVICE_PORT),
        weight: 100,
    }];
    r
}

/// Creates `want`, or replaces the existing object when `differs` says so. Returns the
/// object as stored.
async fn ensure<T: Resource + Clone>(
    api: &Api<T>,
    want: T,
    existing: Option<T>,
    differs: impl Fn(&T, &T) -> bool,
) -> Result<Option<T>, Error> {
    match existing {
        None => match api.create(&want).await {
            Ok(created) => Ok(Some(created)),
            Err(e) if e.code() == Some(409) => Ok(None),
            Err(e) => Err(e.into()),
        },
        Some(current) if !differs(&current, &want) => Ok(Some(current)),
        Some(current) => {
            let mut next = want;
            next.metadata_mut().resource_version = current.metadata().resource_version.clone();
            match api.replace(&next).await {
                Ok(updated) => Ok(Some(updated)),
                Err(e) if e.code() == Some(409) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    }
}

pub async fn reconcile(f: Arc<Function>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = f.metadata.namespace.as_deref();
    let deployments = ctx.client.api::<Deployment>(ns);
    let services = ctx.client.api::<Service>(ns);
    let routes = ctx.client.api::<Route>(ns);
    let name = &f.metadata.name;

    if !(ctx.deployments.ready() && ctx.services.ready() && ctx.routes.ready()) {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let key = ObjectRef::new(name.as_str()).within(ns.unwrap_or_default());
    let current = ctx.deployments.get(&key).map(|d| (*d).clone());
    let current_service = ctx.services.get(&key).map(|s| (*s).clone());
    let current_route = ctx.routes.get(&key).map(|r| (*r).clone());
    // Never take over an object of the same name that something else made.
    let uid = f.metadata.uid.clone().unwrap_or_default();
    let foreign = |m: &ObjectMeta| !m.owner_references.iter().any(|r| r.uid == uid);
    let conflict = [
        current
            .as_ref()
            .filter(|d| foreign(&d.metadata))
            .map(|_| "Deployment"),
        current_service
            .as_ref()
            .filter(|s| foreign(&s.metadata))
            .map(|_| "Service"),
        current_route
            .as_ref()
            .filter(|r| foreign(&r.metadata))
            .map(|_| "Route"),
    ];
    if let Some(kind) = conflict.into_iter().flatten().next() {
        let mut updated = (*f).clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let changed = wisp_api::meta::set_condition(
            &mut status.conditions,
            Condition::new(
                "Ready",
                false,
                "NameConflict",
                format!("a {kind} named {name} exists and is not owned by this Function; rename one of them"),
            ),
            &jiff::Timestamp::now().to_string(),
        );
        if changed {
            let _ = ctx.client.api::<Function>(ns).replace_status(&updated).await;
        }
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let want = desired_deployment(&f, current.as_ref().map(|d| d.spec.replicas));
    let deployment = ensure(&deployments, want, current, |c, w| {
        c.spec.replicas != w.spec.replicas
            || c.spec.template != w.spec.template
            || c.spec.selector != w.spec.selector
            || c.metadata.labels != w.metadata.labels
            || c.metadata.owner_references != w.metadata.owner_references
    })
    .await?;
    let service = ensure(&services, desired_service(&f), current_service, |c, w| {
        c.spec != w.spec || c.metadata.owner_references != w.metadata.owner_references
    })
    .await?;
    let route = ensure(
        &routes,
        desired_route(&f, &ctx.cluster_domain),
        current_route,
        |c, w| c.spec != w.spec || c.metadata.owner_references != w.metadata.owner_references,
    )
    .await?;
    let (Some(deployment), Some(_), Some(_)) = (deployment, service, route) else {
        // Created or changed concurrently: look again shortly.
        return Ok(Action::requeue(Duration::from_millis(100)));
    };

    let mut status = f.status.clone().unwrap_or_default();
    let ready = deployment.status.as_ref().map_or(0, |s| s.ready_replicas);
    let next = FunctionStatus {
        url: Some(format!(
            "http://{}{}",
            host_of(&f, &ctx.cluster_domain),
            path_of(&f)
        )),
        ready_replicas: ready,
        desired_replicas: deployment.spec.replicas,
        observed_generation: f.metadata.generation,
        ..status.clone()
    };
    status = next;
    let ready_now = deployment.spec.replicas == 0 || ready >= deployment.spec.replicas;
    wisp_api::meta::set_condition(
        &mut status.conditions,
        Condition::new(
            "Ready",
            ready_now,
            if deployment.spec.replicas == 0 {
                "ScaledToZero"
            } else if ready_now {
                "ReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            format!("{ready}/{} replicas ready", deployment.spec.replicas),
        ),
        &jiff::Timestamp::now().to_string(),
    );
    let key = format!("{}/{name}", ns.unwrap_or_default());
    if f.status.as_ref() == Some(&status) {
        ctx.status.settled(&key);
    } else if let Err(wait) = ctx.status.write_now(&key) {
        return Ok(Action::requeue(wait));
    } else {
        let mut updated = (*f).clone();
        updated.status = Some(status);
        match ctx.client.api::<Function>(ns).replace_status(&updated).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(404 | 409)) => {
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{Container, FunctionRoute};

    fn function(min: u32, max: u32) -> Function {
        let mut f = Function::new(ObjectMeta::namespaced("team", "hello"));
        f.metadata.uid = Some("u1".into());
        f.spec.scaling.min_scale = min;
        f.spec.scaling.max_scale = max;
        f.spec.template.spec.containers = vec![Container {
            name: "hello".into(),
            wasm: Some("sha256:00".into()),
            ..Container::default()
        }];
        f
    }

    #[test]
    fn deployment_starts_at_min_scale_and_is_clamped_afterwards() {
        let f = function(1, 5);
        assert_eq!(desired_deployment(&f, None).spec.replicas, 1);
        assert_eq!(
            desired_deployment(&f, Some(3)).spec.replicas,
            3,
            "the autoscaler's"
        );
        assert_eq!(desired_deployment(&f, Some(9)).spec.replicas, 5);
        assert_eq!(desired_deployment(&f, Some(0)).spec.replicas, 1);
        let zero = function(0, 5);
        assert_eq!(
            desired_deployment(&zero, None).spec.replicas,
            0,
            "scale to zero by default"
        );
    }

    #[test]
    fn children_are_owned_labelled_and_selected_by_the_function() {
        let f = function(0, 3);
        let d = desired_deployment(&f, None);
        assert_eq!(d.metadata.owner_references[0].kind, "Function");
        assert_eq!(d.metadata.owner_references[0].uid, "u1");
        assert_eq!(d.spec.template.metadata.labels[FUNCTION_LABEL], "hello");
        assert!(d.spec.selector.matches(&d.spec.template.metadata.labels));
        let s = desired_service(&f);
        assert_eq!(s.spec.selector[FUNCTION_LABEL], "hello");
        assert_eq!(s.spec.ports[0].port, SERVICE_PORT);
        let r = desired_route(&f, "localhost");
        assert_eq!(r.spec.host.as_deref(), Some("hello.team.localhost"));
        let r = desired_route(&f, "fn.example.com");
        assert_eq!(r.spec.host.as_deref(), Some("hello.team.fn.example.com"));
        assert_eq!(r.spec.path_prefix, "/");
        assert_eq!(r.spec.backends[0].service, "hello");
    }

    #[test]
    fn route_comes_from_the_spec_when_given() {
        let mut f = function(0, 3);
        f.spec.route = Some(FunctionRoute {
            host: Some("api.example.com".into()),
            path_prefix: "/v1".into(),
        });
        let r = desired_route(&f, "localhost");
        assert_eq!(r.spec.host.as_deref(), Some("api.example.com"));
        assert_eq!(r.spec.path_prefix, "/v1");
    }
}
