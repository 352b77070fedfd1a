//! The migration proxy: QEMU speaks plaintext to a local unix socket, agents
//! speak mutual TLS to each other over `migration0`.
//!
//! ```text
//! source QEMU --unix--> [source side] ==mTLS==> [target side] --unix--> target QEMU
//! ```
//!
//! - Every connection QEMU opens (the main channel and each multifd channel, N+1
//!   in all) gets its own TLS connection; nothing is multiplexed, so QEMU's own
//!   channel ordering is untouched.
//! - The target side finishes the TLS handshake, which includes verifying the
//!   client certificate and its role, *before* it connects to QEMU's socket: an
//!   unauthenticated peer never reaches QEMU, not even as an empty connection.
//! - Half-close is carried through: EOF on one side becomes a write shutdown
//!   (TLS close_notify + TCP FIN, or unix SHUT_WR) on the other, and the other
//!   direction keeps flowing until it ends too.
//! - rustls does each handshake; records are then sealed and opened in place
//!   in our buffers (`session.rs`, `record.rs`), which saves three to four
//!   copies of every byte against a buffered rustls stream.
//! - One tokio task per direction of each connection, no threads; byte
//!   counters are shared atomics.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

pub use crate::counters::{
    CountersSnapshot, HandshakeFailure, HandshakeFailures, MigrationCounters,
};
pub use crate::rate_limit::RateLimit;
use crate::session::{self, Direction, Which};
use crate::tls::ReloadingTls;

/// Timeouts and socket tuning.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// TCP connect to the target agent.
    pub connect_timeout: Duration,
    /// Whole TLS handshake; a peer that stops mid-handshake is dropped.
    pub handshake_timeout: Duration,
    /// Keepalive: idle time before the first probe, probe interval, probe count.
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_retries: u32,
    /// TCP_USER_TIMEOUT: unacknowledged data older than this kills the
    /// connection, so a vanished peer fails the migration instead of hanging it.
    pub user_timeout: Duration,
    /// Bytes per batch and direction: plaintext read per readv (in 16 KiB
    /// records) and ciphertext per read; large batches mean fewer syscalls.
    pub buffer_size: usize,
    /// Source side: bind outgoing connections to this address (the migration IP)
    /// so they cannot leave through another interface.
    pub bind_ip: Option<std::net::IpAddr>,
    /// Cap on source-to-target plaintext bytes, shared by all connections of
    /// one migration: the agent's `bandwidthPerMigration`. QEMU's own
    /// max-bandwidth overshoots by whole multifd packets, this does not.
    pub rate_limit: Option<Arc<RateLimit>>,
    /// Where failed handshakes are counted by reason (the agent's, across
    /// its migrations).
    pub handshake_failures: Option<Arc<HandshakeFailures>>,
}

impl ProxyOptions {
    fn handshake_failed(&self, why: HandshakeFailure) {
        if let Some(f) = &self.handshake_failures {
            f.count(why);
        }
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(30),
            buffer_size: 256 * 1024,
            bind_ip: None,
            rate_limit: None,
            handshake_failures: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connecting to target agent {target}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to target agent {target}: timed out")]
    ConnectTimeout { target: SocketAddr },
    #[error("TLS handshake with {peer}")]
    Handshake {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {peer}: no progress within the handshake timeout")]
    HandshakeTimeout { peer: SocketAddr },
    #[error("setting socket options on the connection with {peer}")]
    SocketOptions {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to QEMU's migration socket {path}")]
    Backend {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stream header from {peer}: {reason}")]
    Header { peer: SocketAddr, reason: String },
    #[error("connection #{seq} from {peer}: earlier connections of this migration never arrived")]
    OrderTimeout { peer: SocketAddr, seq: u32 },
    #[error("relaying migration data with {peer}")]
    Relay {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Keepalive, user timeout and no-Nagle on a migration TCP connection.
pub fn tune_socket(tcp: &TcpStream, opts: &ProxyOptions) -> io::Result<()> {
    let sock = SockRef::from(tcp);
    // QEMU's protocol has small request/response exchanges (return path, multifd
    // sync packets); Nagle would add delay to them.
    sock.set_tcp_nodelay(true)?;
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(opts.keepalive_idle)
            .with_interval(opts.keepalive_interval)
            .with_retries(opts.keepalive_retries),
    )?;
    sock.set_tcp_user_timeout(Some(opts.user_timeout))?;
    Ok(())
}

/// First bytes inside every TLS connection: magic + the connection's index in
/// the order QEMU opened them.
///
/// Why: QEMU before 8.0 takes the *first* connection it accepts as the main
/// channel and the rest as multifd channels. Each connection crosses its own
/// TLS handshake, and handshakes finish in any order, so without this the
/// target could hand QEMU a multifd channel first and the migration fails
/// ("Broken pipe" on the source). The target connects to QEMU strictly in
/// index order.
pub const STREAM_MAGIC: [u8; 4] = *b"MGN1";

/// The header for connection `seq`.
pub fn stream_header(seq: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&STREAM_MAGIC);
    h[4..].copy_from_slice(&seq.to_be_bytes());
    h
}

/// Pure parse of a header; the reason on error.
pub fn parse_stream_header(h: &[u8; 8]) -> Result<u32, String> {
    if h[..4] != STREAM_MAGIC {
        return Err(format!("bad magic {:02x?}", &h[..4]));
    }
    Ok(u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
}

/// Admits connections to QEMU in index order (one per target listener).
#[derive(Debug)]
struct ConnectOrder {
    next: tokio::sync::watch::Sender<u32>,
}

impl ConnectOrder {
    fn new() -> Self {
        ConnectOrder {
            next: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Wait until every earlier index has been handed to QEMU.
    async fn wait_turn(&self, seq: u32) -> Result<(), ()> {
        let mut rx = self.next.subscribe();
        let next = match rx.wait_for(|next| *next >= seq).await {
            Ok(next) => *next,
            Err(_) => return Err(()),
        };
        // Past our index: a second connection claiming an index already served.
        if next == seq {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Let the next index go, whether or not this one reached QEMU (a failed
    /// connect fails the migration anyway; later ones must not hang).
    fn done(&self, seq: u32) {
        self.next.send_modify(|next| *next = (*next).max(seq + 1));
    }
}

/// A running proxy side; dropping it stops accepting and aborts every
/// connection. [`ProxyTask::finish`] instead lets the connections drain.
#[derive(Debug)]
pub struct ProxyTask {
    accept: JoinHandle<()>,
    counters: Arc<MigrationCounters>,
    drain: Option<tokio::sync::oneshot::Sender<()>>,
    /// Set by `linger`: a reaper aborts the task later, Drop must not.
    detached: bool,
}

impl ProxyTask {
    pub fn counters(&self) -> &Arc<MigrationCounters> {
        &self.counters
    }

    /// Stop accepting and wait (up to `timeout`) until every connection has
    /// ended on its own, i.e. both directions carried their last byte and
    /// their half-close. Why: QEMU reports a migration completed once it has
    /// written its last bytes into the socket; they may still be in the proxy
    /// then, and an abort at that moment truncates the destination's stream.
    /// Returns false if connections were still open at the timeout (they are
    /// aborted when `self` drops).
    pub async fn finish(mut self, timeout: Duration) -> bool {
        if let Some(tx) = self.drain.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(timeout, &mut self.accept)
            .await
            .is_ok()
    }

    /// Like `finish`, without waiting: stop accepting, let the running
    /// connections end on their own, abort whatever is left after `grace`.
    /// Outside a tokio runtime there is nothing to run the reaper on, so the
    /// connections are aborted at once.
    pub fn linger(mut self, grace: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // Drop aborts.
        };
        if let Some(tx) = self.drain.take() {
            let _ = tx.send(());
        }
        let abort = self.accept.abort_handle();
        self.detached = true;
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            abort.abort();
        });
    }
}

impl Drop for ProxyTask {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        // The accept task owns the JoinSet of connection tasks; aborting it drops
        // the set, which aborts them all.
        self.accept.abort();
    }
}

/// Source side: accept QEMU's connections on `qemu` and open one TLS connection
/// per QEMU connection to the target agent at `target`.
pub fn spawn_source(
    qemu: UnixListener,
    target: SocketAddr,
    tls: Arc<ReloadingTls>,
    counters: Arc<MigrationCounters>,
    opts: ProxyOptions,
) -> ProxyTask {
    let c = counters.clone();
    let (drain, mut drain_rx) = tokio::sync::oneshot::channel::<()>();
    let accept = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        // QEMU's connect order, as the unix accept queue gives it to us.
        let mut next_seq = 0u32;
        loop {
            tokio::select! {
                // finish(): no new connections; the running ones end on their own.
                _ = &mut drain_rx => break,
                accepted = qemu.accept() => match accepted {
                    Ok((unix, _)) => {
                        let (tls, c, opts) = (tls.clone(), c.clone(), opts.clone());
                        let seq = next_seq;
                        next_seq = next_seq.wrapping_add(1);
                        conns.spawn(async move {
                            if let Err(e) = source_connection(unix, seq, target, &tls, &c, &opts).await {
                                c.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "migration connection failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting QEMU's migration connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                // Reap finished connections so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        while conns.join_next().await.is_some() {}
    });
    ProxyTask {
        accept,
        counters,
        drain: Some(drain),
        detached: false,
    }
}

async fn source_connection(
    unix: UnixStream,
    seq: u32,
    target: SocketAddr,
    tls: &ReloadingTls,
    counters: &Arc<MigrationCounters>,
    opts: &ProxyOptions,
) -> Result<(), ProxyError> {
    let connect = async {
        match opts.bind_ip {
            Some(ip) => {
                let sock = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }?;
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(target).await
            }
            None => TcpStream::connect(target).await,
        }
    };
    let tcp = tokio::time::timeout(opts.connect_timeout, connect)
        .await
        .map_err(|_| ProxyError::ConnectTimeout { target })?
        .map_err(|source| ProxyError::Connect { target, source })?;
    tune_socket(&tcp, opts).map_err(|source| ProxyError::SocketOptions {
        peer: target,
        source,
    })?;
    let stream = tokio::time::timeout(
        opts.handshake_timeout,
        session::connect(
            tcp,
            tls.current().client.clone(),
            ServerName::IpAddress(target.ip().into()),
        ),
    )
    .await
    .map_err(|_| {
        opts.handshake_failed(HandshakeFailure::Timeout);
        ProxyError::HandshakeTimeout { peer: target }
    })?
    .map_err(|source| {
        opts.handshake_failed(HandshakeFailure::classify(&source));
        ProxyError::Handshake {
            peer: target,
            source,
        }
    })?;
    let mut stream = stream;
    stream
        .send(&stream_header(seq))
        .await
        .map_err(|source| ProxyError::Relay {
            peer: target,
            source,
        })?;
    counters.connections.fetch_add(1, Ordering::Relaxed);
    stream
        .relay(
            unix,
            Direction {
                counter: counters.clone(),
                which: Which::ToTarget,
                limit: opts.rate_limit.clone(),
            },
            Direction {
                counter: counters.clone(),
                which: Which::FromTarget,
                limit: None,
            },
            opts.buffer_size,
        )
        .await
        .map(|_| ())
        .map_err(|source| ProxyError::Relay {
            peer: target,
            source,
        })
}

/// Target side: accept TLS connections on `listener` (bound to the migration IP),
/// and connect each authenticated one to the destination QEMU's socket `qemu`.
pub fn spawn_target(
    listener: TcpListener,
    qemu: PathBuf,
    tls: Arc<ReloadingTls>,
    counters: Arc<MigrationCounters>,
    opts: ProxyOptions,
) -> ProxyTask {
    let c = counters.clone();
    let order = Arc::new(ConnectOrder::new());
    let (drain, mut drain_rx) = tokio::sync::oneshot::channel::<()>();
    let accept = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                // finish(): no new connections; the running ones end on their own.
                _ = &mut drain_rx => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let (tls, c, opts, qemu, order) = (tls.clone(), c.clone(), opts.clone(), qemu.clone(), order.clone());
                        conns.spawn(async move {
                            if let Err(e) = target_connection(tcp, peer, qemu, &tls, &order, &c, &opts).await {
                                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "migration connection refused or failed");
                            }
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a migration connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        while conns.join_next().await.is_some() {}
    });
    ProxyTask {
        accept,
        counters,
        drain: Some(drain),
        detached: false,
    }
}

async fn target_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    qemu: PathBuf,
    tls: &ReloadingTls,
    order: &ConnectOrder,
    counters: &Arc<MigrationCounters>,
    opts: &ProxyOptions,
) -> Result<(), ProxyError> {
    let refused = |e| {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        e
    };
    tune_socket(&tcp, opts)
        .map_err(|source| refused(ProxyError::SocketOptions { peer, source }))?;
    // The handshake includes the client certificate and role check; only a
    // verified peer gets past this line.
    let stream = tokio::time::timeout(
        opts.handshake_timeout,
        session::accept(tcp, tls.current().server.clone()),
    )
    .await
    .map_err(|_| {
        opts.handshake_failed(HandshakeFailure::Timeout);
        refused(ProxyError::HandshakeTimeout { peer })
    })?
    .map_err(|source| {
        opts.handshake_failed(HandshakeFailure::classify(&source));
        refused(ProxyError::Handshake { peer, source })
    })?;
    let mut stream = stream;
    let header = tokio::time::timeout(opts.handshake_timeout, stream.recv_exact::<8>())
        .await
        .map_err(|_| refused(ProxyError::HandshakeTimeout { peer }))?
        .map_err(|e| {
            refused(ProxyError::Header {
                peer,
                reason: e.to_string(),
            })
        })?;
    let seq = parse_stream_header(&header)
        .map_err(|reason| refused(ProxyError::Header { peer, reason }))?;
    let fail = |e| {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        e
    };
    match tokio::time::timeout(opts.connect_timeout, order.wait_turn(seq)).await {
        Ok(Ok(())) => {}
        Ok(Err(())) => {
            return Err(fail(ProxyError::Header {
                peer,
                reason: format!("connection #{seq} already served"),
            }))
        }
        Err(_) => return Err(fail(ProxyError::OrderTimeout { peer, seq })),
    }
    let unix = UnixStream::connect(&qemu).await;
    order.done(seq);
    let unix = unix.map_err(|source| {
        fail(ProxyError::Backend {
            path: qemu.clone(),
            source,
        })
    })?;
    counters.connections.fetch_add(1, Ordering::Relaxed);
    stream
        .relay(
            unix,
            Direction {
                counter: counters.clone(),
                which: Which::FromTarget,
                limit: None,
            },
            Direction {
                counter: counters.clone(),
                which: Which::ToTarget,
                limit: opts.rate_limit.clone(),
            },
            opts.buffer_size,
        )
        .await
        .map(|_| ())
        .map_err(|source| {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            ProxyError::Relay { peer, source }
        })
}

/// Plaintext relay (the benchmark's no-TLS reference path): copy both
/// directions until both have ended; EOF on one side shuts down writing on the
/// other. Returns bytes copied (a to b, b to a).
pub async fn relay<A, B>(
    a: A,
    b: B,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
    buffer_size: usize,
    a_to_b_limit: Option<&RateLimit>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::try_join!(
        pump(ar, bw, a_to_b, buffer_size, a_to_b_limit),
        pump(br, aw, b_to_a, buffer_size, None)
    )
}

async fn pump<R, W>(
    mut r: R,
    mut w: W,
    counter: &AtomicU64,
    buffer_size: usize,
    limit: Option<&RateLimit>,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use futures::FutureExt;
    let mut buf = vec![0u8; buffer_size];
    let mut total = 0u64;
    let mut eof = false;
    while !eof {
        let mut n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        // A TLS reader hands out one 16 KiB record per read; gather whatever is
        // already available (without waiting) so the other side gets one large
        // write instead of many small ones. `read` is cancel-safe, so dropping
        // a pending attempt loses nothing.
        while n < buf.len() {
            match r.read(&mut buf[n..]).now_or_never() {
                Some(Ok(0)) => {
                    eof = true;
                    break;
                }
                Some(Ok(k)) => n += k,
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        if let Some(limit) = limit {
            limit.take(n).await;
        }
        w.write_all(&buf[..n]).await?;
        // A TLS writer may keep encrypted records buffered when the socket was
        // full; flush so nothing waits for the next write that may never come
        // (QEMU often sends a request and then waits for the answer).
        w.flush().await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        total += n as u64;
    }
    // Carry the half-close: TLS close_notify + FIN, or SHUT_WR on unix.
    w.shutdown().await?;
    Ok(total)
}

/// Stream keys, as KubeVirt names them: the keys of the published port map
/// (`targetDirectMigrationNodePorts`), never ports on the wire.
pub const STREAM_MEMORY: u16 = 49152;
pub const STREAM_BLOCK: u16 = 49153;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("binding the listener for stream {key}")]
    Listen {
        key: u16,
        #[source]
        source: crate::listener::ListenerError,
    },
    #[error("registering the listener for stream {key} with the runtime")]
    Register {
        key: u16,
        #[source]
        source: io::Error,
    },
    #[error("creating QEMU's source socket {path}")]
    SourceSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the target published no port for stream {key}")]
    NoPortForStream { key: u16 },
}

/// Target side of one migration: one listener per stream on the migration IP,
/// each relaying to its own destination-QEMU socket. Dropping it closes the
/// listeners and every connection.
#[derive(Debug)]
pub struct TargetEndpoints {
    ip: std::net::IpAddr,
    ports: std::collections::BTreeMap<u16, u16>,
    counters: Arc<MigrationCounters>,
    tasks: Vec<ProxyTask>,
}

impl TargetEndpoints {
    /// Bind and serve `streams` (key, destination QEMU socket); must run inside
    /// a tokio runtime whose thread is in the agent's network namespace.
    pub fn start(
        ip: std::net::IpAddr,
        streams: &[(u16, PathBuf)],
        tls: Arc<ReloadingTls>,
        opts: ProxyOptions,
    ) -> Result<Self, EndpointError> {
        let counters = Arc::new(MigrationCounters::default());
        let mut ports = std::collections::BTreeMap::new();
        let mut tasks = Vec::new();
        for (key, qemu) in streams {
            let key = *key;
            let listener = crate::listener::MigrationListener::bind(ip)
                .map_err(|source| EndpointError::Listen { key, source })?;
            ports.insert(listener.local_addr().port(), key);
            let listener = listener
                .into_tokio()
                .map_err(|source| EndpointError::Register { key, source })?;
            tasks.push(spawn_target(
                listener,
                qemu.clone(),
                tls.clone(),
                counters.clone(),
                opts.clone(),
            ));
        }
        Ok(TargetEndpoints {
            ip,
            ports,
            counters,
            tasks,
        })
    }

    /// `ip:port` of the memory stream, for `targetNodeAddress` (IPv6 in brackets).
    pub fn target_node_address(&self) -> Option<String> {
        self.port_of(STREAM_MEMORY)
            .map(|port| crate::listener::format_endpoint(self.ip, port))
    }

    /// `{"<port>": key}` as KubeVirt's `targetDirectMigrationNodePorts`.
    pub fn port_map(&self) -> std::collections::BTreeMap<String, u16> {
        self.ports
            .iter()
            .map(|(port, key)| (port.to_string(), *key))
            .collect()
    }

    pub fn port_of(&self, key: u16) -> Option<u16> {
        self.ports
            .iter()
            .find_map(|(port, k)| (*k == key).then_some(*port))
    }

    pub fn counters(&self) -> &Arc<MigrationCounters> {
        &self.counters
    }

    /// Stop accepting and let every connection end on its own, up to
    /// `timeout` (see [`ProxyTask::finish`]): the way to close the endpoints
    /// of a migration QEMU reported completed. True if all ended in time.
    pub async fn finish(mut self, timeout: Duration) -> bool {
        finish_all(std::mem::take(&mut self.tasks), timeout).await
    }

    /// Like `finish`, without waiting: the target's guest already runs, so
    /// nothing here is needed any more, but the source may still be draining
    /// its relays; cutting them now would end its connections without
    /// close_notify and make a completed migration log relay failures.
    pub fn linger(mut self, grace: Duration) {
        for task in std::mem::take(&mut self.tasks) {
            task.linger(grace);
        }
    }
}

/// Source side of one migration: one unix socket per stream for QEMU to
/// connect to, each relaying to the target's port for that stream. Dropping it
/// stops the relays and removes the socket files.
#[derive(Debug)]
pub struct SourceEndpoints {
    sockets: std::collections::BTreeMap<u16, PathBuf>,
    counters: Arc<MigrationCounters>,
    tasks: Vec<ProxyTask>,
}

impl SourceEndpoints {
    /// Socket path for `key` of migration `uid` in `dir` (KubeVirt's naming).
    pub fn socket_path(dir: &std::path::Path, uid: &str, key: u16) -> PathBuf {
        dir.join(format!("{uid}-{key}-source.sock"))
    }

    /// Create a socket per key of `port_map` and relay to `target_ip`.
    pub fn start(
        dir: &std::path::Path,
        uid: &str,
        target_ip: std::net::IpAddr,
        port_map: &std::collections::BTreeMap<String, u16>,
        keys: &[u16],
        tls: Arc<ReloadingTls>,
        opts: ProxyOptions,
    ) -> Result<Self, EndpointError> {
        let counters = Arc::new(MigrationCounters::default());
        let mut me = SourceEndpoints {
            sockets: std::collections::BTreeMap::new(),
            counters: counters.clone(),
            tasks: Vec::new(),
        };
        for &key in keys {
            let port = port_map
                .iter()
                .find_map(|(p, k)| (*k == key).then(|| p.parse::<u16>().ok()).flatten())
                .ok_or(EndpointError::NoPortForStream { key })?;
            let path = Self::socket_path(dir, uid, key);
            // A stale socket from a crashed agent would make bind fail.
            let _ = std::fs::remove_file(&path);
            let unix = UnixListener::bind(&path).map_err(|source| EndpointError::SourceSocket {
                path: path.clone(),
                source,
            })?;
            me.sockets.insert(key, path);
            me.tasks.push(spawn_source(
                unix,
                SocketAddr::new(target_ip, port),
                tls.clone(),
                counters.clone(),
                opts.clone(),
            ));
        }
        Ok(me)
    }

    pub fn socket(&self, key: u16) -> Option<&PathBuf> {
        self.sockets.get(&key)
    }

    pub fn counters(&self) -> &Arc<MigrationCounters> {
        &self.counters
    }

    /// Stop accepting and let every connection end on its own, up to
    /// `timeout` (see [`ProxyTask::finish`]): the way to close the endpoints
    /// of a migration QEMU reported completed. True if all ended in time.
    pub async fn finish(mut self, timeout: Duration) -> bool {
        finish_all(std::mem::take(&mut self.tasks), timeout).await
    }
}

async fn finish_all(tasks: Vec<ProxyTask>, timeout: Duration) -> bool {
    futures::future::join_all(tasks.into_iter().map(|t| t.finish(timeout)))
        .await
        .into_iter()
        .all(|done| done)
}

/// How long relays of a finished side may take to end on their own: a
/// dropped source endpoint, or a target whose guest already runs.
pub const RELAY_LINGER: Duration = Duration::from_secs(5);

impl Drop for SourceEndpoints {
    fn drop(&mut self) {
        for path in self.sockets.values() {
            let _ = std::fs::remove_file(path);
        }
        // No new connections, but the running ones may finish (up to
        // RELAY_LINGER): QEMU reports completion while its last bytes can
        // still be in this proxy, and an owner that drops us on "completed"
        // must not truncate the destination's stream. A cancelled or failed
        // migration's connections end as soon as QEMU closes its side.
        for task in std::mem::take(&mut self.tasks) {
            task.linger(RELAY_LINGER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relay_carries_half_close_and_counts_both_ways() {
        use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
        // qemu_side <-> [a | relay | b] <-> peer_side, small pipes to force many rounds.
        let (mut qemu_side, a) = duplex(1024);
        let (b, mut peer_side) = duplex(1024);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let relay = relay(a, b, &up, &down, 4096, None);
        let ends = async {
            let (mut peer_r, mut peer_w) = tokio::io::split(&mut peer_side);
            let (mut qemu_r, mut qemu_w) = tokio::io::split(&mut qemu_side);
            let send = async {
                qemu_w.write_all(&payload).await.unwrap();
                qemu_w.shutdown().await.unwrap();
            };
            let receive = async {
                let mut got = Vec::new();
                peer_r.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, payload, "forward stream");
                // The reverse direction still works after the forward half-close.
                peer_w.write_all(b"done").await.unwrap();
                peer_w.shutdown().await.unwrap();
            };
            tokio::join!(send, receive);
            let mut back = Vec::new();
            qemu_r.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"done");
        };
        let (copied, ()) = tokio::join!(relay, ends);
        assert_eq!(copied.unwrap(), (100_000, 4));
        assert_eq!(up.load(Ordering::Relaxed), 100_000);
        assert_eq!(down.load(Ordering::Relaxed), 4);
    }
}
