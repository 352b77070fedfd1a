//! [`Backend`] over a real API server.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Backend, BackendError, Changes, Kind, ObjectRef, Op};
use crate::api::{
    HyperConverged, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
};
use crate::kube_adapter::FIELD_MANAGER;

/// The cluster-mode backend: a kube client plus one watcher per kind
/// feeding the change signal.
#[derive(Clone)]
pub struct KubeBackend {
    client: Client,
    changes: watch::Receiver<u64>,
    _watchers: Arc<Watchers>,
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
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let ns = namespace.unwrap_or("");
        let tasks = vec![
            spawn_watch(VirtualMachineInstance::api(client.clone(), ns), tx.clone()),
            spawn_watch(
                VirtualMachineInstanceMigration::api(client.clone(), ns),
                tx.clone(),
            ),
            spawn_watch(VirtualMachine::api(client.clone(), ns), tx.clone()),
            spawn_watch(HyperConverged::api(client.clone(), ns), tx.clone()),
            spawn_watch(Node::api(client.clone(), ""), tx),
        ];
        Self {
            client,
            changes: rx,
            _watchers: Arc::new(Watchers(tasks)),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn spawn_watch<K: Kind>(api: kube::Api<K>, tx: Arc<watch::Sender<u64>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Only "something changed" matters (the loops re-list), so the
        // stream's payload is dropped; errors are retried with backoff by
        // the watcher and wake nobody.
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
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
    if crate::kube_adapter::is_transient(&e) {
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
