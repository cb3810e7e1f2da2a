use super::*;
use wisp_api::{Container, FunctionRoute, TrafficTarget};

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

fn revision(f: &Function, number: u32) -> Arc<Revision> {
    let mut r = desired_revision(f, number);
    r.metadata.uid = Some(format!("r{number}"));
    Arc::new(r)
}

fn node(name: &str, ready: bool, ingress: Option<&str>) -> Arc<Node> {
    let mut n = Node::new(ObjectMeta::named(name));
    let status = n.status.get_or_insert_with(Default::default);
    status.ingress_url = ingress.map(str::to_owned);
    status.conditions = vec![Condition::new(wisp_api::NODE_READY, ready, "Test", String::new())];
    Arc::new(n)
}

/// The URL a Function shows opens as it is: it carries the port of a ready node's ingress
/// (before, `http://hello.team.localhost/` lacked `:8080` and did not open).
#[test]
fn the_url_carries_the_port_of_a_ready_nodes_ingress() {
    let f = function(0, 1);
    let nodes = [
        node("a", false, Some("http://127.0.0.1:9001")),
        node("b", true, Some("http://127.0.0.1:8080")),
        node("c", true, None),
    ];
    let port = ingress_port(&nodes);
    assert_eq!(port, Some(8080));
    assert_eq!(url_of(&f, "localhost", port), "http://hello.team.localhost:8080/");
    // No ready node: the port of one that reports an ingress; port 80 is left out.
    assert_eq!(ingress_port(&nodes[..1]), Some(9001));
    assert_eq!(ingress_port(&[node("d", true, Some("http://10.0.0.1:80"))]), None);
    assert_eq!(url_of(&f, "localhost", None), "http://hello.team.localhost/");
}

#[test]
fn deployment_starts_at_min_scale_and_is_clamped_afterwards() {
    let f = function(1, 5);
    let r = revision(&f, 1);
    let all = revision_bounds(&f, 100, false, false);
    assert_eq!(all, (1, 5));
    assert_eq!(desired_deployment(&f, &r, all, None).spec.replicas, 1);
    assert_eq!(
        desired_deployment(&f, &r, all, Some(3)).spec.replicas,
        3,
        "the autoscaler's"
    );
    assert_eq!(desired_deployment(&f, &r, all, Some(9)).spec.replicas, 5);
    assert_eq!(desired_deployment(&f, &r, all, Some(0)).spec.replicas, 1);
    let zero = function(0, 5);
    let bounds = revision_bounds(&zero, 100, false, false);
    assert_eq!(
        desired_deployment(&zero, &r, bounds, None).spec.replicas,
        0,
        "scale to zero by default"
    );
    // A revision without traffic may go to zero whatever minScale says.
    let idle = revision_bounds(&f, 0, false, false);
    assert_eq!(desired_deployment(&f, &r, idle, Some(0)).spec.replicas, 0);
    assert_eq!(desired_deployment(&f, &r, idle, None).spec.replicas, 0);
}

/// A split shares maxScale out by percent, and a tag alone holds at most one pod: however
/// many revisions a tenant keeps routed, the Function holds about maxScale pods, not maxScale
/// per revision (the `functions.maxScale` quota counts one per Function).
#[test]
fn a_split_shares_max_scale_and_a_tag_alone_gets_one_pod() {
    let f = function(2, 20);
    assert_eq!(revision_bounds(&f, 90, false, false), (2, 18));
    assert_eq!(revision_bounds(&f, 10, true, false), (2, 2));
    assert_eq!(revision_bounds(&f, 1, false, false), (1, 1));
    assert_eq!(revision_bounds(&f, 0, true, false), (0, 1));
    assert_eq!(
        revision_bounds(&f, 0, false, true),
        (2, 20),
        "the latest coming up"
    );
    let shares: u32 = [50, 30, 20]
        .iter()
        .map(|p| revision_bounds(&f, *p, false, false).1)
        .sum();
    assert_eq!(shares, 20);
}

#[test]
fn a_revisions_children_are_owned_by_it_and_select_its_pods_only() {
    let f = function(0, 3);
    let r1 = revision(&f, 1);
    assert_eq!(r1.metadata.name, "hello-00001");
    assert_eq!(r1.metadata.owner_references[0].kind, "Function");
    assert_eq!(r1.metadata.labels[FUNCTION_LABEL], "hello");
    let d = desired_deployment(&f, &r1, (0, 3), None);
    assert_eq!(d.metadata.name, "hello-00001");
    assert_eq!(d.metadata.owner_references[0].kind, "Revision");
    assert_eq!(d.metadata.owner_references[0].uid, "r1");
    let labels = &d.spec.template.metadata.labels;
    assert_eq!(
        (labels[FUNCTION_LABEL].as_str(), labels[REVISION_LABEL].as_str()),
        ("hello", "hello-00001")
    );
    assert!(d.spec.selector.matches(labels));
    let mut other = labels.clone();
    other.insert(REVISION_LABEL.into(), "hello-00002".into());
    assert!(
        !d.spec.selector.matches(&other),
        "another revision's pods are not this one's"
    );
    let s = desired_service(&f, &r1);
    assert_eq!(s.spec.selector[REVISION_LABEL], "hello-00001");
    assert_eq!(s.spec.ports[0].port, SERVICE_PORT);
}

#[test]
fn traffic_resolves_to_revisions_and_the_route_splits_by_percent() {
    let mut f = function(0, 3);
    let revisions = [revision(&f, 1), revision(&f, 2)];
    // By default: all of it to the latest.
    let t = resolve_traffic(&f, &revisions, "hello-00002").expect("resolves");
    assert_eq!((t[0].revision_name.as_str(), t[0].percent), ("hello-00002", 100));
    let r = desired_route(&f, "localhost", &t);
    assert_eq!(r.spec.host.as_deref(), Some("hello.team.localhost"));
    assert_eq!(r.spec.backends.len(), 1);
    assert_eq!(r.spec.backends[0].service, "hello-00002");

    f.spec.traffic = vec![
        TrafficTarget {
            revision_name: Some("hello-00001".into()),
            percent: 90,
            tag: Some("stable".into()),
            ..TrafficTarget::default()
        },
        TrafficTarget {
            latest_revision: true,
            percent: 10,
            tag: Some("v2".into()),
            ..TrafficTarget::default()
        },
    ];
    let t = resolve_traffic(&f, &revisions, "hello-00002").expect("resolves");
    let r = desired_route(&f, "localhost", &t);
    let split: Vec<(&str, u32)> = r
        .spec
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assert_eq!(split, [("hello-00001", 90), ("hello-00002", 10)]);
    let tagged = desired_tag_route(&f, "localhost", "v2", "hello-00002");
    assert_eq!(tagged.metadata.name, "hello--v2");
    assert_eq!(tagged.spec.host.as_deref(), Some("v2.hello.team.localhost"));
    assert_eq!(tagged.spec.backends[0].service, "hello-00002");

    f.spec.traffic[0].revision_name = Some("hello-00009".into());
    let err = resolve_traffic(&f, &revisions, "hello-00002").expect_err("a missing revision");
    assert!(err.contains("hello-00009"), "{err}");
}

#[test]
fn route_comes_from_the_spec_when_given() {
    let mut f = function(0, 3);
    f.spec.route = Some(FunctionRoute {
        host: Some("api.example.com".into()),
        path_prefix: "/v1".into(),
    });
    let r = desired_route(&f, "localhost", &[]);
    assert_eq!(r.spec.host.as_deref(), Some("api.example.com"));
    assert_eq!(r.spec.path_prefix, "/v1");
    assert_eq!(tag_host(&f, "localhost", "beta"), "beta.api.example.com");
    let r = desired_route(&function(0, 1), "fn.example.com", &[]);
    assert_eq!(r.spec.host.as_deref(), Some("hello.team.fn.example.com"));
}
