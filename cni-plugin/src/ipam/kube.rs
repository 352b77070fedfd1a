//! The Kubernetes store: pools are whereabouts' `IPPool` resources
//! (`whereabouts.cni.cncf.io/v1alpha1`), so pools whereabouts wrote stay
//! readable and ours stay readable to it.
//!
//! Concurrency is optimistic, per pool: read the pool, decide in pure code
//! (the same allocator as the file store), write the change as a JSON Patch
//! that tests the `resourceVersion` we read. A refused test means someone
//! wrote in between: decide again on the newer version. Under contention
//! one ADD writes for all pending ones (combining, see `add_one`), because
//! a pool is one etcd key and every write to it costs the API server the
//! whole pool. whereabouts instead takes one cluster-wide Lease around every
//! operation, which serialises the whole cluster behind 0.5-1 s lease polls.
//!
//! Overlapping ranges (the same address in two pools) are refused
//! cluster-wide with an `OverlappingRangeIPReservation` (ORIP) per address.
//! Write order, and why a crash between the two writes is harmless:
//! - ADD creates the ORIP FIRST (create is an exclusive claim), then writes
//!   the pool entry. A crash in between leaves an ORIP without a pool entry:
//!   the address stays blocked for everybody (no double booking), and
//!   `reconcile` deletes reservations that no pool entry backs once they are
//!   older than the longest ADD could take (the leak is temporary).
//! - DEL removes the pool entry FIRST, then the ORIP: a crash in between
//!   leaves the same harmless state.
//!
//! The opposite orders (pool entry first on ADD, ORIP first on DEL) would,
//! after a crash, leave a pool entry without its reservation, and another
//! pool that overlaps could then hand the same address out again; that is
//! whereabouts' order (its #712 leaks the other way round).
//!
//! An allocation is reported only after the write that stores it returned
//! success; a failed or exhausted ADD releases the reservation it made.
//!
//! This file is the I/O: the decisions it asks are pure and live next door
//! (`ippool`: the resources and their patch; `allocator::Pool::pick`: which
//! address to claim; `reconcile_plan`: what the reconciler frees;
//! `mignet_policy::Backoff`: how long to wait after a conflict).

use super::allocator::{Allocation, Owner, Pool};
use super::backend::{exhausted, Store};
use super::config::{IpRange, KubeConf, NetConf};
use super::file_store::PoolKey;
use super::ippool::{
    orip_name, orip_owned_by, pending_selector, pool_label, write_patch, IPPool,
    OverlappingRangeIPReservation, OverlappingRangeIPReservationSpec, ParsedPool, CLAIM_EPOCH_SECS,
    EPOCH_LABEL, FIELD_MANAGER, OFFSET_ANNOTATION, POOL_LABEL, RELEASE_LABEL,
};
use super::reconcile_plan::{network_name_of, OripState, Orphan, PodState, PoolState};
use crate::error::{CniError, CniResult, Code};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use super::ippool::{parse_pool, pool_spec};
use super::reconcile_plan::plan_reconcile;

/// The namespace whereabouts uses when the kubeconfig's context names none.
pub const DEFAULT_NAMESPACE: &str = "kube-system";
/// Optimistic write attempts per pool before giving up with code 11 ...
pub const MAX_ATTEMPTS: u32 = 500;
/// ... or this much time, whichever comes first: far below kubelet's 4 min
/// sandbox timeout and whereabouts' own 2 min ADD limit. Under n-way
/// contention a writer waits for about n others, one round trip each.
pub const ADD_BUDGET: Duration = Duration::from_secs(60);
/// Address reservations tried per attempt before re-reading the pool.
const MAX_CLAIM_STEPS: u32 = 256;
/// Per-request timeouts; an ADD must finish well inside kubelet's 4 min.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Binary exponential backoff with full jitter, in slots of one write's
/// round trip (as Ethernet does): after the n-th conflict, wait a random
/// number of slots in [0, 2^n), n capped at `MAX_EXP`. With k writers on one
/// pool the window grows to about k slots within log2(k) conflicts, so
/// roughly one writer tries per slot and few writes are wasted. A fixed
/// millisecond backoff cannot do that: a conflicting write costs the API
/// server a full decode, validation and encode of the pool, so writers
/// retrying faster than the server completes writes only add load.
///
/// The window is `mignet_policy::Backoff`'s; this type adds the slot clamp,
/// the count of conflicts and the random source (the policy crate takes
/// none).
#[derive(Debug)]
pub struct ConflictBackoff {
    state: u64,
    conflicts: u32,
}

impl ConflictBackoff {
    /// At most 2^5 = 32 slots.
    pub const MAX_EXP: u32 = 5;
    /// Slot bounds: a write measured faster or slower than this is clamped.
    /// Under load a round trip is mostly queueing behind the other writers,
    /// not the server's cost of one write, so long slots are cut short.
    pub const MIN_SLOT: Duration = Duration::from_millis(2);
    pub const MAX_SLOT: Duration = Duration::from_millis(40);

    pub fn new(seed: u64) -> Self {
        ConflictBackoff {
            state: seed | 1,
            conflicts: 0,
        }
    }

    pub fn random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter, no dependency.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The windows for a measured round trip `slot`: `delay(n)` is the
    /// window after the n-th conflict. The policy's `delay(n)` is
    /// `base * 2^(n-1)`, so a base of two slots gives 2^n slots.
    pub fn windows(slot: Duration) -> mignet_policy::Backoff {
        let slot = slot.clamp(Self::MIN_SLOT, Self::MAX_SLOT);
        mignet_policy::Backoff::new(slot * 2, slot * (1 << Self::MAX_EXP))
    }

    /// The delay after the next conflict, given the last write's round trip.
    pub fn next_delay(&mut self, slot: Duration) -> Duration {
        self.conflicts += 1;
        let random = self.random();
        Self::windows(slot).jittered(self.conflicts, random)
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

// ------------------------------------------------------------------ errors

fn status_of(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    status_of(e).is_some_and(|s| s.code == code)
}

/// Map an API error to a CNI error: unreachable or overloaded API servers
/// are transient (11), refusals and everything else are I/O (5).
fn api_err(what: &str, e: kube::Error) -> CniError {
    let code = match status_of(&e) {
        Some(s) if matches!(s.code, 429 | 500 | 503 | 504) => Code::TryAgainLater,
        Some(_) => Code::Io,
        None => Code::TryAgainLater,
    };
    let hint = match status_of(&e) {
        Some(s) if s.code == 401 => " (unauthorized: check the kubeconfig's credentials)",
        Some(s) if s.code == 403 => {
            " (forbidden: the CNI needs get/list/create/update/delete on ippools and overlappingrangeipreservations.whereabouts.cni.cncf.io)"
        }
        Some(s) if s.code == 404 && s.details.as_ref().is_some_and(|d| d.name.is_empty()) => {
            " (are the whereabouts CRDs installed? deploy/crds/whereabouts.cni.cncf.io_*.yaml)"
        }
        _ => "",
    };
    CniError::new(code, format!("{what}{hint}")).with_details(crate::error::chain(&e))
}

fn contention(pool: &str, attempts: u32, spent: Duration) -> CniError {
    CniError::new(
        Code::TryAgainLater,
        format!(
            "IPPool {pool}: still conflicting after {attempts} optimistic attempts in {:.1}s (heavy contention); try again",
            spent.as_secs_f64()
        ),
    )
}

// ---------------------------------------------------------------- the store

/// A connected store: the client and the namespace whereabouts would use.
#[derive(Clone)]
pub struct KubeStore {
    pub client: Client,
    pub namespace: String,
    network_name: String,
    overlapping: bool,
    /// The round trip of the last pool write: the backoff's slot.
    slot: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Build a client for `conf`. With a kubeconfig path: that file, namespace
/// from its current context, else kube-system (as whereabouts). Without
/// one: in-cluster service-account credentials, namespace kube-system.
pub async fn connect(conf: &KubeConf) -> CniResult<(Client, String)> {
    let (mut cfg, ns) = match &conf.kubeconfig {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                CniError::invalid_field("ipam.kubernetes.kubeconfig", path.display(), e)
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(&crate::error::chain(&e)))?;
            let ns = kc
                .current_context
                .as_deref()
                .and_then(|c| kc.contexts.iter().find(|n| n.name == c))
                .and_then(|n| n.context.as_ref())
                .and_then(|c| c.namespace.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
            let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| bad(&crate::error::chain(&e)))?;
            (cfg, ns)
        }
        None => {
            let cfg = kube::Config::incluster().map_err(|e| {
                CniError::new(
                    Code::InvalidConfig,
                    "ipam.kubernetes has no kubeconfig and in-cluster credentials are unavailable",
                )
                .with_details(crate::error::chain(&e))
            })?;
            (cfg, DEFAULT_NAMESPACE.to_string())
        }
    };
    cfg.connect_timeout = Some(REQUEST_TIMEOUT);
    cfg.read_timeout = Some(REQUEST_TIMEOUT);
    cfg.write_timeout = Some(REQUEST_TIMEOUT);
    let client = Client::try_from(cfg).map_err(|e| {
        CniError::new(
            Code::InvalidConfig,
            "ipam.kubernetes: cannot build a client",
        )
        .with_details(crate::error::chain(&e))
    })?;
    Ok((client, ns))
}

/// The current claim epoch.
fn claim_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / CLAIM_EPOCH_SECS)
        .unwrap_or(0)
}

/// A list served by the API server's watch cache (resourceVersion "0"):
/// no etcd read, and only the matching objects are encoded. It may lag by
/// a few milliseconds, which only means a claim made that recently is
/// combined into the next write instead of this one.
fn cached_list(selector: &str) -> ListParams {
    ListParams::default().labels(selector).match_any()
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    }
}

/// Quiet waits (no new pool version) for a combining committer before
/// writing oneself.
const MAX_WAITS: u32 = 3;
/// Bounds of one quiet wait: 8 of our own round trips, so a committer
/// slowed down by load is not taken over while it still works. Measured
/// (IPAM.md): 50-400 ms left writers idle (27 alloc/s), 10-80 ms doubled the
/// failed writes for no gain, 20-150 ms: 43 alloc/s.
const QUIET_MIN: Duration = Duration::from_millis(20);
const QUIET_MAX: Duration = Duration::from_millis(150);

/// Whether a pool entry (or a pending claim as one) is `owner`'s.
fn entry_owned_by(a: &Allocation, owner: &Owner) -> bool {
    a.ifname == owner.ifname
        && (a.id == owner.container_id || owner.podref.as_deref().is_some_and(|p| a.podref == p))
}

fn new_entry(owner: &Owner) -> Allocation {
    Allocation {
        id: owner.container_id.clone(),
        ifname: owner.ifname.clone(),
        podref: owner.podref.clone().unwrap_or_default(),
    }
}

/// What a wait on the pool's watch saw.
enum Change {
    /// A version newer than the one waited on.
    New(Box<(IPPool, ParsedPool)>),
    /// Nothing happened within the wait.
    Quiet,
    /// The watch broke (or the pool went away): read again.
    Unknown,
}

type PoolEvents = std::pin::Pin<
    Box<dyn futures::Stream<Item = kube::Result<kube::api::WatchEvent<IPPool>>> + Send>,
>;

/// A watch on one pool, opened at the first wait and reused by later ones.
#[derive(Default)]
struct PoolWatch {
    events: Option<PoolEvents>,
    broken: bool,
}

impl PoolWatch {
    /// Wait up to `wait` for a version of the pool newer than `seen`.
    async fn next_change(
        &mut self,
        store: &KubeStore,
        key: &PoolKey,
        seen: &IPPool,
        wait: Duration,
    ) -> Change {
        use futures::StreamExt;
        if self.broken {
            tokio::time::sleep(wait).await;
            return Change::Unknown;
        }
        let seen_rv = seen.metadata.resource_version.clone().unwrap_or_default();
        if self.events.is_none() {
            let wp = kube::api::WatchParams::default()
                .fields(&format!("metadata.name={}", key.name))
                .timeout(ADD_BUDGET.as_secs() as u32);
            match store.pools().watch(&wp, &seen_rv).await {
                Ok(s) => self.events = Some(Box::pin(s)),
                Err(e) => {
                    // Still correct (waits re-read the pool), only slower:
                    // say so where the runtime keeps plugin stderr, so a
                    // role without `watch` on ippools does not go unnoticed.
                    eprintln!(
                        "mignet-ipam: cannot watch IPPool {}/{} ({e}); waiting by re-reading it instead (grant watch on ippools for speed)",
                        store.namespace, key.name
                    );
                    self.broken = true;
                    return Change::Unknown;
                }
            }
        }
        let events = self.events.as_mut().expect("opened above");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Err(_) => return Change::Quiet,
                Ok(Some(Ok(
                    kube::api::WatchEvent::Added(o) | kube::api::WatchEvent::Modified(o),
                ))) => {
                    // Versions are opaque strings: any other version than
                    // the one we hold is news (the watch starts after it).
                    if o.metadata.resource_version.as_deref() == Some(seen_rv.as_str()) {
                        continue;
                    }
                    return match parse_pool(&key.name, &o.spec, key.subnet) {
                        Ok(p) => Change::New(Box::new((o, p))),
                        Err(_) => Change::Unknown,
                    };
                }
                Ok(Some(Ok(kube::api::WatchEvent::Bookmark(_)))) => continue,
                // Deleted, an error event (410 Gone), a broken stream.
                Ok(_) => {
                    self.events = None;
                    self.broken = true;
                    return Change::Unknown;
                }
            }
        }
    }
}

/// The runtime-visible result of an ADD on one pool.
struct Added {
    offset: u128,
    existing: bool,
}

impl KubeStore {
    /// The last measured round trip (microseconds in an atomic, so a
    /// store can be shared by the manager's tasks).
    fn slot(&self) -> Duration {
        Duration::from_micros(self.slot.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn set_slot(&self, d: Duration) {
        self.slot
            .store(d.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn open(conf: &NetConf) -> CniResult<Self> {
        let kc = conf
            .ipam
            .kubernetes
            .as_ref()
            .expect("open is only called when ipam.kubernetes is set");
        let (client, namespace) = connect(kc).await?;
        Ok(KubeStore {
            client,
            namespace,
            network_name: conf.ipam.network_name.clone(),
            overlapping: conf.ipam.overlapping_ranges,
            slot: Default::default(),
        })
    }

    fn pools(&self) -> Api<IPPool> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn orips(&self) -> Api<OverlappingRangeIPReservation> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Read a pool (the latest version); `None` when it does not exist.
    async fn read(&self, key: &PoolKey) -> CniResult<Option<(IPPool, ParsedPool)>> {
        self.read_at(key, false).await
    }

    /// Read a pool; with `any`, whatever version the API server's watch
    /// cache holds. Such a read may be a little stale, which is fine for
    /// picking an address or checking for a commit (every write is still
    /// preconditioned), and it spares the server an etcd read and, as all
    /// readers of one version share its encoding, most of the encoding.
    async fn read_at(&self, key: &PoolKey, any: bool) -> CniResult<Option<(IPPool, ParsedPool)>> {
        let gp = if any {
            kube::api::GetParams::any()
        } else {
            kube::api::GetParams::default()
        };
        let obj = match self.pools().get_with(&key.name, &gp).await {
            Ok(o) => Some(o),
            Err(e) if is_code(&e, 404) => None,
            Err(e) => {
                return Err(api_err(
                    &format!("get IPPool {}/{}", self.namespace, key.name),
                    e,
                ))
            }
        };
        match obj {
            None => Ok(None),
            Some(o) => {
                let p = parse_pool(&key.name, &o.spec, key.subnet)?;
                Ok(Some((o, p)))
            }
        }
    }

    /// Read a pool, creating it empty when missing (as whereabouts does).
    async fn read_or_create(&self, key: &PoolKey, any: bool) -> CniResult<(IPPool, ParsedPool)> {
        loop {
            if let Some(x) = self.read_at(key, any).await? {
                return Ok(x);
            }
            let mut fresh = IPPool::new(&key.name, pool_spec(key.subnet, &ParsedPool::default()));
            fresh.metadata.namespace = Some(self.namespace.clone());
            match self.pools().create(&post_params(), &fresh).await {
                Ok(o) => return Ok((o, ParsedPool::default())),
                // Someone created it meanwhile: read theirs.
                Err(e) if is_code(&e, 409) => continue,
                Err(e) => {
                    return Err(api_err(
                        &format!("create IPPool {}/{}", self.namespace, key.name),
                        e,
                    ))
                }
            }
        }
    }

    /// Write `parsed` over `obj` with `obj`'s resourceVersion as the
    /// precondition. `Ok(false)` is a conflict: someone wrote in between.
    async fn write(&self, key: &PoolKey, obj: &IPPool, parsed: &ParsedPool) -> CniResult<bool> {
        let t = std::time::Instant::now();
        let r = self.write_inner(key, obj, parsed).await;
        self.set_slot(t.elapsed());
        r
    }

    async fn write_inner(
        &self,
        key: &PoolKey,
        obj: &IPPool,
        parsed: &ParsedPool,
    ) -> CniResult<bool> {
        let next = pool_spec(key.subnet, parsed);
        let ops = write_patch(
            &obj.spec,
            obj.metadata.resource_version.as_deref().unwrap_or_default(),
            &next,
        );
        let patch: json_patch::Patch =
            serde_json::from_value(ops).expect("write_patch builds valid JSON Patch");
        let pp = kube::api::PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        match self
            .pools()
            .patch(&key.name, &pp, &kube::api::Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => Ok(true),
            // The resourceVersion test failed: someone wrote in between. A
            // failed test is a 422 without causes; a real validation error
            // names its causes and is reported.
            Err(e) if is_code(&e, 409) || is_code(&e, 404) => Ok(false),
            Err(e)
                if is_code(&e, 422)
                    && status_of(&e)
                        .and_then(|s| s.details.as_ref())
                        .is_none_or(|d| d.causes.is_empty()) =>
            {
                Ok(false)
            }
            Err(e) => Err(api_err(
                &format!("update IPPool {}/{}", self.namespace, key.name),
                e,
            )),
        }
    }

    /// Claim `ip` for `owner` cluster-wide. `Ok(true)`: the reservation is
    /// ours (just created, or left by an earlier attempt of the same owner).
    async fn claim(
        &self,
        key: &PoolKey,
        ip: IpAddr,
        offset: u128,
        owner: &Owner,
    ) -> CniResult<bool> {
        let name = orip_name(&self.network_name, ip);
        let mut r = OverlappingRangeIPReservation::new(
            &name,
            OverlappingRangeIPReservationSpec {
                containerid: owner.container_id.clone(),
                ifname: owner.ifname.clone(),
                podref: owner.podref.clone().unwrap_or_default(),
            },
        );
        r.metadata.namespace = Some(self.namespace.clone());
        // Label and offset make it findable as a pending claim of its pool.
        if let Some(label) = pool_label(&key.name) {
            r.metadata.labels = Some(
                [
                    (POOL_LABEL.to_string(), label),
                    (EPOCH_LABEL.to_string(), claim_epoch().to_string()),
                ]
                .into(),
            );
            r.metadata.annotations =
                Some([(OFFSET_ANNOTATION.to_string(), offset.to_string())].into());
        }
        let t = std::time::Instant::now();
        let r = self.orips().create(&post_params(), &r).await;
        // A small write's round trip: the unit of our waits.
        self.set_slot(t.elapsed());
        match r {
            Ok(_) => Ok(true),
            // Taken. Our own leftover reservations (from an earlier attempt
            // of this owner) are adopted from the pending list before we
            // get here, so a collision is always someone else's claim.
            Err(e) if is_code(&e, 409) => Ok(false),
            Err(e) => Err(api_err(
                &format!(
                    "create OverlappingRangeIPReservation {}/{name}",
                    self.namespace
                ),
                e,
            )),
        }
    }

    /// Drop the reservation of `ip` if `owner` holds it (preconditioned on
    /// its uid, so a reservation re-created by someone else is never hit).
    async fn unclaim(&self, ip: IpAddr, owner: &Owner) -> CniResult<()> {
        let name = orip_name(&self.network_name, ip);
        let held = match self.orips().get_opt(&name).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(api_err(
                    &format!(
                        "get OverlappingRangeIPReservation {}/{name}",
                        self.namespace
                    ),
                    e,
                ))
            }
        };
        if !orip_owned_by(&held.spec, owner) {
            return Ok(());
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: held.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.orips().delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, 404) || is_code(&e, 409) => Ok(()),
            Err(e) => Err(api_err(
                &format!(
                    "delete OverlappingRangeIPReservation {}/{name}",
                    self.namespace
                ),
                e,
            )),
        }
    }

    /// Reservations of `key`'s pool made by our ADDs whose address the pool
    /// does not hold yet: ADDs between their two writes. Only reservations
    /// we labelled count; whereabouts creates its reservation after its pool
    /// write, so it never has one pending.
    async fn pending_claims(
        &self,
        key: &PoolKey,
        range: &IpRange,
        pool: &Pool,
    ) -> CniResult<Vec<(u128, Allocation)>> {
        let Some(label) = pool_label(&key.name) else {
            return Ok(Vec::new());
        };
        let list = self
            .orips()
            .list(&cached_list(&pending_selector(&label, claim_epoch())))
            .await
            .map_err(|e| {
                api_err(
                    &format!("list OverlappingRangeIPReservations in {}", self.namespace),
                    e,
                )
            })?;
        Ok(list
            .items
            .into_iter()
            // A releasing reservation's entry is on its way out: never put
            // it back.
            .filter(|r| !r.labels().contains_key(RELEASE_LABEL))
            .filter_map(|r| {
                let off: u128 = r.annotations().get(OFFSET_ANNOTATION)?.parse().ok()?;
                // The name must be the reservation of exactly that address,
                // inside this range, and the pool must not hold it yet.
                let valid = off >= range.first
                    && off <= range.last
                    && r.name_any() == orip_name(&self.network_name, range.ip_at(off))
                    && !pool.allocations.contains_key(&off)
                    && !r.spec.containerid.is_empty();
                valid.then_some((
                    off,
                    Allocation {
                        id: r.spec.containerid,
                        ifname: r.spec.ifname,
                        podref: r.spec.podref,
                    },
                ))
            })
            .collect())
    }

    /// ADD on one pool: the owner's existing offset, or a free one, stored
    /// before it is returned.
    ///
    /// With overlapping ranges on (the default), an ADD first reserves its
    /// address (an ORIP, an exclusive create), then waits until a stored
    /// pool version holds its entry. One writer commits for many
    /// (combining): the pending claim with the lowest offset writes the
    /// pool with a resourceVersion precondition, adding the entries of
    /// every pending claim it finds; the others watch the pool and return
    /// when a version holding their entry is stored. A waiter whose lower
    /// claims are all committed, or that sees the pool stay quiet for a
    /// while (that committer died), writes itself.
    ///
    /// Why not let every ADD write its own entry with a JSON Patch that
    /// needs no resourceVersion (the API server applies it to the current
    /// version)? Measured: the server then retries the etcd conflicts
    /// itself, without backoff, decoding, validating and encoding the whole
    /// pool for every try, and 30 concurrent patches of a 300-entry pool
    /// took 32 s for 60 writes, several past the 60 s request timeout
    /// (IPAM.md). One pool is one etcd key: few writes is the only cheap way.
    ///
    /// Safety does not depend on who writes: each entry comes from an
    /// exclusive reservation, every write is preconditioned on the version
    /// it was computed from, and nobody reports an address before a stored
    /// pool version holds it. An entry committed for an ADD that then died
    /// is an ordinary orphan (as if it died after its own write): DEL, GC
    /// or reconcile frees it.
    async fn add_one(&self, key: &PoolKey, range: &IpRange, owner: &Owner) -> CniResult<Added> {
        let mut rng = ConflictBackoff::new(seed());
        // Offsets reserved by someone else (seen during this ADD).
        let mut taken: BTreeSet<u128> = BTreeSet::new();
        let started = std::time::Instant::now();
        let mut attempts = 0;
        let mut collisions: u32 = 0;
        // The next read skips the watch cache.
        let mut stale = false;
        while attempts < MAX_ATTEMPTS && started.elapsed() < ADD_BUDGET {
            attempts += 1;
            let cached = !std::mem::take(&mut stale);
            let (obj, mut parsed) = self.read_or_create(key, cached).await?;
            if let Some(off) = parsed.pool.held_by(owner) {
                // A repeated ADD, or a new sandbox of the same pod (which
                // takes the entry over).
                parsed.pool.assign(range, owner);
                if parsed.pool.dirty {
                    if !self.write(key, &obj, &parsed).await? {
                        stale = true;
                        tokio::time::sleep(rng.next_delay(self.slot())).await;
                        continue;
                    }
                } else if cached {
                    // Decide on the latest version, not on a cache that may
                    // still show an entry a DEL just removed.
                    stale = true;
                    continue;
                }
                return Ok(Added {
                    offset: off,
                    existing: true,
                });
            }
            // Addresses other ADDs have reserved but not committed yet are
            // skipped up front instead of colliding one by one.
            let pending = if self.overlapping {
                let p = self.pending_claims(key, range, &parsed.pool).await?;
                if let Some((o, _)) = p.iter().find(|(_, a)| entry_owned_by(a, owner)) {
                    // A reservation an earlier, interrupted ADD of this
                    // owner made (e.g. killed by a runtime timeout): it is
                    // ours, commit it.
                    let off = *o;
                    match self.commit(key, range, owner, off, obj, parsed, p).await? {
                        true => {
                            return Ok(Added {
                                offset: off,
                                existing: false,
                            })
                        }
                        false => {
                            self.unclaim(range.ip_at(off), owner).await?;
                            stale = true;
                            continue;
                        }
                    }
                }
                taken.extend(p.iter().map(|(o, _)| *o));
                p
            } else {
                Vec::new()
            };
            let mut steps = 0;
            loop {
                // Without contention: the lowest free address. Under it, a
                // random one of the lowest few: ADDs that read the same
                // pool at the same moment would otherwise all collide on
                // the same next address (n^2/2 collisions for n writers).
                // The window is four times the queue of pending claims
                // (racers picking at the same moment then rarely pick the
                // same one), and after a collision at least 16, doubling.
                let window = (4 * pending.len() + 1)
                    .next_power_of_two()
                    .max(if collisions == 0 {
                        1
                    } else {
                        8usize << collisions.min(7)
                    });
                let Some(off) = parsed.pool.pick(range, &taken, window, rng.random()) else {
                    if cached {
                        // The cache may still hold entries freed since.
                        stale = true;
                        break;
                    }
                    return Err(exhausted(range));
                };
                if !self.overlapping {
                    // No reservation: the pool's precondition alone
                    // decides; write from this read.
                    parsed.pool.allocations.insert(off, new_entry(owner));
                    if self.write(key, &obj, &parsed).await? {
                        return Ok(Added {
                            offset: off,
                            existing: false,
                        });
                    }
                    stale = true;
                    collisions += 1;
                    tokio::time::sleep(rng.next_delay(self.slot())).await;
                    break;
                }
                if !self.claim(key, range.ip_at(off), off, owner).await? {
                    taken.insert(off);
                    collisions += 1;
                    steps += 1;
                    if steps >= MAX_CLAIM_STEPS {
                        break;
                    }
                    continue;
                }
                // The reservation is ours: get it committed.
                let committed = self
                    .commit(key, range, owner, off, obj, parsed, pending)
                    .await;
                match committed {
                    Ok(true) => {
                        return Ok(Added {
                            offset: off,
                            existing: false,
                        })
                    }
                    Ok(false) => {
                        // A writer that does not reserve (overlapping ranges
                        // off, or whereabouts) stored that address first.
                        self.unclaim(range.ip_at(off), owner).await?;
                        taken.insert(off);
                        stale = true;
                        break;
                    }
                    Err(e) => {
                        // A combining writer may have committed our claim:
                        // take the entry out first, then the reservation
                        // (DEL's order). Best effort; leftovers are orphans
                        // for GC and reconcile.
                        let _ = self
                            .remove_where(key, |o, a| {
                                o == off && a.id == owner.container_id && a.ifname == owner.ifname
                            })
                            .await;
                        let _ = self.unclaim(range.ip_at(off), owner).await;
                        return Err(e);
                    }
                }
            }
        }
        Err(contention(&key.name, attempts, started.elapsed()))
    }

    /// Get the claim of `off` committed to the pool, by a combining writer
    /// or by ourselves. `Ok(false)`: another owner's entry holds `off`.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        key: &PoolKey,
        range: &IpRange,
        owner: &Owner,
        off: u128,
        mut obj: IPPool,
        mut parsed: ParsedPool,
        mut pending: Vec<(u128, Allocation)>,
    ) -> CniResult<bool> {
        let started = std::time::Instant::now();
        let mut watch = PoolWatch::default();
        let mut quiet = 0;
        let mut writes = 0;
        let mut relist = false;
        while writes < MAX_ATTEMPTS && started.elapsed() < ADD_BUDGET {
            match parsed.pool.allocations.get(&off) {
                Some(a) if a.id == owner.container_id && a.ifname == owner.ifname => {
                    return Ok(true)
                }
                Some(_) => return Ok(false),
                None => {}
            }
            // The pending claims as of now. Listing them from the watch
            // cache is cheap (about 0.5 ms of server CPU, measured), a
            // failed pool write is not (about 8 ms: the server re-reads
            // and decodes the pool from etcd before it refuses it), so
            // every waiter re-lists after each change and they all agree
            // on who writes next. The list from before our claim serves
            // the first round.
            if std::mem::take(&mut relist) {
                pending = self.pending_claims(key, range, &parsed.pool).await?;
            }
            relist = true;
            // Wait while a claim below ours is pending: its ADD writes for
            // both of us. Not for ever: a pool that stays quiet means that
            // writer is gone.
            let lower = pending
                .iter()
                .any(|(o, _)| *o < off && !parsed.pool.allocations.contains_key(o));
            if lower && quiet < MAX_WAITS {
                let wait = (self.slot() * 8).clamp(QUIET_MIN, QUIET_MAX);
                match watch.next_change(self, key, &obj, wait).await {
                    Change::New(x) => (obj, parsed) = *x,
                    Change::Quiet => quiet += 1,
                    Change::Unknown => {
                        quiet += 1;
                        let Some(x) = self.read(key).await? else {
                            // The pool was deleted under us: start over.
                            return Ok(false);
                        };
                        (obj, parsed) = x;
                    }
                }
                continue;
            }
            // Our turn: commit ours and every other pending claim.
            let mut next = parsed.clone();
            for (o, a) in &pending {
                next.pool.allocations.insert(*o, a.clone());
            }
            next.pool.allocations.insert(off, new_entry(owner));
            writes += 1;
            if self.write(key, &obj, &next).await? {
                return Ok(true);
            }
            // Someone wrote first (maybe committing us): take the newer
            // version from the watch, else from etcd.
            let wait = (self.slot() * 4).clamp(QUIET_MIN, QUIET_MAX);
            match watch.next_change(self, key, &obj, wait).await {
                Change::New(x) => (obj, parsed) = *x,
                Change::Quiet | Change::Unknown => {
                    let Some(x) = self.read(key).await? else {
                        return Ok(false);
                    };
                    (obj, parsed) = x;
                }
            }
            quiet = 0;
        }
        Err(contention(&key.name, writes, started.elapsed()))
    }

    /// Our reservations of `key`'s pool whose DEL is in progress:
    /// (offset, container id, ifname).
    async fn pending_releases(
        &self,
        label: &str,
        range_of: &PoolKey,
    ) -> CniResult<Vec<(u128, String, String)>> {
        let list = self
            .orips()
            .list(&cached_list(&format!("{RELEASE_LABEL}={label}")))
            .await
            .map_err(|e| {
                api_err(
                    &format!("list OverlappingRangeIPReservations in {}", self.namespace),
                    e,
                )
            })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|r| {
                let off: u128 = r.annotations().get(OFFSET_ANNOTATION)?.parse().ok()?;
                let ip = super::config::from_u128(
                    range_of.subnet.network(),
                    super::config::ip_to_u128(range_of.subnet.network()).checked_add(off)?,
                );
                (range_of.subnet.contains(ip)
                    && r.name_any() == orip_name(&self.network_name, ip)
                    && !r.spec.containerid.is_empty())
                .then_some((off, r.spec.containerid, r.spec.ifname))
            })
            .collect())
    }

    /// Mark our reservation of `ip` as being released; false when it is
    /// not ours (or not there), so the caller takes the plain path.
    async fn mark_release(&self, label: &str, ip: IpAddr, owner: &Owner) -> CniResult<bool> {
        let name = orip_name(&self.network_name, ip);
        let Some(held) = self.orips().get_opt(&name).await.map_err(|e| {
            api_err(
                &format!(
                    "get OverlappingRangeIPReservation {}/{name}",
                    self.namespace
                ),
                e,
            )
        })?
        else {
            return Ok(false);
        };
        if held.spec.containerid != owner.container_id
            || held.spec.ifname != owner.ifname
            || !held.annotations().contains_key(OFFSET_ANNOTATION)
        {
            return Ok(false);
        }
        // resourceVersion in a merge patch is a precondition.
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": held.metadata.resource_version,
                "labels": { RELEASE_LABEL: label },
            }
        });
        match self
            .orips()
            .patch(
                &name,
                &kube::api::PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                },
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 409) || is_code(&e, 404) => Ok(false),
            Err(e) => Err(api_err(
                &format!(
                    "label OverlappingRangeIPReservation {}/{name}",
                    self.namespace
                ),
                e,
            )),
        }
    }

    /// DEL on one pool: take out what (container ID, ifname) holds.
    ///
    /// The mirror of ADD's combining: a DEL labels its reservation
    /// "releasing" first, then commits; a commit also takes out the entries
    /// of every other releasing reservation of the pool (only entries whose
    /// container and ifname match that reservation, so only entries whose
    /// own DEL is running). Each DEL deletes its reservation only after a
    /// stored pool version lacks its entry: pool entry first, reservation
    /// second, as always. Entries without such a reservation (overlapping
    /// ranges off, whereabouts' entries) take the plain path.
    async fn release(&self, key: &PoolKey, container_id: &str, ifname: &str) -> CniResult<()> {
        let plain = |o: u128, a: &Allocation| {
            let _ = o;
            a.id == container_id && a.ifname == ifname
        };
        let label = match pool_label(&key.name) {
            Some(l) if self.overlapping => l,
            _ => return self.remove_where(key, plain).await.map(|_| ()),
        };
        let Some((obj, parsed)) = self.read(key).await? else {
            return Ok(());
        };
        let mine: Vec<u128> = parsed
            .pool
            .allocations
            .iter()
            .filter(|(_, a)| a.id == container_id && a.ifname == ifname)
            .map(|(&o, _)| o)
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let owner = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            podref: None,
        };
        let ip_of = |o: u128| {
            super::config::from_u128(
                key.subnet.network(),
                super::config::ip_to_u128(key.subnet.network()) + o,
            )
        };
        for &o in &mine {
            if !self.mark_release(&label, ip_of(o), &owner).await? {
                return self.remove_where(key, plain).await.map(|_| ());
            }
        }
        let mut backoff = ConflictBackoff::new(seed());
        let started = std::time::Instant::now();
        let mut attempts = 0;
        let mut carry = Some((obj, parsed));
        loop {
            if attempts >= MAX_ATTEMPTS || started.elapsed() >= ADD_BUDGET {
                return Err(contention(&key.name, attempts, started.elapsed()));
            }
            attempts += 1;
            let (obj, mut parsed) = match carry.take() {
                Some(x) => x,
                None => match self.read(key).await? {
                    Some(x) => x,
                    None => break,
                },
            };
            let still: Vec<u128> = mine
                .iter()
                .copied()
                .filter(|o| parsed.pool.allocations.get(o).is_some_and(|a| plain(*o, a)))
                .collect();
            if still.is_empty() {
                break; // Committed, by us or by a combining writer.
            }
            for (o, cid, ifn) in self.pending_releases(&label, key).await? {
                if parsed
                    .pool
                    .allocations
                    .get(&o)
                    .is_some_and(|a| a.id == cid && a.ifname == ifn)
                {
                    parsed.pool.allocations.remove(&o);
                }
            }
            for o in &still {
                parsed.pool.allocations.remove(o);
            }
            if self.write(key, &obj, &parsed).await? {
                break;
            }
            tokio::time::sleep(backoff.next_delay(self.slot())).await;
        }
        for &o in &mine {
            self.unclaim(ip_of(o), &owner).await?;
        }
        Ok(())
    }

    /// Remove from one pool every entry `select` picks, with optimistic
    /// retries, then drop the freed addresses' reservations. Returns the
    /// freed entries.
    async fn remove_where(
        &self,
        key: &PoolKey,
        mut select: impl FnMut(u128, &Allocation) -> bool,
    ) -> CniResult<Vec<(u128, Allocation)>> {
        let mut backoff = ConflictBackoff::new(seed());
        let started = std::time::Instant::now();
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS && started.elapsed() < ADD_BUDGET {
            attempts += 1;
            let Some((obj, mut parsed)) = self.read(key).await? else {
                return Ok(Vec::new());
            };
            let freed: Vec<(u128, Allocation)> = parsed
                .pool
                .allocations
                .iter()
                .filter(|(&o, a)| select(o, a))
                .map(|(&o, a)| (o, a.clone()))
                .collect();
            if freed.is_empty() {
                return Ok(freed);
            }
            for (o, _) in &freed {
                parsed.pool.allocations.remove(o);
            }
            if !self.write(key, &obj, &parsed).await? {
                tokio::time::sleep(backoff.next_delay(self.slot())).await;
                continue;
            }
            // Pool entry first, reservation second (see the module docs).
            if self.overlapping {
                for (o, a) in &freed {
                    let owner = Owner {
                        container_id: a.id.clone(),
                        ifname: a.ifname.clone(),
                        podref: (!a.podref.is_empty()).then(|| a.podref.clone()),
                    };
                    let ip = super::config::from_u128(
                        key.subnet.network(),
                        super::config::ip_to_u128(key.subnet.network()) + o,
                    );
                    self.unclaim(ip, &owner).await?;
                }
            }
            return Ok(freed);
        }
        Err(contention(&key.name, attempts, started.elapsed()))
    }
}

// ------------------------------------------------------------- the verbs

impl KubeStore {
    /// ADD: one address per range. If a later range fails, the addresses
    /// this ADD newly took in earlier ranges are freed again.
    pub async fn add(
        &self,
        keys: &[PoolKey],
        ranges: &[IpRange],
        owner: &Owner,
    ) -> CniResult<Vec<u128>> {
        let mut done: Vec<(usize, Added)> = Vec::new();
        for (i, (key, range)) in keys.iter().zip(ranges).enumerate() {
            match self.add_one(key, range, owner).await {
                Ok(a) => done.push((i, a)),
                Err(e) => {
                    for (j, a) in &done {
                        if !a.existing {
                            let off = a.offset;
                            let _ = self
                                .remove_where(&keys[*j], |o, x| {
                                    o == off
                                        && x.id == owner.container_id
                                        && x.ifname == owner.ifname
                                })
                                .await;
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(done.into_iter().map(|(_, a)| a.offset).collect())
    }

    /// DEL: free what (container ID, ifname) holds in every pool.
    pub async fn del(&self, keys: &[PoolKey], container_id: &str, ifname: &str) -> CniResult<()> {
        // Every pool, even after one fails (whereabouts stops at the first
        // pool without an entry); the first error is reported.
        let mut first_err = None;
        for key in keys {
            if let Err(e) = self.release(key, container_id, ifname).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// CHECK: the offset (container ID, ifname) holds in each pool, in order.
    pub async fn find(
        &self,
        keys: &[PoolKey],
        container_id: &str,
        ifname: &str,
    ) -> CniResult<Vec<Option<u128>>> {
        let mut out = Vec::new();
        for key in keys {
            out.push(match self.read(key).await? {
                Some((_, p)) => p.pool.find(container_id, ifname),
                None => None,
            });
        }
        Ok(out)
    }

    /// GC: free every allocation whose (container ID, ifname) is not valid.
    pub async fn gc(
        &self,
        keys: &[PoolKey],
        valid: &HashSet<(String, String)>,
    ) -> CniResult<usize> {
        let mut n = 0;
        for key in keys {
            n += self
                .remove_where(key, |_, a| {
                    !valid.contains(&(a.id.clone(), a.ifname.clone()))
                })
                .await?
                .len();
        }
        Ok(n)
    }

    /// STATUS: the API answers and the IPPool resource is served.
    pub async fn status(&self) -> CniResult<()> {
        self.pools()
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map_err(|e| {
                let mut err = api_err(&format!("list IPPools in {}", self.namespace), e);
                err.code = Code::Unavailable;
                err
            })?;
        Ok(())
    }
}

/// The store for the synchronous CNI verbs: a connected `KubeStore` and the
/// current-thread runtime it was connected on (the client's connection
/// tasks live there), made for this one CNI call. Only the Kubernetes path
/// pays for a runtime; the file store stays synchronous.
pub struct BlockingKubeStore {
    rt: tokio::runtime::Runtime,
    store: KubeStore,
}

impl BlockingKubeStore {
    pub fn open(conf: &NetConf) -> CniResult<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::io("start the async runtime", e))?;
        let store = rt.block_on(KubeStore::open(conf))?;
        Ok(BlockingKubeStore { rt, store })
    }
}

impl Store for BlockingKubeStore {
    fn add(&self, pools: &[PoolKey], ranges: &[IpRange], owner: &Owner) -> CniResult<Vec<u128>> {
        self.rt.block_on(self.store.add(pools, ranges, owner))
    }

    fn del(&self, pools: &[PoolKey], container_id: &str, ifname: &str) -> CniResult<()> {
        self.rt
            .block_on(self.store.del(pools, container_id, ifname))
    }

    fn find(
        &self,
        pools: &[PoolKey],
        container_id: &str,
        ifname: &str,
    ) -> CniResult<Vec<Option<u128>>> {
        self.rt
            .block_on(self.store.find(pools, container_id, ifname))
    }

    fn gc(&self, pools: &[PoolKey], valid: &HashSet<(String, String)>) -> CniResult<()> {
        self.rt.block_on(self.store.gc(pools, valid)).map(|_| ())
    }

    fn status(&self) -> CniResult<()> {
        self.rt.block_on(self.store.status())
    }
}

// ------------------------------------------------------------ reconciler

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub freed: usize,
    pub orips_deleted: usize,
}

/// Free allocations whose pod no longer exists (see `plan_reconcile`) in
/// every IPPool of `namespace`, then delete reservations that no pool entry
/// backs and that are older than `grace`. Meant for the manager, on a
/// schedule; writes use the same optimistic preconditions as the CNI, so it
/// needs no lock either. `grace` must exceed the longest ADD (the CNI gives
/// up after its bounded retries, far below kubelet's 4 min): 5 min is safe.
pub async fn reconcile(
    client: Client,
    namespace: &str,
    grace: Duration,
) -> CniResult<ReconcileReport> {
    let pools_api: Api<IPPool> = Api::namespaced(client.clone(), namespace);
    let orip_api: Api<OverlappingRangeIPReservation> = Api::namespaced(client.clone(), namespace);
    let pods_api: Api<Pod> = Api::all(client.clone());

    let pools = pools_api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err(&format!("list IPPools in {namespace}"), e))?;
    let pods = pods_api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_err("list pods", e))?;
    let orips = orip_api.list(&ListParams::default()).await.map_err(|e| {
        api_err(
            &format!("list OverlappingRangeIPReservations in {namespace}"),
            e,
        )
    })?;

    let mut states = Vec::new();
    let mut subnets: HashMap<String, ipnetwork::IpNetwork> = HashMap::new();
    for p in &pools.items {
        // A pool whose range does not parse is not ours to judge.
        let Ok(subnet) = p.spec.range.parse::<ipnetwork::IpNetwork>() else {
            continue;
        };
        let subnet = ipnetwork::IpNetwork::new(subnet.network(), subnet.prefix())
            .expect("prefix comes from a parsed network");
        let name = p.name_any();
        let Ok(parsed) = parse_pool(&name, &p.spec, subnet) else {
            continue;
        };
        subnets.insert(name.clone(), subnet);
        states.push(PoolState {
            name,
            subnet,
            allocations: parsed.pool.allocations,
        });
    }
    let pod_states: Vec<PodState> = pods
        .items
        .iter()
        .map(|p| PodState {
            podref: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
            finished: p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph == "Succeeded" || ph == "Failed"),
        })
        .collect();
    let now = k8s_openapi::jiff::Timestamp::now();
    let orip_states: Vec<OripState> = orips
        .items
        .iter()
        .map(|o| OripState {
            name: o.name_any(),
            uid: o.metadata.uid.clone().unwrap_or_default(),
            resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
            age_secs: o
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| now.as_second() - t.0.as_second())
                .unwrap_or(i64::MAX),
        })
        .collect();
    let plan = plan_reconcile(&states, &pod_states, &orip_states, grace.as_secs() as i64);

    let mut report = ReconcileReport::default();
    let mut by_pool: BTreeMap<&str, Vec<&Orphan>> = BTreeMap::new();
    for o in &plan.free {
        by_pool.entry(o.pool.as_str()).or_default().push(o);
    }
    for (pool, orphans) in by_pool {
        let subnet = subnets[pool];
        let store = KubeStore {
            client: client.clone(),
            namespace: namespace.to_string(),
            network_name: network_name_of(pool, subnet).to_string(),
            overlapping: true,
            slot: Default::default(),
        };
        let key = PoolKey {
            name: pool.to_string(),
            subnet,
        };
        // Only entries still exactly as planned: a sandbox that took one
        // over since the list (a new pod of that name) keeps it.
        let freed = store
            .remove_where(&key, |o, a| {
                orphans.iter().any(|x| x.offset == o && x.allocation == *a)
            })
            .await?;
        report.freed += freed.len();
    }
    for (name, uid, rv) in &plan.delete_orips {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: Some(rv.clone()),
            }),
            ..Default::default()
        };
        match orip_api.delete(name, &dp).await {
            Ok(_) => report.orips_deleted += 1,
            Err(e) if is_code(&e, 404) || is_code(&e, 409) => {}
            Err(e) => {
                return Err(api_err(
                    &format!("delete OverlappingRangeIPReservation {namespace}/{name}"),
                    e,
                ))
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_window_doubles_per_conflict_in_slots_and_is_capped() {
        let slot = Duration::from_millis(40);
        let mut b = ConflictBackoff::new(42);
        let ds: Vec<Duration> = (0..40).map(|_| b.next_delay(slot)).collect();
        assert!(ds[0] < slot * 2);
        assert!(ds[1] < slot * 4);
        let cap = slot * (1 << ConflictBackoff::MAX_EXP);
        assert!(ds.iter().all(|d| *d < cap), "{ds:?}");
        // Jittered, and the late window is really used.
        let distinct: HashSet<Duration> = ds.iter().copied().collect();
        assert!(distinct.len() > 30, "{ds:?}");
        assert!(ds[10..].iter().any(|d| *d > cap / 2), "{ds:?}");
        // Slots are clamped.
        let mut b = ConflictBackoff::new(7);
        assert!(b.next_delay(Duration::from_secs(60)) < ConflictBackoff::MAX_SLOT * 2);
        // The window after the n-th conflict is 2^n slots, capped at
        // 2^MAX_EXP, the slot clamped to [MIN_SLOT, MAX_SLOT].
        let windows = |slot: Duration| -> Vec<Duration> {
            let w = ConflictBackoff::windows(slot);
            (1..=7).map(|n| w.delay(n)).collect()
        };
        let ms = Duration::from_millis;
        let in_slots = |s: Duration| [2, 4, 8, 16, 32, 32, 32].map(|k| s * k).to_vec();
        assert_eq!(windows(ms(10)), in_slots(ms(10)));
        assert_eq!(windows(ms(60_000)), in_slots(ConflictBackoff::MAX_SLOT));
        assert_eq!(windows(Duration::ZERO), in_slots(ConflictBackoff::MIN_SLOT));
    }
}
