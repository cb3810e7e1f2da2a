//! Filter and score: pure functions over what a pod asks for ([`PodRequirements`]), what a
//! node offers ([`NodeInfo`]) and what is already placed on it ([`Allocation`]).
//!
//! Filters (first failure wins, so every rejected node has exactly one reason): node Ready,
//! not cordoned, every runtime the pod needs offered, `nodeSelector` ⊆ node labels, pod count,
//! cpu and memory requests fit what is allocatable minus what is allocated.
//!
//! Score (higher is better, ties go to the smaller node name): least allocated — the mean
//! free fraction of cpu and memory after placing the pod, 0..=100 — plus spread — 100 / (1 +
//! pods of the same controller (ReplicaSet) already on the node), so siblings spread out.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use wisp_api::{Node, Pod, Quantity};

/// cpu assumed for scoring a pod that requests none (as kube-scheduler does), in millis.
pub const DEFAULT_CPU_MILLIS: i64 = 100;
/// memory assumed for scoring a pod that requests none, in bytes (200 MiB).
pub const DEFAULT_MEMORY_BYTES: i64 = 200 << 20;

/// Runtime bit of `"wasm"` in [`PodRequirements::runtimes`] / [`NodeInfo::runtimes`].
pub const RUNTIME_WASM_BIT: u8 = 1;
/// Runtime bit of `"docker"`.
pub const RUNTIME_DOCKER_BIT: u8 = 2;

fn runtime_bit(name: &str) -> u8 {
    match name {
        wisp_api::RUNTIME_WASM => RUNTIME_WASM_BIT,
        wisp_api::RUNTIME_DOCKER => RUNTIME_DOCKER_BIT,
        _ => 0,
    }
}

fn runtime_name(bit: u8) -> &'static str {
    if bit == RUNTIME_WASM_BIT {
        wisp_api::RUNTIME_WASM
    } else {
        wisp_api::RUNTIME_DOCKER
    }
}

/// What scheduling needs to know about a pod, computed once per attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRequirements {
    /// Requested cpu in millis (requests, or limits when no request is set).
    pub cpu_millis: i64,
    /// Requested memory in bytes.
    pub memory_bytes: i64,
    /// Bits of the runtimes the containers need.
    pub runtimes: u8,
    pub node_selector: BTreeMap<String, String>,
    /// Hash of the controlling owner's key ([`owner_key`]), for spreading siblings: a
    /// number keeps the per-node comparison cheap (a collision only skews a score).
    pub owner: Option<u64>,
}

impl PodRequirements {
    pub fn of(pod: &Pod) -> Self {
        let requests = pod.spec.total_requests();
        let get = |name: &str, f: fn(&Quantity) -> i64| requests.get(name).map_or(0, f).max(0);
        Self {
            cpu_millis: get("cpu", Quantity::millis),
            memory_bytes: get("memory", Quantity::value),
            runtimes: pod
                .spec
                .required_runtimes()
                .into_iter()
                .fold(0, |bits, r| bits | runtime_bit(r)),
            node_selector: pod.spec.node_selector.clone(),
            owner: owner_key(pod).map(|k| {
                let mut h = std::hash::DefaultHasher::new();
                k.hash(&mut h);
                h.finish()
            }),
        }
    }

    /// cpu counted for scoring (a default when the pod requests none).
    pub fn nonzero_cpu(&self) -> i64 {
        if self.cpu_millis == 0 {
            DEFAULT_CPU_MILLIS
        } else {
            self.cpu_millis
        }
    }

    /// memory counted for scoring (a default when the pod requests none).
    pub fn nonzero_memory(&self) -> i64 {
        if self.memory_bytes == 0 {
            DEFAULT_MEMORY_BYTES
        } else {
            self.memory_bytes
        }
    }
}

/// The spread key of a pod: its controller owner (`namespace/uid`, or kind/name without uid).
pub fn owner_key(pod: &Pod) -> Option<String> {
    let r = pod.metadata.controller_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    Some(if r.uid.is_empty() {
        format!("{ns}/{}/{}", r.kind, r.name)
    } else {
        format!("{ns}/{}", r.uid)
    })
}

/// What scheduling needs to know about a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub ready: bool,
    pub unschedulable: bool,
    pub runtimes: u8,
    /// Runtimes the node has but reports down (`DockerReady=False`).
    pub runtimes_down: u8,
    /// Allocatable (or capacity) cpu in millis; 0 when the node reports none.
    pub cpu_millis: i64,
    /// Allocatable (or capacity) memory in bytes.
    pub memory_bytes: i64,
    /// Most pods the node takes, when it says.
    pub max_pods: Option<i64>,
}

impl NodeInfo {
    pub fn of(node: Arc<Node>) -> Self {
        let status = node.status.clone().unwrap_or_default();
        let amount = |name: &str, f: fn(&Quantity) -> i64| {
            status
                .allocatable
                .get(name)
                .or_else(|| status.capacity.get(name))
                .map(f)
        };
        Self {
            ready: node.is_ready(),
            unschedulable: node.spec.unschedulable,
            runtimes: status.runtimes.iter().fold(0, |bits, r| bits | runtime_bit(r)),
            runtimes_down: status
                .conditions
                .iter()
                .filter(|c| c.status == "False")
                .filter_map(|c| match c.type_.as_str() {
                    wisp_api::NODE_DOCKER_READY => Some(RUNTIME_DOCKER_BIT),
                    _ => None,
                })
                .fold(0, |bits, b| bits | b),
            cpu_millis: amount("cpu", Quantity::millis).unwrap_or(0).max(0),
            memory_bytes: amount("memory", Quantity::value).unwrap_or(0).max(0),
            max_pods: amount("pods", Quantity::value),
            node,
        }
    }

    pub fn name(&self) -> &str {
        &self.node.metadata.name
    }

    /// Whether anything a scheduling decision reads differs from `other`.
    pub fn same_for_scheduling(&self, other: &NodeInfo) -> bool {
        self.ready == other.ready
            && self.unschedulable == other.unschedulable
            && self.runtimes == other.runtimes
            && self.runtimes_down == other.runtimes_down
            && self.cpu_millis == other.cpu_millis
            && self.memory_bytes == other.memory_bytes
            && self.max_pods == other.max_pods
            && self.node.metadata.labels == other.node.metadata.labels
    }
}

/// What is placed on a node: sums over its non-terminal pods (bound or assumed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// Sums with the scoring defaults for pods that request nothing.
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    pub pods: i64,
    /// Pods per controller owner key (few per node: a vector beats a map).
    pub owners: Vec<(u64, u32)>,
}

impl Allocation {
    pub fn add(&mut self, req: &PodRequirements) {
        self.cpu_millis += req.cpu_millis;
        self.memory_bytes += req.memory_bytes;
        self.nonzero_cpu += req.nonzero_cpu();
        self.nonzero_memory += req.nonzero_memory();
        self.pods += 1;
        if let Some(o) = &req.owner {
            match self.owners.iter_mut().find(|(k, _)| k == o) {
                Some((_, n)) => *n += 1,
                None => self.owners.push((*o, 1)),
            }
        }
    }

    pub fn remove(&mut self, req: &PodRequirements) {
        self.cpu_millis -= req.cpu_millis;
        self.memory_bytes -= req.memory_bytes;
        self.nonzero_cpu -= req.nonzero_cpu();
        self.nonzero_memory -= req.nonzero_memory();
        self.pods -= 1;
        if let Some(o) = &req.owner
            && let Some(i) = self.owners.iter().position(|(k, _)| k == o)
        {
            self.owners[i].1 -= 1;
            if self.owners[i].1 == 0 {
                self.owners.swap_remove(i);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pods == 0
    }

    /// Pods of the owner `key` counted here.
    pub fn siblings(&self, key: u64) -> u32 {
        self.owners.iter().find(|(k, _)| *k == key).map_or(0, |(_, n)| *n)
    }
}

/// Why a node cannot take a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    NotReady,
    Unschedulable,
    /// The first runtime the pod needs and the node lacks.
    RuntimeNotSupported(&'static str),
    /// The node has the runtime, but reports it down (e.g. the Docker daemon).
    RuntimeNotReady(&'static str),
    NodeSelectorMismatch,
    TooManyPods,
    InsufficientCpu,
    InsufficientMemory,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotReady => f.write_str("node not ready"),
            Rejection::Unschedulable => f.write_str("node unschedulable"),
            Rejection::RuntimeNotSupported(r) => write!(f, "runtime {r} not supported"),
            Rejection::RuntimeNotReady(r) => write!(f, "runtime {r} not ready"),
            Rejection::NodeSelectorMismatch => f.write_str("node selector mismatch"),
            Rejection::TooManyPods => f.write_str("too many pods"),
            Rejection::InsufficientCpu => f.write_str("insufficient cpu"),
            Rejection::InsufficientMemory => f.write_str("insufficient memory"),
        }
    }
}

/// Whether `node` (with `alloc` already placed on it) can take a pod asking for `req`.
pub fn filter(req: &PodRequirements, node: &NodeInfo, alloc: &Allocation) -> Result<(), Rejection> {
    if !node.ready {
        return Err(Rejection::NotReady);
    }
    if node.unschedulable {
        return Err(Rejection::Unschedulable);
    }
    let missing = req.runtimes & !node.runtimes;
    if missing != 0 {
        return Err(Rejection::RuntimeNotSupported(runtime_name(
            missing & missing.wrapping_neg(),
        )));
    }
    let down = req.runtimes & node.runtimes_down;
    if down != 0 {
        return Err(Rejection::RuntimeNotReady(runtime_name(
            down & down.wrapping_neg(),
        )));
    }
    if !req.node_selector.is_empty() {
        let labels = &node.node.metadata.labels;
        if !req.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return Err(Rejection::NodeSelectorMismatch);
        }
    }
    if node.max_pods.is_some_and(|max| alloc.pods + 1 > max) {
        return Err(Rejection::TooManyPods);
    }
    if req.cpu_millis > 0 && alloc.cpu_millis + req.cpu_millis > node.cpu_millis {
        return Err(Rejection::InsufficientCpu);
    }
    if req.memory_bytes > 0 && alloc.memory_bytes + req.memory_bytes > node.memory_bytes {
        return Err(Rejection::InsufficientMemory);
    }
    Ok(())
}

/// Free share (0..=100) of `capacity` after `used`.
fn free_percent(capacity: i64, used: i64) -> i64 {
    if capacity <= 0 {
        return 0;
    }
    let free = capacity - used.clamp(0, capacity);
    match free.checked_mul(100) {
        Some(f) => f / capacity,
        None => i64::try_from(i128::from(free) * 100 / i128::from(capacity)).unwrap_or(0),
    }
}

/// The score of a node that passed [`filter`] (0..=200, higher is better).
pub fn score(req: &PodRequirements, node: &NodeInfo, alloc: &Allocation) -> i64 {
    let cpu = free_percent(node.cpu_millis, alloc.nonzero_cpu + req.nonzero_cpu());
    let memory = free_percent(node.memory_bytes, alloc.nonzero_memory + req.nonzero_memory());
    let least_allocated = (cpu + memory) / 2;
    let spread = match &req.owner {
        Some(o) => 100 / (1 + i64::from(alloc.siblings(*o))),
        None => 0,
    };
    least_allocated + spread
}

/// Whether `(score, name)` beats the current best (higher score, then smaller name).
pub fn better(score: i64, name: &str, best: Option<(i64, &str)>) -> bool {
    match best {
        None => true,
        Some((s, n)) => score > s || (score == s && name < n),
    }
}

/// How many feasible nodes to find before stopping the search, out of `nodes` (kube-scheduler's
/// adaptive `percentageOfNodesToScore`: all of a small cluster, about 10% of 5,000 nodes,
/// never fewer than `min_feasible`). `percentage` overrides the adaptive figure.
pub fn feasible_nodes_to_find(nodes: usize, percentage: Option<u32>, min_feasible: usize) -> usize {
    if nodes <= min_feasible {
        return nodes;
    }
    let pct = percentage.map_or_else(
        || 50usize.saturating_sub(nodes / 125).max(5),
        |p| usize::try_from(p.clamp(1, 100)).unwrap_or(100),
    );
    if pct >= 100 {
        return nodes;
    }
    (nodes * pct / 100).max(min_feasible)
}

/// The `PodScheduled=False` message: `0/3 nodes are available: 2 insufficient memory, 1
/// runtime docker not supported.`
pub fn unschedulable_message(total: usize, rejections: &BTreeMap<Rejection, usize>) -> String {
    if total == 0 {
        return "0/0 nodes are available: no nodes registered.".to_owned();
    }
    let mut counts: Vec<(&Rejection, &usize)> = rejections.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{Condition, Container, NodeStatus, ObjectMeta, OwnerReference, ResourceRequirements};

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).expect("quantity")
    }

    fn node(name: &str, cpu: &str, mem: &str, runtimes: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta::named(name),
            status: Some(NodeStatus {
                allocatable: [("cpu".to_owned(), q(cpu)), ("memory".to_owned(), q(mem))].into(),
                runtimes: runtimes.iter().map(|r| (*r).to_owned()).collect(),
                conditions: vec![Condition::new("Ready", true, "AgentReady", "")],
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn info(n: Node) -> NodeInfo {
        NodeInfo::of(Arc::new(n))
    }

    fn pod(cpu: &str, mem: &str, wasm: bool) -> Pod {
        let mut resources = ResourceRequirements::default();
        if !cpu.is_empty() {
            resources.requests.insert("cpu".into(), q(cpu));
        }
        if !mem.is_empty() {
            resources.requests.insert("memory".into(), q(mem));
        }
        let c = Container {
            name: "c".into(),
            wasm: wasm.then(|| "sha256:00".to_owned()),
            image: (!wasm).then(|| "nginx".to_owned()),
            resources,
            ..Container::default()
        };
        let mut p = Pod {
            metadata: ObjectMeta::namespaced("default", "p"),
            ..Pod::default()
        };
        p.spec.containers.push(c);
        p
    }

    #[test]
    fn requirements_of_a_pod() {
        let mut p = pod("250m", "64Mi", true);
        let mut docker = p.spec.containers[0].clone();
        docker.name = "d".into();
        docker.wasm = None;
        docker.image = Some("nginx".into());
        docker.resources.requests.clear();
        docker.resources.limits.insert("cpu".into(), q("1"));
        p.spec.containers.push(docker);
        p.metadata.owner_references.push(OwnerReference {
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: "u1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        });
        let r = PodRequirements::of(&p);
        assert_eq!(r.cpu_millis, 1250);
        assert_eq!(r.memory_bytes, 64 << 20);
        assert_eq!(r.runtimes, RUNTIME_WASM_BIT | RUNTIME_DOCKER_BIT);
        assert_eq!(owner_key(&p).as_deref(), Some("default/u1"));
        assert!(r.owner.is_some());
        assert_eq!(PodRequirements::default().nonzero_cpu(), DEFAULT_CPU_MILLIS);
    }

    #[test]
    fn filter_checks_in_order() {
        let req = PodRequirements::of(&pod("600m", "1Gi", true));
        let ok = info(node("a", "1", "2Gi", &["wasm"]));
        assert_eq!(filter(&req, &ok, &Allocation::default()), Ok(()));

        let mut not_ready = node("a", "1", "2Gi", &["wasm"]);
        if let Some(s) = not_ready.status.as_mut() {
            s.conditions[0].status = "False".into();
        }
        assert_eq!(
            filter(&req, &info(not_ready), &Allocation::default()),
            Err(Rejection::NotReady)
        );

        let mut cordoned = node("a", "1", "2Gi", &["wasm"]);
        cordoned.spec.unschedulable = true;
        assert_eq!(
            filter(&req, &info(cordoned), &Allocation::default()),
            Err(Rejection::Unschedulable)
        );

        let docker_req = PodRequirements::of(&pod("", "", false));
        assert_eq!(
            filter(&docker_req, &ok, &Allocation::default()),
            Err(Rejection::RuntimeNotSupported("docker"))
        );
        assert_eq!(
            Rejection::RuntimeNotSupported("docker").to_string(),
            "runtime docker not supported"
        );
        let both = info(node("b", "1", "2Gi", &["wasm", "docker"]));
        assert_eq!(filter(&docker_req, &both, &Allocation::default()), Ok(()));
        let mut docker_down = node("b", "1", "2Gi", &["wasm", "docker"]);
        if let Some(s) = docker_down.status.as_mut() {
            s.conditions.push(wisp_api::Condition {
                type_: wisp_api::NODE_DOCKER_READY.into(),
                status: "False".into(),
                ..wisp_api::Condition::default()
            });
        }
        let docker_down = info(docker_down);
        assert_eq!(
            filter(&docker_req, &docker_down, &Allocation::default()),
            Err(Rejection::RuntimeNotReady("docker"))
        );
        assert_eq!(
            filter(&req, &docker_down, &Allocation::default()),
            Ok(()),
            "wasm pods still fit"
        );
        assert!(!docker_down.same_for_scheduling(&both));

        let mut alloc = Allocation::default();
        alloc.add(&req);
        assert_eq!(filter(&req, &ok, &alloc), Err(Rejection::InsufficientCpu));
        let big_mem = PodRequirements::of(&pod("100m", "1536Mi", true));
        assert_eq!(filter(&big_mem, &ok, &alloc), Err(Rejection::InsufficientMemory));
        alloc.remove(&req);
        assert_eq!(alloc, Allocation::default());
        assert!(alloc.is_empty());
    }

    #[test]
    fn filter_node_selector_and_pod_count() {
        let mut p = pod("", "", true);
        p.spec.node_selector.insert("zone".into(), "a".into());
        let req = PodRequirements::of(&p);
        let mut n = node("a", "1", "1Gi", &["wasm"]);
        assert_eq!(
            filter(&req, &info(n.clone()), &Allocation::default()),
            Err(Rejection::NodeSelectorMismatch)
        );
        n.metadata.labels.insert("zone".into(), "b".into());
        assert_eq!(
            filter(&req, &info(n.clone()), &Allocation::default()),
            Err(Rejection::NodeSelectorMismatch)
        );
        n.metadata.labels.insert("zone".into(), "a".into());
        n.metadata.labels.insert("other".into(), "x".into());
        assert_eq!(filter(&req, &info(n.clone()), &Allocation::default()), Ok(()));

        if let Some(s) = n.status.as_mut() {
            s.allocatable.insert("pods".into(), q("1"));
        }
        let mut alloc = Allocation::default();
        alloc.add(&req);
        assert_eq!(filter(&req, &info(n), &alloc), Err(Rejection::TooManyPods));
    }

    #[test]
    fn capacity_is_used_without_allocatable_and_missing_means_zero() {
        let mut n = node("a", "1", "1Gi", &["wasm"]);
        if let Some(s) = n.status.as_mut() {
            s.capacity = std::mem::take(&mut s.allocatable);
            s.capacity.remove("memory");
        }
        let i = info(n);
        assert_eq!((i.cpu_millis, i.memory_bytes), (1000, 0));
        let req = PodRequirements::of(&pod("", "1Mi", true));
        assert_eq!(
            filter(&req, &i, &Allocation::default()),
            Err(Rejection::InsufficientMemory)
        );
        // A pod that requests nothing fits anywhere that is otherwise fine.
        let none = PodRequirements::of(&pod("", "", true));
        assert_eq!(filter(&none, &i, &Allocation::default()), Ok(()));
    }

    #[test]
    fn score_prefers_least_allocated_then_fewer_siblings() {
        let mut p = pod("500m", "512Mi", true);
        p.metadata.owner_references.push(OwnerReference {
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: "u1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        });
        let req = PodRequirements::of(&p);
        let n = info(node("a", "2", "2Gi", &["wasm"]));
        let empty = Allocation::default();
        // free after placing: cpu 75%, memory 75% → 75; no sibling → +100.
        assert_eq!(score(&req, &n, &empty), 175);

        let mut other = Allocation::default();
        let mut stranger = req.clone();
        stranger.owner = Some(2);
        other.add(&stranger);
        // cpu 50%, memory 50% → 50; no sibling → +100.
        assert_eq!(score(&req, &n, &other), 150);

        let mut sibling = Allocation::default();
        sibling.add(&req);
        // Same load as `other`, but one sibling halves the spread part.
        assert_eq!(score(&req, &n, &sibling), 100);

        // No requests: scored with the defaults, so empty pods still spread by load.
        let none = PodRequirements::of(&pod("", "", true));
        let mut loaded = Allocation::default();
        loaded.add(&none);
        assert!(score(&none, &n, &empty) > score(&none, &n, &loaded));
        // Over-committed scores bottom out at 0, not negative.
        let tiny = info(node("t", "10m", "1Mi", &["wasm"]));
        assert_eq!(score(&none, &tiny, &loaded), 0);
    }

    #[test]
    fn ties_go_to_the_smaller_name() {
        assert!(better(1, "b", None));
        assert!(better(2, "b", Some((1, "a"))));
        assert!(better(1, "a", Some((1, "b"))));
        assert!(!better(1, "c", Some((1, "b"))));
        assert!(!better(0, "a", Some((1, "b"))));
    }

    #[test]
    fn adaptive_number_of_nodes_to_find() {
        assert_eq!(feasible_nodes_to_find(3, None, 100), 3);
        assert_eq!(feasible_nodes_to_find(100, None, 100), 100);
        assert_eq!(feasible_nodes_to_find(5000, None, 100), 500);
        assert_eq!(feasible_nodes_to_find(500, None, 100), 230);
        assert_eq!(feasible_nodes_to_find(100_000, None, 100), 5000);
        assert_eq!(feasible_nodes_to_find(5000, Some(100), 100), 5000);
        assert_eq!(feasible_nodes_to_find(5000, Some(1), 100), 100);
    }

    #[test]
    fn message_counts_reasons() {
        let mut r = BTreeMap::new();
        r.insert(Rejection::RuntimeNotSupported("docker"), 1);
        r.insert(Rejection::InsufficientMemory, 2);
        assert_eq!(
            unschedulable_message(3, &r),
            "0/3 nodes are available: 2 insufficient memory, 1 runtime docker not supported."
        );
        assert_eq!(
            unschedulable_message(0, &BTreeMap::new()),
            "0/0 nodes are available: no nodes registered."
        );
    }
}
