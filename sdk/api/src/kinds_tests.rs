//! Decode and validation tests across kinds: exact field paths of the errors users see.

use serde_json::{Value, json};

use super::*;

fn decode(kind: &str, v: Value) -> Result<Value, Vec<String>> {
    let info = kind_by_name(kind).unwrap_or_else(|| panic!("no kind {kind}"));
    (info.decode)(v).map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

fn errors(kind: &str, v: Value) -> Vec<String> {
    match decode(kind, v) {
        Ok(v) => panic!("expected errors, decoded {v}"),
        Err(e) => e,
    }
}

fn pod(container: &Value) -> Value {
    json!({
        "apiVersion": "wisp.dev/v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": [container]}
    })
}

/// A well-formed component digest.
const DIGEST: &str = "sha256:abababababababababababababababababababababababababababababababab";

fn has(errs: &[String], want: &str) -> bool {
    errs.iter().any(|e| e.starts_with(want))
}

#[test]
fn valid_pod_is_normalised() {
    let out = decode(
        "pod",
        pod(&json!({"name": "app", "wasm": DIGEST, "resources": {"limits": {"cpu": 0.5}}})),
    );
    let out = out.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(out["spec"]["restartPolicy"], "Always");
    assert_eq!(out["spec"]["containers"][0]["resources"]["limits"]["cpu"], "500m");
}

#[test]
fn bad_name_reports_metadata_name() {
    let mut v = pod(&json!({"name": "app", "image": "nginx"}));
    v["metadata"]["name"] = json!("Bad_Name");
    let errs = errors("pod", v);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        has(&errs, "metadata.name: invalid value \"Bad_Name\""),
        "{errs:?}"
    );
}

#[test]
fn missing_name_is_required() {
    let mut v = pod(&json!({"name": "app", "image": "nginx"}));
    v["metadata"] = json!({});
    assert_eq!(errors("pod", v), ["metadata.name: required"]);
}

#[test]
fn wasm_names_an_uploaded_blob_by_digest_never_a_path() {
    for bad in [
        "/etc/passwd",
        "/dev/zero",
        "./hello.wasm",
        "hello.wasm",
        "sha256:abc",
        "SHA256:AB",
    ] {
        let errs = errors("pod", pod(&json!({"name": "app", "wasm": bad})));
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with("spec.containers[0].wasm: "),
            "{bad}: {errs:?}"
        );
    }
    assert!(decode("pod", pod(&json!({"name": "app", "wasm": DIGEST}))).is_ok());
}

#[test]
fn wasm_takes_oci_references_with_a_tag_or_a_digest() {
    for ok in [
        "oci://ghcr.io/team/hello:v1".to_owned(),
        "oci://127.0.0.1:5000/hello:1.0".to_owned(),
        "oci://localhost:5000/a/b/c@sha256:".to_owned() + &"0".repeat(64),
        "oci://registry.example.com/x:v2@sha256:".to_owned() + &"a".repeat(64),
    ] {
        assert!(
            decode("pod", pod(&json!({"name": "app", "wasm": ok}))).is_ok(),
            "{ok}"
        );
    }
    for (bad, why) in [
        ("oci://ghcr.io/x/y", "name a tag"),
        ("oci://hello:v1", "names its registry"),
        ("oci://hello/x:v1", "not a registry host"),
        ("oci://ghcr.io/X/y:1", "repository"),
        ("oci://ghcr.io/x/y:bad tag", "tag"),
        ("oci://ghcr.io/x/y@sha256:abc", "digest"),
        ("oci://", "names its registry"),
    ] {
        let errs = errors("pod", pod(&json!({"name": "app", "wasm": bad})));
        assert!(
            errs.len() == 1 && errs[0].starts_with("spec.containers[0].wasm: ") && errs[0].contains(why),
            "{bad}: {errs:?}"
        );
    }
    let r = crate::OciRef::parse("127.0.0.1:5000/team/hello:v1").expect("parses");
    assert_eq!(
        (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
        ("127.0.0.1:5000", "team/hello", Some("v1"))
    );
    assert_eq!(r.to_string(), "127.0.0.1:5000/team/hello:v1");
}

#[test]
fn counts_of_pods_are_bounded() {
    let rs = |replicas: i64| {
        json!({"apiVersion": "wisp.dev/v1", "kind": "ReplicaSet", "metadata": {"name": "r"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}})
    };
    assert!(decode("replicaset", rs(10_000)).is_ok());
    let errs = errors("replicaset", rs(2_147_483_647));
    assert_eq!(errs, ["spec.replicas: must be at most 10000"]);
    let f = json!({"apiVersion": "wisp.dev/v1", "kind": "Function", "metadata": {"name": "f"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "wasm": DIGEST}]}},
                 "scaling": {"maxScale": 4_294_967_295_u32}}});
    assert!(has(
        &errors("function", f),
        "spec.scaling.maxScale: must be at most 10000"
    ));
    let many: Vec<_> = (0..17).map(|i| json!({"service": format!("s{i}")})).collect();
    let r = json!({"apiVersion": "wisp.dev/v1", "kind": "Route", "metadata": {"name": "r"},
        "spec": {"host": "r.default.localhost", "backends": many, "timeoutSeconds": 4000}});
    let errs = errors("route", r);
    assert!(has(&errs, "spec.backends: at most 16"), "{errs:?}");
    assert!(
        has(&errs, "spec.timeoutSeconds: must be at most 3600"),
        "{errs:?}"
    );
}

#[test]
fn image_and_wasm_are_exclusive() {
    let both = errors(
        "pod",
        pod(&json!({"name": "app", "image": "nginx", "wasm": "x.wasm"})),
    );
    assert_eq!(
        both,
        ["spec.containers[0]: exactly one of image or wasm must be set"]
    );
    let neither = errors("pod", pod(&json!({"name": "app"})));
    assert_eq!(
        neither,
        ["spec.containers[0]: exactly one of image or wasm must be set"]
    );
}

#[test]
fn docker_containers_are_confined() {
    let mut mixed = pod(&json!({"name": "a", "image": "nginx"}));
    mixed["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "b", "wasm": "sha256:abc"}));
    let errs = errors("pod", mixed);
    assert!(has(&errs, "spec.containers: a pod cannot mix Wasm"), "{errs:?}");
    // An empty `wasm` does not hide a Docker container from the check.
    let mut sneaky = pod(&json!({"name": "a", "image": "nginx", "wasm": ""}));
    sneaky["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "b", "wasm": "sha256:abc"}));
    assert!(has(
        &errors("pod", sneaky),
        "spec.containers: a pod cannot mix Wasm"
    ));
    let privileged = errors(
        "pod",
        pod(&json!({"name": "a", "image": "nginx", "securityContext": {"privileged": true}})),
    );
    assert_eq!(
        privileged,
        ["spec.containers[0].securityContext.privileged: privileged containers are not allowed"]
    );
    let caps = errors(
        "pod",
        pod(&json!({"name": "a", "image": "nginx",
            "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "CAP_SYS_ADMIN"]}}})),
    );
    assert_eq!(caps.len(), 1, "{caps:?}");
    assert!(
        has(
            &caps,
            "spec.containers[0].securityContext.capabilities.add[1]: capability \"SYS_ADMIN\" cannot be added"
        ),
        "{caps:?}"
    );
    let pids = errors(
        "pod",
        pod(&json!({"name": "a", "image": "nginx", "resources": {"limits": {"pids": 0}}})),
    );
    assert_eq!(
        pids,
        ["spec.containers[0].resources.limits.pids: must be at least 1"]
    );
    let svc_host = json!({"apiVersion": "wisp.dev/v1", "kind": "Route", "metadata": {"name": "r"},
        "spec": {"host": "db.other.svc", "backends": [{"service": "web"}]}});
    let errs = errors("route", svc_host);
    assert!(has(&errs, "spec.host: invalid host \"db.other.svc\""), "{errs:?}");
}

#[test]
fn bad_quantities_have_paths() {
    let cpu = errors(
        "pod",
        pod(&json!({"name": "a", "image": "i", "resources": {"limits": {"cpu": "5x"}}})),
    );
    assert_eq!(cpu.len(), 1);
    assert!(
        has(
            &cpu,
            "spec.containers[0].resources.limits.cpu: invalid quantity \"5x\": unknown suffix"
        ),
        "{cpu:?}"
    );
    let mem = errors(
        "pod",
        pod(&json!({"name": "a", "image": "i", "resources": {"requests": {"memory": "12XB"}}})),
    );
    assert!(
        has(
            &mem,
            "spec.containers[0].resources.requests.memory: invalid quantity"
        ),
        "{mem:?}"
    );
    let neg = errors(
        "pod",
        pod(&json!({"name": "a", "image": "i", "resources": {"limits": {"memory": "-1Gi"}}})),
    );
    assert_eq!(
        neg,
        ["spec.containers[0].resources.limits.memory: must be non-negative"]
    );
    let over = errors(
        "pod",
        pod(
            &json!({"name": "a", "image": "i", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1", "gpu": "1"}}}),
        ),
    );
    assert!(
        has(
            &over,
            "spec.containers[0].resources.limits.gpu: unsupported resource"
        ),
        "{over:?}"
    );
    assert!(
        has(
            &over,
            "spec.containers[0].resources.requests.cpu: must be less than or equal"
        ),
        "{over:?}"
    );
}

#[test]
fn bad_labels_have_paths() {
    let mut v = pod(&json!({"name": "app", "image": "nginx"}));
    v["metadata"]["labels"] = json!({"Bad Key": "x", "app": "bad value"});
    let errs = errors("pod", v);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(has(&errs, "metadata.labels: invalid key \"Bad Key\""), "{errs:?}");
    assert!(
        has(&errs, "metadata.labels.app: invalid value \"bad value\""),
        "{errs:?}"
    );
}

#[test]
fn unknown_nested_field_shows_full_path() {
    let errs = errors("pod", pod(&json!({"name": "app", "imagee": "nginx"})));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        has(
            &errs,
            "spec.containers[0].imagee: unknown field `imagee`, expected one of"
        ),
        "{errs:?}"
    );
}

#[test]
fn type_errors_show_path() {
    let errs = errors(
        "pod",
        pod(&json!({"name": "app", "image": "i", "ports": [{"containerPort": 70000}]})),
    );
    assert!(
        has(&errs, "spec.containers[0].ports[0].containerPort: invalid value"),
        "{errs:?}"
    );
}

#[test]
fn type_meta_is_checked() {
    let mut v = pod(&json!({"name": "app", "image": "nginx"}));
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Service");
    let errs = errors("pod", v);
    assert!(has(&errs, "apiVersion: must be \"wisp.dev/v1\""), "{errs:?}");
    assert!(has(&errs, "kind: must be \"Pod\""), "{errs:?}");
    assert_eq!(
        errors("pod", json!([1, 2])),
        ["expected a JSON object for kind Pod"]
    );
    assert_eq!(
        errors("pod", json!({"apiVersion": "wisp.dev/v1"})),
        [
            "kind: required",
            "metadata.name: required",
            "spec.containers: required: at least one container"
        ]
    );
}

#[test]
fn cluster_scoped_kinds_reject_namespace() {
    let v = json!({"apiVersion": "wisp.dev/v1", "kind": "Node", "metadata": {"name": "n1", "namespace": "default"}});
    assert_eq!(
        errors("no", v),
        ["metadata.namespace: must not be set for a cluster-scoped kind"]
    );
    let ns = json!({"apiVersion": "wisp.dev/v1", "kind": "Namespace", "metadata": {"name": "team-a"}});
    assert!(decode("ns", ns).is_ok());
}

fn replicaset(selector: &Value, labels: &Value) -> Value {
    json!({
        "apiVersion": "wisp.dev/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
        "spec": {"selector": selector, "template": {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    })
}

#[test]
fn selector_must_match_template() {
    let errs = errors(
        "rs",
        replicaset(&json!({"matchLabels": {"app": "a"}}), &json!({"app": "b"})),
    );
    assert_eq!(
        errs,
        ["spec.template.metadata.labels: selector does not match template labels"]
    );
    let errs = errors("rs", replicaset(&json!({}), &json!({"app": "b"})));
    assert_eq!(errs, ["spec.selector: required: a non-empty selector"]);
    let ok = decode(
        "replicaset",
        replicaset(&json!({"matchLabels": {"app": "a"}}), &json!({"app": "a"})),
    );
    assert_eq!(ok.map(|v| v["spec"]["replicas"].clone()), Ok(json!(1)));
}

#[test]
fn route_prefix_must_start_with_slash() {
    let v = json!({"apiVersion": "wisp.dev/v1", "kind": "Route", "metadata": {"name": "r"},
        "spec": {"host": "r.default.localhost", "pathPrefix": "api", "backends": [{"service": "web"}]}});
    assert_eq!(errors("route", v), ["spec.pathPrefix: must start with \"/\""]);
    // A Route claims one host: one without would catch every other host.
    let hostless = json!({"apiVersion": "wisp.dev/v1", "kind": "Route", "metadata": {"name": "r"},
        "spec": {"backends": [{"service": "web"}]}});
    let errs = errors("route", hostless);
    assert!(has(&errs, "spec.host: required"), "{errs:?}");
    let ok = json!({"apiVersion": "wisp.dev/v1", "kind": "Route", "metadata": {"name": "r"},
        "spec": {"host": "*.example.com", "backends": [{"service": "web"}]}});
    let out = decode("route", ok).unwrap_or_default();
    assert_eq!(out["spec"]["pathPrefix"], "/");
    assert_eq!(out["spec"]["backends"][0]["weight"], 100);
}

#[test]
fn function_scaling_is_validated() {
    let v = json!({"apiVersion": "wisp.dev/v1", "kind": "Function", "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [{"name": "f", "wasm": "hello.wasm"}]}},
                 "scaling": {"minScale": 3, "maxScale": 2, "scaleToZeroAfter": "5 min"}}});
    let errs = errors("fn", v);
    assert!(
        has(
            &errs,
            "spec.scaling.maxScale: must be greater than or equal to minScale"
        ),
        "{errs:?}"
    );
    assert!(
        has(&errs, "spec.scaling.scaleToZeroAfter: invalid duration"),
        "{errs:?}"
    );
}

#[test]
fn secrets_and_jobs() {
    let s = json!({"apiVersion": "wisp.dev/v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": {"ok": "aGk=", "bad": "not base64!"}});
    assert_eq!(errors("secret", s), ["data.bad: must be base64-encoded"]);
    let j = json!({"apiVersion": "wisp.dev/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "wasm": DIGEST}]}}}});
    assert_eq!(
        errors("job", j),
        ["spec.template.spec.restartPolicy: must be OnFailure or Never for a Job"]
    );
}

#[test]
fn every_kind_decodes_a_minimal_object_or_says_why() {
    for info in KINDS {
        let v = json!({"apiVersion": "wisp.dev/v1", "kind": info.kind, "metadata": {"name": "x"}});
        // Must not panic; either outcome is fine for an empty spec.
        let _ = (info.decode)(v);
        let _ = (info.decode)(json!(null));
        let _ = (info.decode)(json!({"kind": 3, "metadata": 4, "spec": []}));
    }
}

#[test]
fn lookups_and_schemas() {
    assert_eq!(KINDS.len(), 17);
    for (name, kind) in [
        ("rev", "Revision"),
        ("po", "Pod"),
        ("PODS", "Pod"),
        ("deploy", "Deployment"),
        ("ep", "Endpoints"),
        ("fn", "Function"),
    ] {
        assert_eq!(kind_by_name(name).map(|k| k.kind), Some(kind), "{name}");
    }
    assert_eq!(kind_by_plural("replicasets").map(|k| k.kind), Some("ReplicaSet"));
    assert!(kind_by_plural("Pods").is_none());
    let mut generator = schemars::SchemaGenerator::default();
    for info in KINDS {
        let schema = (info.schema)(&mut generator);
        assert!(schema.get("properties").is_some(), "{}", info.kind);
    }
    assert!(generator.definitions().contains_key("Quantity"));
}

#[test]
fn resource_new_fills_type_meta() {
    let p = Pod::new(ObjectMeta::namespaced("default", "web"));
    assert_eq!(
        (p.api_version.as_str(), p.kind.as_str(), p.name()),
        ("wisp.dev/v1", "Pod", "web")
    );
    assert_eq!(p.namespace(), Some("default"));
}

/// Regression: pod status addresses are spelled `podIP` / `hostIP` as in Kubernetes (they
/// were `podIp` / `hostIp`, and `wisp get pods -o wide` showed no IP).
#[test]
fn pod_status_addresses_use_kubernetes_spelling() {
    let st = crate::PodStatus {
        pod_ip: Some("10.0.0.7".into()),
        host_ip: Some("192.168.1.2".into()),
        ..crate::PodStatus::default()
    };
    let v = serde_json::to_value(&st).expect("encode");
    assert_eq!(
        (v["podIP"].as_str(), v["hostIP"].as_str()),
        (Some("10.0.0.7"), Some("192.168.1.2"))
    );
    let back: crate::PodStatus = serde_json::from_value(v).expect("decode");
    assert_eq!(back, st);
}

/// Fields Wisp's types know but nothing acts on are refused, each at its path, with a
/// message that says so (never accepted and ignored).
#[test]
fn fields_nothing_acts_on_are_refused_at_their_path() {
    let c = |extra: Value| {
        let mut c = json!({"name": "app", "wasm": DIGEST, "ports": [{"containerPort": 8080}]});
        c.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        c
    };
    let refused = |v: Value, path: &str| {
        let errs = errors(v["kind"].as_str().unwrap_or_default(), v.clone());
        assert!(
            has(&errs, &format!("{path}: {}", crate::NOT_SUPPORTED)),
            "{path}: {errs:?}"
        );
    };
    refused(
        pod(&c(json!({"livenessProbe": {"httpGet": {"path": "/"}}}))),
        "spec.containers[0].livenessProbe",
    );
    // A Wasm component listens on no TCP port.
    refused(
        pod(&c(json!({"readinessProbe": {"tcpSocket": {"port": 8080}}}))),
        "spec.containers[0].readinessProbe.tcpSocket.port",
    );
    refused(
        pod(&c(
            json!({"readinessProbe": {"httpGet": {"path": "/", "port": 9090}}}),
        )),
        "spec.containers[0].readinessProbe.httpGet.port",
    );
    refused(
        pod(&c(json!({"ports": [{"containerPort": 53, "protocol": "UDP"}]}))),
        "spec.containers[0].ports[0].protocol",
    );
    let mut p = pod(&c(json!({})));
    p["spec"]["volumes"] = json!([{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]);
    refused(p, "spec.volumes[0].emptyDir.sizeLimit");
    // In a template, the path is the template's.
    let d = json!({
        "apiVersion": "wisp.dev/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                 "spec": {"containers": [c(json!({"livenessProbe": {"httpGet": {"path": "/"}}}))]}}}
    });
    refused(d, "spec.template.spec.containers[0].livenessProbe");
    // What Wisp does is still accepted: an httpGet probe on the served port, or none.
    decode(
        "pod",
        pod(&c(
            json!({"readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}),
        )),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let svc = json!({"apiVersion": "wisp.dev/v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
                     "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}});
    refused(svc, "spec.ports[0].protocol");
    let ns = json!({"apiVersion": "wisp.dev/v1", "kind": "Namespace", "metadata": {"name": "n"},
                    "spec": {"finalizers": ["example.com/x"]}});
    refused(ns, "spec.finalizers[0]");
    let lease = json!({"apiVersion": "wisp.dev/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "default"},
                       "spec": {"leaseTransitions": 1}});
    refused(lease, "spec.leaseTransitions");
}

#[test]
fn replica_set_min_ready_seconds_is_kept_and_checked() {
    let rs = |min: i64| {
        json!({
            "apiVersion": "wisp.dev/v1", "kind": "ReplicaSet", "metadata": {"name": "r", "namespace": "default"},
            "spec": {"minReadySeconds": min, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "wasm": DIGEST}]}}}
        })
    };
    let out = decode("replicaset", rs(5)).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(out["spec"]["minReadySeconds"], 5);
    assert!(has(
        &errors("replicaset", rs(-1)),
        "spec.minReadySeconds: must be non-negative"
    ));
}

/// A `tcpSocket` readiness probe of a container is accepted on the port it serves on (the
/// agent connects to its first port), and refused elsewhere or without a port.
#[test]
fn a_tcp_socket_probe_is_accepted_on_the_port_a_container_serves() {
    let c = |probe: Value, ports: Value| {
        pod(&json!({"name": "app", "image": "web:1", "ports": ports, "readinessProbe": probe}))
    };
    let ports = json!([{"containerPort": 8080}]);
    decode("pod", c(json!({"tcpSocket": {"port": 8080}}), ports.clone())).expect("ports[0]");
    let path = "spec.containers[0].readinessProbe.tcpSocket.port";
    let errs = errors("pod", c(json!({"tcpSocket": {"port": 9090}}), ports.clone()));
    assert!(
        has(&errs, &format!("{path}: {}", crate::NOT_SUPPORTED)),
        "{errs:?}"
    );
    let errs = errors("pod", c(json!({"tcpSocket": {"port": 8080}}), json!([])));
    assert!(
        has(&errs, &format!("{path}: {}", crate::NOT_SUPPORTED)),
        "{errs:?}"
    );
    let errs = errors("pod", c(json!({"tcpSocket": {"port": 0}}), ports));
    assert!(has(&errs, path), "{errs:?}");
}

fn function_with_traffic(traffic: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "wisp.dev/v1", "kind": "Function", "metadata": {"name": "hello"},
        "spec": {"template": {"spec": {"containers": [{"name": "hello",
            "wasm": "sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}},
            "traffic": traffic}})
}

#[test]
fn traffic_splits_name_revisions_of_the_function_and_sum_to_100() {
    let ok = function_with_traffic(json!([
        {"revisionName": "hello-00001", "percent": 90},
        {"latestRevision": true, "percent": 10, "tag": "canary"}
    ]));
    assert!(
        kind_by_name("function")
            .map(|k| (k.decode)(ok))
            .is_some_and(|r| r.is_ok())
    );
    let errs = errors(
        "function",
        function_with_traffic(json!([
            {"revisionName": "other-00001", "percent": 50, "tag": "v"},
            {"revisionName": "hello-00002", "latestRevision": true, "percent": 120, "tag": "v"}
        ])),
    );
    assert!(
        has(
            &errs,
            "spec.traffic[0].revisionName: \"other-00001\" is not a revision of \"hello\""
        ),
        "{errs:?}"
    );
    assert!(
        has(
            &errs,
            "spec.traffic[1]: needs exactly one of revisionName and latestRevision"
        ),
        "{errs:?}"
    );
    assert!(
        has(&errs, "spec.traffic[1].percent: must be at most 100"),
        "{errs:?}"
    );
    assert!(
        has(&errs, "spec.traffic[1].tag: tag \"v\" is used twice"),
        "{errs:?}"
    );
    assert!(has(&errs, "spec.traffic: the percents sum to 170"), "{errs:?}");
    assert_eq!(crate::revision_number("hello", "hello-00012"), Some(12));
    assert_eq!(crate::revision_number("hello", "hello-12"), None);
    assert_eq!(crate::revision_name("hello", 3), "hello-00003");
}

/// `imagePullSecrets` work for `wasm: oci://` components; for images nothing uses them yet, so
/// they are refused rather than ignored.
#[test]
fn image_pull_secrets_are_refused_for_images_until_docker_uses_them() {
    let mut v = pod(&json!({"name": "app", "image": "registry.example.com/app:1"}));
    v["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    let errs = errors("pod", v);
    assert!(has(&errs, "spec.imagePullSecrets: not supported yet"), "{errs:?}");
    let mut v = pod(&json!({"name": "app", "wasm": "oci://registry.example.com/app:1"}));
    v["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    assert!(decode("pod", v).is_ok());
}

#[test]
fn a_nodes_agent_ca_is_one_certificate_of_bounded_size() {
    let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let node = |ca: &str| {
        json!({
            "apiVersion": "wisp.dev/v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"agentCa": ca}
        })
    };
    decode("Node", node(cert)).expect("one certificate");
    for (ca, why) in [
        (format!("{cert}{cert}"), "two certificates"),
        (String::new(), "none"),
        (format!("{cert}{}", "A".repeat(crate::AGENT_CA_MAX)), "too large"),
    ] {
        let errs = errors("Node", node(&ca));
        assert!(has(&errs, "status.agentCa"), "{why}: {errs:?}");
    }
}

/// `stringData` is stored base64 in `data`: its size counts as stored, so the 1 MiB bound
/// holds after the fold.
#[test]
fn a_secrets_string_data_counts_at_its_stored_size() {
    let secret = |n: usize| {
        json!({
            "apiVersion": "wisp.dev/v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "default"},
            "stringData": {"v": "x".repeat(n)}
        })
    };
    decode("Secret", secret(700 * 1024)).expect("≈ 933 KiB stored");
    let errs = errors("Secret", secret(800 * 1024));
    assert!(
        errs.iter().any(|e| e.contains("may not exceed 1 MiB")),
        "≈ 1.07 MiB stored: {errs:?}"
    );
}
