//! File plumbing of the store: the cross-process lock and crash-safe writes.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path}: revision {text:?} is not a number (was it edited by hand?)")]
    BadRevision { path: PathBuf, text: String },
    #[error("{path} is not valid JSON (was it edited by hand?)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Exclusive lock on `path` (created if needed), released on drop. flock
/// locks belong to the open file description, so two Stores in one process
/// exclude each other as two processes do.
pub fn lock(path: &Path) -> Result<Flock<File>, FsError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("opening lock file", path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| FsError::Lock {
        path: path.to_owned(),
        source,
    })
}

pub fn create_dir_all(path: &Path) -> Result<(), FsError> {
    std::fs::create_dir_all(path).map_err(io("creating directory", path))
}

/// Names in a directory, sorted; a missing directory is empty.
pub fn list_dir(path: &Path) -> Result<Vec<String>, FsError> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", path)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("listing", path))?;
        if let Some(name) = entry.file_name().to_str() {
            // Temp files of an interrupted write are not objects.
            if !name.starts_with('.') {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

pub fn read_json(path: &Path) -> Result<Option<Value>, FsError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", path)(e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| FsError::Corrupt {
            path: path.to_owned(),
            source,
        })
}

/// Write temp + fsync + rename + fsync(dir): readers see the old or the new
/// content, never a mix, also across a crash or power loss.
///
/// The directory must exist: a store or lab directory that was removed
/// (`lab down`, a test's cleanup) while a late writer was still running must
/// make that write fail, not quietly bring the directory back.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
    let written = f
        .write_all(bytes)
        .map_err(io("writing", &tmp))
        .and_then(|()| f.sync_all().map_err(io("syncing", &tmp)));
    drop(f);
    if let Err(e) = written {
        // A half-written temp file holds space a full disk needs back.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

pub fn write_json(path: &Path, v: &Value) -> Result<(), FsError> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("a JSON value always serialises");
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Make `dir` (one level) inside a parent that must exist.
pub fn create_dir(dir: &Path) -> Result<(), FsError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("creating directory", dir)(e)),
    }
}

pub fn remove(path: &Path) -> Result<(), FsError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("removing", path)(e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn read_revision(path: &Path) -> Result<u64, FsError> {
    match std::fs::read_to_string(path) {
        // A revision that is not a number must not restart the count at 0:
        // resourceVersions would repeat and stale updates would pass.
        Ok(s) => s.trim().parse().map_err(|_| FsError::BadRevision {
            path: path.to_owned(),
            text: s.trim().to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io("reading", path)(e)),
    }
}

pub fn write_revision(path: &Path, rev: u64) -> Result<(), FsError> {
    write_atomic(path, format!("{rev}\n").as_bytes())
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], FsError> {
    let path = Path::new("/dev/urandom");
    let mut b = [0u8; N];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("reading", path))?;
    Ok(b)
}
