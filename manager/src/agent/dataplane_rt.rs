//! Where the agent's network sockets are made: the agent pod's network
//! namespace.
//!
//! In cluster mode the agent process already lives in its pod's namespace and
//! the data path runs on the caller's runtime. In lab mode several agents run
//! in one process, each for an agent-pod namespace: a socket belongs to the
//! namespace of the thread that created it (listeners, outgoing connections,
//! the netlink socket that finds `migration0`), so each agent gets a tokio
//! runtime of its own whose threads enter the namespace when they are born,
//! before any task runs on them. Everything namespace-bound is spawned onto that runtime; nothing
//! else ever runs on its threads, and they exit when the agent is dropped
//! (which also drops every proxy task still on them). No thread of a
//! runtime shared with other work ever changes namespace.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::AgentError;

/// A handle to the runtime that owns the agent's sockets.
#[derive(Debug)]
pub struct DataPlaneRuntime {
    handle: tokio::runtime::Handle,
    netns: Option<PathBuf>,
    /// Our own runtime (lab mode); `None` when borrowing the caller's.
    owned: Option<tokio::runtime::Runtime>,
}

/// `/var/run/netns/<name>` for a bare name; a path is taken as is.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        PathBuf::from("/var/run/netns").join(netns)
    }
}

/// Worker threads of a namespaced data-plane runtime: TLS for several
/// multifd channels is the agent's main CPU cost, and one thread per agent
/// halved throughput against the direct path in the benchmark.
const WORKERS: usize = 2;

fn enter(path: &std::path::Path) -> std::io::Result<()> {
    let fd = std::fs::File::open(path)?;
    nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
}

impl DataPlaneRuntime {
    /// The calling runtime, in the process's own namespace (cluster mode).
    pub fn current() -> Self {
        DataPlaneRuntime {
            handle: tokio::runtime::Handle::current(),
            netns: None,
            owned: None,
        }
    }

    /// A runtime of our own whose every thread (workers and blocking pool)
    /// enters `netns` as its first act, before any task can run on it. These
    /// threads exist only for this namespace and die with the runtime, so no
    /// thread shared with other work ever changes namespace.
    pub fn in_netns(netns: &str) -> Result<Self, AgentError> {
        let path = netns_path(netns);
        // Check here so a missing namespace is an error of this call rather
        // than a panic on a worker.
        enter_check(&path)?;
        let thread_path = path.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("mignet-dataplane")
            .on_thread_start(move || {
                if let Err(e) = enter(&thread_path) {
                    // Carrying on would put migration sockets in the wrong
                    // namespace (possibly the pod network): never.
                    panic!("entering {}: {e}", thread_path.display());
                }
            })
            .enable_all()
            .build()
            .map_err(|source| AgentError::Netns {
                netns: path.clone(),
                source,
            })?;
        Ok(DataPlaneRuntime {
            handle: rt.handle().clone(),
            netns: Some(path),
            owned: Some(rt),
        })
    }

    pub fn netns(&self) -> Option<&std::path::Path> {
        self.netns.as_deref()
    }

    /// Run `fut` on the data-plane runtime (inside the namespace) and wait for it.
    pub async fn run<F, T>(&self, fut: F) -> Result<T, AgentError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .map_err(|e| AgentError::DataPlaneGone {
                detail: e.to_string(),
            })
    }
}

/// Opens the namespace file (without entering it) to fail early and clearly.
fn enter_check(path: &std::path::Path) -> Result<(), AgentError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| AgentError::Netns {
            netns: path.to_path_buf(),
            source,
        })
}

impl Drop for DataPlaneRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.owned.take() {
            // Cancels every task (proxies, listeners) without blocking: we
            // may be dropped on another runtime's worker.
            rt.shutdown_background();
        }
    }
}
