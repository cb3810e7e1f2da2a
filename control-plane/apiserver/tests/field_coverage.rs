//! Nothing accepted and ignored: every field of every kind, as the served OpenAPI document
//! describes it, is either exercised by a named test or refused at admission with a 422 that
//! says it is not supported yet. A field added to `wisp-api` without either fails
//! `every_field_is_exercised_or_refused` until it is listed in [`COVERAGE`].
//!
//! Fields are named `<Definition>.<property>` after the schema definitions (`Container.wasm`,
//! `ObjectMeta.labels`), so a type shared by many kinds (a pod template) is listed once. The
//! refusals themselves are checked here, through the server's own handler, for Pods and for
//! the pod templates of Deployments, ReplicaSets and Functions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use wisp_apiserver::{ApiServer, Config};

/// How one field is covered.
#[derive(Clone, Copy, Debug)]
enum Cover {
    /// Tests (by function name) that set the field and check what it does.
    Exercised(&'static [&'static str]),
    /// An object-valued property whose own fields are listed under its definition.
    Structural,
    /// Refused with a 422 saying it is not supported yet (a non-default value, for fields
    /// whose default is what Wisp does); [`refusal_sample`] gives a manifest that sets it.
    Refused,
    /// Known gap, kept visible: implemented or informational but no test exercises it yet.
    /// The list may only shrink.
    Gap(&'static str),
}
use Cover::{Exercised as E, Gap, Refused, Structural as S};

const CRUD: &[&str] = &["crud_cas_and_watch_without_a_socket", "type_meta_is_checked"];

/// Every field path of every kind. `*.x` matches property `x` of any kind's root.
const COVERAGE: &[(&str, Cover)] = &[
    // Type and object metadata, common to every kind.
    ("*.apiVersion", E(CRUD)),
    ("*.kind", E(CRUD)),
    ("*.metadata", S),
    ("*.spec", S),
    ("*.status", S),
    ("ObjectMeta.name", E(CRUD)),
    (
        "ObjectMeta.namespace",
        E(&[
            "cluster_scoped_kinds_reject_namespace",
            "crud_cas_and_watch_without_a_socket",
        ]),
    ),
    ("ObjectMeta.uid", E(&["crud_cas_and_watch_without_a_socket"])),
    (
        "ObjectMeta.labels",
        E(&[
            "endpoints_follow_pod_readiness",
            "replicaset_keeps_its_pods_and_gc_cleans_up",
        ]),
    ),
    (
        "ObjectMeta.annotations",
        E(&["rolling_update_keeps_ready_pods_and_undo_restores"]),
    ),
    (
        "ObjectMeta.resourceVersion",
        E(&["crud_cas_and_watch_without_a_socket"]),
    ),
    (
        "ObjectMeta.generation",
        E(&["rolling_update_keeps_ready_pods_and_undo_restores"]),
    ),
    (
        "ObjectMeta.creationTimestamp",
        E(&["silence_counts_from_the_lease_or_else_from_creation"]),
    ),
    (
        "ObjectMeta.deletionTimestamp",
        E(&["a_deleted_namespace_takes_its_objects_and_tokens_with_it"]),
    ),
    (
        "ObjectMeta.ownerReferences",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "OwnerReference.apiVersion",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "OwnerReference.kind",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "OwnerReference.name",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "OwnerReference.uid",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "OwnerReference.controller",
        E(&[
            "replicaset_keeps_its_pods_and_gc_cleans_up",
            "function_never_takes_over_an_object_it_does_not_own",
        ]),
    ),
    (
        "Condition.type",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "endpoints_follow_pod_readiness",
        ]),
    ),
    (
        "Condition.status",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "endpoints_follow_pod_readiness",
        ]),
    ),
    (
        "Condition.reason",
        E(&["crashing_container_restarts_with_backoff_and_crash_loop_reason"]),
    ),
    (
        "Condition.message",
        E(&["preparation_failures_back_off_then_recover"]),
    ),
    (
        "Condition.lastTransitionTime",
        E(&[
            "set_condition_keeps_transition_time",
            "min_ready_seconds_gates_availability_and_the_rollout",
        ]),
    ),
    (
        "Condition.observedGeneration",
        Gap("no component writes or reads a condition's observedGeneration"),
    ),
    (
        "LabelSelector.matchLabels",
        E(&[
            "replicaset_keeps_its_pods_and_gc_cleans_up",
            "selector_must_match_template",
        ]),
    ),
    (
        "LabelSelector.matchExpressions",
        E(&["parses_full_syntax", "validate_reports_paths"]),
    ),
    ("LabelSelectorRequirement.key", E(&["parses_full_syntax"])),
    (
        "LabelSelectorRequirement.operator",
        E(&["in_and_notin_are_complements_when_key_present"]),
    ),
    ("LabelSelectorRequirement.values", E(&["parses_full_syntax"])),
    // Namespace, Node, Lease.
    ("NamespaceSpec.finalizers", Refused),
    (
        "NamespaceSpec.routeDomains",
        E(&["hosts_belong_to_their_namespace_and_granted_domains"]),
    ),
    (
        "NamespaceStatus.phase",
        E(&["a_deleted_namespace_takes_its_objects_and_tokens_with_it"]),
    ),
    (
        "NodeSpec.unschedulable",
        E(&[
            "honours_node_selector_resources_readiness_and_cordons",
            "filter_checks_in_order",
        ]),
    ),
    (
        "NodeStatus.capacity",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "capacity_is_used_without_allocatable_and_missing_means_zero",
        ]),
    ),
    (
        "NodeStatus.allocatable",
        E(&["capacity_is_used_without_allocatable_and_missing_means_zero"]),
    ),
    (
        "NodeStatus.runtimes",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "docker_pod_waits_for_a_docker_node",
        ]),
    ),
    (
        "NodeStatus.conditions",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "lost_node_is_marked_not_ready_and_its_pods_are_replaced",
        ]),
    ),
    (
        "NodeStatus.addresses",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    (
        "NodeAddress.type",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    (
        "NodeAddress.address",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    (
        "NodeStatus.ingressUrl",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    (
        "NodeStatus.agentUrl",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "another_nodes_port_is_used_only_where_it_can_be_one",
        ]),
    ),
    (
        "NodeStatus.agentCa",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "another_nodes_port_is_used_only_where_it_can_be_one",
            "a_lying_node_collects_no_token_worth_anything",
        ]),
    ),
    (
        "NodeStatus.agentVersion",
        Gap("written by the agent for `wisp get nodes`; no test reads it"),
    ),
    (
        "LeaseSpec.holderIdentity",
        E(&["lost_node_is_marked_not_ready_and_its_pods_are_replaced"]),
    ),
    (
        "LeaseSpec.renewTime",
        E(&[
            "registers_the_node_and_renews_its_lease",
            "silence_counts_from_the_lease_or_else_from_creation",
        ]),
    ),
    (
        "LeaseSpec.acquireTime",
        Gap("written by the agent with renewTime; the node controller reads renewTime only"),
    ),
    (
        "LeaseSpec.leaseDurationSeconds",
        Gap("written by the agent; the node controller uses its own grace period"),
    ),
    ("LeaseSpec.leaseTransitions", Refused),
    // Pods and containers.
    ("PodSpec.containers", S),
    ("PodSpec.volumes", S),
    (
        "PodSpec.nodeName",
        E(&[
            "http_pod_runs_ready_and_is_removed_on_delete",
            "honours_node_selector_resources_readiness_and_cordons",
        ]),
    ),
    (
        "PodSpec.nodeSelector",
        E(&[
            "honours_node_selector_resources_readiness_and_cordons",
            "filter_node_selector_and_pod_count",
        ]),
    ),
    (
        "PodSpec.restartPolicy",
        E(&[
            "on_failure_restarts_failures_only_and_succeeds",
            "run_to_completion_pods_succeed_or_fail_per_exit_code",
        ]),
    ),
    (
        "PodSpec.terminationGracePeriodSeconds",
        E(&[
            "limit_ranges_fill_defaults_and_bound_every_pod_and_template",
            "a_spinning_guest_is_killed_after_its_grace",
        ]),
    ),
    (
        "PodTemplateSpec.metadata",
        E(&["new_pods_carry_template_labels_and_a_controller_ref"]),
    ),
    ("PodTemplateSpec.spec", S),
    ("Container.name", E(CRUD)),
    (
        "Container.image",
        E(&["sources", "containers_and_wasm_side_by_side_through_the_ingress"]),
    ),
    (
        "Container.wasm",
        E(&["sources", "http_pod_runs_ready_and_is_removed_on_delete"]),
    ),
    (
        "Container.imagePullPolicy",
        E(&["pull_policies_follow_kubernetes_defaults"]),
    ),
    (
        "Container.command",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    (
        "Container.args",
        E(&[
            "drafts_carry_what_the_container_asks_for",
            "env_args_and_files_are_only_what_the_spec_gives",
        ]),
    ),
    (
        "Container.env",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "EnvVar.name",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "EnvVar.value",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "EnvVar.valueFrom",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "EnvVarSource.configMapKeyRef",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "EnvVarSource.secretKeyRef",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "KeySelector.name",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "KeySelector.key",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    (
        "KeySelector.optional",
        E(&["env_from_config_map_and_secret_reaches_the_guest_and_nothing_else"]),
    ),
    ("Container.ports", S),
    ("ContainerPort.name", E(&["endpoints_follow_pod_readiness"])),
    (
        "ContainerPort.containerPort",
        E(&[
            "drafts_carry_what_the_container_asks_for",
            "endpoints_follow_pod_readiness",
        ]),
    ),
    ("ContainerPort.protocol", Refused),
    ("Container.resources", S),
    (
        "ResourceRequirements.requests",
        E(&[
            "quotas_count_pods_and_their_requests_until_they_end",
            "requirements_of_a_pod",
        ]),
    ),
    (
        "ResourceRequirements.limits",
        E(&[
            "drafts_carry_what_the_container_asks_for",
            "oom_and_missing_images_are_reported",
        ]),
    ),
    ("Container.volumeMounts", S),
    (
        "VolumeMount.name",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    (
        "VolumeMount.mountPath",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    (
        "VolumeMount.readOnly",
        E(&[
            "drafts_carry_what_the_container_asks_for",
            "files_only_through_mounts_and_env_only_as_declared",
        ]),
    ),
    ("Container.readinessProbe", S),
    ("Container.livenessProbe", Refused),
    ("Probe.httpGet", S),
    (
        "Probe.tcpSocket",
        E(&[
            "a_tcp_socket_probe_follows_the_port_accepting",
            "a_tcp_socket_probe_is_accepted_on_the_port_a_container_serves",
        ]),
    ),
    (
        "TcpSocketAction.port",
        E(&[
            "a_tcp_socket_probe_follows_the_port_accepting",
            "a_tcp_socket_probe_is_accepted_on_the_port_a_container_serves",
        ]),
    ),
    (
        "HttpGetAction.path",
        Gap("used by the agent's readiness probe (worker.rs); no test sets a path"),
    ),
    ("HttpGetAction.port", Refused),
    (
        "Probe.initialDelaySeconds",
        Gap("used by the agent's readiness probe (worker.rs); no test sets it"),
    ),
    (
        "Probe.periodSeconds",
        Gap("used by the agent's readiness probe (worker.rs); no test checks the period"),
    ),
    (
        "Probe.timeoutSeconds",
        Gap("used by the agent's readiness probe (worker.rs); no test checks it"),
    ),
    (
        "Probe.successThreshold",
        Gap("used by the agent's readiness probe (worker.rs); no test checks it"),
    ),
    (
        "Probe.failureThreshold",
        Gap("used by the agent's readiness probe (worker.rs); no test checks it"),
    ),
    (
        "Container.allowedOutboundHosts",
        E(&["outbound_http_only_to_allowed_hosts"]),
    ),
    (
        "Container.timeoutMs",
        E(&[
            "drafts_carry_what_the_container_asks_for",
            "the_cluster_bounds_timeouts_and_grace_whatever_a_namespace_says",
        ]),
    ),
    ("Container.securityContext", S),
    (
        "SecurityContext.readOnlyRootFilesystem",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    (
        "SecurityContext.runAsUser",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    (
        "SecurityContext.runAsNonRoot",
        E(&["run_as_non_root_refuses_root_and_runs_non_root_users"]),
    ),
    (
        "SecurityContext.privileged",
        E(&["docker_containers_are_confined"]),
    ),
    ("SecurityContext.capabilities", S),
    (
        "Capabilities.add",
        E(&[
            "opt_in_capabilities_need_the_node_admin",
            "drafts_carry_what_the_container_asks_for",
        ]),
    ),
    (
        "Volume.name",
        E(&["config_map_volume_mounts_binary_data_as_bytes"]),
    ),
    ("Volume.configMap", S),
    (
        "ConfigMapVolumeSource.name",
        E(&["config_map_volume_mounts_binary_data_as_bytes"]),
    ),
    (
        "ConfigMapVolumeSource.optional",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    ("Volume.secret", S),
    (
        "SecretVolumeSource.secretName",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    (
        "SecretVolumeSource.optional",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    (
        "Volume.emptyDir",
        E(&["drafts_carry_what_the_container_asks_for"]),
    ),
    ("EmptyDirVolumeSource.sizeLimit", Refused),
    // Pod status, reported by the node agent.
    (
        "PodStatus.phase",
        E(&[
            "http_pod_runs_ready_and_is_removed_on_delete",
            "run_to_completion_pods_succeed_or_fail_per_exit_code",
        ]),
    ),
    (
        "PodStatus.conditions",
        E(&["http_pod_runs_ready_and_is_removed_on_delete"]),
    ),
    (
        "PodStatus.nodeName",
        E(&["http_pod_runs_ready_and_is_removed_on_delete"]),
    ),
    (
        "PodStatus.hostIP",
        E(&["pod_status_addresses_use_kubernetes_spelling"]),
    ),
    (
        "PodStatus.podIP",
        E(&[
            "pod_status_addresses_use_kubernetes_spelling",
            "endpoints_follow_pod_readiness",
        ]),
    ),
    (
        "PodStatus.hostPort",
        E(&["container_pod_serves_logs_and_is_adopted_after_restart"]),
    ),
    (
        "PodStatus.containerStatuses",
        E(&["crashing_container_restarts_with_backoff_and_crash_loop_reason"]),
    ),
    (
        "PodStatus.startTime",
        Gap("written by the agent; no test reads it"),
    ),
    ("PodStatus.reason", E(&["oom_and_missing_images_are_reported"])),
    (
        "PodStatus.message",
        E(&["preparation_failures_back_off_then_recover"]),
    ),
    (
        "ContainerStatus.name",
        E(&["crashing_container_restarts_with_backoff_and_crash_loop_reason"]),
    ),
    (
        "ContainerStatus.ready",
        E(&["ready_needs_every_container_running_and_ready"]),
    ),
    (
        "ContainerStatus.restartCount",
        E(&["crashing_container_restarts_with_backoff_and_crash_loop_reason"]),
    ),
    ("ContainerStatus.state", S),
    (
        "ContainerStatus.lastState",
        E(&["crashing_container_restarts_with_backoff_and_crash_loop_reason"]),
    ),
    (
        "ContainerStatus.containerId",
        E(&["container_pod_serves_logs_and_is_adopted_after_restart"]),
    ),
    (
        "ContainerState.waiting",
        E(&["oom_and_missing_images_are_reported"]),
    ),
    (
        "ContainerState.running",
        E(&["restarted_agent_adopts_running_sandboxes_without_duplicates"]),
    ),
    (
        "ContainerState.terminated",
        E(&["run_to_completion_pods_succeed_or_fail_per_exit_code"]),
    ),
    (
        "ContainerStateWaiting.reason",
        E(&["oom_and_missing_images_are_reported"]),
    ),
    (
        "ContainerStateWaiting.message",
        E(&["oom_and_missing_images_are_reported"]),
    ),
    (
        "ContainerStateRunning.startedAt",
        E(&["restarted_agent_adopts_running_sandboxes_without_duplicates"]),
    ),
    (
        "ContainerStateTerminated.exitCode",
        E(&["run_to_completion_pods_succeed_or_fail_per_exit_code"]),
    ),
    (
        "ContainerStateTerminated.reason",
        E(&["oom_and_missing_images_are_reported"]),
    ),
    (
        "ContainerStateTerminated.message",
        Gap("written by the agent on an exit; no test reads it"),
    ),
    (
        "ContainerStateTerminated.startedAt",
        Gap("written by the agent on an exit; no test reads it"),
    ),
    (
        "ContainerStateTerminated.finishedAt",
        Gap("written by the agent on an exit; no test reads it"),
    ),
    // Workloads.
    (
        "ReplicaSetSpec.replicas",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "ReplicaSetSpec.selector",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "ReplicaSetSpec.template",
        E(&["new_pods_carry_template_labels_and_a_controller_ref"]),
    ),
    (
        "ReplicaSetSpec.minReadySeconds",
        E(&[
            "min_ready_seconds_delays_availability",
            "min_ready_seconds_gates_availability_and_the_rollout",
        ]),
    ),
    (
        "ReplicaSetStatus.replicas",
        E(&["replicaset_keeps_its_pods_and_gc_cleans_up"]),
    ),
    (
        "ReplicaSetStatus.readyReplicas",
        E(&["min_ready_seconds_gates_availability_and_the_rollout"]),
    ),
    (
        "ReplicaSetStatus.availableReplicas",
        E(&["min_ready_seconds_gates_availability_and_the_rollout"]),
    ),
    (
        "ReplicaSetStatus.observedGeneration",
        Gap("written by the ReplicaSet controller and read by the Deployment's; no test checks it"),
    ),
    (
        "ReplicaSetStatus.conditions",
        Gap("kept as found; no component writes ReplicaSet conditions"),
    ),
    (
        "DeploymentSpec.replicas",
        E(&["rolling_update_keeps_ready_pods_and_undo_restores"]),
    ),
    (
        "DeploymentSpec.selector",
        E(&["rolling_update_keeps_ready_pods_and_undo_restores"]),
    ),
    (
        "DeploymentSpec.template",
        E(&["rolling_update_keeps_ready_pods_and_undo_restores"]),
    ),
    ("DeploymentSpec.strategy", S),
    ("DeploymentStrategy.type", E(&["limits_never_both_zero"])),
    ("DeploymentStrategy.rollingUpdate", S),
    (
        "RollingUpdateDeployment.maxSurge",
        E(&[
            "limits_never_both_zero",
            "min_ready_seconds_gates_availability_and_the_rollout",
        ]),
    ),
    (
        "RollingUpdateDeployment.maxUnavailable",
        E(&[
            "limits_never_both_zero",
            "min_ready_seconds_gates_availability_and_the_rollout",
        ]),
    ),
    (
        "DeploymentSpec.revisionHistoryLimit",
        Gap("the Deployment controller deletes old ReplicaSets past it; no test checks it"),
    ),
    (
        "DeploymentSpec.minReadySeconds",
        E(&["min_ready_seconds_gates_availability_and_the_rollout"]),
    ),
    (
        "DeploymentSpec.paused",
        Gap("the Deployment controller holds a new template while paused; no test checks it"),
    ),
    (
        "DeploymentStatus.replicas",
        E(&["rolling_update_keeps_ready_pods_and_undo_restores"]),
    ),
    (
        "DeploymentStatus.updatedReplicas",
        E(&["rolling_update_keeps_ready_pods_and_undo_restores"]),
    ),
    (
        "DeploymentStatus.readyReplicas",
        E(&["min_ready_seconds_gates_availability_and_the_rollout"]),
    ),
    (
        "DeploymentStatus.availableReplicas",
        E(&[
            "rolling_update_keeps_ready_pods_and_undo_restores",
            "min_ready_seconds_gates_availability_and_the_rollout",
        ]),
    ),
    (
        "DeploymentStatus.unavailableReplicas",
        Gap("written by the Deployment controller; no test reads it"),
    ),
    (
        "DeploymentStatus.observedGeneration",
        E(&["deployments_roll_out_and_undo_through_the_cli"]),
    ),
    (
        "DeploymentStatus.conditions",
        Gap("Available/Progressing written by the Deployment controller; no test reads them"),
    ),
    // Job: the whole kind is refused until a controller runs it.
    ("Job.*", Refused),
    ("JobSpec.*", Refused),
    ("JobStatus.*", Refused),
    // Networking.
    ("ServiceSpec.selector", E(&["endpoints_follow_pod_readiness"])),
    ("ServiceSpec.ports", S),
    ("ServicePort.name", E(&["endpoints_follow_pod_readiness"])),
    ("ServicePort.port", E(&["endpoints_follow_pod_readiness"])),
    (
        "ServicePort.targetPort",
        E(&[
            "endpoints_follow_pod_readiness",
            "ready_and_not_ready_pods_are_split_and_others_ignored",
        ]),
    ),
    ("ServicePort.protocol", Refused),
    (
        "ServiceStatus.conditions",
        Gap("no component writes Service conditions"),
    ),
    ("Endpoints.subsets", S),
    ("EndpointSubset.addresses", E(&["endpoints_follow_pod_readiness"])),
    (
        "EndpointSubset.notReadyAddresses",
        E(&["ready_and_not_ready_pods_are_split_and_others_ignored"]),
    ),
    ("EndpointSubset.ports", E(&["endpoints_follow_pod_readiness"])),
    ("EndpointAddress.ip", E(&["endpoints_follow_pod_readiness"])),
    (
        "EndpointAddress.port",
        E(&["a_held_request_admits_a_pod_the_agent_finds_ready_without_a_rebuild"]),
    ),
    (
        "EndpointAddress.nodeName",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    ("EndpointAddress.targetRef", S),
    (
        "ObjectReference.kind",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    (
        "ObjectReference.name",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    (
        "ObjectReference.namespace",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    (
        "ObjectReference.uid",
        E(&["another_nodes_port_is_used_only_where_it_can_be_one"]),
    ),
    ("EndpointPort.name", E(&["endpoints_follow_pod_readiness"])),
    ("EndpointPort.port", E(&["endpoints_follow_pod_readiness"])),
    ("EndpointPort.protocol", Refused),
    (
        "RouteSpec.host",
        E(&[
            "exact_host_then_wildcard_then_any_and_longest_prefix",
            "a_host_belongs_to_the_namespace_that_claimed_it_first",
        ]),
    ),
    (
        "RouteSpec.pathPrefix",
        E(&["exact_host_then_wildcard_then_any_and_longest_prefix"]),
    ),
    ("RouteSpec.backends", S),
    ("RouteBackend.service", E(&["weights_split_traffic"])),
    (
        "RouteBackend.port",
        E(&["a_held_request_admits_a_pod_the_agent_finds_ready_without_a_rebuild"]),
    ),
    ("RouteBackend.weight", E(&["weights_split_traffic"])),
    (
        "RouteSpec.timeoutSeconds",
        Gap("the ingress bounds a request by it; no test checks it"),
    ),
    ("RouteSpec.tls", S),
    (
        "RouteTls.secretName",
        E(&["https_routes_pick_their_certificate_by_sni_and_follow_the_secret"]),
    ),
    (
        "RouteTls.issuer",
        E(&["https_routes_pick_their_certificate_by_sni_and_follow_the_secret"]),
    ),
    ("RouteStatus.url", Gap("no component writes a Route's status")),
    (
        "RouteStatus.observedGeneration",
        Gap("no component writes a Route's status"),
    ),
    (
        "RouteStatus.conditions",
        Gap("no component writes a Route's status"),
    ),
    // Function.
    (
        "FunctionSpec.template",
        E(&["function_expands_scales_within_bounds_and_is_collected"]),
    ),
    ("FunctionSpec.scaling", S),
    (
        "ScalingSpec.minScale",
        E(&["function_expands_scales_within_bounds_and_is_collected"]),
    ),
    (
        "ScalingSpec.maxScale",
        E(&["function_expands_scales_within_bounds_and_is_collected"]),
    ),
    (
        "ScalingSpec.targetConcurrency",
        E(&["function_scales_from_and_to_zero_through_the_ingress"]),
    ),
    (
        "ScalingSpec.scaleToZeroAfter",
        E(&["function_scales_from_and_to_zero_through_the_ingress"]),
    ),
    ("FunctionSpec.route", S),
    ("FunctionRoute.host", E(&["route_comes_from_the_spec_when_given"])),
    (
        "FunctionRoute.pathPrefix",
        E(&["route_comes_from_the_spec_when_given"]),
    ),
    ("FunctionStatus.metrics", S),
    (
        "FunctionMetrics.windowSeconds",
        E(&[
            "function_scales_from_and_to_zero_through_the_ingress",
            "a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing",
        ]),
    ),
    (
        "FunctionMetrics.requestsPerSecond",
        E(&[
            "function_scales_from_and_to_zero_through_the_ingress",
            "a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing",
        ]),
    ),
    (
        "FunctionMetrics.errorsPerSecond",
        E(&[
            "function_scales_from_and_to_zero_through_the_ingress",
            "a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing",
        ]),
    ),
    (
        "FunctionMetrics.p50Ms",
        E(&[
            "function_scales_from_and_to_zero_through_the_ingress",
            "a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing",
        ]),
    ),
    (
        "FunctionMetrics.p99Ms",
        E(&[
            "function_scales_from_and_to_zero_through_the_ingress",
            "a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing",
        ]),
    ),
    (
        "FunctionMetrics.coldStarts",
        E(&[
            "function_scales_from_and_to_zero_through_the_ingress",
            "a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing",
        ]),
    ),
    (
        "FunctionMetrics.inFlight",
        E(&[
            "function_scales_from_and_to_zero_through_the_ingress",
            "a_functions_minute_adds_up_its_nodes_and_restarts_count_nothing",
        ]),
    ),
    (
        "FunctionStatus.url",
        E(&["function_scales_from_and_to_zero_through_the_ingress"]),
    ),
    (
        "FunctionStatus.readyReplicas",
        E(&["function_expands_scales_within_bounds_and_is_collected"]),
    ),
    (
        "FunctionStatus.desiredReplicas",
        E(&["function_expands_scales_within_bounds_and_is_collected"]),
    ),
    (
        "FunctionStatus.lastRequestTime",
        Gap("written by the autoscaler from the ingress's counts; no test reads it"),
    ),
    (
        "FunctionStatus.observedGeneration",
        Gap("written by the Function controller; no test reads it"),
    ),
    (
        "FunctionStatus.conditions",
        Gap("written by the Function controller; no test reads them"),
    ),
    ("FunctionSpec.traffic", S),
    (
        "TrafficTarget.revisionName",
        E(&[
            "traffic_splits_between_revisions_and_promote_moves_it_all",
            "traffic_splits_name_revisions_of_the_function_and_sum_to_100",
        ]),
    ),
    (
        "TrafficTarget.latestRevision",
        E(&[
            "traffic_splits_between_revisions_and_promote_moves_it_all",
            "traffic_splits_name_revisions_of_the_function_and_sum_to_100",
        ]),
    ),
    (
        "TrafficTarget.percent",
        E(&[
            "traffic_splits_between_revisions_and_promote_moves_it_all",
            "traffic_splits_name_revisions_of_the_function_and_sum_to_100",
        ]),
    ),
    (
        "TrafficTarget.tag",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "FunctionStatus.latestCreatedRevision",
        E(&[
            "traffic_splits_between_revisions_and_promote_moves_it_all",
            "function_expands_scales_within_bounds_and_is_collected",
        ]),
    ),
    (
        "FunctionStatus.latestReadyRevision",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    ("FunctionStatus.traffic", S),
    (
        "TrafficStatus.revisionName",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "TrafficStatus.percent",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "TrafficStatus.latestRevision",
        E(&["a_revision_without_traffic_goes_to_zero_once_idle"]),
    ),
    (
        "TrafficStatus.tag",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "TrafficStatus.url",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    ("PodSpec.imagePullSecrets", S),
    (
        "LocalObjectReference.name",
        E(&["components_are_pulled_from_oci_registries"]),
    ),
    // Revision (made by the Function controller).
    (
        "RevisionSpec.template",
        E(&[
            "traffic_splits_between_revisions_and_promote_moves_it_all",
            "function_expands_scales_within_bounds_and_is_collected",
        ]),
    ),
    (
        "RevisionStatus.routed",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "RevisionStatus.minScale",
        E(&[
            "traffic_splits_between_revisions_and_promote_moves_it_all",
            "a_split_shares_max_scale_and_a_tag_alone_gets_one_pod",
        ]),
    ),
    (
        "RevisionStatus.maxScale",
        E(&[
            "traffic_splits_between_revisions_and_promote_moves_it_all",
            "a_split_shares_max_scale_and_a_tag_alone_gets_one_pod",
        ]),
    ),
    (
        "RevisionStatus.percent",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "RevisionStatus.readyReplicas",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "RevisionStatus.desiredReplicas",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "RevisionStatus.lastRequestTime",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    (
        "RevisionStatus.conditions",
        E(&["traffic_splits_between_revisions_and_promote_moves_it_all"]),
    ),
    // Events (their involvedObject is an ObjectReference, listed with Endpoints).
    ("Event.involvedObject", S),
    (
        "Event.reason",
        E(&[
            "failed_scheduling_back_off_and_cold_start_are_events_bounded_under_a_crash_loop",
            "repeats_are_one_event_with_a_count_written_at_most_once_per_interval",
        ]),
    ),
    (
        "Event.message",
        E(&[
            "failed_scheduling_back_off_and_cold_start_are_events_bounded_under_a_crash_loop",
            "repeats_are_one_event_with_a_count_written_at_most_once_per_interval",
        ]),
    ),
    (
        "Event.type",
        E(&["repeats_are_one_event_with_a_count_written_at_most_once_per_interval"]),
    ),
    (
        "Event.count",
        E(&[
            "failed_scheduling_back_off_and_cold_start_are_events_bounded_under_a_crash_loop",
            "repeats_are_one_event_with_a_count_written_at_most_once_per_interval",
        ]),
    ),
    (
        "Event.firstTimestamp",
        E(&["a_second_recorder_counts_on_the_same_event_and_a_deleted_one_is_made_again"]),
    ),
    (
        "Event.lastTimestamp",
        E(&["an_event_expires_a_ttl_after_it_was_last_seen"]),
    ),
    (
        "Event.reportingComponent",
        E(&[
            "failed_scheduling_back_off_and_cold_start_are_events_bounded_under_a_crash_loop",
            "repeats_are_one_event_with_a_count_written_at_most_once_per_interval",
        ]),
    ),
    (
        "Event.reportingInstance",
        E(&[
            "failed_scheduling_back_off_and_cold_start_are_events_bounded_under_a_crash_loop",
            "events_are_read_by_tenants_and_written_by_nodes_only_in_their_own_name",
        ]),
    ),
    // ConfigMap and Secret.
    (
        "ConfigMap.data",
        E(&[
            "config_map_volume_mounts_binary_data_as_bytes",
            "env_from_config_map_and_secret_reaches_the_guest_and_nothing_else",
        ]),
    ),
    (
        "ConfigMap.binaryData",
        E(&[
            "config_map_volume_mounts_binary_data_as_bytes",
            "binary_data_is_stored_returned_and_kept_apart_from_data",
        ]),
    ),
    (
        "ConfigMap.immutable",
        E(&["immutable_config_maps_and_secrets_keep_their_values"]),
    ),
    (
        "Secret.data",
        E(&[
            "secret_values_decode_data_and_take_string_data",
            "env_from_config_map_and_secret_reaches_the_guest_and_nothing_else",
        ]),
    ),
    (
        "Secret.stringData",
        E(&[
            "secret_values_decode_data_and_take_string_data",
            "secrets_are_encrypted_at_rest_and_string_data_is_write_only",
        ]),
    ),
    (
        "Secret.type",
        E(&["immutable_config_maps_and_secrets_keep_their_values"]),
    ),
    (
        "Secret.immutable",
        E(&["immutable_config_maps_and_secrets_keep_their_values"]),
    ),
    // ResourceQuota and LimitRange.
    (
        "ResourceQuotaSpec.hard",
        E(&["quotas_count_pods_and_their_requests_until_they_end"]),
    ),
    (
        "ResourceQuotaStatus.hard",
        Gap("no component writes a ResourceQuota's status"),
    ),
    (
        "ResourceQuotaStatus.used",
        Gap("no component writes a ResourceQuota's status"),
    ),
    ("LimitRangeSpec.limits", S),
    (
        "LimitRangeItem.type",
        E(&["limit_ranges_fill_defaults_and_bound_every_pod_and_template"]),
    ),
    (
        "LimitRangeItem.default",
        E(&["limit_ranges_fill_defaults_and_bound_every_pod_and_template"]),
    ),
    (
        "LimitRangeItem.defaultRequest",
        E(&["limit_ranges_fill_defaults_and_bound_every_pod_and_template"]),
    ),
    (
        "LimitRangeItem.max",
        E(&["limit_ranges_fill_defaults_and_bound_every_pod_and_template"]),
    ),
    (
        "LimitRangeItem.min",
        E(&["limit_ranges_fill_defaults_and_bound_every_pod_and_template"]),
    ),
    ("LimitRangeSpec.timeoutMs", S),
    ("LimitRangeSpec.terminationGracePeriodSeconds", S),
    (
        "Bounds.default",
        E(&["limit_ranges_fill_defaults_and_bound_every_pod_and_template"]),
    ),
    (
        "Bounds.max",
        E(&["limit_ranges_fill_defaults_and_bound_every_pod_and_template"]),
    ),
];

const WASM: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn container(extra: Value) -> Value {
    let mut c = json!({ "name": "main", "wasm": WASM, "ports": [{ "containerPort": 8080 }] });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn pod_spec(container_extra: Value, volumes: Value) -> Value {
    json!({ "containers": [container(container_extra)], "volumes": volumes })
}

fn manifest(kind: &str, spec: Value) -> Value {
    json!({ "apiVersion": "wisp.dev/v1", "kind": kind, "metadata": { "name": "x" }, "spec": spec })
}

/// A pod (`Pod`) or a pod template (the other kinds) around `spec`, and where its pod spec is.
fn with_pod_spec(kind: &str, spec: Value) -> (Value, &'static str) {
    let labels = json!({ "app": "x" });
    let template = json!({ "metadata": { "labels": labels }, "spec": spec });
    match kind {
        "Pod" => (manifest("Pod", spec), "spec"),
        "Function" => (
            manifest("Function", json!({ "template": template })),
            "spec.template.spec",
        ),
        other => (
            manifest(
                other,
                json!({ "selector": { "matchLabels": labels }, "template": template }),
            ),
            "spec.template.spec",
        ),
    }
}

/// A manifest (its plural and body) that sets a refused field, and the field path the
/// refusal must name.
fn refusal_sample(key: &str) -> (&'static str, Value, String) {
    let pod = |extra: Value, volumes: Value, path: &str| {
        let (m, at) = with_pod_spec("Pod", pod_spec(extra, volumes));
        ("pods", m, format!("{at}.{path}"))
    };
    match key {
        "Container.livenessProbe" => pod(
            json!({ "livenessProbe": { "httpGet": { "path": "/" } } }),
            json!([]),
            "containers[0].livenessProbe",
        ),
        "HttpGetAction.port" => pod(
            json!({ "readinessProbe": { "httpGet": { "path": "/", "port": 9090 } } }),
            json!([]),
            "containers[0].readinessProbe.httpGet.port",
        ),
        "ContainerPort.protocol" => pod(
            json!({ "ports": [{ "containerPort": 8080, "protocol": "UDP" }] }),
            json!([]),
            "containers[0].ports[0].protocol",
        ),
        "EmptyDirVolumeSource.sizeLimit" => pod(
            json!({}),
            json!([{ "name": "scratch", "emptyDir": { "sizeLimit": "1Gi" } }]),
            "volumes[0].emptyDir.sizeLimit",
        ),
        "ServicePort.protocol" => (
            "services",
            manifest(
                "Service",
                json!({ "selector": { "app": "x" }, "ports": [{ "port": 53, "protocol": "UDP" }] }),
            ),
            "spec.ports[0].protocol".into(),
        ),
        "EndpointPort.protocol" => (
            "endpoints",
            json!({ "apiVersion": "wisp.dev/v1", "kind": "Endpoints", "metadata": { "name": "x" },
                    "subsets": [{ "addresses": [{ "ip": "10.0.0.1" }], "ports": [{ "port": 53, "protocol": "UDP" }] }] }),
            "subsets[0].ports[0].protocol".into(),
        ),
        "NamespaceSpec.finalizers" => (
            "namespaces",
            json!({ "apiVersion": "wisp.dev/v1", "kind": "Namespace", "metadata": { "name": "fin" },
                    "spec": { "finalizers": ["example.com/wait"] } }),
            "spec.finalizers[0]".into(),
        ),
        "LeaseSpec.leaseTransitions" => (
            "leases",
            manifest("Lease", json!({ "holderIdentity": "me", "leaseTransitions": 2 })),
            "spec.leaseTransitions".into(),
        ),
        k if k.starts_with("Job") => (
            "jobs",
            manifest(
                "Job",
                json!({ "template": { "spec": { "containers": [container(json!({}))], "restartPolicy": "Never" } } }),
            ),
            "kind".into(),
        ),
        other => panic!("{other} is Refused in COVERAGE but has no refusal_sample"),
    }
}

// ---- The walk over the served OpenAPI document. ----

/// The named definition (if any) and the schema a property's value resolves to.
fn resolve<'a>(schemas: &'a Map<String, Value>, s: &'a Value) -> (Option<String>, &'a Value) {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or_default().to_owned();
        return match schemas.get(&name) {
            Some(def) => (Some(name), def),
            None => (Some(name), s),
        };
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = s.get(key).and_then(Value::as_array)
            && let Some(r) = list.iter().find(|x| x.get("$ref").is_some())
        {
            return resolve(schemas, r);
        }
    }
    if let Some(items) = s.get("items") {
        return resolve(schemas, items);
    }
    if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
        let (n, v) = resolve(schemas, ap);
        if v.get("properties").is_some() {
            return (n, v);
        }
    }
    (None, s)
}

/// Every property of every definition reachable from `s`, as `<Definition>.<property>`;
/// object-valued ones are recorded in `objects` too.
fn walk(
    schemas: &Map<String, Value>,
    owner: &str,
    s: &Value,
    seen: &mut BTreeSet<String>,
    out: &mut BTreeSet<String>,
    objects: &mut BTreeSet<String>,
) {
    let Some(props) = s.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (k, v) in props {
        let key = format!("{owner}.{k}");
        let (name, target) = resolve(schemas, v);
        out.insert(key.clone());
        if target.get("properties").is_some() {
            objects.insert(key.clone());
            match name {
                Some(n) => {
                    if seen.insert(n.clone()) {
                        walk(schemas, &n, target, seen, out, objects);
                    }
                }
                None => walk(schemas, &key, target, seen, out, objects),
            }
        }
    }
}

/// The table entry covering `field` (exact, then `Def.*`, then `*.prop` for a kind's root).
fn cover_of(table: &BTreeMap<&str, Cover>, field: &str, kinds: &BTreeSet<&str>) -> Option<Cover> {
    if let Some(c) = table.get(field) {
        return Some(*c);
    }
    let (def, prop) = field.split_once('.')?;
    if let Some(c) = table.get(format!("{def}.*").as_str()) {
        return Some(*c);
    }
    if kinds.contains(def) {
        return table.get(format!("*.{prop}").as_str()).copied();
    }
    None
}

/// Names of every `fn` in the repository's Rust sources (tests live beside the code and
/// in `tests/` directories).
fn test_fns() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut names = BTreeSet::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | "vendor" | ".git" | "node_modules") {
                    dirs.push(p);
                }
            } else if name.ends_with(".rs")
                && let Ok(text) = std::fs::read_to_string(&p)
            {
                for line in text.lines() {
                    let t = line.trim_start();
                    let t = t.strip_prefix("async ").unwrap_or(t);
                    if let Some(rest) = t.strip_prefix("fn ") {
                        let n: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        names.insert(n);
                    }
                }
            }
        }
    }
    names
}

struct Server {
    api: ApiServer,
    token: String,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = wisp_store::EmbeddedStore::open(dir.path(), Default::default()).expect("store");
    let api = ApiServer::new(
        Arc::new(store),
        Config::new(dir.path().join("blobs")),
        CancellationToken::new(),
    );
    let token = api.bootstrap().await.expect("bootstrap").expect("admin token");
    Server {
        api,
        token,
        _dir: dir,
    }
}

impl Server {
    /// One request through the server's handler, as the admin: (status, JSON body).
    async fn call(&self, method: http::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .expect("request");
        let resp = self.api.handle(req).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn create(&self, plural: &str, body: &Value) -> (u16, Value) {
        let path = if plural == "namespaces" {
            "/apis/wisp.dev/v1/namespaces".to_owned()
        } else {
            format!("/apis/wisp.dev/v1/namespaces/default/{plural}")
        };
        self.call(http::Method::POST, &path, Some(body)).await
    }

    async fn replace(&self, plural: &str, name: &str, body: &Value) -> (u16, Value) {
        let path = format!("/apis/wisp.dev/v1/namespaces/default/{plural}/{name}");
        self.call(http::Method::PUT, &path, Some(body)).await
    }
}

/// A 422 whose message says `not supported yet` and names `path`.
#[track_caller]
fn assert_not_supported((code, body): &(u16, Value), path: &str) {
    let message = body["message"].as_str().unwrap_or_default();
    assert_eq!(*code, 422, "{path}: expected 422, got {code}: {body}");
    assert!(
        message.contains(wisp_api::NOT_SUPPORTED),
        "{path}: the message must say it is not supported yet: {message}"
    );
    assert!(message.contains(path), "the message must name {path}: {message}");
}

/// Prints the known gaps (with `--no-capture`) so they stay in sight.
#[allow(clippy::print_stderr)]
#[tokio::test]
async fn every_field_is_exercised_or_refused() {
    let doc = wisp_apiserver::openapi::document();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let kinds: BTreeSet<&str> = wisp_api::KINDS.iter().map(|k| k.kind).collect();
    let mut fields = BTreeSet::new();
    let mut objects = BTreeSet::new();
    let mut seen: BTreeSet<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    for k in wisp_api::KINDS {
        walk(
            schemas,
            k.kind,
            &schemas[k.kind],
            &mut seen,
            &mut fields,
            &mut objects,
        );
    }
    assert!(fields.len() > 200, "the walk found only {} fields", fields.len());
    let table: BTreeMap<&str, Cover> = COVERAGE.iter().copied().collect();
    assert_eq!(table.len(), COVERAGE.len(), "a field is listed twice in COVERAGE");

    let fns = test_fns();
    let mut missing = Vec::new();
    let mut unknown_tests = Vec::new();
    let mut not_objects = Vec::new();
    let mut refused = BTreeSet::new();
    let mut gaps = Vec::new();
    let mut used = BTreeSet::new();
    for f in &fields {
        let Some(cover) = cover_of(&table, f, &kinds) else {
            missing.push(f.clone());
            continue;
        };
        // Which entry matched, so entries matching nothing are reported.
        let (def, prop) = f.split_once('.').unwrap_or_default();
        for k in [f.clone(), format!("{def}.*"), format!("*.{prop}")] {
            if table.contains_key(k.as_str()) {
                used.insert(k);
                break;
            }
        }
        match cover {
            Cover::Exercised(tests) => {
                assert!(!tests.is_empty(), "{f}: Exercised names no test");
                unknown_tests.extend(
                    tests
                        .iter()
                        .filter(|t| !fns.contains(**t))
                        .map(|t| format!("{f}: {t}")),
                );
            }
            Cover::Structural => {
                if !objects.contains(f) {
                    not_objects.push(f.clone());
                }
            }
            Cover::Refused => {
                // One sample per table entry (Job.* stands for the whole kind).
                let key = if table.contains_key(f.as_str()) {
                    f.clone()
                } else {
                    "Job".into()
                };
                refused.insert(key);
            }
            Cover::Gap(why) => gaps.push(format!("{f}: {why}")),
        }
    }
    let stale: Vec<&str> = COVERAGE
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !used.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "fields with neither a test nor a refusal (add them to COVERAGE): {missing:#?}"
    );
    assert!(
        unknown_tests.is_empty(),
        "COVERAGE names tests that do not exist: {unknown_tests:#?}"
    );
    assert!(
        not_objects.is_empty(),
        "Structural entries that are not objects: {not_objects:#?}"
    );
    assert!(
        stale.is_empty(),
        "COVERAGE entries that match no field: {stale:?}"
    );

    // Every refusal holds: a create that sets the field gets a 422 saying so.
    let server = server().await;
    for key in &refused {
        let (plural, body, path) = refusal_sample(key);
        let got = server.create(plural, &body).await;
        assert_not_supported(&got, &path);
    }
    eprintln!(
        "{} fields; {} refused; known gaps ({}):",
        fields.len(),
        refused.len(),
        gaps.len()
    );
    for g in &gaps {
        eprintln!("  {g}");
    }
}

#[tokio::test]
async fn job_create_is_refused_as_not_supported() {
    let server = server().await;
    let (plural, body, path) = refusal_sample("Job.spec");
    let got = server.create(plural, &body).await;
    assert_not_supported(&got, &path);
    let message = got.1["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("Job"), "{message}");
    let (code, _) = server
        .call(
            http::Method::GET,
            "/apis/wisp.dev/v1/namespaces/default/jobs/x",
            None,
        )
        .await;
    assert_eq!(code, 404, "nothing was stored");
}

#[tokio::test]
async fn liveness_probe_is_refused_in_pods_and_every_template() {
    let server = server().await;
    for (kind, plural) in [
        ("Pod", "pods"),
        ("Deployment", "deployments"),
        ("ReplicaSet", "replicasets"),
        ("Function", "functions"),
    ] {
        let spec = pod_spec(
            json!({ "livenessProbe": { "httpGet": { "path": "/healthz" } } }),
            json!([]),
        );
        let (body, at) = with_pod_spec(kind, spec);
        let got = server.create(plural, &body).await;
        assert_not_supported(&got, &format!("{at}.containers[0].livenessProbe"));
        // The same object without it is accepted: the refusal is about the field alone.
        let (ok, _) = with_pod_spec(kind, pod_spec(json!({}), json!([])));
        let (code, resp) = server.create(plural, &ok).await;
        assert_eq!(code, 201, "{kind} without a livenessProbe: {resp}");
    }
}

#[tokio::test]
async fn binary_data_is_stored_returned_and_kept_apart_from_data() {
    let server = server().await;
    let cm = json!({ "apiVersion": "wisp.dev/v1", "kind": "ConfigMap", "metadata": { "name": "bin" },
                     "data": { "a.txt": "text" }, "binaryData": { "b.bin": "AP8Q" } });
    let (code, created) = server.create("configmaps", &cm).await;
    assert_eq!(code, 201, "{created}");
    let (code, got) = server
        .call(
            http::Method::GET,
            "/apis/wisp.dev/v1/namespaces/default/configmaps/bin",
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        got["binaryData"]["b.bin"], "AP8Q",
        "binaryData is stored and returned: {got}"
    );
    assert_eq!(got["data"]["a.txt"], "text");
    let clash = json!({ "apiVersion": "wisp.dev/v1", "kind": "ConfigMap", "metadata": { "name": "clash" },
                        "data": { "k": "text" }, "binaryData": { "k": "AP8Q" } });
    let (code, body) = server.create("configmaps", &clash).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("binaryData.k"),
        "{body}"
    );
}

#[tokio::test]
async fn immutable_config_maps_and_secrets_keep_their_values() {
    let server = server().await;
    let cm = json!({ "apiVersion": "wisp.dev/v1", "kind": "ConfigMap", "metadata": { "name": "frozen" },
                     "data": { "k": "v1" }, "binaryData": { "b": "AP8Q" }, "immutable": true });
    let (code, created) = server.create("configmaps", &cm).await;
    assert_eq!(code, 201, "{created}");
    for (field, change) in [
        ("data", json!({ "data": { "k": "v2" } })),
        ("binaryData", json!({ "binaryData": { "b": "AAAA" } })),
        ("immutable", json!({ "immutable": false })),
    ] {
        let mut next = created.clone();
        if let (Some(n), Some(c)) = (next.as_object_mut(), change.as_object()) {
            n.extend(c.clone());
        }
        let (code, body) = server.replace("configmaps", "frozen", &next).await;
        let message = body["message"].as_str().unwrap_or_default();
        assert_eq!(code, 422, "changing {field} of an immutable ConfigMap: {body}");
        assert!(
            message.contains(field) && message.contains("immutable"),
            "the refusal names {field}: {message}"
        );
    }
    // Labels may still change.
    let mut relabel = created.clone();
    relabel["metadata"]["labels"] = json!({ "tier": "x" });
    let (code, body) = server.replace("configmaps", "frozen", &relabel).await;
    assert_eq!(code, 200, "metadata of an immutable ConfigMap may change: {body}");

    // A mutable one may become immutable, and then holds.
    let secret = json!({ "apiVersion": "wisp.dev/v1", "kind": "Secret", "metadata": { "name": "s" },
                         "data": { "k": "djE=" }, "type": "Opaque" });
    let (code, created) = server.create("secrets", &secret).await;
    assert_eq!(code, 201, "{created}");
    let mut freeze = created.clone();
    freeze["immutable"] = json!(true);
    let (code, frozen) = server.replace("secrets", "s", &freeze).await;
    assert_eq!(code, 200, "{frozen}");
    // (stringData is folded into data before the check: the refusal names data.)
    for (field, change) in [
        ("data", json!({ "data": { "k": "djI=" } })),
        ("data", json!({ "stringData": { "k": "v2" } })),
        ("type", json!({ "type": "example.com/other" })),
    ] {
        let mut next = frozen.clone();
        if let (Some(n), Some(c)) = (next.as_object_mut(), change.as_object()) {
            n.extend(c.clone());
        }
        let (code, body) = server.replace("secrets", "s", &next).await;
        let message = body["message"].as_str().unwrap_or_default();
        assert_eq!(code, 422, "changing {field} of an immutable Secret: {body}");
        assert!(message.contains(field), "the refusal names {field}: {message}");
    }
    let mut unfreeze = frozen.clone();
    unfreeze.as_object_mut().map(|o| o.remove("immutable"));
    let (code, body) = server.replace("secrets", "s", &unfreeze).await;
    assert_eq!(code, 422, "immutable cannot be unset: {body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains("immutable"),
        "{body}"
    );
}
