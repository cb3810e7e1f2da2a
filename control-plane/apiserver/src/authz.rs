//! Authorization: what each kind of [`Principal`] may do, by verb, resource, subresource and
//! namespace. A decision may depend on the object (a node writes the status of pods bound to
//! it, reads the Secrets they use, wakes a Deployment from zero): those come back as a
//! [`Condition`] the handler checks against what is stored. Field-level rules on what a
//! tenant may write (no `spec.nodeName`, Route hosts it owns, its own blobs) are admission's
//! (`admission.rs`).
//!
//! Every refusal is a 403 `Status` naming the verb, the resource and the principal's scope.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::resources::Target;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// A permission that holds only for some objects: the handler checks it against the stored
/// object before it acts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The pod is bound to this node (`spec.nodeName`).
    PodOnNode(String),
    /// A pod bound to this node uses this ConfigMap or Secret (env or volume).
    UsedByPodOnNode(String),
    /// The update only wakes the Deployment: `spec.replicas` from 0 to 1, nothing else.
    WakeFromZero,
    /// The object created is named this (a node creates its own Node and Lease).
    Named(String),
}

/// The verdict on a request before the object is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    AllowIf(Condition),
}

/// The 403 for `principal` doing `verb` on `resource` (`pods/status`) in `namespace`.
pub fn forbidden(
    principal: &Principal,
    verb: Verb,
    resource: &str,
    namespace: Option<&str>,
    why: &str,
) -> ApiError {
    let place = match namespace {
        Some(ns) => format!(" in namespace {ns:?}"),
        None => String::new(),
    };
    ApiError::Forbidden(format!(
        "{} cannot {} {resource}{place}: {why}",
        principal.scope(),
        verb.as_str()
    ))
}

/// The resource a request names, for messages: `pods`, `pods/status`.
pub fn resource_name(target: &Target, subresource: Option<&str>) -> String {
    match subresource {
        Some(sub) => format!("{}/{sub}", target.kind.plural),
        None => target.kind.plural.to_owned(),
    }
}

/// Kinds only the control plane writes in a tenant's namespace.
const CONTROLLER_OWNED: &[&str] = &["endpoints"];
/// Kinds only the cluster admin writes in a tenant's namespace.
const ADMIN_OWNED: &[&str] = &["resourcequotas", "limitranges"];

/// May `principal` do `verb` on `target` (and `subresource`)?
pub fn authorize(
    principal: &Principal,
    verb: Verb,
    target: &Target,
    subresource: Option<&str>,
) -> Result<Decision, ApiError> {
    let resource = resource_name(target, subresource);
    let ns = target.namespace.as_deref();
    let deny = |why: &str| Err(forbidden(principal, verb, &resource, ns, why));
    match principal {
        Principal::Admin => Ok(Decision::Allow),
        Principal::Namespace { namespace: own, .. } => {
            if !target.kind.namespaced {
                // Its own Namespace object may be read, nothing else cluster-scoped.
                if target.kind.plural == "namespaces"
                    && verb == Verb::Get
                    && subresource.is_none_or(|s| s == "status")
                    && target.name.as_deref() == Some(own.as_str())
                {
                    return Ok(Decision::Allow);
                }
                return deny(&format!(
                    "{resource} are cluster-scoped; this token is confined to namespace {own:?}"
                ));
            }
            match ns {
                Some(ns) if ns == own => {}
                Some(_) => return deny(&format!("this token is confined to namespace {own:?}")),
                None => {
                    return deny(&format!(
                        "listing across namespaces; this token is confined to namespace {own:?}"
                    ));
                }
            }
            if subresource == Some("status") && !verb.reads() {
                return deny("status is written by the control plane and the nodes, not by tenants");
            }
            if !verb.reads() && CONTROLLER_OWNED.contains(&target.kind.plural) {
                return deny(
                    "Endpoints are written by the Endpoints controller from the addresses nodes report \
                     for pods; select pods with a Service instead",
                );
            }
            if !verb.reads() && ADMIN_OWNED.contains(&target.kind.plural) {
                return deny("quotas and limits of a namespace are set by the cluster admin");
            }
            if !verb.reads() && target.kind.plural == "events" {
                return deny(
                    "Events are recorded by the cluster's components (scheduler, controllers, nodes); \
                     a namespace token reads them",
                );
            }
            if !verb.reads() && target.kind.plural == "revisions" {
                return deny(
                    "Revisions are made and collected by the Function controller from a Function's \
                     template (change the Function; spec.traffic chooses between its revisions)",
                );
            }
            Ok(Decision::Allow)
        }
        Principal::Node { node } => node_rules(node, verb, target, subresource, deny),
        Principal::Scraper => deny("this credential only reads the ingresses' statistics"),
        Principal::PodLogs { namespace, pod, .. } => {
            if verb == Verb::Get
                && subresource.is_none()
                && target.kind.plural == "pods"
                && ns == Some(namespace.as_str())
                && target.name.as_deref() == Some(pod.as_str())
            {
                Ok(Decision::Allow)
            } else {
                deny("a log ticket reads its one pod")
            }
        }
    }
}

/// What a node agent and its ingress may do (cf. Kubernetes' node authorizer).
fn node_rules(
    node: &str,
    verb: Verb,
    target: &Target,
    subresource: Option<&str>,
    deny: impl Fn(&str) -> Result<Decision, ApiError>,
) -> Result<Decision, ApiError> {
    let name = target.name.as_deref();
    let log = subresource == Some("log");
    match target.kind.plural {
        "nodes" => match verb {
            _ if verb.reads() => Ok(Decision::Allow),
            Verb::Create => Ok(Decision::AllowIf(Condition::Named(node.to_owned()))),
            Verb::Update if name == Some(node) => Ok(Decision::Allow),
            Verb::Delete => deny("a node never deletes Nodes"),
            _ => deny(&format!("a node writes only its own Node ({node:?})")),
        },
        "leases" => {
            let ours = target.namespace.as_deref() == Some(crate::LEASE_NAMESPACE);
            if ours && verb == Verb::Create {
                Ok(Decision::AllowIf(Condition::Named(node.to_owned())))
            } else if ours && name == Some(node) && matches!(verb, Verb::Get | Verb::Update) {
                Ok(Decision::Allow)
            } else {
                deny(&format!(
                    "a node reads and writes only its own Lease ({}/{node})",
                    crate::LEASE_NAMESPACE
                ))
            }
        }
        "pods" => match (verb, subresource) {
            (_, _) if log => deny("logs are read by users through the API server"),
            (v, _) if v.reads() => Ok(Decision::Allow),
            (Verb::Update, Some("status")) => Ok(Decision::AllowIf(Condition::PodOnNode(node.to_owned()))),
            _ => deny("a node writes only the status of the pods bound to it"),
        },
        "configmaps" | "secrets" => match verb {
            Verb::Get => Ok(Decision::AllowIf(Condition::UsedByPodOnNode(node.to_owned()))),
            _ => deny("a node reads only the ConfigMaps and Secrets of the pods bound to it, one by one"),
        },
        "services" | "endpoints" | "routes" => {
            if verb.reads() {
                Ok(Decision::Allow)
            } else {
                deny("a node only reads Services, Endpoints and Routes (its ingress routes by them)")
            }
        }
        "deployments" => match (verb, subresource) {
            (Verb::Get, None) => Ok(Decision::Allow),
            (Verb::Update, None) => Ok(Decision::AllowIf(Condition::WakeFromZero)),
            _ => deny("a node's activator only reads a Deployment and wakes it from zero"),
        },
        "namespaces" if verb == Verb::Get => Ok(Decision::Allow),
        // Admission holds what a node may say (its own name, its own pods).
        "events" => match verb {
            Verb::Get | Verb::Create | Verb::Update => Ok(Decision::Allow),
            _ => deny("a node records events one by one; it neither lists nor deletes them"),
        },
        _ => deny("not something a node agent or its ingress needs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(plural: &str, ns: Option<&str>, name: Option<&str>) -> Target {
        Target {
            kind: wisp_api::kind_by_plural(plural).expect("kind"),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    fn tenant() -> Principal {
        Principal::Namespace {
            namespace: "team-a".into(),
            namespace_uid: "u".into(),
        }
    }

    fn code(r: Result<Decision, ApiError>) -> u16 {
        r.map_or_else(|e| e.code(), |_| 200)
    }

    #[test]
    fn a_namespace_token_stays_in_its_namespace_and_off_controller_fields() {
        let p = tenant();
        let ok = |v, target: &Target, sub| code(authorize(&p, v, target, sub));
        assert_eq!(ok(Verb::Create, &t("pods", Some("team-a"), None), None), 200);
        assert_eq!(ok(Verb::Get, &t("pods", Some("team-b"), Some("x")), None), 403);
        assert_eq!(ok(Verb::List, &t("pods", None, None), None), 403);
        assert_eq!(
            ok(
                Verb::Update,
                &t("pods", Some("team-a"), Some("x")),
                Some("status")
            ),
            403
        );
        assert_eq!(
            ok(Verb::Get, &t("pods", Some("team-a"), Some("x")), Some("status")),
            200
        );
        assert_eq!(ok(Verb::Create, &t("endpoints", Some("team-a"), None), None), 403);
        assert_eq!(
            ok(Verb::Update, &t("endpoints", Some("team-a"), Some("e")), None),
            403
        );
        assert_eq!(
            ok(Verb::Delete, &t("endpoints", Some("team-a"), Some("e")), None),
            403
        );
        assert_eq!(ok(Verb::List, &t("endpoints", Some("team-a"), None), None), 200);
        // Revisions: made and collected by the Function controller; a tenant reads them.
        assert_eq!(ok(Verb::Create, &t("revisions", Some("team-a"), None), None), 403);
        assert_eq!(
            ok(
                Verb::Update,
                &t("revisions", Some("team-a"), Some("f-00001")),
                None
            ),
            403
        );
        assert_eq!(ok(Verb::List, &t("revisions", Some("team-a"), None), None), 200);
        assert_eq!(
            ok(
                Verb::Delete,
                &t("revisions", Some("team-a"), Some("f-00001")),
                None
            ),
            403
        );
        assert_eq!(ok(Verb::Create, &t("nodes", None, None), None), 403);
        assert_eq!(ok(Verb::Get, &t("namespaces", None, Some("team-a")), None), 200);
        assert_eq!(ok(Verb::Get, &t("namespaces", None, Some("team-b")), None), 403);
        assert_eq!(
            ok(Verb::Delete, &t("namespaces", None, Some("team-a")), None),
            403
        );
        assert_eq!(
            ok(Verb::Create, &t("resourcequotas", Some("team-a"), None), None),
            403
        );
        assert_eq!(
            ok(
                Verb::Update,
                &t("functions", Some("team-a"), Some("f")),
                Some("status")
            ),
            403
        );
        let e = authorize(
            &p,
            Verb::Update,
            &t("pods", Some("team-a"), Some("x")),
            Some("status"),
        )
        .expect_err("refused");
        let msg = e.to_string();
        for part in ["update", "pods/status", "team-a"] {
            assert!(msg.contains(part), "{msg:?} names {part}");
        }
    }

    #[test]
    fn a_node_writes_its_own_objects_and_reads_what_it_needs() {
        let p = Principal::Node { node: "n1".into() };
        let ok = |v, target: &Target, sub| authorize(&p, v, target, sub).map_err(|e| e.code());
        assert_eq!(
            ok(Verb::Update, &t("nodes", None, Some("n1")), Some("status")),
            Ok(Decision::Allow)
        );
        assert_eq!(
            ok(Verb::Update, &t("nodes", None, Some("n2")), Some("status")),
            Err(403)
        );
        assert_eq!(ok(Verb::Delete, &t("nodes", None, Some("n1")), None), Err(403));
        // Revisions are the Function controller's: a node neither reads nor writes them.
        for verb in [Verb::Get, Verb::List, Verb::Create, Verb::Update, Verb::Delete] {
            assert_eq!(
                ok(verb, &t("revisions", Some("team-a"), None), None),
                Err(403),
                "{verb:?}"
            );
        }
        assert_eq!(
            ok(Verb::Update, &t("leases", Some("wisp-system"), Some("n1")), None),
            Ok(Decision::Allow)
        );
        assert_eq!(
            ok(Verb::Update, &t("leases", Some("wisp-system"), Some("n2")), None),
            Err(403)
        );
        assert_eq!(
            ok(
                Verb::Update,
                &t("pods", Some("team-a"), Some("p")),
                Some("status")
            ),
            Ok(Decision::AllowIf(Condition::PodOnNode("n1".into())))
        );
        assert_eq!(
            ok(Verb::Update, &t("pods", Some("team-a"), Some("p")), None),
            Err(403)
        );
        assert_eq!(ok(Verb::Create, &t("pods", Some("team-a"), None), None), Err(403));
        assert_eq!(
            ok(Verb::List, &t("secrets", Some("team-a"), None), None),
            Err(403)
        );
        assert_eq!(
            ok(Verb::Get, &t("secrets", Some("team-a"), Some("s")), None),
            Ok(Decision::AllowIf(Condition::UsedByPodOnNode("n1".into())))
        );
        assert_eq!(
            ok(Verb::Create, &t("endpoints", Some("team-a"), None), None),
            Err(403)
        );
        assert_eq!(ok(Verb::List, &t("functions", None, None), None), Err(403));
        assert_eq!(
            ok(Verb::Update, &t("deployments", Some("team-a"), Some("d")), None),
            Ok(Decision::AllowIf(Condition::WakeFromZero))
        );
        // Events: one by one, in its own name (admission checks the name and the object).
        for verb in [Verb::Get, Verb::Create, Verb::Update] {
            assert_eq!(
                ok(verb, &t("events", Some("team-a"), Some("e")), None),
                Ok(Decision::Allow)
            );
        }
        for verb in [Verb::List, Verb::Watch, Verb::Delete] {
            assert_eq!(ok(verb, &t("events", Some("team-a"), None), None), Err(403));
        }
    }

    #[test]
    fn a_namespace_token_reads_its_events_and_never_writes_one() {
        let p = tenant();
        let ok = |v, target: &Target| code(authorize(&p, v, target, None));
        for verb in [Verb::Get, Verb::List, Verb::Watch] {
            assert_eq!(ok(verb, &t("events", Some("team-a"), Some("e"))), 200);
            assert_eq!(ok(verb, &t("events", Some("team-b"), Some("e"))), 403);
        }
        for verb in [Verb::Create, Verb::Update, Verb::Delete] {
            assert_eq!(ok(verb, &t("events", Some("team-a"), Some("e"))), 403);
        }
    }

    #[test]
    fn tickets_and_the_scraper_credential_can_do_next_to_nothing() {
        let s = Principal::Scraper;
        assert!(authorize(&s, Verb::Get, &t("pods", Some("a"), Some("p")), None).is_err());
        assert!(authorize(&s, Verb::List, &t("nodes", None, None), None).is_err());
        let l = Principal::PodLogs {
            namespace: "a".into(),
            pod: "p".into(),
            on_behalf_of: "the cluster admin".into(),
        };
        assert!(authorize(&l, Verb::Get, &t("pods", Some("a"), Some("p")), None).is_ok());
        assert!(authorize(&l, Verb::Get, &t("pods", Some("a"), Some("q")), None).is_err());
        assert!(authorize(&l, Verb::Get, &t("pods", Some("b"), Some("p")), None).is_err());
        assert!(authorize(&l, Verb::Update, &t("pods", Some("a"), Some("p")), Some("status")).is_err());
        assert!(authorize(&l, Verb::Get, &t("secrets", Some("a"), Some("p")), None).is_err());
    }
}
