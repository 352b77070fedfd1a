//! The IPAM reconciler in cluster mode: frees the IPPool allocations of
//! pods that no longer exist, and the address reservations no allocation
//! backs, in the namespaces where `mignet-ipam` keeps its pools.
//!
//! The decision is `mignet_cni::ipam::reconcile_plan::plan_reconcile` (pure, unit
//! tested in the CNI crate) and its runner `reconcile`; this module only
//! schedules it: once at start, then every `interval`, until shutdown.
//! Why the manager runs it at all: a node that dies (or a pod deleted while
//! the CNI could not be called) never gets its DEL, so without this its
//! addresses stay taken for ever (whereabouts #75, #546).
//!
//! What it never does: free the address of a live pod, including a *new*
//! pod that reuses a dead one's name (a StatefulSet replica): an entry whose
//! `podref` names an existing, unfinished pod is kept, because the CNI's ADD
//! hands `(podref, ifname)`'s entry to the new sandbox (whereabouts #176
//! freed such addresses and handed them out twice).
//!
//! Writes use the CNI's own optimistic, preconditioned pool writes, so the
//! reconciler needs no lock against ADDs and DELs running at the same time.

use std::future::Future;
use std::time::Duration;

use mignet_cni::ipam::kube::{reconcile, ReconcileReport};

/// Where and how often to reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamReconcileSettings {
    /// Namespaces holding IPPools (the CNI kubeconfig's context namespace;
    /// deploy/ uses mignet-system, whereabouts' default is kube-system).
    pub namespaces: Vec<String>,
    /// Time between passes.
    pub interval: Duration,
    /// A reservation no pool entry backs is deleted only when older than
    /// this: younger ones may belong to an ADD between its two writes. Must
    /// exceed the longest ADD (the CNI gives up after 60 s).
    pub grace: Duration,
}

impl Default for IpamReconcileSettings {
    fn default() -> Self {
        IpamReconcileSettings {
            namespaces: vec!["mignet-system".to_string()],
            interval: Duration::from_secs(300),
            grace: Duration::from_secs(300),
        }
    }
}

/// One namespace's pass that failed.
#[derive(Debug, thiserror::Error)]
#[error("IPAM reconcile of IPPools in namespace {namespace}: {message} (CNI code {code})")]
pub struct IpamReconcileError {
    pub namespace: String,
    pub code: u32,
    pub message: String,
    pub details: String,
}

/// One pass over every configured namespace; a failing namespace does not
/// stop the others. Returns each namespace's outcome, in order.
pub async fn reconcile_once(
    client: &kube::Client,
    settings: &IpamReconcileSettings,
) -> Vec<(String, Result<ReconcileReport, IpamReconcileError>)> {
    let mut out = Vec::new();
    for ns in &settings.namespaces {
        let r = reconcile(client.clone(), ns, settings.grace)
            .await
            .map_err(|e| IpamReconcileError {
                namespace: ns.clone(),
                code: e.code.as_u32(),
                message: e.msg,
                details: e.details,
            });
        out.push((ns.clone(), r));
    }
    out
}

/// Reconcile at start and then every `settings.interval` until `shutdown`
/// completes. Errors are logged and retried on the next pass: a missing
/// CRD or a forbidden list is an operator's problem the log names, not a
/// reason to stop the manager's other controllers.
pub async fn run(
    client: kube::Client,
    settings: IpamReconcileSettings,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(settings.interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        for (ns, r) in reconcile_once(&client, &settings).await {
            match r {
                Ok(rep) if rep.freed > 0 || rep.orips_deleted > 0 => tracing::info!(
                    namespace = %ns,
                    freed = rep.freed,
                    reservations_deleted = rep.orips_deleted,
                    "IPAM reconcile freed orphaned addresses"
                ),
                Ok(_) => tracing::debug!(namespace = %ns, "IPAM reconcile: nothing to free"),
                Err(e) => tracing::warn!(details = %e.details, "{e}"),
            }
        }
    }
}
