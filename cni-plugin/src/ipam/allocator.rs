//! Pure allocation decisions: which offset a container gets, which entries a
//! DEL or GC removes. No I/O; the store loads a `Pool`, calls these, saves it.
//!
//! whereabouts scans linearly from the range start for the lowest free
//! address, so a mostly-full /64 never finishes. Here used offsets and
//! excludes are kept as merged intervals in a `BTreeMap`: the lowest free
//! offset is one ordered lookup, whatever the range size.

use super::config::IpRange;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Disjoint, non-adjacent inclusive intervals `start -> end` of `u128`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    map: BTreeMap<u128, u128>,
}

impl IntervalSet {
    /// Add `[start, end]`, merging with overlapping or adjacent intervals so
    /// that a run of consecutive allocations stays one entry.
    pub fn insert(&mut self, start: u128, end: u128) {
        debug_assert!(start <= end);
        let (mut lo, mut hi) = (start, end);
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start.saturating_sub(1) {
                if e >= end {
                    return; // Already covered.
                }
                lo = s;
                hi = hi.max(e);
                self.map.remove(&s);
            }
        }
        // Intervals starting inside or right after [lo, hi].
        loop {
            let next = match hi.checked_add(1) {
                Some(limit) => self.map.range(lo..=limit).next(),
                None => self.map.range(lo..).next(),
            };
            let Some((&s, &e)) = next else { break };
            self.map.remove(&s);
            hi = hi.max(e);
        }
        self.map.insert(lo, hi);
    }

    pub fn contains(&self, x: u128) -> bool {
        self.map
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &e)| e >= x)
    }

    /// The lowest value `>= x` not covered; `None` if everything up to
    /// `u128::MAX` is covered. Intervals are merged, so one lookup suffices.
    pub fn first_gap_from(&self, x: u128) -> Option<u128> {
        match self.map.range(..=x).next_back() {
            Some((_, &e)) if e >= x => e.checked_add(1),
            _ => Some(x),
        }
    }

    /// Number of stored intervals (not values).
    pub fn intervals(&self) -> usize {
        self.map.len()
    }
}

/// Lowest-free-offset allocator over one range.
#[derive(Debug, Clone)]
pub struct Allocator {
    first: u128,
    last: u128,
    blocked: IntervalSet,
}

impl Allocator {
    /// An allocator with the range's excludes (and gateway) blocked.
    pub fn new(range: &IpRange) -> Self {
        let mut blocked = IntervalSet::default();
        for &(s, e) in &range.excluded {
            blocked.insert(s, e);
        }
        Allocator {
            first: range.first,
            last: range.last,
            blocked,
        }
    }

    /// An allocator with the range's excludes and the ascending `used`
    /// offsets blocked. Consecutive offsets are folded into one interval in
    /// a single pass, so a pool of n allocations costs O(n), not O(n log n).
    pub fn with_used(range: &IpRange, used: impl IntoIterator<Item = u128>) -> Self {
        let mut a = Allocator::new(range);
        let mut run: Option<(u128, u128)> = None;
        for o in used {
            run = match run {
                Some((s, e)) if e.checked_add(1) == Some(o) => Some((s, o)),
                Some((s, e)) => {
                    a.blocked.insert(s, e);
                    Some((o, o))
                }
                None => Some((o, o)),
            };
        }
        if let Some((s, e)) = run {
            a.blocked.insert(s, e);
        }
        a
    }

    pub fn mark_used(&mut self, offset: u128) {
        self.blocked.insert(offset, offset);
    }

    /// The lowest usable offset not excluded and not used.
    pub fn lowest_free(&self) -> Option<u128> {
        self.blocked
            .first_gap_from(self.first)
            .filter(|&x| x <= self.last)
    }

    /// Take the lowest free offset.
    pub fn allocate(&mut self) -> Option<u128> {
        let x = self.lowest_free()?;
        self.mark_used(x);
        Some(x)
    }
}

/// One allocation, in whereabouts' IPPool shape (`spec.allocations[offset]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The container ID of the attachment.
    pub id: String,
    /// Optional in whereabouts' CRD schema, so pools it wrote may lack it.
    #[serde(default)]
    pub ifname: String,
    /// `<namespace>/<pod>`, empty when the runtime gave no pod.
    #[serde(default)]
    pub podref: String,
}

/// Who asks for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
    /// `<namespace>/<pod>` from CNI_ARGS, when given.
    pub podref: Option<String>,
}

/// The allocations of one pool (one subnet of one network_name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    /// Offset from the subnet's network address -> owner.
    pub allocations: BTreeMap<u128, Allocation>,
    /// Set by every change, so unchanged pools are not rewritten.
    pub dirty: bool,
}

/// The outcome of `assign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub offset: u128,
    /// True when the owner already held this offset (a repeated ADD).
    pub existing: bool,
}

impl Pool {
    /// The offset held by (container ID, ifname).
    pub fn find(&self, container_id: &str, ifname: &str) -> Option<u128> {
        self.allocations
            .iter()
            .find(|(_, a)| a.id == container_id && a.ifname == ifname)
            .map(|(&o, _)| o)
    }

    /// The offset `owner` already holds: same pod and ifname (a new sandbox
    /// of the same pod), else same container and ifname.
    pub fn held_by(&self, owner: &Owner) -> Option<u128> {
        owner
            .podref
            .as_deref()
            .and_then(|pod| {
                self.allocations
                    .iter()
                    .find(|(_, a)| a.podref == pod && a.ifname == owner.ifname)
                    .map(|(&o, _)| o)
            })
            .or_else(|| self.find(&owner.container_id, &owner.ifname))
    }

    /// Give `owner` an offset in `range`: the one it already holds (same pod
    /// and ifname, or same container and ifname), else the lowest free one.
    /// `None` means the range is exhausted; the pool is then unchanged.
    pub fn assign(&mut self, range: &IpRange, owner: &Owner) -> Option<Assigned> {
        self.assign_avoiding(range, owner, &BTreeSet::new())
    }

    /// `assign`, but a new offset is never one of `avoid` (addresses another
    /// store has claimed, e.g. a cluster-wide reservation held by someone else).
    pub fn assign_avoiding(
        &mut self,
        range: &IpRange,
        owner: &Owner,
        avoid: &BTreeSet<u128>,
    ) -> Option<Assigned> {
        if let Some(offset) = self.held_by(owner) {
            let a = self
                .allocations
                .get_mut(&offset)
                .expect("offset just found");
            if a.id != owner.container_id {
                // A recreated sandbox of the same pod keeps its address; the
                // old sandbox's DEL then finds nothing to free.
                a.id = owner.container_id.clone();
                self.dirty = true;
            }
            return Some(Assigned {
                offset,
                existing: true,
            });
        }
        let offset = self.lowest_free_avoiding(range, avoid)?;
        self.allocations.insert(
            offset,
            Allocation {
                id: owner.container_id.clone(),
                ifname: owner.ifname.clone(),
                podref: owner.podref.clone().unwrap_or_default(),
            },
        );
        self.dirty = true;
        Some(Assigned {
            offset,
            existing: false,
        })
    }

    /// The `n`-th (0 = lowest) offset of `range` neither allocated here nor
    /// in `avoid`; `None` when there are not that many free.
    pub fn nth_free_avoiding(
        &self,
        range: &IpRange,
        avoid: &BTreeSet<u128>,
        n: usize,
    ) -> Option<u128> {
        let mut a = Allocator::with_used(range, self.allocations.keys().copied());
        for &o in avoid {
            a.mark_used(o);
        }
        for _ in 0..n {
            a.allocate()?;
        }
        a.lowest_free()
    }

    /// The lowest offset of `range` neither allocated here nor in `avoid`.
    pub fn lowest_free_avoiding(&self, range: &IpRange, avoid: &BTreeSet<u128>) -> Option<u128> {
        let mut a = Allocator::with_used(range, self.allocations.keys().copied());
        for &o in avoid {
            a.mark_used(o);
        }
        a.lowest_free()
    }

    /// The offset a writer racing others should claim: without contention
    /// (`window` 1) the lowest free one outside `taken`; with it, a random
    /// one of the lowest `window` free ones, so writers that read the pool
    /// at the same moment rarely pick the same address. A window wider than
    /// what is free falls back to the lowest free offset.
    pub fn pick(
        &self,
        range: &IpRange,
        taken: &BTreeSet<u128>,
        window: usize,
        random: u64,
    ) -> Option<u128> {
        let nth = (random % window.max(1) as u64) as usize;
        self.nth_free_avoiding(range, taken, nth)
            .or_else(|| self.lowest_free_avoiding(range, taken))
    }

    /// Free what (container ID, ifname) holds; true if something was freed.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> bool {
        let before = self.allocations.len();
        self.allocations
            .retain(|_, a| !(a.id == container_id && a.ifname == ifname));
        let freed = self.allocations.len() != before;
        self.dirty |= freed;
        freed
    }

    /// Keep only allocations whose (container ID, ifname) is in `valid`;
    /// returns how many were freed.
    pub fn retain_valid(&mut self, valid: &HashSet<(&str, &str)>) -> usize {
        let before = self.allocations.len();
        self.allocations
            .retain(|_, a| valid.contains(&(a.id.as_str(), a.ifname.as_str())));
        let freed = before - self.allocations.len();
        self.dirty |= freed > 0;
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::config::parse_netconf;
    use std::path::Path;

    fn range(ipam: &str) -> IpRange {
        let text = format!(r#"{{"ipam":{{"type":"whereabouts",{ipam}}}}}"#);
        parse_netconf(text.as_bytes(), Path::new("/x"))
            .unwrap()
            .ipam
            .ranges
            .remove(0)
    }

    fn owner(cid: &str, ifname: &str, pod: Option<&str>) -> Owner {
        Owner {
            container_id: cid.into(),
            ifname: ifname.into(),
            podref: pod.map(String::from),
        }
    }

    #[test]
    fn interval_set_merges() {
        let mut s = IntervalSet::default();
        s.insert(5, 5);
        s.insert(7, 7);
        assert_eq!(s.intervals(), 2);
        s.insert(6, 6);
        assert_eq!(s.intervals(), 1);
        assert!(s.contains(5) && s.contains(7) && !s.contains(8) && !s.contains(4));
        assert_eq!(s.first_gap_from(5), Some(8));
        assert_eq!(s.first_gap_from(4), Some(4));
        s.insert(0, 100);
        assert_eq!(s.intervals(), 1);
        s.insert(200, 300);
        s.insert(101, 199);
        assert_eq!(s.intervals(), 1);
        assert_eq!(s.first_gap_from(0), Some(301));
        s.insert(u128::MAX - 1, u128::MAX);
        assert_eq!(s.first_gap_from(u128::MAX), None);
        assert_eq!(s.first_gap_from(u128::MAX - 5), Some(u128::MAX - 5));
        s.insert(50, 60); // already covered
        assert_eq!(s.intervals(), 2);
    }

    #[test]
    fn lowest_free_skips_network_excludes_and_used() {
        let r = range(r#""range":"10.0.0.0/24","exclude":["10.0.0.0/30","10.0.0.5"]"#);
        let mut a = Allocator::new(&r);
        assert_eq!(a.allocate(), Some(4));
        assert_eq!(a.allocate(), Some(6));
        a.mark_used(8);
        assert_eq!(a.allocate(), Some(7));
        assert_eq!(a.allocate(), Some(9));
    }

    #[test]
    fn with_used_folds_runs_and_matches_mark_used() {
        let r = range(r#""range":"10.0.0.0/24","exclude":["10.0.0.10"]"#);
        let used = [1u128, 2, 3, 5, 6, 9, 11, 12, 254];
        let a = Allocator::with_used(&r, used);
        let mut b = Allocator::new(&r);
        for o in used {
            b.mark_used(o);
        }
        assert_eq!(a.blocked, b.blocked);
        // {1-3}, {5-6}, {9-12} (with the excluded 10), {254}.
        assert_eq!(a.blocked.intervals(), 4);
        assert_eq!(a.lowest_free(), Some(4));
        let full = Allocator::with_used(&r, (1..=254).filter(|&o| o != 10));
        assert_eq!(full.lowest_free(), None);
    }

    #[test]
    fn exhaustion_never_hands_out_broadcast() {
        let r = range(r#""range":"10.0.0.0/29""#);
        let mut a = Allocator::new(&r);
        let got: Vec<u128> = std::iter::from_fn(|| a.allocate()).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(a.lowest_free(), None);
    }

    #[test]
    fn ipv6_top_of_range() {
        let r = range(r#""range":"fd00::/64","range_start":"fd00::ffff:ffff:ffff:fffd""#);
        let mut a = Allocator::new(&r);
        assert_eq!(
            r.ip_at(a.allocate().unwrap()).to_string(),
            "fd00::ffff:ffff:ffff:fffd"
        );
        assert_eq!(
            r.ip_at(a.allocate().unwrap()).to_string(),
            "fd00::ffff:ffff:ffff:fffe"
        );
        assert_eq!(a.allocate(), None);
        // Full 128-bit range: the last usable is all-ones minus one.
        let r = range(r#""range":"::/0","range_start":"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe""#);
        let mut a = Allocator::new(&r);
        assert_eq!(a.allocate(), Some(u128::MAX - 1));
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn assign_is_idempotent_per_pod_and_per_container() {
        let r = range(r#""range":"10.0.0.0/24""#);
        let mut p = Pool::default();
        let a = p.assign(&r, &owner("c1", "net1", Some("ns/pod1"))).unwrap();
        assert_eq!(
            a,
            Assigned {
                offset: 1,
                existing: false
            }
        );
        p.dirty = false;
        // Same container again: same address, nothing to write.
        let b = p.assign(&r, &owner("c1", "net1", Some("ns/pod1"))).unwrap();
        assert_eq!(
            b,
            Assigned {
                offset: 1,
                existing: true
            }
        );
        assert!(!p.dirty);
        // A new sandbox of the same pod keeps the address and takes it over.
        let c = p.assign(&r, &owner("c2", "net1", Some("ns/pod1"))).unwrap();
        assert_eq!(c.offset, 1);
        assert!(p.dirty);
        assert_eq!(p.allocations[&1].id, "c2");
        // The old sandbox's DEL frees nothing.
        assert!(!p.release("c1", "net1"));
        // Another interface of the same pod is another address.
        assert_eq!(
            p.assign(&r, &owner("c2", "net2", Some("ns/pod1")))
                .unwrap()
                .offset,
            2
        );
        // Without a pod, the container ID keys it.
        assert_eq!(p.assign(&r, &owner("c3", "net1", None)).unwrap().offset, 3);
        assert_eq!(p.assign(&r, &owner("c3", "net1", None)).unwrap().offset, 3);
        assert_eq!(p.allocations[&3].podref, "");
        // DEL frees, then the lowest gap is reused.
        assert!(p.release("c2", "net1"));
        assert_eq!(p.assign(&r, &owner("c4", "net1", None)).unwrap().offset, 1);
    }

    #[test]
    fn assign_exhausted_leaves_pool_unchanged() {
        let r = range(r#""range":"10.0.0.0/30""#);
        let mut p = Pool::default();
        p.assign(&r, &owner("a", "eth0", None)).unwrap();
        p.assign(&r, &owner("b", "eth0", None)).unwrap();
        p.dirty = false;
        let before = p.clone();
        assert_eq!(p.assign(&r, &owner("c", "eth0", None)), None);
        assert_eq!(p, before);
    }

    #[test]
    fn retain_valid_frees_the_rest() {
        let r = range(r#""range":"10.0.0.0/24""#);
        let mut p = Pool::default();
        for c in ["a", "b", "c"] {
            p.assign(&r, &owner(c, "net1", None)).unwrap();
        }
        p.dirty = false;
        let valid: HashSet<(&str, &str)> = [("b", "net1"), ("a", "other")].into_iter().collect();
        assert_eq!(p.retain_valid(&valid), 2);
        assert!(p.dirty);
        assert_eq!(p.allocations.len(), 1);
        assert_eq!(p.find("b", "net1"), Some(2));
    }

    #[test]
    fn large_range_allocation_uses_merged_intervals() {
        let r = range(r#""range":"fd00::/64""#);
        let mut a = Allocator::new(&r);
        for i in 1..=10_000u128 {
            assert_eq!(a.allocate(), Some(i));
        }
        // 10,000 consecutive allocations stay one interval.
        assert_eq!(a.blocked.intervals(), 1);
    }

    #[test]
    fn pick_is_lowest_free_alone_and_spreads_within_the_window() {
        let range = range(r#""range":"10.0.0.0/28""#);
        let mut pool = Pool::default();
        pool.assign(&range, &owner("a", "net1", Some("ns/a")));
        pool.assign(&range, &owner("b", "net1", Some("ns/b")));
        let taken: BTreeSet<u128> = [4].into();
        // Window 1: the lowest free address outside `taken`, whatever the
        // random number.
        for r in [0, 1, 7, u64::MAX] {
            assert_eq!(pool.pick(&range, &taken, 1, r), Some(3));
        }
        // Window 4: one of the four lowest free ones (3, 5, 6, 7), each
        // reachable.
        let got: BTreeSet<u128> = (0..64)
            .filter_map(|r| pool.pick(&range, &taken, 4, r))
            .collect();
        assert_eq!(got, [3, 5, 6, 7].into());
        // A window wider than what is free still finds an address.
        assert!(pool.pick(&range, &taken, 1024, 999).is_some());
        // Nothing free: None.
        let all: BTreeSet<u128> = (1..=14).collect();
        assert_eq!(Pool::default().pick(&range, &all, 8, 3), None);
    }
}
