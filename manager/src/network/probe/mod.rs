//! `mignet probe`: one node's side of a pre-flight round
//! ([`super::preflight`] has the round and the report it ends with).
//!
//! In order: find our own address and MTU on the interface (no fallback to
//! the pod network), serve UDP echo and TLS on it, find the round's other
//! probes from their pods' network-status, check each (small echo,
//! full-size echo with DF, TLS both ways), wait until every peer that
//! reached us is done with us ([`barrier`]), then write the report as the
//! termination message and on stdout. Every path ends with a report before
//! the deadline; only bad flags end without one. The command's glue (which
//! API, which certificate source) is `crate::cli::probe`.
//!
//! - [`outcome`]: the failure class from the raw attempts (pure).
//! - [`wire`]: the UDP messages between probes.
//! - [`barrier`]: when a probe may leave.
//! - [`udp`], [`tls`]: the sockets.

pub mod barrier;
pub mod outcome;
pub mod tls;
pub mod udp;
pub mod wire;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use mignet_dataplane::migration_ip::{self, MigrationNetwork};
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::barrier::Barrier;
use self::outcome::{classify, full_payload, PeerAttempts, Udp, LARGE_TRIES, SMALL_PAYLOAD};
use super::preflight::{Failure, FailureReason, PeerResult, ProbeReport, ROUND_LABEL};
use crate::backend::{Backend, Selector};
use crate::error_chain;

/// Each echo request waits this long for its reply.
pub const TRY_TIMEOUT: Duration = Duration::from_millis(300);
/// How often the round's pods are re-listed while peers are missing.
const LIST_EVERY: Duration = Duration::from_millis(500);
/// Small echoes are retried (peers start at different times), and peers
/// looked for, until this long before the deadline: what is left is for
/// the full-size echoes, the handshake and the barrier.
const TAIL: Duration = Duration::from_secs(4);
/// The report is written this long before the deadline.
const REPORT_MARGIN: Duration = Duration::from_millis(300);
/// Small echoes sent to a peer before giving up even when found late.
const MIN_SMALL_TRIES: u32 = 3;

/// The flags of `mignet probe`, besides the target and certificates.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// This probe's node (the downward API's `spec.nodeName`).
    pub node: String,
    /// The namespace of the round's pods.
    pub namespace: String,
    /// The [`ROUND_LABEL`] value of the round's pods.
    pub round: String,
    /// Probe pods in the round, this one included.
    pub expect: usize,
    pub interface: String,
    pub port: u16,
    /// From the start of the process to the report.
    pub deadline: Duration,
    pub termination_log: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Bad flags: the only way the probe ends without a report.
    #[error("{0}")]
    Usage(String),
}

impl ProbeSettings {
    /// The flags' values make sense (the only reason not to report).
    pub fn check(&self) -> Result<(), ProbeError> {
        let usage = |m: String| Err(ProbeError::Usage(m));
        if self.node.trim().is_empty() {
            return usage("--node is empty (pass the downward API's spec.nodeName)".into());
        }
        if self.namespace.trim().is_empty() {
            return usage("--namespace is empty".into());
        }
        if !crate::backend::is_label_value(&self.round) || self.round.is_empty() {
            return usage(format!(
                "--round {:?} is not a label value (the {ROUND_LABEL} label of the round's pods)",
                self.round
            ));
        }
        if self.expect == 0 {
            return usage("--expect must be at least 1 (this probe)".into());
        }
        if self.port == 0 {
            return usage("--port must not be 0: peers find the probe on a fixed port".into());
        }
        if self.deadline.is_zero() {
            return usage("--deadline-seconds must be at least 1".into());
        }
        Ok(())
    }
}

/// The agent's certificate directory, loaded and checked as the agent
/// loads it; the error chain says why there is no usable certificate.
pub fn load_tls(cert_dir: &Path, allow_tls12: bool) -> Result<Arc<ReloadingTls>, String> {
    ReloadingTls::load(
        TlsPaths::in_dir(cert_dir),
        TlsSettings {
            allow_tls12,
            ..Default::default()
        },
    )
    .map_err(|e| error_chain(&e))
}

/// The report as one line on stdout and as the termination message.
pub fn write_report(report: &ProbeReport, termination_log: &std::path::Path) {
    let message = report.to_message();
    println!("{message}");
    if let Err(e) = std::fs::write(termination_log, message.as_bytes()) {
        eprintln!(
            "mignet probe: writing the report to {}: {e}",
            termination_log.display()
        );
    }
}

/// Our address and MTU on the interface; the error is the reason for
/// [`FailureReason::NoAddress`].
async fn own_address(s: &ProbeSettings) -> Result<(IpAddr, u32), String> {
    let config = MigrationNetwork::Dedicated {
        network: format!("of pre-flight round {}", s.round),
        interface: s.interface.clone(),
        prefer: None,
    };
    let observed = migration_ip::observe_here(&s.interface)
        .await
        .map_err(|e| error_chain(&e))?;
    // The pod IP is never used for a dedicated network.
    let ip = migration_ip::select(
        &config,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        observed.as_ref(),
    )
    .map_err(|e| e.to_string())?
    .ip;
    let mtu = observed
        .and_then(|o| o.mtu)
        .ok_or_else(|| format!("interface {} reports no MTU", s.interface))?;
    Ok((ip, mtu))
}

/// What every peer check shares.
struct Ctx {
    node: String,
    own: IpAddr,
    mtu: u32,
    port: u16,
    tls: Result<Arc<ReloadingTls>, String>,
    barrier: Arc<Barrier>,
    /// The latest attempts per peer (read at report time, also for checks
    /// cut short by the deadline).
    progress: Mutex<BTreeMap<String, PeerAttempts>>,
    /// Small echoes retried, and peers looked for, until then.
    checks_until: Instant,
    report_at: Instant,
}

impl Ctx {
    fn record(&self, node: &str, a: &PeerAttempts) {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned(), a.clone());
    }
}

/// Aborts the servers when the round is over.
struct Servers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Servers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn own_failure(reason: FailureReason, detail: String) -> Option<Failure> {
    Some(Failure { reason, detail })
}

/// The round from this node's side, over `backend` (the error: why there
/// is none) with the agent certificate `tls` (the error: why there is
/// none); `started` is when the deadline began.
pub async fn run<B: Backend>(
    s: &ProbeSettings,
    backend: Result<B, String>,
    tls: Result<Arc<ReloadingTls>, String>,
    started: Instant,
) -> ProbeReport {
    let deadline = started + s.deadline;
    let mut report = ProbeReport {
        node: s.node.clone(),
        address: None,
        mtu: None,
        own_failure: None,
        peers: Vec::new(),
    };
    let (own, mtu) = match own_address(s).await {
        Ok(a) => a,
        Err(detail) => {
            tracing::warn!(%detail, "probe: no address of our own");
            report.own_failure = own_failure(FailureReason::NoAddress, detail);
            return report;
        }
    };
    report.address = Some(own.to_string());
    report.mtu = Some(mtu);
    tracing::info!(address = %own, mtu, round = %s.round, "probe: serving");

    let barrier = Arc::new(Barrier::default());
    let at = SocketAddr::new(own, s.port);
    let mut servers = Servers(Vec::new());
    // TLS first: a peer that gets our echo finds the listener up.
    if let Ok(tls) = &tls {
        match tokio::net::TcpListener::bind(at).await {
            Ok(l) => servers.0.push(tokio::spawn(tls::serve(l, tls.clone()))),
            Err(e) => {
                report.own_failure = own_failure(
                    FailureReason::NotStarted,
                    format!("listening on TCP {at}: {e}"),
                );
                return report;
            }
        }
    }
    match udp::bind_server(at).await {
        Ok(sock) => servers
            .0
            .push(tokio::spawn(udp::serve(sock, barrier.clone()))),
        Err(e) => {
            report.own_failure =
                own_failure(FailureReason::NotStarted, format!("binding UDP {at}: {e}"));
            return report;
        }
    }
    if let Err(e) = &tls {
        tracing::warn!(error = %e, "probe: no usable agent certificate");
        report.own_failure = own_failure(
            FailureReason::Tls,
            format!("no usable agent certificate: {e}"),
        );
    }

    let report_at = deadline.checked_sub(REPORT_MARGIN).unwrap_or(deadline);
    let ctx = Arc::new(Ctx {
        node: s.node.clone(),
        own,
        mtu,
        port: s.port,
        tls,
        barrier: barrier.clone(),
        progress: Mutex::default(),
        checks_until: deadline.checked_sub(TAIL).unwrap_or(started),
        report_at,
    });

    // Peers: listed until every expected one has an address, or time is up.
    let mut seen: BTreeMap<String, Option<IpAddr>> = BTreeMap::new();
    let mut checks = JoinSet::new();
    let mut list_error = match &backend {
        Ok(_) => None,
        Err(e) => Some(e.clone()),
    };
    let mut listed = false;
    let selector = [Selector::eq(ROUND_LABEL, &s.round)];
    loop {
        if let Ok(b) = &backend {
            match b.list_selected::<Pod>(Some(&s.namespace), &selector).await {
                Ok(pods) => {
                    listed = true;
                    for (node, ip) in outcome::peers_of(&pods, &s.node, &s.interface) {
                        let slot = seen.entry(node.clone()).or_insert(None);
                        if let (None, Some(ip)) = (*slot, ip) {
                            *slot = Some(ip);
                            barrier.know(&node);
                            tracing::info!(peer = %node, address = %ip, "probe: checking a peer");
                            checks.spawn(check_peer(ctx.clone(), node, ip));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "probe: listing the round's pods");
                    list_error = Some(error_chain(&e));
                }
            }
        }
        let found = seen.values().filter(|ip| ip.is_some()).count();
        if found + 1 >= s.expect || Instant::now() >= ctx.checks_until {
            break;
        }
        tokio::time::sleep_until((Instant::now() + LIST_EVERY).min(ctx.checks_until)).await;
    }
    barrier.discovery_over();
    let all_done = async { while checks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(report_at, all_done).await.is_err() {
        tracing::warn!("probe: the deadline came before every check and answer");
    }
    checks.abort_all();
    drop(servers);

    if !listed {
        let why = list_error.unwrap_or_else(|| "no answer".into());
        report.own_failure = report.own_failure.or(own_failure(
            FailureReason::NotStarted,
            format!("listing the round's pods in {}: {why}", s.namespace),
        ));
    }
    let progress = ctx
        .progress
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.peers = seen
        .into_iter()
        .map(|(node, ip)| {
            let attempts = progress
                .get(&node)
                .cloned()
                .unwrap_or_else(|| PeerAttempts::new(ip, s.port, mtu));
            let failure = classify(&attempts);
            PeerResult { node, failure }
        })
        .collect();
    report
}

/// Every check of one peer, then the barrier with it.
async fn check_peer(ctx: Arc<Ctx>, node: String, ip: IpAddr) {
    let peer = SocketAddr::new(ip, ctx.port);
    let mut a = PeerAttempts::new(Some(ip), ctx.port, ctx.mtu);
    ctx.record(&node, &a);
    let mut sock = match udp::PeerSocket::open(ctx.own, peer).await {
        Ok(s) => s,
        Err(e) => {
            a.small = Some(Udp::Error {
                error: format!("opening a UDP socket on {}: {e}", ctx.own),
            });
            ctx.record(&node, &a);
            ctx.barrier.finished(&node);
            return;
        }
    };
    let small = sock
        .echo_series(
            SMALL_PAYLOAD,
            TRY_TIMEOUT,
            MIN_SMALL_TRIES,
            None,
            ctx.checks_until,
        )
        .await;
    let reached = small == Udp::Echoed;
    a.small = Some(small);
    ctx.record(&node, &a);
    if reached {
        let size = full_payload(ctx.mtu, ip);
        let large = sock
            .echo_series(
                size,
                TRY_TIMEOUT,
                LARGE_TRIES,
                Some(LARGE_TRIES),
                Instant::now(),
            )
            .await;
        let passed = large == Udp::Echoed;
        a.large = Some(large);
        ctx.record(&node, &a);
        if passed {
            a.tls = Some(match &ctx.tls {
                Ok(tls) => tls::check(ctx.own, peer, tls, ctx.report_at).await,
                Err(e) => Err(format!("this probe has no usable agent certificate: {e}")),
            });
            ctx.record(&node, &a);
        }
    }
    ctx.barrier.finished(&node);
    tracing::info!(peer = %node, failure = ?classify(&a), "probe: checked a peer");
    if !reached {
        return;
    }
    // The peer may still be checking us, or not know we are done with it:
    // stay until both are known (barrier.rs).
    while !ctx.barrier.may_leave(&node) && Instant::now() < ctx.report_at {
        let t0 = Instant::now();
        if let Some(done) = sock.ask_done(&ctx.node, TRY_TIMEOUT).await {
            ctx.barrier.told(&node);
            if done {
                ctx.barrier.peer_done_with_me(&node);
            }
        }
        if ctx.barrier.may_leave(&node) {
            break;
        }
        tokio::time::sleep_until((t0 + TRY_TIMEOUT).min(ctx.report_at)).await;
    }
}
