//! The object backend the migration controller and the node agent run on:
//! the same typed get/list/create/replace/delete over the real API server
//! ([`KubeBackend`], cluster mode) or the lab's local store
//! ([`LocalBackend`], lab mode). One controller, one agent, two modes.
//!
//! # The controller <-> agent protocol
//!
//! Everything goes through the objects, identically in both modes (no side
//! channel), KubeVirt-style. "migrationState" is the VMI's
//! `status.migrationState`; the VMIM's phase is `status.phase` with one
//! `phaseTransitionTimestamps` entry per phase entered. Every write is
//! conditional on the resourceVersion just read ([`Backend::replace`] /
//! [`Backend::replace_status`]); a [`BackendError::Conflict`] means "someone
//! else moved first: re-read and decide again".
//!
//! 1. **Admission (controller).** A new VMIM (no phase) is checked with
//!    `mignet_policy::admit`: VMI missing, not Running, not LiveMigratable
//!    or already migrating -> phase Failed with a `Refused` condition
//!    (reason + message). Otherwise it becomes Pending and gets the
//!    finalizer [`protocol::FINALIZER`] (`mignet.io/migration`).
//! 2. **Start (controller only).** Pending VMIMs wait until the scheduler
//!    (`mignet_policy::decide`, limits from the HyperConverged's effective
//!    config, default 5 per cluster / 2 outbound per node) starts them; the
//!    waiting reason is a `Pending` condition on the VMIM. On start the
//!    controller writes migrationState {migrationUid = VMIM uid,
//!    sourceNode, targetNode, startTimestamp, mode PreCopy, ...} and
//!    `status.migrationMethod` on the VMI first, then moves the VMIM
//!    Pending -> Scheduling -> Scheduled (the VMIM status also carries a
//!    copy of the migrationState with source/target). The controller is the
//!    only writer that moves a VMIM out of Pending.
//! 3. **Target agent** (its node == migrationState.targetNode, the VMIM is
//!    Scheduled, targetNodeAddress unset): VMIM -> PreparingTarget; starts
//!    the destination QEMU (`-incoming`) and the listener on its migration
//!    IP; writes migrationState.targetNodeAddress (`ip:port`, IPv6 in
//!    brackets), targetNodeDomainDetected = true (and
//!    targetDirectMigrationNodePorts); VMIM -> TargetReady.
//! 4. **Source agent** (its node == VMI `status.nodeName`, VMIM TargetReady,
//!    targetNodeAddress set): VMIM -> Running; migrates through its proxy;
//!    while running it writes progress to the VMIM annotation
//!    [`protocol::PROGRESS_ANNOTATION`] ([`protocol::Progress`] as JSON).
//!    On success: migrationState.completed = true, endTimestamp, VMI
//!    `status.nodeName` = targetNode (one status write), then VMIM
//!    Succeeded. On failure: migrationState.failed = true, failureReason,
//!    endTimestamp, VMIM Failed (the VM keeps running on the source).
//! 5. **Cancel.** Deleting a VMIM sets deletionTimestamp; the finalizer
//!    holds it. Pending (or final) -> the controller removes the finalizer
//!    and the object goes. Started and not final -> the controller sets
//!    migrationState.abortRequested = true; the source agent aborts (VM
//!    keeps running on the source), writes abortStatus Succeeded | Failed
//!    (+ failed = true, failureReason "aborted by user", endTimestamp) and
//!    moves the VMIM to Failed; then the controller removes the finalizer.
//!    The source agent answers abortRequested in every started phase
//!    (Scheduling..Running), not only while Running: before Running there
//!    is nothing to stop on the source, so it records abortStatus Succeeded
//!    at once. The target agent tears down what it prepared once
//!    abortRequested is set or the VMIM is Failed. The controller never
//!    writes abortStatus itself; a VMIM whose VMI no longer records its
//!    migration (other migrationUid, VMI gone) is released without one.
//! 6. **LiveMigratable.** The controller keeps the `LiveMigratable`
//!    condition of every VMI current (`ClusterIndex::live_migratable`:
//!    shared volumes, host-model CPU with a matching schedulable node).
//! 7. **Drain.** A Node with the `kubevirt.io/drain` taint (cluster mode;
//!    the lab's drain sets `spec.unschedulable` and the same taint) gets an
//!    evacuation VMIM for each LiveMigrate VMI on it (annotation
//!    [`protocol::EVACUATION_ANNOTATION`] = node name, so the scheduler
//!    puts it first), throttled like any other. The VMIs that cannot leave
//!    are reported on the Node annotation [`protocol::DRAIN_REPORT_ANNOTATION`]
//!    ([`protocol::DrainReport`] as JSON). Uncordon -> Pending evacuations
//!    are deleted (cancelled); started ones finish.
//! 8. **Node labels (controller).** Every pass the controller makes each
//!    VMI's labels [`protocol::VMI_NODE_LABEL`] (`kubevirt.io/nodeName`) =
//!    `status.nodeName` and [`protocol::VMI_TARGET_NODE_LABEL`]
//!    (`kubevirt.io/migrationTargetNodeName`) = migrationState.targetNode,
//!    and each started VMIM's [`protocol::VMIM_SOURCE_NODE_LABEL`] /
//!    [`protocol::VMIM_TARGET_NODE_LABEL`] = its migrationState's source and
//!    target, whoever wrote the status (so objects from before the labels
//!    get them too). An agent reads only the objects labelled with its node
//!    ([`Backend::list_selected`], `crate::agent::observe`), plus by name
//!    the VMIs of its running VMs and of its unfinished migrations that the
//!    selection lacks; a label that lags the status delays an agent's step,
//!    never makes it stop a VM (see `crate::agent::observe`).
//! 9. **NodeMaintenance (controller).** A `nodemaintenance.medik8s.io`
//!    NodeMaintenance cordons its node with the node-maintenance-operator's
//!    taints and marks the node's LiveMigrate VMIs with
//!    `status.evacuationNodeName`, which makes the node draining for step 7;
//!    evictionStrategy None VMs are stopped (launcher pod deleted). Its
//!    deletion uncordons and clears the marks, so step 7 cancels the
//!    Pending evacuations (`crate::control::maintenance`).
//!
//! # Change signal
//!
//! [`Backend::changes`] gives a [`Changes`] receiver that wakes on any
//! change to the kinds the controller and agent watch (VMI, VMIM, Node,
//! HyperConverged, VM; the manager's controller also launcher pods and
//! NodeMaintenances). Loops are level-triggered: on a change or a periodic
//! tick they re-list (the controller everything, an agent its node's
//! selection) and decide from scratch; no event payload is trusted.

pub mod kube;
pub mod local;
pub mod protocol;

use std::fmt;
use std::future::Future;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolumeClaim, Pod};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::network_ref::is_dns1123_subdomain;
use crate::api::{
    HyperConverged, NetworkAttachmentDefinition, NodeMaintenance, VirtualMachine,
    VirtualMachineInstance, VirtualMachineInstanceMigration,
};

pub use self::kube::KubeBackend;
pub use local::LocalBackend;

/// A kind the backend can read and write. Implemented for the five kinds
/// the migration control uses; `api` builds the kube `Api` for a scope
/// (kube's typed constructors need the scope statically).
pub trait Kind:
    Clone
    + fmt::Debug
    + Serialize
    + DeserializeOwned
    + ::kube::Resource<DynamicType = ()>
    + Send
    + Sync
    + 'static
{
    /// Whether objects of this kind live in a namespace.
    const NAMESPACED: bool;
    /// The kube API handle for `namespace` ("" = all namespaces, or the
    /// cluster scope for cluster-scoped kinds).
    fn api(client: ::kube::Client, namespace: &str) -> ::kube::Api<Self>;
}

macro_rules! namespaced_kind {
    ($t:ty) => {
        impl Kind for $t {
            const NAMESPACED: bool = true;
            fn api(client: ::kube::Client, namespace: &str) -> ::kube::Api<Self> {
                if namespace.is_empty() {
                    ::kube::Api::all(client)
                } else {
                    ::kube::Api::namespaced(client, namespace)
                }
            }
        }
    };
}
namespaced_kind!(VirtualMachineInstance);
namespaced_kind!(VirtualMachineInstanceMigration);
namespaced_kind!(VirtualMachine);
namespaced_kind!(HyperConverged);
// Launcher pods and the claims behind VM disks (cluster mode; the lab store
// keeps the same kinds).
namespaced_kind!(Pod);
namespaced_kind!(PersistentVolumeClaim);
// What a kubelet says about a pod it could not start (a pre-flight probe
// whose CNI ADD failed: `FailedCreatePodSandBox`).
namespaced_kind!(Event);
// The network rollout's: the agent DaemonSet it annotates and the NAD the
// migration network names.
namespaced_kind!(DaemonSet);
namespaced_kind!(NetworkAttachmentDefinition);

impl Kind for Node {
    const NAMESPACED: bool = false;
    fn api(client: ::kube::Client, _namespace: &str) -> ::kube::Api<Self> {
        ::kube::Api::all(client)
    }
}

impl Kind for NodeMaintenance {
    const NAMESPACED: bool = false;
    fn api(client: ::kube::Client, _namespace: &str) -> ::kube::Api<Self> {
        ::kube::Api::all(client)
    }
}

/// Which object an error is about: `Kind namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new<K: Kind>(namespace: &str, name: &str) -> Self {
        Self {
            kind: K::kind(&()).into_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn of<K: Kind>(obj: &K) -> Self {
        Self::new::<K>(
            obj.meta().namespace.as_deref().unwrap_or(""),
            obj.meta().name.as_deref().unwrap_or(""),
        )
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The backend operation that failed (for messages and metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    List,
    Create,
    Replace,
    ReplaceStatus,
    Patch,
    PatchStatus,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::List => "list",
            Op::Create => "create",
            Op::Replace => "replace",
            Op::ReplaceStatus => "replace status",
            Op::Patch => "patch",
            Op::PatchStatus => "patch status",
            Op::Delete => "delete",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{object} not found")]
    NotFound { object: ObjectRef },
    #[error("{object} already exists")]
    AlreadyExists { object: ObjectRef },
    /// The resourceVersion precondition failed: re-read and decide again.
    #[error("{object} was modified by someone else")]
    Conflict { object: ObjectRef },
    /// Retrying later can succeed (server busy, connection lost).
    #[error("{op} {object}: transient failure")]
    Transient {
        op: Op,
        object: ObjectRef,
        #[source]
        source: Source,
    },
    /// Retrying the same request will not help (invalid object, forbidden).
    #[error("{op} {object} failed")]
    Permanent {
        op: Op,
        object: ObjectRef,
        #[source]
        source: Source,
    },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, BackendError::Conflict { .. })
    }
    /// Worth retrying: conflicts (after a re-read) and transient failures.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::Conflict { .. } | BackendError::Transient { .. }
        )
    }
    /// The API server refused the caller (403). The local store has no
    /// access control, so this is only ever true in cluster mode.
    pub fn is_forbidden(&self) -> bool {
        match self {
            BackendError::Permanent { source, .. } => source
                .downcast_ref::<::kube::Error>()
                .is_some_and(|e| matches!(e, ::kube::Error::Api(s) if s.code == 403)),
            _ => false,
        }
    }
    /// A short fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::NotFound { .. } => "not_found",
            BackendError::AlreadyExists { .. } => "already_exists",
            BackendError::Conflict { .. } => "conflict",
            BackendError::Transient { .. } => "transient",
            BackendError::Permanent { .. } => "permanent",
        }
    }
}

/// Wakes a level-triggered loop when anything it watches changed.
/// Each receiver sees every change made after it was created (or after its
/// last `changed()`), coalesced: many writes may wake it once.
#[derive(Clone)]
pub struct Changes(tokio::sync::watch::Receiver<u64>);

impl Changes {
    pub fn new(rx: tokio::sync::watch::Receiver<u64>) -> Self {
        Self(rx)
    }

    /// Wait for the next change. Returns at once if one happened since the
    /// last call. If the backend is gone it never returns (loops also have
    /// a tick and a shutdown signal).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Typed object access with API-server semantics (resourceVersion
/// preconditions, status subresource, finalizers). `Clone` is cheap and
/// clones share one connection / store and one change feed.
pub trait Backend: Clone + Send + Sync + 'static {
    /// One object, `None` if it does not exist. `namespace` is ignored for
    /// cluster-scoped kinds.
    fn get<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<K>, BackendError>> + Send;

    /// All objects of a kind in `namespace` (`None` = all namespaces).
    fn list<K: Kind>(
        &self,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<Vec<K>, BackendError>> + Send;

    /// The objects of a kind in `namespace` (`None` = all namespaces) whose
    /// labels match any of `selectors` (the union several list requests
    /// would return, each object once, by namespace and name), filtered
    /// where they are stored (the API server's `labelSelector`, one request
    /// per selector; one pass over the lab store), so a reader interested
    /// in a few objects neither receives nor decodes the others. An invalid
    /// selector is a [`BackendError::Permanent`], as the API server's 400
    /// is. The default lists everything and filters here (for wrappers).
    fn list_selected<K: Kind>(
        &self,
        namespace: Option<&str>,
        selectors: &[Selector],
    ) -> impl Future<Output = Result<Vec<K>, BackendError>> + Send {
        async move {
            Selector::check_all::<K>(selectors, namespace)?;
            let mut all: Vec<K> = self.list(namespace).await?;
            all.retain(|o| {
                Selector::any_matches(selectors, |k| {
                    o.meta().labels.as_ref()?.get(k).map(String::as_str)
                })
            });
            Ok(all)
        }
    }

    /// Create; status is ignored (write it with `replace_status`).
    fn create<K: Kind>(&self, obj: &K) -> impl Future<Output = Result<K, BackendError>> + Send;

    /// Replace metadata + spec. The object's resourceVersion is a
    /// precondition: stale -> [`BackendError::Conflict`]. Removing the last
    /// finalizer of an object being deleted deletes it.
    fn replace<K: Kind>(&self, obj: &K) -> impl Future<Output = Result<K, BackendError>> + Send;

    /// Replace the status only, with the same precondition.
    fn replace_status<K: Kind>(
        &self,
        obj: &K,
    ) -> impl Future<Output = Result<K, BackendError>> + Send;

    /// Write what changed from `before` (the object as read) to `after` in
    /// metadata and spec, conditional on `before`'s resourceVersion. The
    /// API server gets a merge patch of only the changed fields, so fields
    /// our types do not model survive the write; a store that only holds
    /// our own types may replace (the default).
    fn patch_object<K: Kind>(
        &self,
        before: &K,
        after: &K,
    ) -> impl Future<Output = Result<K, BackendError>> + Send {
        let _ = before;
        self.replace(after)
    }

    /// [`Backend::patch_object`] for the status subresource.
    fn patch_status<K: Kind>(
        &self,
        before: &K,
        after: &K,
    ) -> impl Future<Output = Result<K, BackendError>> + Send {
        let _ = before;
        self.replace_status(after)
    }

    /// Delete: gone at once without finalizers, else deletionTimestamp set.
    /// A missing object is [`BackendError::NotFound`].
    fn delete<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// A receiver of the change signal.
    fn changes(&self) -> Changes;
}

/// A label selector of equality requirements (`key=value`, all must hold),
/// the subset of Kubernetes' selectors the agent needs. Built with
/// [`Selector::eq`] / [`Selector::and`]; [`fmt::Display`] gives the
/// `labelSelector` query form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<(String, String)>);

impl Selector {
    /// Objects labelled `key=value`.
    pub fn eq(key: &str, value: &str) -> Self {
        Self(vec![(key.to_owned(), value.to_owned())])
    }

    /// And also labelled `key=value`.
    pub fn and(mut self, key: &str, value: &str) -> Self {
        self.0.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Whether labels (looked up by key) meet every requirement.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|(k, v)| label(k) == Some(v.as_str()))
    }

    /// Whether labels meet every requirement of at least one selector.
    pub fn any_matches<'a>(selectors: &[Self], label: impl Fn(&str) -> Option<&'a str>) -> bool {
        selectors.iter().any(|s| s.matches(&label))
    }

    /// [`Selector::check`] of each.
    pub fn check_all<K: Kind>(
        selectors: &[Self],
        namespace: Option<&str>,
    ) -> Result<(), BackendError> {
        selectors.iter().try_for_each(|s| s.check::<K>(namespace))
    }

    /// Refuse what the API server refuses: a key that is not a qualified
    /// name or a value that is not a label value. Checked before any read,
    /// so both backends answer an invalid selector alike (and a value with
    /// `,` cannot smuggle in a second requirement).
    pub fn check<K: Kind>(&self, namespace: Option<&str>) -> Result<(), BackendError> {
        match self
            .0
            .iter()
            .find(|(k, v)| !is_label_key(k) || !is_label_value(v))
        {
            None => Ok(()),
            Some((k, v)) => Err(BackendError::Permanent {
                op: Op::List,
                object: ObjectRef::new::<K>(namespace.unwrap_or(""), "*"),
                source: format!("invalid label selector requirement {k:?}={v:?}").into(),
            }),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// A label value as Kubernetes allows it: at most 63 characters,
/// alphanumerics, `-`, `_`, `.`, beginning and ending alphanumeric; empty
/// is allowed. A node name longer than 63 characters (legal for a Node)
/// cannot be one.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
}

/// The name part of a label key (non-empty label value).
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: `name` or `prefix/name`, the prefix a DNS-1123 subdomain
/// (the same check as object names, [`is_dns1123_subdomain`]).
fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        None => is_label_name(s),
        Some((prefix, name)) => is_label_name(name) && is_dns1123_subdomain(prefix),
    }
}

/// Add `finalizer` to the object if missing (re-reading on conflict).
/// Returns the object as stored, or `None` if it is gone.
pub async fn add_finalizer<B: Backend, K: Kind>(
    backend: &B,
    namespace: &str,
    name: &str,
    finalizer: &str,
) -> Result<Option<K>, BackendError> {
    modify(backend, namespace, name, |obj: &mut K| {
        let f = obj.meta_mut().finalizers.get_or_insert_with(Vec::new);
        if f.iter().any(|x| x == finalizer) {
            return false;
        }
        f.push(finalizer.to_owned());
        true
    })
    .await
}

/// Remove `finalizer` from the object (re-reading on conflict). An object
/// being deleted goes away with its last finalizer; then this returns
/// `Ok(None)`, as it does for an object already gone.
pub async fn remove_finalizer<B: Backend, K: Kind>(
    backend: &B,
    namespace: &str,
    name: &str,
    finalizer: &str,
) -> Result<Option<K>, BackendError> {
    modify(backend, namespace, name, |obj: &mut K| {
        let Some(f) = obj.meta_mut().finalizers.as_mut() else {
            return false;
        };
        let before = f.len();
        f.retain(|x| x != finalizer);
        f.len() != before
    })
    .await
}

/// Read-modify-write of metadata/spec with retries on conflict. `f`
/// returns whether it changed anything (no write otherwise). `Ok(None)`
/// when the object does not exist (or disappeared with the write). The
/// write is [`Backend::patch_object`]: only what `f` changed is sent, with
/// the read resourceVersion as precondition.
pub async fn modify<B: Backend, K: Kind>(
    backend: &B,
    namespace: &str,
    name: &str,
    f: impl FnMut(&mut K) -> bool + Send,
) -> Result<Option<K>, BackendError> {
    modify_part(backend, namespace, name, Part::Object, f).await
}

/// Read-modify-write of the status with retries on conflict; as [`modify`].
pub async fn modify_status<B: Backend, K: Kind>(
    backend: &B,
    namespace: &str,
    name: &str,
    f: impl FnMut(&mut K) -> bool + Send,
) -> Result<Option<K>, BackendError> {
    modify_part(backend, namespace, name, Part::Status, f).await
}

/// The JSON merge patch (RFC 7386) that turns `before` into `after`:
/// changed and added keys with their new value, removed keys as `null`,
/// nested objects diffed key by key. Arrays are replaced whole (merge
/// patches cannot address an element), so a list is sent entire when any
/// element changed. `None` when nothing differs. Pure.
pub fn merge_diff(
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> Option<serde_json::Value> {
    use serde_json::{Map, Value};
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut out = Map::new();
            for (k, av) in a {
                match b.get(k) {
                    Some(bv) => {
                        if let Some(d) = merge_diff(bv, av) {
                            out.insert(k.clone(), d);
                        }
                    }
                    None => {
                        out.insert(k.clone(), av.clone());
                    }
                }
            }
            for k in b.keys() {
                if !a.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        // A null in a merge patch means "remove": an explicit null in
        // `after` where `before` had an object is exactly that.
        _ if before == after => None,
        _ => Some(after.clone()),
    }
}

/// Which write a read-modify-write ends with: the API server keeps status
/// apart from the rest, so one write never changes both.
#[derive(Clone, Copy)]
enum Part {
    Object,
    Status,
}

async fn modify_part<B: Backend, K: Kind>(
    backend: &B,
    namespace: &str,
    name: &str,
    part: Part,
    mut f: impl FnMut(&mut K) -> bool + Send,
) -> Result<Option<K>, BackendError> {
    loop {
        let Some(before) = backend.get::<K>(namespace, name).await? else {
            return Ok(None);
        };
        let mut obj = before.clone();
        if !f(&mut obj) {
            return Ok(Some(obj));
        }
        let written = match part {
            Part::Object => backend.patch_object(&before, &obj).await,
            Part::Status => backend.patch_status(&before, &obj).await,
        };
        match written {
            Ok(o) => return Ok(Some(o)),
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_label_key, is_label_value, merge_diff, Selector};
    use serde_json::json;

    #[test]
    fn selector_matches_all_requirements_and_prints_the_query_form() {
        let s = Selector::eq("kubevirt.io/nodeName", "node-a").and("x", "1");
        assert_eq!(s.to_string(), "kubevirt.io/nodeName=node-a,x=1");
        let labels = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(x, _)| *x == k).map(|(_, v)| *v)
        };
        assert!(s.matches(labels(&[("kubevirt.io/nodeName", "node-a"), ("x", "1")])));
        assert!(!s.matches(labels(&[("kubevirt.io/nodeName", "node-a")])));
        assert!(!s.matches(labels(&[("kubevirt.io/nodeName", "node-b"), ("x", "1")])));
    }

    #[test]
    fn label_syntax_is_what_the_api_server_accepts() {
        assert!(is_label_value("node-a.example_1"));
        assert!(is_label_value(""));
        assert!(!is_label_value(&"n".repeat(64)));
        assert!(!is_label_value("a,b=c"));
        assert!(!is_label_value("-a"));
        assert!(is_label_key("kubevirt.io/nodeName"));
        assert!(is_label_key("app"));
        assert!(!is_label_key("Kubevirt.io/nodeName"));
        assert!(!is_label_key("a/b/c"));
        assert!(!is_label_key("kubevirt.io/"));
    }

    #[test]
    fn merge_diff_sends_only_what_changed() {
        let before = json!({
            "phase": "Running",
            "nodeName": "a",
            "migrationState": {"targetNode": "b", "foreign": {"x": 1}},
            "conditions": [{"type": "Ready"}]
        });
        let after = json!({
            "phase": "Running",
            "nodeName": "b",
            "migrationState": {"targetNode": "b", "completed": true, "foreign": {"x": 1}},
            "conditions": [{"type": "Ready"}]
        });
        assert_eq!(
            merge_diff(&before, &after),
            Some(json!({"nodeName": "b", "migrationState": {"completed": true}}))
        );
    }

    #[test]
    fn merge_diff_removes_with_null_and_replaces_lists_whole() {
        let before = json!({"a": 1, "b": {"c": 2}, "l": [1, 2]});
        let after = json!({"b": {}, "l": [1, 3]});
        assert_eq!(
            merge_diff(&before, &after),
            Some(json!({"a": null, "b": {"c": null}, "l": [1, 3]}))
        );
    }

    #[test]
    fn merge_diff_of_equal_values_is_none() {
        let v = json!({"a": [1], "b": {"c": "d"}});
        assert_eq!(merge_diff(&v, &v), None);
        assert_eq!(merge_diff(&json!(1), &json!(2)), Some(json!(2)));
    }
}
