//! [`Backend`] over the lab's local object store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Backend, BackendError, Changes, Kind, ObjectRef, Op, Selector};
use crate::store::{Store, StoreError};

/// The lab-mode backend. Store calls take a file lock and fsync, so they
/// run on the blocking pool, never on a runtime worker.
#[derive(Clone)]
pub struct LocalBackend {
    store: Arc<Store>,
    changes: watch::Receiver<u64>,
    _feed: Arc<Feed>,
}

struct Feed(JoinHandle<()>);

impl Drop for Feed {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the store-wide revision is checked for writes made by other
/// processes (the CLI); in-process writes wake at once.
const REVISION_POLL: Duration = Duration::from_millis(100);

impl LocalBackend {
    /// Wrap `store`. Must be called inside a tokio runtime.
    pub fn new(store: Arc<Store>) -> Self {
        let (tx, rx) = watch::channel(0u64);
        let mut events = store.subscribe();
        let poll_store = store.clone();
        let feed = tokio::spawn(async move {
            let mut last = poll_store.revision().unwrap_or(0);
            let mut tick = tokio::time::interval(REVISION_POLL);
            loop {
                tokio::select! {
                    ev = events.recv() => {
                        if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                            return;
                        }
                        // Lagged also means "changed".
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    _ = tick.tick() => {
                        // Other processes' writes only show in the revision
                        // file; a failed read is retried on the next tick.
                        if let Ok(rev) = poll_store.revision() {
                            if rev != last {
                                last = rev;
                                tx.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        }
                    }
                }
            }
        });
        Self {
            store,
            changes: rx,
            _feed: Arc::new(Feed(feed)),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: Op,
        object: ObjectRef,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let store = self.store.clone();
        let obj = object.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(|e| map_err(op, obj, e)),
            Err(join) => Err(BackendError::Transient {
                op,
                object,
                source: Box::new(join),
            }),
        }
    }
}

fn map_err(op: Op, object: ObjectRef, e: StoreError) -> BackendError {
    match e {
        StoreError::NotFound { .. } => BackendError::NotFound { object },
        StoreError::AlreadyExists { .. } => BackendError::AlreadyExists { object },
        StoreError::Conflict { .. } => BackendError::Conflict { object },
        StoreError::Invalid { .. } | StoreError::Convert { .. } => BackendError::Permanent {
            op,
            object,
            source: Box::new(e),
        },
        StoreError::Fs(_) => BackendError::Transient {
            op,
            object,
            source: Box::new(e),
        },
    }
}

fn ns_of<K: Kind>(namespace: &str) -> String {
    if K::NAMESPACED {
        namespace.to_owned()
    } else {
        String::new()
    }
}

impl Backend for LocalBackend {
    async fn get<K: Kind>(&self, namespace: &str, name: &str) -> Result<Option<K>, BackendError> {
        let (ns, n) = (ns_of::<K>(namespace), name.to_owned());
        self.blocking(Op::Get, ObjectRef::new::<K>(namespace, name), move |s| {
            match s.get::<K>(&ns, &n) {
                // A key the store refuses (e.g. a namespace with capitals
                // from a console URL) names no object: not found, as the API
                // server answers, instead of a server error.
                Err(StoreError::Invalid { .. }) => Ok(None),
                other => other,
            }
        })
        .await
    }

    async fn list<K: Kind>(&self, namespace: Option<&str>) -> Result<Vec<K>, BackendError> {
        let ns = namespace.map(ns_of::<K>).filter(|n| !n.is_empty());
        if ns
            .as_deref()
            .is_some_and(|n| !crate::config::is_dns1123_label(n))
        {
            // No object lives in a namespace that cannot exist.
            return Ok(Vec::new());
        }
        let object = ObjectRef::new::<K>(namespace.unwrap_or(""), "*");
        self.blocking(Op::List, object, move |s| s.list::<K>(ns.as_deref()))
            .await
    }

    async fn list_selected<K: Kind>(
        &self,
        namespace: Option<&str>,
        selectors: &[Selector],
    ) -> Result<Vec<K>, BackendError> {
        Selector::check_all::<K>(selectors, namespace)?;
        let ns = namespace.map(ns_of::<K>).filter(|n| !n.is_empty());
        if ns
            .as_deref()
            .is_some_and(|n| !crate::config::is_dns1123_label(n))
        {
            return Ok(Vec::new());
        }
        let object = ObjectRef::new::<K>(namespace.unwrap_or(""), "*");
        let selectors = selectors.to_vec();
        // One pass over the files for all selectors, filtered on the stored
        // JSON: objects that do not match are never converted to their type.
        self.blocking(Op::List, object, move |s| {
            s.list_where::<K>(ns.as_deref(), |v| {
                Selector::any_matches(&selectors, |k| {
                    v.pointer("/metadata/labels")?.get(k)?.as_str()
                })
            })
        })
        .await
    }

    async fn create<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        let o = obj.clone();
        self.blocking(Op::Create, ObjectRef::of(obj), move |s| s.create(&o))
            .await
    }

    async fn replace<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        let o = obj.clone();
        self.blocking(Op::Replace, ObjectRef::of(obj), move |s| s.update(&o))
            .await
    }

    async fn replace_status<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        let o = obj.clone();
        self.blocking(Op::ReplaceStatus, ObjectRef::of(obj), move |s| {
            s.update_status(&o)
        })
        .await
    }

    async fn delete<K: Kind>(&self, namespace: &str, name: &str) -> Result<(), BackendError> {
        let (ns, n) = (ns_of::<K>(namespace), name.to_owned());
        self.blocking(Op::Delete, ObjectRef::new::<K>(namespace, name), move |s| {
            s.delete_typed::<K>(&ns, &n).map(|_| ())
        })
        .await
    }

    fn changes(&self) -> Changes {
        let mut rx = self.changes.clone();
        rx.mark_unchanged();
        Changes::new(rx)
    }
}
