//! Where the agent's network sockets are made: the agent pod's network
//! namespace.
//!
//! In cluster mode the agent process already lives in its pod's namespace and
//! the data path runs on the caller's runtime. In lab mode several agents run
//! in one process, each for an agent-pod namespace: a socket belongs to the
//! namespace of the thread that created it (listeners, outgoing connections,
//! the netlink socket that finds `migration0`), so each agent gets a dedicated
//! thread that enters its namespace once and drives a current-thread tokio
//! runtime. Everything namespace-bound is spawned onto that runtime; nothing
//! else ever runs on the thread, and it exits when the agent is dropped
//! (which also drops every proxy task still on it). We never `setns` on a
//! pooled tokio worker.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::AgentError;

/// A handle to the runtime that owns the agent's sockets.
#[derive(Debug)]
pub struct DataPlaneRuntime {
    handle: tokio::runtime::Handle,
    netns: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `/var/run/netns/<name>` for a bare name; a path is taken as is.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        PathBuf::from("/var/run/netns").join(netns)
    }
}

impl DataPlaneRuntime {
    /// The calling runtime, in the process's own namespace (cluster mode).
    pub fn current() -> Self {
        DataPlaneRuntime {
            handle: tokio::runtime::Handle::current(),
            netns: None,
            stop: None,
            thread: None,
        }
    }

    /// A dedicated thread inside `netns` (a name under /var/run/netns or a path).
    pub fn in_netns(netns: &str) -> Result<Self, AgentError> {
        let path = netns_path(netns);
        // Open here so a missing namespace is an error of this call, not a
        // panic on the thread.
        let fd = std::fs::File::open(&path).map_err(|source| AgentError::Netns {
            netns: path.clone(),
            source,
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("mignet-dataplane".into())
            .spawn(move || {
                let entered = nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32));
                drop(fd);
                let rt = entered.and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                });
                match rt {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        // Drives every task spawned through the handle until
                        // the agent goes; dropping `rt` then cancels them all.
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|source| AgentError::Netns {
                netns: thread_path.clone(),
                source,
            })?;
        let handle = rx
            .recv()
            .map_err(|_| AgentError::Netns {
                netns: path.clone(),
                source: std::io::Error::other("data-plane thread died while starting"),
            })?
            .map_err(|source| AgentError::Netns {
                netns: path.clone(),
                source,
            })?;
        Ok(DataPlaneRuntime {
            handle,
            netns: Some(path),
            stop: Some(stop_tx),
            thread: Some(thread),
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

impl Drop for DataPlaneRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // The thread only drops its runtime after the stop signal; that
            // aborts the tasks, which is quick.
            let _ = t.join();
        }
    }
}
