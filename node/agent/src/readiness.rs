//! The agent↔ingress readiness board of one node ([`LocalReadiness`]): the agent publishes
//! which of its pods are ready, in process, and the node's ingress reads it.

/// What this node's agent knows of its pods' readiness, by pod uid, shared in process with
/// the node's ingress: a pod the agent has just found ready takes requests at once, without
/// waiting for its status write to reach the ingress through the API (one store write and
/// watch less on a cold start), and one it has found not ready (stopping, failing its probe,
/// exited) stops taking them at once too. The agent's word overrides the API's view of its
/// own pods; a pod it says nothing of is judged by the API. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalReadiness(std::sync::Arc<tokio::sync::watch::Sender<std::sync::Arc<ReadinessMap>>>);

/// Pod uid → ready.
pub type ReadinessMap = std::collections::HashMap<String, bool>;

impl Default for LocalReadiness {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::Sender::new(
            std::sync::Arc::default(),
        )))
    }
}

impl LocalReadiness {
    /// Records whether pod `uid` is ready; subscribers are woken only on a change, and the
    /// answer says whether there was one.
    pub fn set(&self, uid: &str, ready: bool) -> bool {
        self.update(uid, Some(ready))
    }

    /// Says nothing more of pod `uid` (it is gone).
    pub fn forget(&self, uid: &str) {
        self.update(uid, None);
    }

    fn update(&self, uid: &str, ready: Option<bool>) -> bool {
        self.0.send_if_modified(|map| {
            if map.get(uid).copied() == ready {
                return false;
            }
            let mut next = (**map).clone();
            match ready {
                Some(r) => next.insert(uid.to_owned(), r),
                None => next.remove(uid),
            };
            *map = std::sync::Arc::new(next);
            true
        })
    }

    /// The agent's word on pod `uid`, if it has one.
    pub fn state(&self, uid: &str) -> Option<bool> {
        self.0.borrow().get(uid).copied()
    }

    pub fn is_ready(&self, uid: &str) -> bool {
        self.state(uid) == Some(true)
    }

    /// The current map.
    pub fn snapshot(&self) -> std::sync::Arc<ReadinessMap> {
        self.0.borrow().clone()
    }

    /// Wakes on every change (see [`tokio::sync::watch::Receiver::changed`]).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<std::sync::Arc<ReadinessMap>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod local_readiness_tests {
    use super::LocalReadiness;

    #[tokio::test]
    async fn set_wakes_subscribers_only_on_change() {
        let board = LocalReadiness::default();
        let mut rx = board.subscribe();
        board.set("a", true);
        assert!(rx.has_changed().expect("sender alive"));
        rx.borrow_and_update();
        board.set("a", true);
        assert!(!rx.has_changed().expect("sender alive"), "no change, no wake-up");
        assert!(board.is_ready("a") && !board.is_ready("b"));
        assert_eq!((board.state("a"), board.state("b")), (Some(true), None));
        board.set("a", false);
        assert!(rx.has_changed().expect("sender alive"));
        rx.borrow_and_update();
        assert_eq!(board.state("a"), Some(false), "known not ready");
        board.forget("b");
        assert!(
            !rx.has_changed().expect("sender alive"),
            "forgetting the unknown changes nothing"
        );
        board.forget("a");
        assert!(rx.has_changed().expect("sender alive"));
        assert!(board.snapshot().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::LocalReadiness;

    #[test]
    fn readiness_set_says_whether_it_changed_and_wakes_only_then() {
        let r = LocalReadiness::default();
        let mut rx = r.subscribe();
        assert!(r.set("a", false), "unknown → not ready is a change");
        assert!(rx.has_changed().expect("open"));
        rx.mark_unchanged();
        assert!(!r.set("a", false), "the same word again is not");
        assert!(!rx.has_changed().expect("open"), "and wakes nobody");
        assert!(r.set("a", true));
        assert!(r.is_ready("a"));
        assert!(rx.has_changed().expect("open"));
        r.forget("a");
        assert_eq!(r.state("a"), None);
    }
}
