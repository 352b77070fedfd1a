//! The local object store: what the API server is to cluster mode, this is to
//! lab mode.
//!
//! Objects are the same serde types (kube-derive CRDs, k8s-openapi Pods,
//! DaemonSets, Nodes), kept as one JSON file each under
//! `<root>/objects/<kind>/<namespace>/<name>.json` (cluster-scoped kinds use
//! the namespace directory `_cluster`). The API server's semantics we rely on
//! are reproduced:
//! - `metadata.uid`, `creationTimestamp`, `generation` (bumped when anything
//!   outside metadata and status changes) and a store-wide `resourceVersion`;
//! - optimistic concurrency: an update carrying a stale `resourceVersion`
//!   fails with [`StoreError::Conflict`];
//! - status kept apart from spec: `create`/`update` ignore the status they
//!   are given, `update_status` changes nothing else;
//! - finalizers: `delete` of an object with finalizers only sets
//!   `deletionTimestamp`; the object goes when an update empties the list.
//!
//! Several processes share one store (the lab daemon and every CLI call): all
//! writes hold an exclusive `flock` on `<root>/store.lock`, and each file is
//! replaced by write-temp + fsync + rename + fsync(dir), so a crash leaves
//! either the old or the new object, never a torn one. In-process consumers
//! subscribe to a broadcast channel of [`Event`]s; other processes notice
//! writes through [`Store::wait_for_change`], which watches the store-wide
//! revision file.

pub(crate) mod fs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

pub use fs::FsError;

/// Directory name of cluster-scoped objects (no namespace).
const CLUSTER_SCOPE_DIR: &str = "_cluster";

/// Where one object lives: kind (as in `kind:`), namespace ("" for
/// cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of an object as stored (`kind` and `metadata`).
    pub fn of(obj: &Value) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::Invalid {
            reason: reason.to_owned(),
        };
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("object has no kind"))?;
        let meta = obj
            .get("metadata")
            .ok_or_else(|| invalid("object has no metadata"))?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("object has no metadata.name"))?;
        let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
        Ok(Self::new(kind, namespace, name))
    }

    /// Typed key: kind from the Rust type.
    pub fn for_type<K: kube::Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        Self::new(&K::kind(&()), namespace, name)
    }

    fn validate(&self) -> Result<(), StoreError> {
        // Keys become path components: refuse anything that could climb out
        // of the store or collide (`..`, `/`, the cluster-scope directory).
        let ok = |s: &str, allow_upper: bool| {
            !s.is_empty()
                && s.len() <= 253
                && !s.starts_with('.')
                && s.bytes().all(|c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || c == b'-'
                        || c == b'.'
                        || (allow_upper && c.is_ascii_uppercase())
                })
        };
        if !ok(&self.kind, true) {
            return Err(StoreError::Invalid {
                reason: format!("kind {:?} is not a valid kind", self.kind),
            });
        }
        if !self.namespace.is_empty() && !crate::config::is_dns1123_label(&self.namespace) {
            return Err(StoreError::Invalid {
                reason: format!("namespace {:?} is not a DNS-1123 label", self.namespace),
            });
        }
        if !ok(&self.name, false) {
            return Err(StoreError::Invalid {
                reason: format!(
                    "name {:?} must be lowercase letters, digits, '-' or '.'",
                    self.name
                ),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} not found")]
    NotFound { key: Key },
    #[error("{key} already exists")]
    AlreadyExists { key: Key },
    #[error("{key}: the object has been modified (resourceVersion {given}, stored {stored}); read it again and retry")]
    Conflict {
        key: Key,
        given: String,
        stored: u64,
    },
    #[error("invalid object: {reason}")]
    Invalid { reason: String },
    #[error("converting {key} to or from its type")]
    Convert {
        key: Key,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as a watch would deliver it.
#[derive(Debug, Clone)]
pub struct Event {
    pub type_: EventType,
    pub key: Key,
    pub resource_version: u64,
    /// The object after the change (for Deleted: its last state).
    pub object: Value,
}

/// What `delete` did.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone; its last state.
    Gone(Value),
    /// Finalizers hold it: deletionTimestamp is set, the object stays.
    Pending(Value),
}

/// Current time as Kubernetes writes timestamps: RFC 3339, whole seconds, UTC.
pub fn now_rfc3339() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub struct Store {
    root: PathBuf,
    events: broadcast::Sender<Event>,
    clock: fn() -> String,
}

impl Store {
    /// Open (creating if needed) the store under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root.join("objects"))?;
        let events = channel_for(&root);
        Ok(Self {
            root,
            events,
            clock: now_rfc3339,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Receive every change made from now on through any handle on this
    /// store in this process.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The store-wide revision: the resourceVersion of the latest write by
    /// any process.
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(fs::read_revision(&self.revision_path())?)
    }

    /// Block until the revision moves past `since` (a write by this or any
    /// other process), or `timeout` passes. Returns the revision seen.
    pub fn wait_for_change(&self, since: u64, timeout: Duration) -> Result<u64, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            let rev = self.revision()?;
            if rev != since || Instant::now() >= deadline {
                return Ok(rev);
            }
            // Polling one small file: cheap, and works across processes
            // without inotify plumbing.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ------------------------------------------------------------ raw JSON

    pub fn get_value(&self, key: &Key) -> Result<Option<Value>, StoreError> {
        key.validate()?;
        Ok(fs::read_json(&self.object_path(key))?)
    }

    /// Objects of `kind`, in `namespace` or in all namespaces, sorted by
    /// namespace and name.
    pub fn list_values(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, StoreError> {
        let kind_dir = self.root.join("objects").join(kind);
        let namespaces: Vec<String> = match namespace {
            Some(ns) => {
                // The namespace becomes a path component, as in a key: the
                // same check keeps `..` and `/` from leaving the store.
                if !ns.is_empty() && !crate::config::is_dns1123_label(ns) {
                    return Err(StoreError::Invalid {
                        reason: format!("namespace {ns:?} is not a DNS-1123 label"),
                    });
                }
                vec![ns_dir(ns).to_owned()]
            }
            None => fs::list_dir(&kind_dir)?,
        };
        let mut out = Vec::new();
        for ns in namespaces {
            let dir = kind_dir.join(&ns);
            for file in fs::list_dir(&dir)? {
                if let Some(name) = file.strip_suffix(".json") {
                    if let Some(v) = fs::read_json(&dir.join(format!("{name}.json")))? {
                        out.push(v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Create an object. Status is ignored, as the API server does for
    /// resources with a status subresource; use [`Store::update_status`].
    pub fn create_value(&self, mut obj: Value) -> Result<Value, StoreError> {
        let key = Key::of(&obj)?;
        key.validate()?;
        let _lock = fs::lock(&self.lock_path())?;
        let path = self.object_path(&key);
        if fs::read_json(&path)?.is_some() {
            return Err(StoreError::AlreadyExists { key });
        }
        let rv = fs::read_revision(&self.revision_path())? + 1;
        let map = as_object(&mut obj)?;
        map.remove("status");
        let meta = metadata(map);
        meta.insert("uid".into(), Value::String(new_uid()?));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert("generation".into(), Value::from(1));
        meta.insert("creationTimestamp".into(), Value::String((self.clock)()));
        meta.remove("deletionTimestamp");
        self.commit(&key, rv, Some(&obj))?;
        self.notify(EventType::Added, key, rv, &obj);
        Ok(obj)
    }

    /// Replace an object's metadata and spec (everything but status). With a
    /// `resourceVersion`, the update is conditional on it; without, it is
    /// unconditional (like a PUT without one). An object being deleted whose
    /// last finalizer this update removes is deleted.
    pub fn update_value(&self, mut obj: Value) -> Result<Value, StoreError> {
        let key = Key::of(&obj)?;
        key.validate()?;
        let _lock = fs::lock(&self.lock_path())?;
        let path = self.object_path(&key);
        let stored =
            fs::read_json(&path)?.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        check_version(&key, &obj, &stored)?;
        let rv = self.next_version(&stored)?;

        let map = as_object(&mut obj)?;
        match stored.get("status") {
            Some(s) => map.insert("status".into(), s.clone()),
            None => map.remove("status"),
        };
        let changed_spec = without_meta_status(&obj) != without_meta_status(&stored);
        let old_meta = stored.get("metadata").cloned().unwrap_or_default();
        let meta = metadata(as_object(&mut obj)?);
        // Server-owned fields cannot be changed by a client.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if changed_spec {
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta.insert("generation".into(), Value::from(generation));
        }
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        let deleting = meta.contains_key("deletionTimestamp");
        let no_finalizers = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if deleting && no_finalizers {
            self.commit(&key, rv, None)?;
            self.notify(EventType::Deleted, key, rv, &obj);
        } else {
            self.commit(&key, rv, Some(&obj))?;
            self.notify(EventType::Modified, key, rv, &obj);
        }
        Ok(obj)
    }

    /// Replace only the status (the `/status` subresource).
    pub fn update_status_value(&self, obj: Value) -> Result<Value, StoreError> {
        let key = Key::of(&obj)?;
        key.validate()?;
        let _lock = fs::lock(&self.lock_path())?;
        let path = self.object_path(&key);
        let mut stored =
            fs::read_json(&path)?.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        check_version(&key, &obj, &stored)?;
        let rv = self.next_version(&stored)?;
        let map = as_object(&mut stored)?;
        match obj.get("status") {
            Some(s) if !s.is_null() => map.insert("status".into(), s.clone()),
            _ => map.remove("status"),
        };
        metadata(map).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.commit(&key, rv, Some(&stored))?;
        self.notify(EventType::Modified, key, rv, &stored);
        Ok(stored)
    }

    /// Delete: immediately when there are no finalizers, else mark with
    /// `deletionTimestamp` and leave the object to its finalizers' owners.
    pub fn delete(&self, key: &Key) -> Result<Deleted, StoreError> {
        key.validate()?;
        let _lock = fs::lock(&self.lock_path())?;
        let path = self.object_path(key);
        let mut stored =
            fs::read_json(&path)?.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        let rv = self.next_version(&stored)?;
        let meta = metadata(as_object(&mut stored)?);
        let has_finalizers = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            self.commit(key, rv, None)?;
            self.notify(EventType::Deleted, key.clone(), rv, &stored);
            return Ok(Deleted::Gone(stored));
        }
        if meta.contains_key("deletionTimestamp") {
            // Deleting twice changes nothing (and writes nothing).
            return Ok(Deleted::Pending(stored));
        }
        meta.insert("deletionTimestamp".into(), Value::String((self.clock)()));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.commit(key, rv, Some(&stored))?;
        self.notify(EventType::Modified, key.clone(), rv, &stored);
        Ok(Deleted::Pending(stored))
    }

    // --------------------------------------------------------------- typed

    pub fn get<K: Typed>(&self, namespace: &str, name: &str) -> Result<Option<K>, StoreError> {
        let key = Key::for_type::<K>(namespace, name);
        self.get_value(&key)?
            .map(|v| from_value(&key, v))
            .transpose()
    }

    pub fn list<K: Typed>(&self, namespace: Option<&str>) -> Result<Vec<K>, StoreError> {
        let kind = K::kind(&());
        self.list_values(&kind, namespace)?
            .into_iter()
            .map(|v| {
                let key = Key::of(&v)?;
                from_value(&key, v)
            })
            .collect()
    }

    /// [`Store::list`] of the objects for which `keep` (given the stored
    /// JSON) is true; the others are not converted to `K`.
    pub fn list_where<K: Typed>(
        &self,
        namespace: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Vec<K>, StoreError> {
        let kind = K::kind(&());
        self.list_values(&kind, namespace)?
            .into_iter()
            .filter(|v| keep(v))
            .map(|v| {
                let key = Key::of(&v)?;
                from_value(&key, v)
            })
            .collect()
    }

    pub fn create<K: Typed>(&self, obj: &K) -> Result<K, StoreError> {
        let v = self.create_value(to_value(obj)?)?;
        from_value(&Key::of(&v)?, v)
    }

    pub fn update<K: Typed>(&self, obj: &K) -> Result<K, StoreError> {
        let v = self.update_value(to_value(obj)?)?;
        from_value(&Key::of(&v)?, v)
    }

    pub fn update_status<K: Typed>(&self, obj: &K) -> Result<K, StoreError> {
        let v = self.update_status_value(to_value(obj)?)?;
        from_value(&Key::of(&v)?, v)
    }

    pub fn delete_typed<K: Typed>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Deleted, StoreError> {
        self.delete(&Key::for_type::<K>(namespace, name))
    }

    /// Read-modify-write with retries on conflict (another writer got in
    /// between). `f` may be called more than once.
    pub fn modify<K: Typed>(
        &self,
        namespace: &str,
        name: &str,
        mut f: impl FnMut(&mut K),
    ) -> Result<K, StoreError> {
        let key = Key::for_type::<K>(namespace, name);
        loop {
            let mut obj: K = self
                .get(namespace, name)?
                .ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            f(&mut obj);
            match self.update(&obj) {
                Err(e) if e.is_conflict() => continue,
                other => return other,
            }
        }
    }

    // ------------------------------------------------------------ plumbing

    /// The resourceVersion for a write of the existing object `stored`:
    /// past the revision and past `stored`'s own version. The second matters
    /// when a write failed between its object and its revision (a full disk):
    /// the object then carries a version the revision never reached, and
    /// handing that version out again for newer content would make watchers
    /// that saw it skip the newer object.
    fn next_version(&self, stored: &Value) -> Result<u64, StoreError> {
        let rev = fs::read_revision(&self.revision_path())?;
        Ok(rev.max(stored_version(stored)) + 1)
    }

    fn lock_path(&self) -> PathBuf {
        self.root.join("store.lock")
    }

    fn revision_path(&self) -> PathBuf {
        self.root.join("revision")
    }

    fn object_path(&self, key: &Key) -> PathBuf {
        self.root
            .join("objects")
            .join(&key.kind)
            .join(ns_dir(&key.namespace))
            .join(format!("{}.json", key.name))
    }

    /// Write (or remove) the object, then the revision. Called with the lock
    /// held. The object goes first, so a reader that sees the revision move
    /// finds the object that moved it. A crash or a full disk in between
    /// leaves a revision one behind the newest object; the next write moves
    /// past both ([`Store::next_version`]).
    fn commit(&self, key: &Key, rv: u64, obj: Option<&Value>) -> Result<(), StoreError> {
        let path = self.object_path(key);
        match obj {
            Some(v) => {
                // objects/<kind>/<namespace>, one level at a time below the
                // objects directory Store::open made (see fs::write_atomic).
                let ns_dir = path.parent().expect("object paths have a parent");
                fs::create_dir(ns_dir.parent().expect("and a kind directory"))?;
                fs::create_dir(ns_dir)?;
                fs::write_json(&path, v)?
            }
            None => fs::remove(&path)?,
        }
        fs::write_revision(&self.revision_path(), rv)?;
        Ok(())
    }

    fn notify(&self, type_: EventType, key: Key, resource_version: u64, obj: &Value) {
        // No receivers is fine: nobody in this process is watching.
        let _ = self.events.send(Event {
            type_,
            key,
            resource_version,
            object: obj.clone(),
        });
    }
}

/// One event channel per store directory and process, so every handle on
/// the same store (the lab loop's, an in-process agent's, a CLI verb run
/// in-process) sees every change made through any of them.
fn channel_for(root: &Path) -> broadcast::Sender<Event> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CHANNELS: OnceLock<Mutex<HashMap<PathBuf, broadcast::Sender<Event>>>> = OnceLock::new();
    let key = root.canonicalize().unwrap_or_else(|_| root.to_owned());
    CHANNELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert_with(|| broadcast::channel(1024).0)
        .clone()
}

/// Types the store can hold: any serde Kubernetes resource with a static kind.
pub trait Typed: Serialize + DeserializeOwned + kube::Resource<DynamicType = ()> {}
impl<T: Serialize + DeserializeOwned + kube::Resource<DynamicType = ()>> Typed for T {}

fn ns_dir(ns: &str) -> &str {
    if ns.is_empty() {
        CLUSTER_SCOPE_DIR
    } else {
        ns
    }
}

fn to_value<K: Typed>(obj: &K) -> Result<Value, StoreError> {
    let key = Key::new(
        &K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or(""),
    );
    let mut v = serde_json::to_value(obj).map_err(|source| StoreError::Convert {
        key: key.clone(),
        source,
    })?;
    // k8s-openapi types serialise apiVersion/kind themselves; make sure
    // every stored object says what it is even if a type does not.
    if let Some(map) = v.as_object_mut() {
        map.entry("kind")
            .or_insert_with(|| Value::String(K::kind(&()).into_owned()));
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(K::api_version(&()).into_owned()));
    }
    Ok(v)
}

fn from_value<K: Typed>(key: &Key, v: Value) -> Result<K, StoreError> {
    serde_json::from_value(v).map_err(|source| StoreError::Convert {
        key: key.clone(),
        source,
    })
}

fn as_object(v: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    v.as_object_mut().ok_or_else(|| StoreError::Invalid {
        reason: "object is not a JSON map".into(),
    })
}

fn metadata(map: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
        .expect("metadata was just made an object")
}

fn without_meta_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn stored_version(stored: &Value) -> u64 {
    stored
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn check_version(key: &Key, given: &Value, stored: &Value) -> Result<(), StoreError> {
    let Some(given) = given
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return Ok(());
    };
    let stored = stored_version(stored);
    if given.parse::<u64>().ok() != Some(stored) {
        return Err(StoreError::Conflict {
            key: key.clone(),
            given: given.to_owned(),
            stored,
        });
    }
    Ok(())
}

/// A random (version 4) UUID, as the API server assigns.
fn new_uid() -> Result<String, StoreError> {
    let mut b = fs::random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests;
