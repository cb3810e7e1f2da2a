//! The Endpoints controller: for every Service with a selector, an Endpoints object of the
//! same name listing the matching pods' addresses — ready ones in `addresses`, the others in
//! `notReadyAddresses` — with the Service's (target) ports.

use std::sync::Arc;

use wisp_api::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, LabelSelector, ObjectMeta, ObjectReference,
    OwnerReference, Pod, Resource, Service,
};
use wisp_client::Client;
use wisp_runtime::{Action, ObjectRef, Store};

use crate::Error;

pub struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
}

fn selector(svc: &Service) -> Option<LabelSelector> {
    (!svc.spec.selector.is_empty()).then(|| LabelSelector::from_labels(svc.spec.selector.clone()))
}

/// The Endpoints a Service should have, given every pod in the cache.
pub fn desired(svc: &Service, pods: &[Arc<Pod>]) -> Endpoints {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let mut meta = ObjectMeta::namespaced(ns.clone(), svc.metadata.name.clone());
    meta.labels = svc.metadata.labels.clone();
    meta.owner_references.push(OwnerReference {
        api_version: wisp_api::API_VERSION.into(),
        kind: Service::KIND.into(),
        name: svc.metadata.name.clone(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
    });
    let mut ep = Endpoints::new(meta);
    let Some(sel) = selector(svc) else { return ep };
    let mut subset = EndpointSubset::default();
    for pod in pods {
        let status = pod.status.as_ref();
        let Some(ip) = status.and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if pod.metadata.namespace.as_deref() != Some(ns.as_str())
            || pod.metadata.deletion_timestamp.is_some()
            || pod.phase().is_terminal()
            || !sel.matches(&pod.metadata.labels)
        {
            continue;
        }
        let address = EndpointAddress {
            ip,
            port: status.and_then(|s| s.host_port),
            node_name: pod.spec.node_name.clone(),
            target_ref: Some(ObjectReference {
                kind: Pod::KIND.into(),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        };
        if pod.is_ready() {
            subset.addresses.push(address);
        } else {
            subset.not_ready_addresses.push(address);
        }
    }
    let by_name = |a: &EndpointAddress| a.target_ref.as_ref().map(|r| r.name.clone());
    subset.addresses.sort_by_key(by_name);
    subset.not_ready_addresses.sort_by_key(by_name);
    subset.ports = svc
        .spec
        .ports
        .iter()
        .map(|p| EndpointPort {
            name: p.name.clone(),
            port: p.target_port.unwrap_or(p.port),
            protocol: p.protocol,
        })
        .collect();
    if !subset.addresses.is_empty() || !subset.not_ready_addresses.is_empty() {
        ep.subsets.push(subset);
    }
    ep
}

/// Services in `pod`'s namespace whose selector matches it (for pod → service triggers).
pub fn services_for(pod: &Pod, services: &Store<Service>) -> Vec<ObjectRef> {
    services
        .list()
        .iter()
        .filter(|s| s.metadata.namespace == pod.metadata.namespace)
        .filter(|s| selector(s).is_some_and(|sel| sel.matches(&pod.metadata.labels)))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let want = desired(&svc, &ctx.pods.list());
    let api = ctx.client.api::<Endpoints>(svc.metadata.namespace.as_deref());
    match api.get_opt(&svc.metadata.name).await? {
        None => match api.create(&want).await {
            Ok(_) => {}
            // Created concurrently: the next event reconciles again.
            Err(e) if e.code() == Some(409) => {
                return Ok(Action::requeue(std::time::Duration::from_millis(100)));
            }
            Err(e) => return Err(e.into()),
        },
        Some(current)
            if current.subsets == want.subsets && current.metadata.labels == want.metadata.labels => {}
        Some(current) => {
            let mut next = want;
            next.metadata.resource_version = current.metadata.resource_version.clone();
            match api.replace(&next).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(409) => {
                    return Ok(Action::requeue(std::time::Duration::from_millis(50)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{Condition, PodPhase, PodStatus, ServicePort};

    fn pod(name: &str, app: &str, ip: Option<&str>, ready: bool) -> Arc<Pod> {
        let mut p = Pod::new(ObjectMeta::namespaced("default", name));
        p.metadata.labels.insert("app".into(), app.into());
        let mut st = PodStatus {
            phase: PodPhase::Running,
            pod_ip: ip.map(Into::into),
            ..PodStatus::default()
        };
        if ready {
            st.conditions.push(Condition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Condition::default()
            });
        }
        p.status = Some(st);
        Arc::new(p)
    }

    #[test]
    fn ready_and_not_ready_pods_are_split_and_others_ignored() {
        let mut svc = Service::new(ObjectMeta::namespaced("default", "web"));
        svc.spec.selector.insert("app".into(), "web".into());
        svc.spec.ports.push(ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: Some(8080),
            ..ServicePort::default()
        });
        let pods = vec![
            pod("b", "web", Some("10.0.0.2"), true),
            pod("a", "web", Some("10.0.0.1"), true),
            pod("c", "web", Some("10.0.0.3"), false),
            pod("d", "web", None, true),
            pod("e", "db", Some("10.0.0.5"), true),
        ];
        let ep = desired(&svc, &pods);
        let subset = &ep.subsets[0];
        let names = |v: &Vec<EndpointAddress>| v.iter().map(|a| a.ip.clone()).collect::<Vec<_>>();
        assert_eq!(names(&subset.addresses), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(names(&subset.not_ready_addresses), ["10.0.0.3"]);
        assert_eq!(subset.ports[0].port, 8080);
        let mut no_selector = svc.clone();
        no_selector.spec.selector.clear();
        assert!(
            desired(&no_selector, &pods).subsets.is_empty(),
            "no selector, no endpoints managed"
        );
    }
}
