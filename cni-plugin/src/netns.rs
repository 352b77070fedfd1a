//! Network namespaces: open a CNI_NETNS path as an owned fd and run code inside
//! it.
//!
//! A namespace belongs to a thread, not to the process. We never switch the
//! calling thread: `NetNs::run` spawns a short-lived `std::thread`, calls
//! setns there and lets the thread die afterwards, so no pooled thread (and no
//! later fork from the main thread) can ever inherit the container's netns.
//! Anything that must keep working in the namespace afterwards should be a
//! netlink socket opened inside it (sockets stay bound to their netns).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("failed to open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace (not an nsfs file)")]
    NotNsfs { path: PathBuf },
    #[error("failed to enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("failed to start a thread for network namespace {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NetnsError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetnsError::NotFound { .. })
    }
}

impl From<NetnsError> for crate::CniError {
    fn from(e: NetnsError) -> Self {
        use crate::error::Code;
        let code = match &e {
            NetnsError::NotFound { .. } | NetnsError::NotNsfs { .. } => Code::InvalidNetns,
            NetnsError::Open { .. } | NetnsError::Enter { .. } | NetnsError::Spawn { .. } => {
                Code::Io
            }
        };
        let details = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        crate::CniError::new(code, e.to_string()).with_details(details)
    }
}

/// An open network namespace, verified to be an nsfs file.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NetnsError::NotFound { path: path.clone() }
            } else {
                NetnsError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        // A bind-mounted netns shows up as an nsfs inode; a plain file left
        // behind after the mount is gone would be a silent wrong target.
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| NetnsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetnsError::NotNsfs { path });
        }
        Ok(NetNs {
            fd: file.into(),
            path,
        })
    }

    /// The netns of the calling thread (via /proc/thread-self, since another
    /// thread of this process may live elsewhere).
    pub fn current() -> Result<NetNs, NetnsError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Same namespace (same nsfs inode) as `other`?
    pub fn same_as(&self, other: &NetNs) -> bool {
        match (
            nix::sys::stat::fstat(&self.fd),
            nix::sys::stat::fstat(&other.fd),
        ) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    /// Run `f` on a fresh thread that has entered this namespace. The thread
    /// exits when `f` returns, so it never needs switching back.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| join(self.spawn_in(s, f)?))
    }

    /// Like `run`, but returns at once so the caller can work in parallel
    /// (e.g. the IPAM call while the container side is being set up); collect
    /// the result with `netns::join`.
    pub fn spawn_in<'scope, 'env, T: Send + 'scope>(
        &'scope self,
        s: &'scope std::thread::Scope<'scope, 'env>,
        f: impl FnOnce() -> T + Send + 'scope,
    ) -> Result<std::thread::ScopedJoinHandle<'scope, Result<T, NetnsError>>, NetnsError> {
        std::thread::Builder::new()
            .name("netns".into())
            // The closures run here are shallow (netlink, sysctl writes); a
            // small stack keeps thread start and teardown cheap.
            .stack_size(256 * 1024)
            .spawn_scoped(s, move || {
                nix::sched::setns(&self.fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |source| NetnsError::Enter {
                        path: self.path.clone(),
                        source,
                    },
                )?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Spawn {
                path: self.path.clone(),
                source,
            })
    }
}

/// Wait for a `spawn_in` thread; a panic inside it is re-raised here.
pub fn join<T>(
    h: std::thread::ScopedJoinHandle<'_, Result<T, NetnsError>>,
) -> Result<T, NetnsError> {
    match h.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Write a sysctl under /proc/sys of the calling thread's namespace, e.g.
/// `set_sysctl("net/ipv4/conf/net1/arp_notify", "1")`. /proc/sys/net resolves
/// the namespace from the task that opens the file, so call this from inside
/// `NetNs::run`.
pub fn set_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_file_is_not_nsfs() {
        let p = std::env::temp_dir().join(format!("mignet-notns-{}", std::process::id()));
        std::fs::write(&p, b"").unwrap();
        let e = NetNs::open(&p).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(e, NetnsError::NotNsfs { .. }), "{e:?}");
        assert_eq!(crate::CniError::from(e).code, crate::Code::InvalidNetns);
    }

    #[test]
    fn missing_path_is_not_found() {
        let e = NetNs::open("/var/run/netns/mignet-definitely-missing").unwrap_err();
        assert!(e.is_not_found());
    }

    #[test]
    fn current_opens_and_run_stays_in_same_ns() {
        let me = NetNs::current().unwrap();
        let inner = me.run(|| NetNs::current().unwrap()).unwrap();
        assert!(me.same_as(&inner));
    }
}
