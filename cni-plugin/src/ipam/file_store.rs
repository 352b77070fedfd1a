//! The local file store: one JSON file per pool (network_name + subnet),
//! guarded by an flock on a sibling lock file.
//!
//! One operation = lock every pool it touches (in name order, so two
//! operations never wait on each other crosswise), read them, decide, then
//! for each changed pool write `<pool>.json.tmp`, fsync it, rename it over
//! `<pool>.json`, and fsync the directory once. A crash at any point leaves
//! either the old or the new file; a stale `.tmp` is simply overwritten by the
//! next writer (writers are serialised by the lock, so one fixed name is safe).
//! Every temp file is written before the first rename, so a write that fails
//! (a full disk) changes no pool, and a failed operation removes its temp
//! files.

use super::allocator::{Allocation, Pool};
use crate::error::{CniError, CniResult, Code};
use ipnetwork::IpNetwork;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// On-disk shape of a pool, modelled on whereabouts' IPPool `spec`.
#[derive(Debug, Serialize, Deserialize)]
struct PoolFile {
    /// The subnet, so a file can be checked against the config that opens it.
    range: String,
    /// Decimal offset from the network address -> allocation.
    allocations: BTreeMap<u128, Allocation>,
}

/// Identifies one pool file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolKey {
    pub name: String,
    pub subnet: IpNetwork,
}

impl PoolKey {
    /// whereabouts' IPPool naming: `[<network_name>-]<subnet>` with ':' and
    /// '/' turned into '-' (e.g. `10.200.5.0-24`, `fd00---64`).
    pub fn new(network_name: &str, subnet: IpNetwork) -> Self {
        let s = subnet.to_string().replace([':', '/'], "-");
        let name = if network_name.is_empty() {
            s
        } else {
            format!("{network_name}-{s}")
        };
        PoolKey { name, subnet }
    }
}

/// Whether an operation may create the store directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// ADD: create the directory and pools as needed.
    Create,
    /// DEL, CHECK, GC: a missing directory means empty pools.
    Existing,
}

#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    /// fsync the new file and the directory on every write (the default).
    /// Without it a process crash still leaves the old or the new file
    /// (rename is atomic), but a power loss may lose or, on filesystems
    /// without ext4's rename heuristics, truncate the latest write.
    fsync: bool,
}

/// Held locks; dropping it unlocks (the kernel also drops them if we die).
struct Locks(#[allow(dead_code)] Vec<Flock<File>>);

impl FileStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStore {
            dir: dir.into(),
            fsync: true,
        }
    }

    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pool_path(&self, key: &PoolKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.name))
    }

    /// Run `decide` on the pools `keys` (same order) under their locks and
    /// persist every pool it marked dirty. If `decide` fails nothing is
    /// written, so a failed ADD leaves no half-made allocation.
    pub fn transact<R>(
        &self,
        keys: &[PoolKey],
        open: Open,
        decide: impl FnOnce(&mut [Pool]) -> CniResult<R>,
    ) -> CniResult<R> {
        match open {
            Open::Create => std::fs::create_dir_all(&self.dir)
                .map_err(|e| store_io(format!("create store dir {}", self.dir.display()), e))?,
            Open::Existing => {
                if !self.dir.is_dir() {
                    let mut empty = vec![Pool::default(); keys.len()];
                    return decide(&mut empty);
                }
            }
        }
        let _locks = self.lock(keys)?;
        let mut pools = keys
            .iter()
            .map(|k| self.load(k))
            .collect::<CniResult<Vec<_>>>()?;
        let out = decide(&mut pools)?;
        // Write every changed pool's temp file first and rename only when
        // all are written: with several pools (dual stack), a write that
        // fails on the second must not leave the first one renamed, which
        // would be half an allocation.
        let mut staged = Staged(Vec::new());
        for (k, p) in keys.iter().zip(&pools) {
            if p.dirty {
                staged.0.push(self.write_tmp(k, p)?);
            }
        }
        let wrote = !staged.0.is_empty();
        staged.commit()?;
        if wrote && self.fsync {
            // Make the renames durable before we report success.
            let d = File::open(&self.dir)
                .map_err(|e| CniError::io(format!("open {}", self.dir.display()), e))?;
            d.sync_all()
                .map_err(|e| CniError::io(format!("fsync {}", self.dir.display()), e))?;
        }
        Ok(out)
    }

    /// Read one pool without taking its lock (tests, inspection). The file is
    /// only ever replaced by rename, so a reader sees a whole version.
    pub fn read_pool(&self, key: &PoolKey) -> CniResult<Pool> {
        self.load(key)
    }

    fn lock(&self, keys: &[PoolKey]) -> CniResult<Locks> {
        let mut order: Vec<&PoolKey> = keys.iter().collect();
        order.sort();
        order.dedup();
        let mut held = Vec::with_capacity(order.len());
        for k in order {
            let path = self.dir.join(format!("{}.lock", k.name));
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| store_io(format!("open lock {}", path.display()), e))?;
            loop {
                match Flock::lock(f, FlockArg::LockExclusive) {
                    Ok(l) => {
                        held.push(l);
                        break;
                    }
                    Err((back, Errno::EINTR)) => f = back,
                    Err((_, e)) => return Err(CniError::io(format!("lock {}", path.display()), e)),
                }
            }
        }
        Ok(Locks(held))
    }

    fn load(&self, key: &PoolKey) -> CniResult<Pool> {
        let path = self.pool_path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Pool::default()),
            Err(e) => return Err(CniError::io(format!("read pool {}", path.display()), e)),
        };
        decode_pool_file(&path, key, &bytes)
    }

    fn tmp_path(&self, key: &PoolKey) -> PathBuf {
        self.dir.join(format!("{}.json.tmp", key.name))
    }

    /// Write `<pool>.json.tmp` for `pool`; returns `(tmp, pool file)` for
    /// the rename. On failure the temp file is removed: on a full disk it
    /// would otherwise stay behind, partial, taking space.
    fn write_tmp(&self, key: &PoolKey, pool: &Pool) -> CniResult<(PathBuf, PathBuf)> {
        let path = self.pool_path(key);
        let tmp = self.tmp_path(key);
        let bytes = encode_pool_file(key, pool)?;
        let write = || -> Result<(), (&str, std::io::Error)> {
            let mut f = File::create(&tmp).map_err(|e| ("create", e))?;
            f.write_all(&bytes).map_err(|e| ("write", e))?;
            if self.fsync {
                // The data must be on disk before the rename can be: otherwise a
                // power loss can leave an empty file under the pool's name.
                f.sync_data().map_err(|e| ("fsync", e))?;
            }
            Ok(())
        };
        match write() {
            Ok(()) => Ok((tmp, path)),
            Err((what, e)) => {
                let _ = std::fs::remove_file(&tmp);
                Err(store_io(
                    format!(
                        "{what} {} (the new version of pool file {})",
                        tmp.display(),
                        path.display()
                    ),
                    e,
                ))
            }
        }
    }
}

/// Temp files written and not yet renamed over their pool files: `(tmp,
/// pool file)`. Dropping it removes those left, so a failed operation leaves
/// no temp file behind.
struct Staged(Vec<(PathBuf, PathBuf)>);

impl Staged {
    /// Rename each temp file over its pool file, in order.
    fn commit(mut self) -> CniResult<()> {
        while let Some((tmp, path)) = self.0.first() {
            std::fs::rename(tmp, path).map_err(|e| {
                store_io(format!("rename {} to {}", tmp.display(), path.display()), e)
            })?;
            self.0.remove(0);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.0 {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A store I/O error for `what` (which names the file). A full filesystem
/// (ENOSPC, or EDQUOT over a quota) is code 11, a transient condition
/// (SPEC §5): the runtime should retry once space is freed. When it comes
/// from creating the directory, a lock or a temp file, or from writing one,
/// no rename has happened yet, so the operation changed no pool. Any other
/// I/O error is code 5.
fn store_io(what: String, e: std::io::Error) -> CniError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            CniError::new(Code::TryAgainLater, format!("{what}: {e}"))
                .with_details("the IPAM store's filesystem is full; retry once space is freed")
        }
        _ => CniError::io(what, e),
    }
}

/// Decode the bytes of pool file `path` for `key`. Pure (the fuzz target
/// `ipam_store` drives it with hostile bytes).
pub fn decode_pool_file(path: &Path, key: &PoolKey, bytes: &[u8]) -> CniResult<Pool> {
    let file: PoolFile = serde_json::from_slice(bytes)
        .map_err(|e| CniError::io(format!("pool file {} is corrupt", path.display()), e))?;
    if file.range != key.subnet.to_string() {
        return Err(CniError::io(
            format!("pool file {}", path.display()),
            format!("holds range {} but {} was expected", file.range, key.subnet),
        ));
    }
    // We never write an offset outside the subnet; a file that has one is
    // corrupt, and using it would hand out an address outside the range
    // (`IpRange::ip_at` wraps it into another subnet, or overflows).
    let max = super::config::max_offset(key.subnet);
    if let Some(o) = file.allocations.keys().find(|&&o| o > max) {
        return Err(CniError::io(
            format!("pool file {}", path.display()),
            format!("holds offset {o}, outside {}", key.subnet),
        ));
    }
    Ok(Pool {
        allocations: file.allocations,
        dirty: false,
    })
}

/// The bytes `save` writes for `pool` (one JSON line).
pub fn encode_pool_file(key: &PoolKey, pool: &Pool) -> CniResult<Vec<u8>> {
    #[derive(Serialize)]
    struct PoolFileRef<'a> {
        range: String,
        allocations: &'a BTreeMap<u128, Allocation>,
    }
    let mut bytes = serde_json::to_vec(&PoolFileRef {
        range: key.subnet.to_string(),
        allocations: &pool.allocations,
    })
    .map_err(|e| CniError::io(format!("encode pool {}", key.name), e))?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the temp dir, removed on drop (also on panic).
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "mignet-ipam-store-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn alloc(id: &str) -> Allocation {
        Allocation {
            id: id.into(),
            ifname: "net1".into(),
            podref: String::new(),
        }
    }

    #[test]
    fn pool_names_follow_whereabouts() {
        assert_eq!(
            PoolKey::new("", "10.200.5.0/24".parse().unwrap()).name,
            "10.200.5.0-24"
        );
        assert_eq!(
            PoolKey::new("net", "fd00::/64".parse().unwrap()).name,
            "net-fd00---64"
        );
    }

    #[test]
    fn roundtrip_with_128_bit_offsets() {
        let t = TempDir::new("rt");
        let s = FileStore::new(&t.0);
        let key = PoolKey::new("", "::/0".parse().unwrap());
        s.transact(std::slice::from_ref(&key), Open::Create, |p| {
            p[0].allocations.insert(u128::MAX - 1, alloc("big"));
            p[0].allocations.insert(9, alloc("small"));
            p[0].dirty = true;
            Ok(())
        })
        .unwrap();
        let text = std::fs::read_to_string(s.pool_path(&key)).unwrap();
        assert!(text.contains(&format!("\"{}\"", u128::MAX - 1)), "{text}");
        assert!(!t.0.join(format!("{}.json.tmp", key.name)).exists());
        let p = s.read_pool(&key).unwrap();
        assert_eq!(p.allocations.len(), 2);
        assert_eq!(p.allocations[&(u128::MAX - 1)].id, "big");
    }

    #[test]
    fn failed_decision_writes_nothing() {
        let t = TempDir::new("fail");
        let s = FileStore::new(&t.0);
        let key = PoolKey::new("", "10.0.0.0/24".parse().unwrap());
        let r: CniResult<()> = s.transact(std::slice::from_ref(&key), Open::Create, |p| {
            p[0].allocations.insert(1, alloc("x"));
            p[0].dirty = true;
            Err(CniError::new(Code::Plugin(100), "no"))
        });
        assert!(r.is_err());
        assert!(!s.pool_path(&key).exists());
    }

    #[test]
    fn existing_mode_does_not_create_the_dir() {
        let t = TempDir::new("noc");
        let s = FileStore::new(&t.0);
        let key = PoolKey::new("", "10.0.0.0/24".parse().unwrap());
        let n = s
            .transact(std::slice::from_ref(&key), Open::Existing, |p| {
                Ok(p[0].allocations.len())
            })
            .unwrap();
        assert_eq!(n, 0);
        assert!(!t.0.exists());
    }

    #[test]
    fn stale_tmp_and_wrong_range_and_corrupt_file() {
        let t = TempDir::new("stale");
        let s = FileStore::new(&t.0);
        let key = PoolKey::new("", "10.0.0.0/24".parse().unwrap());
        std::fs::create_dir_all(&t.0).unwrap();
        // A writer killed before its rename leaves a partial tmp; the next
        // writer overwrites it.
        std::fs::write(t.0.join("10.0.0.0-24.json.tmp"), b"{\"range\":\"10.0").unwrap();
        s.transact(std::slice::from_ref(&key), Open::Create, |p| {
            p[0].allocations.insert(1, alloc("x"));
            p[0].dirty = true;
            Ok(())
        })
        .unwrap();
        assert_eq!(s.read_pool(&key).unwrap().allocations.len(), 1);
        let other = PoolKey {
            name: key.name.clone(),
            subnet: "10.0.0.0/16".parse().unwrap(),
        };
        let e = s.read_pool(&other).unwrap_err();
        assert_eq!(e.code, Code::Io);
        assert!(e.msg.contains("holds range 10.0.0.0/24"), "{}", e.msg);
        std::fs::write(s.pool_path(&key), b"{garbage").unwrap();
        let e = s.read_pool(&key).unwrap_err();
        assert!(e.msg.contains("corrupt"), "{}", e.msg);
    }

    #[test]
    fn a_full_filesystem_is_try_again_later_and_other_io_errors_are_code_5() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = store_io(
                "write /s/p.json.tmp".into(),
                std::io::Error::from_raw_os_error(errno),
            );
            assert_eq!(e.code, Code::TryAgainLater);
            assert!(e.msg.starts_with("write /s/p.json.tmp: "), "{}", e.msg);
            assert!(e.details.contains("full"), "{}", e.details);
        }
        let e = store_io(
            "write /s/p.json.tmp".into(),
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(e.code, Code::Io);
        assert!(e.msg.contains("/s/p.json.tmp"), "{}", e.msg);
    }

    #[test]
    fn an_offset_outside_the_subnet_is_corrupt() {
        // Found by tests/fuzz (ipam_store): a repeated ADD of the owner of
        // offset 2551 in a /30 answered 10.200.15.247.
        let key = PoolKey::new("", "10.200.6.0/30".parse().unwrap());
        let path = Path::new("/s/p.json");
        let ok = br#"{"range":"10.200.6.0/30","allocations":{"3":{"id":"a"}}}"#;
        assert_eq!(
            decode_pool_file(path, &key, ok).unwrap().allocations.len(),
            1
        );
        let bad = br#"{"range":"10.200.6.0/30","allocations":{"2551":{"id":"a"}}}"#;
        let e = decode_pool_file(path, &key, bad).unwrap_err();
        assert_eq!(e.code, Code::Io);
        assert!(e.msg.contains("/s/p.json"), "{}", e.msg);
        assert!(e.msg.contains("offset 2551"), "{}", e.msg);
    }
}
