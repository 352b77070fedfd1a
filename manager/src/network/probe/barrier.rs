//! When a probe may leave: not before every peer that reached it has
//! finished its checks of it, or that peer's full-size and TLS checks would
//! find nobody serving.
//!
//! The protocol: a probe that has finished its checks of a peer asks that
//! peer "are you done with me?". The question itself tells the peer that
//! the asker is done with it. A probe leaves a peer once it knows both
//! halves: the peer is done with it (a yes, or the peer's own question), and
//! the peer knows it is done with the peer (the peer answered one of its
//! questions, or it answered the peer's with yes). Knowing only the first
//! is not enough: a probe that learnt from an early question that the peer
//! was done, and left without a word, would leave that peer asking an empty
//! port until the deadline.

use std::collections::BTreeSet;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Barrier {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Peers this probe has finished checking.
    finished: BTreeSet<String>,
    /// Peers that have finished checking this probe (they said so).
    done_with_me: BTreeSet<String>,
    /// Peers that know this probe has finished checking them.
    told: BTreeSet<String>,
    /// Peers this probe knows an address of (and so will check).
    known: BTreeSet<String>,
    /// No more peers will be looked for.
    discovery_over: bool,
}

impl Barrier {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking holder cannot leave the sets half-updated (each
        // update is one insert): keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn know(&self, node: &str) {
        self.state().known.insert(node.to_owned());
    }

    pub fn discovery_over(&self) {
        self.state().discovery_over = true;
    }

    pub fn finished(&self, node: &str) {
        self.state().finished.insert(node.to_owned());
    }

    pub fn peer_done_with_me(&self, node: &str) {
        self.state().done_with_me.insert(node.to_owned());
    }

    /// `node` knows we are done with it: it answered our question (asked
    /// only when we were), or we answered its question with yes.
    pub fn told(&self, node: &str) {
        self.state().told.insert(node.to_owned());
    }

    /// Both halves known: nothing more to wait for from `node`.
    pub fn may_leave(&self, node: &str) -> bool {
        let s = self.state();
        s.done_with_me.contains(node) && s.told.contains(node)
    }

    /// `node`'s question: it is done with us; our answer, which tells it
    /// about us when it is yes.
    pub fn answer(&self, node: &str) -> bool {
        self.peer_done_with_me(node);
        let done = self.done_with(node);
        if done {
            self.told(node);
        }
        done
    }

    /// The answer to `node`'s "are you done with me?": yes once its checks
    /// are over, and also for a node this probe will never check (it never
    /// learnt its address and has stopped looking).
    pub fn done_with(&self, node: &str) -> bool {
        let s = self.state();
        s.finished.contains(node) || (s.discovery_over && !s.known.contains(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_only_after_the_checks_or_for_a_node_never_to_be_checked() {
        let b = Barrier::default();
        b.know("node2");
        assert!(!b.done_with("node2"));
        assert!(!b.done_with("node3"), "still looking for node3's address");
        b.discovery_over();
        assert!(!b.done_with("node2"), "known and not yet checked");
        assert!(b.done_with("node3"), "never to be checked");
        b.finished("node2");
        assert!(b.done_with("node2"));
    }

    #[test]
    fn a_probe_leaves_a_peer_only_when_both_know_the_other_is_done() {
        // node2 asked before we finished it: it is done with us, but our
        // "no" told it nothing about us.
        let b = Barrier::default();
        b.know("node2");
        assert!(!b.answer("node2"));
        assert!(!b.may_leave("node2"), "node2 still waits for our yes");
        b.finished("node2");
        // Our question answered (whatever the answer): node2 knows.
        b.told("node2");
        assert!(b.may_leave("node2"));

        // node3 asks after we finished it: our yes tells it.
        b.know("node3");
        b.finished("node3");
        assert!(b.answer("node3"));
        assert!(b.may_leave("node3"));

        // A yes to our question without node4's own question: done with
        // us and told.
        b.know("node4");
        b.finished("node4");
        b.told("node4");
        assert!(!b.may_leave("node4"));
        b.peer_done_with_me("node4");
        assert!(b.may_leave("node4"));
    }
}
