//! [`Backend`] over a real API server.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{protocol, Backend, BackendError, Changes, Kind, ObjectRef, Op, Selector};
use crate::api::{
    HyperConverged, NodeMaintenance, VirtualMachine, VirtualMachineInstance,
    VirtualMachineInstanceMigration,
};

/// The cluster-mode backend: a kube client plus one watcher per kind
/// feeding the change signal.
#[derive(Clone)]
pub struct KubeBackend {
    client: Client,
    changes: watch::Receiver<u64>,
    _watchers: Arc<Watchers>,
}

/// Which kinds a [`KubeBackend`] watches for its change signal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// VMIs, VMIMs, HyperConvergeds, VMs and Nodes (console, tests).
    Controller,
    /// Those, launcher pods and NodeMaintenances (the migration
    /// controller of `mignet manager`, which makes and reads them).
    ControllerWithPods,
}

/// The watcher tasks end with the last clone of the backend.
struct Watchers(Vec<JoinHandle<()>>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl KubeBackend {
    /// Start watching VMIs, VMIMs, VMs, HyperConvergeds (`namespace`, or
    /// all namespaces when `None`) and Nodes. Must be called inside a tokio
    /// runtime.
    pub fn new(client: Client, namespace: Option<&str>) -> Self {
        Self::watching(client, namespace, namespace, Watched::Controller)
    }

    /// The migration controller's backend when the HyperConverged lives in
    /// a namespace of its own (`--namespace` of `mignet manager`) while
    /// VMIs are watched in `namespace` (all when `None`): the manager's
    /// role grants HyperConverged reads in that one namespace, and a
    /// cluster-wide watch would be refused and retried forever (seen on
    /// the cluster bed: a 403 warning a second, and no wake-up on a
    /// HyperConverged change).
    pub fn for_controller(client: Client, namespace: Option<&str>, hco_namespace: &str) -> Self {
        Self::watching(
            client,
            namespace,
            Some(hco_namespace),
            Watched::ControllerWithPods,
        )
    }

    /// The node agent's backend: watches only what the agent on `node`
    /// reads, so its RBAC needs no VirtualMachine or Node access (a watcher
    /// refused by RBAC would retry forever, unseen): HyperConvergeds, and
    /// the VMIs and VMIMs labelled with its node
    /// ([`protocol::agent_selectors`], as `crate::agent::observe` lists
    /// them), so a change elsewhere in the cluster neither reaches nor
    /// wakes it. What it reads by name, unlabelled, it re-reads on its tick.
    ///
    /// [`protocol::agent_selectors`]: super::protocol::agent_selectors
    pub fn for_agent(client: Client, namespace: Option<&str>, node: &str) -> Self {
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let ns = namespace.unwrap_or("");
        let mut tasks = vec![spawn_watch(
            HyperConverged::api(client.clone(), ns),
            tx.clone(),
        )];
        match super::protocol::agent_selectors(node) {
            Some((vmi, vmim)) => {
                for s in vmi {
                    tasks.push(spawn_watch_labelled(
                        VirtualMachineInstance::api(client.clone(), ns),
                        &s.to_string(),
                        tx.clone(),
                    ));
                }
                for s in vmim {
                    tasks.push(spawn_watch_labelled(
                        VirtualMachineInstanceMigration::api(client.clone(), ns),
                        &s.to_string(),
                        tx.clone(),
                    ));
                }
            }
            None => {
                tasks.push(spawn_watch(
                    VirtualMachineInstance::api(client.clone(), ns),
                    tx.clone(),
                ));
                tasks.push(spawn_watch(
                    VirtualMachineInstanceMigration::api(client.clone(), ns),
                    tx,
                ));
            }
        }
        Self {
            client,
            changes: rx,
            _watchers: Arc::new(Watchers(tasks)),
        }
    }

    fn watching(
        client: Client,
        namespace: Option<&str>,
        hco_namespace: Option<&str>,
        watched: Watched,
    ) -> Self {
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let ns = namespace.unwrap_or("");
        let hco_ns = hco_namespace.unwrap_or("");
        let mut tasks = vec![
            spawn_watch(VirtualMachineInstance::api(client.clone(), ns), tx.clone()),
            spawn_watch(
                VirtualMachineInstanceMigration::api(client.clone(), ns),
                tx.clone(),
            ),
            spawn_watch(HyperConverged::api(client.clone(), hco_ns), tx.clone()),
        ];
        tasks.push(spawn_watch(
            VirtualMachine::api(client.clone(), ns),
            tx.clone(),
        ));
        tasks.push(spawn_watch(Node::api(client.clone(), ""), tx.clone()));
        if watched == Watched::ControllerWithPods {
            // NodeMaintenances (cluster-scoped): only the migration
            // controller acts on them and only its role may read them. Where
            // the CRD is absent the watcher retries quietly.
            tasks.push(spawn_watch(
                NodeMaintenance::api(client.clone(), ""),
                tx.clone(),
            ));
            // Only launcher pods: the controller never reads other pods, and
            // only it may list them (the console's role has no pods).
            tasks.push(spawn_watch_labelled(
                Pod::api(client.clone(), ns),
                protocol::LAUNCHER_LABEL,
                tx,
            ));
        }
        Self {
            client,
            changes: rx,
            _watchers: Arc::new(Watchers(tasks)),
        }
    }

    /// A backend without watchers, for a caller that watches on its own
    /// (the network rollout's controller): its [`Backend::changes`] never
    /// fires, and it needs no RBAC beyond the calls it makes.
    pub fn unwatched(client: Client) -> Self {
        let (_, rx) = watch::channel(0u64);
        Self {
            client,
            changes: rx,
            _watchers: Arc::new(Watchers(Vec::new())),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn spawn_watch<K: Kind>(api: kube::Api<K>, tx: Arc<watch::Sender<u64>>) -> JoinHandle<()> {
    spawn_watch_with(api, watcher::Config::default(), tx)
}

/// Watch only the objects `label` selects (a label selector: `key` for
/// any value, `key=value`).
fn spawn_watch_labelled<K: Kind>(
    api: kube::Api<K>,
    label: &str,
    tx: Arc<watch::Sender<u64>>,
) -> JoinHandle<()> {
    spawn_watch_with(api, watcher::Config::default().labels(label), tx)
}

fn spawn_watch_with<K: Kind>(
    api: kube::Api<K>,
    config: watcher::Config,
    tx: Arc<watch::Sender<u64>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Only "something changed" matters (the loops re-list), so the
        // stream's payload is dropped; errors are retried with backoff by
        // the watcher and wake nobody.
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            if ev.is_ok() {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    })
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

fn map_err(op: Op, object: ObjectRef, e: kube::Error) -> BackendError {
    if let kube::Error::Api(status) = &e {
        match status.code {
            404 => return BackendError::NotFound { object },
            409 if status.reason == "AlreadyExists" => {
                return BackendError::AlreadyExists { object }
            }
            409 => return BackendError::Conflict { object },
            _ => {}
        }
    }
    if is_transient(&e) {
        BackendError::Transient {
            op,
            object,
            source: Box::new(e),
        }
    } else {
        BackendError::Permanent {
            op,
            object,
            source: Box::new(e),
        }
    }
}

/// The merge patch writing `after` over `before`: only `part`'s changed
/// fields, plus `before`'s resourceVersion, which the API server treats as
/// a precondition (409 Conflict when stale), exactly like a PUT's.
fn patch_body<K: Kind>(
    op: Op,
    before: &K,
    after: &K,
    keep: impl Fn(&str) -> bool,
) -> Result<serde_json::Value, BackendError> {
    let to_json = |o: &K| {
        serde_json::to_value(o).map_err(|e| BackendError::Permanent {
            op,
            object: ObjectRef::of(o),
            source: Box::new(e),
        })
    };
    let only = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => {
            serde_json::Value::Object(m.into_iter().filter(|(k, _)| keep(k)).collect())
        }
        other => other,
    };
    let (b, a) = (only(to_json(before)?), only(to_json(after)?));
    let mut patch = super::merge_diff(&b, &a).unwrap_or_else(|| serde_json::json!({}));
    if let serde_json::Value::Object(m) = &mut patch {
        let meta = m.entry("metadata").or_insert_with(|| serde_json::json!({}));
        if let serde_json::Value::Object(meta) = meta {
            meta.insert(
                "resourceVersion".into(),
                serde_json::json!(before.meta().resource_version),
            );
        }
    }
    Ok(patch)
}

fn ns_of<K: Kind>(obj: &K) -> String {
    if K::NAMESPACED {
        obj.meta().namespace.clone().unwrap_or_default()
    } else {
        String::new()
    }
}

impl Backend for KubeBackend {
    async fn get<K: Kind>(&self, namespace: &str, name: &str) -> Result<Option<K>, BackendError> {
        K::api(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| map_err(Op::Get, ObjectRef::new::<K>(namespace, name), e))
    }

    async fn list<K: Kind>(&self, namespace: Option<&str>) -> Result<Vec<K>, BackendError> {
        let ns = namespace.unwrap_or("");
        K::api(self.client.clone(), ns)
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .map_err(|e| map_err(Op::List, ObjectRef::new::<K>(ns, "*"), e))
    }

    async fn list_selected<K: Kind>(
        &self,
        namespace: Option<&str>,
        selectors: &[Selector],
    ) -> Result<Vec<K>, BackendError> {
        Selector::check_all::<K>(selectors, namespace)?;
        let ns = namespace.unwrap_or("");
        // A label selector cannot say "or": one request each, merged.
        let mut by_key = std::collections::BTreeMap::new();
        for s in selectors {
            let params = kube::api::ListParams::default().labels(&s.to_string());
            let items = K::api(self.client.clone(), ns)
                .list(&params)
                .await
                .map_err(|e| map_err(Op::List, ObjectRef::new::<K>(ns, "*"), e))?
                .items;
            for o in items {
                by_key.insert((ns_of(&o), o.meta().name.clone().unwrap_or_default()), o);
            }
        }
        Ok(by_key.into_values().collect())
    }

    async fn create<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        // The API server refuses a create carrying a resourceVersion; the
        // local store ignores it. Same behaviour in both: drop it.
        let mut obj = obj.clone();
        obj.meta_mut().resource_version = None;
        let obj = &obj;
        K::api(self.client.clone(), &ns_of(obj))
            .create(&post_params(), obj)
            .await
            .map_err(|e| map_err(Op::Create, ObjectRef::of(obj), e))
    }

    async fn replace<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        let name = obj.meta().name.clone().unwrap_or_default();
        K::api(self.client.clone(), &ns_of(obj))
            .replace(&name, &post_params(), obj)
            .await
            .map_err(|e| map_err(Op::Replace, ObjectRef::of(obj), e))
    }

    async fn replace_status<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        let name = obj.meta().name.clone().unwrap_or_default();
        K::api(self.client.clone(), &ns_of(obj))
            .replace_status(&name, &post_params(), obj)
            .await
            .map_err(|e| map_err(Op::ReplaceStatus, ObjectRef::of(obj), e))
    }

    async fn patch_object<K: Kind>(&self, before: &K, after: &K) -> Result<K, BackendError> {
        let name = before.meta().name.clone().unwrap_or_default();
        // Status goes through its own subresource; apiVersion/kind are the
        // same on both sides and would only be noise.
        let body = patch_body(Op::Patch, before, after, |k| {
            !matches!(k, "status" | "apiVersion" | "kind")
        })?;
        K::api(self.client.clone(), &ns_of(before))
            .patch(&name, &patch_params(), &Patch::Merge(&body))
            .await
            .map_err(|e| map_err(Op::Patch, ObjectRef::of(before), e))
    }

    async fn patch_status<K: Kind>(&self, before: &K, after: &K) -> Result<K, BackendError> {
        let name = before.meta().name.clone().unwrap_or_default();
        let body = patch_body(Op::PatchStatus, before, after, |k| k == "status")?;
        K::api(self.client.clone(), &ns_of(before))
            .patch_status(&name, &patch_params(), &Patch::Merge(&body))
            .await
            .map_err(|e| map_err(Op::PatchStatus, ObjectRef::of(before), e))
    }

    async fn delete<K: Kind>(&self, namespace: &str, name: &str) -> Result<(), BackendError> {
        K::api(self.client.clone(), namespace)
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| map_err(Op::Delete, ObjectRef::new::<K>(namespace, name), e))
    }

    fn changes(&self) -> Changes {
        let mut rx = self.changes.clone();
        rx.mark_unchanged();
        Changes::new(rx)
    }
}

/// How long a watcher waits before a retry is the watcher's own backoff;
/// this is only the poll period suggested to loops that also tick.
pub const SUGGESTED_TICK: Duration = Duration::from_secs(5);

/// Field manager for every write the manager makes, so `managedFields`
/// says who set what.
pub const FIELD_MANAGER: &str = "mignet-manager";

/// Whether retrying the same request later can succeed: conflicts,
/// throttling, server errors and transport failures can; a 4xx such as
/// Forbidden or Invalid needs a human.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => {
            status.code == 409 || status.code == 429 || status.code >= 500 || status.code == 0
        }
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) | kube::Error::InferConfig(_) => {
            false
        }
        _ => true,
    }
}

/// Parameters for our merge patches: a fixed field manager.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}
