//! The scheduler's own view of the cluster, fed by the Node and Pod watches and by its own
//! binds: every node with what is allocated on it, every pod with the node it is counted on.
//!
//! A pod is counted on `spec.nodeName`, or on the node it is being bound to (assumed) while
//! the bind is in flight; terminal pods are counted nowhere. Events older than what the cache
//! holds (a watch event that trails the answer of our own bind) are ignored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use wisp_api::{Node, Pod, Resource};
use wisp_runtime::ObjectRef;

use crate::plugins::{self, Allocation, NodeInfo, PodRequirements, Rejection};

struct NodeSlot {
    name: String,
    /// `None`: the node is not registered (a tombstone kept while pods are counted on it).
    info: Option<NodeInfo>,
    alloc: Allocation,
}

struct PodEntry {
    pod: Arc<Pod>,
    rv: u64,
    /// The node this pod is counted on and what it asks for.
    account: Option<(String, PodRequirements)>,
}

/// What applying a pod changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodChange {
    /// Resources were released somewhere (deleted, terminal, moved).
    pub freed: bool,
    /// The pod waits for a node.
    pub pending: bool,
    /// The scheduling-relevant part of the spec changed (or the pod is new).
    pub spec_changed: bool,
}

/// The outcome of one scheduling attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Bind(String),
    /// Fits nowhere: the `PodScheduled=False` message.
    Unschedulable(String),
}

#[derive(Default)]
pub struct Cache {
    nodes: Vec<NodeSlot>,
    index: HashMap<String, usize>,
    registered: usize,
    pods: HashMap<ObjectRef, PodEntry>,
    assumed: HashMap<ObjectRef, String>,
    /// Where the next search starts, so successive pods look at different nodes first.
    next_start: usize,
}

fn rv_of<T: Resource>(obj: &T) -> u64 {
    obj.metadata()
        .resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn unbound(pod: &Pod) -> bool {
    pod.spec.node_name.as_deref().is_none_or(str::is_empty)
}

fn same_scheduling_spec(a: &Pod, b: &Pod) -> bool {
    a.spec.containers == b.spec.containers
        && a.spec.node_selector == b.spec.node_selector
        && a.metadata.owner_references == b.metadata.owner_references
}

impl Cache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registered nodes.
    pub fn node_count(&self) -> usize {
        self.registered
    }

    pub fn pod(&self, key: &ObjectRef) -> Option<Arc<Pod>> {
        self.pods.get(key).map(|e| Arc::clone(&e.pod))
    }

    /// What is counted on `node`, if anything is.
    pub fn allocation(&self, node: &str) -> Option<&Allocation> {
        self.index.get(node).map(|&i| &self.nodes[i].alloc)
    }

    /// The pod if it waits for a node: unbound, not terminal, not deleted, no bind in flight.
    pub fn pending(&self, key: &ObjectRef) -> Option<Arc<Pod>> {
        let e = self.pods.get(key)?;
        self.is_pending(key, &e.pod).then(|| Arc::clone(&e.pod))
    }

    fn is_pending(&self, key: &ObjectRef, pod: &Pod) -> bool {
        unbound(pod)
            && !pod.phase().is_terminal()
            && pod.metadata.deletion_timestamp.is_none()
            && !self.assumed.contains_key(key)
    }

    /// Every pending pod.
    pub fn pending_keys(&self) -> Vec<ObjectRef> {
        self.pods
            .iter()
            .filter(|(k, e)| self.is_pending(k, &e.pod))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn slot(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.nodes.push(NodeSlot {
            name: name.to_owned(),
            info: None,
            alloc: Allocation::default(),
        });
        let i = self.nodes.len() - 1;
        self.index.insert(name.to_owned(), i);
        i
    }

    /// Drops the slot of `name` when it is neither registered nor holds pods.
    fn gc_slot(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].info.is_some() || !self.nodes[i].alloc.is_empty() {
            return;
        }
        self.index.remove(name);
        self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    /// Re-counts `key` where it belongs now. Returns whether resources were released.
    fn reaccount(&mut self, key: &ObjectRef) -> bool {
        let Some(entry) = self.pods.get(key) else {
            return false;
        };
        let pod = &entry.pod;
        let node = if pod.phase().is_terminal() {
            None
        } else if unbound(pod) {
            self.assumed.get(key).cloned()
        } else {
            pod.spec.node_name.clone()
        };
        let new = node.map(|n| (n, PodRequirements::of(pod)));
        let old = self.pods.get_mut(key).and_then(|e| e.account.take());
        let freed = old.is_some() && old != new;
        if let Some((n, req)) = &old {
            let i = self.slot(n);
            self.nodes[i].alloc.remove(req);
        }
        if let Some((n, req)) = &new {
            let i = self.slot(n);
            self.nodes[i].alloc.add(req);
        }
        if let Some((n, _)) = &old
            && new.as_ref().is_none_or(|(m, _)| m != n)
        {
            self.gc_slot(n);
        }
        if let Some(e) = self.pods.get_mut(key) {
            e.account = new;
        }
        freed
    }

    /// Applies a pod from a watch or from a write's answer. Older versions than the cached
    /// one are ignored unless `force` (a full re-list).
    pub fn apply_pod(&mut self, pod: Pod, force: bool) -> PodChange {
        let key = ObjectRef::from_obj(&pod);
        let rv = rv_of(&pod);
        let spec_changed = match self.pods.get(&key) {
            Some(e) if !force && rv != 0 && rv < e.rv => return PodChange::default(),
            Some(e) => !same_scheduling_spec(&e.pod, &pod),
            None => true,
        };
        let pod = Arc::new(pod);
        let account = self.pods.get_mut(&key).and_then(|e| e.account.take());
        self.pods.insert(
            key.clone(),
            PodEntry {
                pod: Arc::clone(&pod),
                rv,
                account,
            },
        );
        let freed = self.reaccount(&key);
        PodChange {
            freed,
            pending: self.is_pending(&key, &pod),
            spec_changed,
        }
    }

    /// Forgets a deleted pod. Returns whether resources were released.
    pub fn delete_pod(&mut self, key: &ObjectRef) -> bool {
        self.assumed.remove(key);
        let Some(mut entry) = self.pods.remove(key) else {
            return false;
        };
        let Some((n, req)) = entry.account.take() else {
            return false;
        };
        let i = self.slot(&n);
        self.nodes[i].alloc.remove(&req);
        self.gc_slot(&n);
        true
    }

    /// Replaces every pod with a full list (binds in flight stay assumed).
    pub fn restart_pods(&mut self, pods: Vec<Pod>) {
        let keep: HashSet<ObjectRef> = pods.iter().map(ObjectRef::from_obj).collect();
        let gone: Vec<ObjectRef> = self.pods.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for k in &gone {
            self.delete_pod(k);
        }
        for p in pods {
            self.apply_pod(p, true);
        }
    }

    /// Counts `key` on `node` until [`Cache::forget`]; it is no longer pending meanwhile.
    pub fn assume(&mut self, key: &ObjectRef, node: &str) {
        self.assumed.insert(key.clone(), node.to_owned());
        self.reaccount(key);
    }

    /// Ends an assumption (the bind finished or failed): the pod is counted where its cached
    /// state says. Returns whether the pod is pending again.
    pub fn forget(&mut self, key: &ObjectRef) -> bool {
        self.assumed.remove(key);
        self.reaccount(key);
        self.pending(key).is_some()
    }

    /// Applies a node. Returns whether anything scheduling reads changed.
    pub fn apply_node(&mut self, node: Node) -> bool {
        let name = node.metadata.name.clone();
        let info = NodeInfo::of(Arc::new(node));
        let i = self.slot(&name);
        let slot = &mut self.nodes[i];
        let changed = slot
            .info
            .as_ref()
            .is_none_or(|old| !old.same_for_scheduling(&info));
        if slot.info.is_none() {
            self.registered += 1;
        }
        slot.info = Some(info);
        changed
    }

    pub fn delete_node(&mut self, name: &str) {
        if let Some(&i) = self.index.get(name)
            && self.nodes[i].info.take().is_some()
        {
            self.registered -= 1;
            self.gc_slot(name);
        }
    }

    /// Replaces every node with a full list. Returns whether anything changed.
    pub fn restart_nodes(&mut self, nodes: Vec<Node>) -> bool {
        let keep: HashSet<String> = nodes.iter().map(|n| n.metadata.name.clone()).collect();
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|s| s.info.is_some() && !keep.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        let mut changed = !gone.is_empty();
        for n in &gone {
            self.delete_node(n);
        }
        for n in nodes {
            changed |= self.apply_node(n);
        }
        changed
    }

    /// Filters and scores nodes for `req`: stops after `to_find` feasible nodes (searching
    /// from where the last search stopped), picks the best score, ties to the smaller name.
    pub fn schedule(
        &mut self,
        req: &PodRequirements,
        percentage: Option<u32>,
        min_feasible: usize,
    ) -> Decision {
        let total = self.nodes.len();
        let to_find = plugins::feasible_nodes_to_find(self.registered, percentage, min_feasible);
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        let mut best: Option<(i64, usize)> = None;
        let mut found = 0;
        let mut examined = 0;
        let start = if total == 0 { 0 } else { self.next_start % total };
        for step in 0..total {
            if found >= to_find {
                break;
            }
            examined = step + 1;
            let i = (start + step) % total;
            let slot = &self.nodes[i];
            let Some(info) = &slot.info else {
                continue;
            };
            match plugins::filter(req, info, &slot.alloc) {
                Ok(()) => {
                    found += 1;
                    let s = plugins::score(req, info, &slot.alloc);
                    let current = best.map(|(bs, bi)| (bs, self.nodes[bi].name.as_str()));
                    if plugins::better(s, &slot.name, current) {
                        best = Some((s, i));
                    }
                }
                Err(r) => *rejections.entry(r).or_default() += 1,
            }
        }
        if total > 0 {
            self.next_start = (start + examined) % total;
        }
        match best {
            Some((_, i)) => Decision::Bind(self.nodes[i].name.clone()),
            None => Decision::Unschedulable(plugins::unschedulable_message(self.registered, &rejections)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_api::{Condition, Container, NodeStatus, ObjectMeta, PodPhase, PodStatus, Quantity};

    fn node(name: &str, mem: &str) -> Node {
        Node {
            metadata: ObjectMeta::named(name),
            status: Some(NodeStatus {
                allocatable: [
                    ("cpu".to_owned(), Quantity::from_millis(4000)),
                    ("memory".to_owned(), Quantity::parse(mem).expect("q")),
                ]
                .into(),
                runtimes: vec!["wasm".into()],
                conditions: vec![Condition::new("Ready", true, "AgentReady", "")],
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn pod(name: &str, rv: u64, node: Option<&str>, mem: &str) -> Pod {
        let mut c = Container {
            name: "c".into(),
            wasm: Some("sha256:00".into()),
            ..Container::default()
        };
        c.resources
            .requests
            .insert("memory".into(), Quantity::parse(mem).expect("q"));
        let mut p = Pod {
            metadata: ObjectMeta::namespaced("default", name),
            ..Pod::default()
        };
        p.metadata.resource_version = Some(rv.to_string());
        p.spec.containers.push(c);
        p.spec.node_name = node.map(str::to_owned);
        p
    }

    fn key(name: &str) -> ObjectRef {
        ObjectRef::new(name).within("default")
    }

    #[test]
    fn counts_bound_and_assumed_pods_and_ignores_stale_events() {
        let mut c = Cache::new();
        assert!(c.apply_node(node("n1", "1Gi")));
        assert!(!c.apply_node(node("n1", "1Gi")));
        let ch = c.apply_pod(pod("a", 10, None, "256Mi"), false);
        assert!(ch.pending && ch.spec_changed && !ch.freed);
        assert_eq!(c.pending_keys(), vec![key("a")]);

        c.assume(&key("a"), "n1");
        assert!(c.pending(&key("a")).is_none());
        assert_eq!(c.allocation("n1").map(|a| a.memory_bytes), Some(256 << 20));

        // The bind's answer arrives, then the watch event of the same write, then a stale one.
        c.apply_pod(pod("a", 11, Some("n1"), "256Mi"), false);
        assert!(!c.forget(&key("a")));
        c.apply_pod(pod("a", 11, Some("n1"), "256Mi"), false);
        let stale = c.apply_pod(pod("a", 10, None, "256Mi"), false);
        assert_eq!(stale, PodChange::default());
        assert_eq!(c.allocation("n1").map(|a| a.pods), Some(1));
        assert!(c.pending(&key("a")).is_none());

        // Terminal pods release their resources.
        let mut done = pod("a", 12, Some("n1"), "256Mi");
        done.status = Some(PodStatus {
            phase: PodPhase::Succeeded,
            ..PodStatus::default()
        });
        assert!(c.apply_pod(done, false).freed);
        assert_eq!(c.allocation("n1").map(|a| a.pods), Some(0));
    }

    #[test]
    fn failed_bind_rolls_back() {
        let mut c = Cache::new();
        c.apply_node(node("n1", "1Gi"));
        c.apply_pod(pod("a", 5, None, "1Gi"), false);
        c.assume(&key("a"), "n1");
        c.apply_pod(pod("b", 6, None, "1Gi"), false);
        let req = PodRequirements::of(&pod("b", 6, None, "1Gi"));
        assert_eq!(
            c.schedule(&req, None, 100),
            Decision::Unschedulable("0/1 nodes are available: 1 insufficient memory.".into())
        );
        assert!(c.forget(&key("a")));
        assert_eq!(c.schedule(&req, None, 100), Decision::Bind("n1".into()));
    }

    #[test]
    fn pods_on_unknown_nodes_are_counted_when_the_node_appears() {
        let mut c = Cache::new();
        c.apply_pod(pod("a", 5, Some("late"), "768Mi"), false);
        assert_eq!(c.node_count(), 0);
        c.apply_node(node("late", "1Gi"));
        let req = PodRequirements::of(&pod("b", 6, None, "512Mi"));
        assert_eq!(
            c.schedule(&req, None, 100),
            Decision::Unschedulable("0/1 nodes are available: 1 insufficient memory.".into())
        );
        assert!(c.delete_pod(&key("a")));
        assert_eq!(c.schedule(&req, None, 100), Decision::Bind("late".into()));
        c.delete_node("late");
        assert!(c.allocation("late").is_none());
        assert_eq!(c.node_count(), 0);
    }

    #[test]
    fn restart_replaces_everything() {
        let mut c = Cache::new();
        c.apply_node(node("n1", "1Gi"));
        c.apply_node(node("n2", "1Gi"));
        c.apply_pod(pod("a", 5, Some("n1"), "100Mi"), false);
        c.apply_pod(pod("b", 6, None, "100Mi"), false);
        assert!(c.restart_nodes(vec![node("n2", "1Gi")]));
        c.restart_pods(vec![pod("b", 7, Some("n2"), "100Mi")]);
        assert_eq!(c.node_count(), 1);
        assert!(c.allocation("n1").is_none());
        assert_eq!(c.allocation("n2").map(|a| a.pods), Some(1));
        assert!(c.pending_keys().is_empty());
        assert!(c.pod(&key("a")).is_none());
    }

    #[test]
    fn picks_least_allocated_with_name_tie_break() {
        let mut c = Cache::new();
        for n in ["n3", "n1", "n2"] {
            c.apply_node(node(n, "1Gi"));
        }
        let req = PodRequirements::of(&pod("x", 1, None, "100Mi"));
        assert_eq!(c.schedule(&req, None, 100), Decision::Bind("n1".into()));
        c.apply_pod(pod("a", 2, Some("n1"), "100Mi"), false);
        assert_eq!(c.schedule(&req, None, 100), Decision::Bind("n2".into()));
    }
}
