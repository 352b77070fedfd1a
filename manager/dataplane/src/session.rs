//! One established mutual-TLS migration connection: rustls does the
//! handshake, [`crate::record`] protects the records in our own buffers.
//!
//! ```text
//! handshake:  rustls unbuffered state machine over the TCP socket
//!             (certificates, agent role, version and suite as tls.rs configures)
//! then:       rustls::kernel hands over the traffic secrets (its kTLS interface)
//! upstream:   unix --readv into record slots--> seal in place --write--> TCP
//! downstream: TCP --read--> open in place --writev of the plaintexts--> unix
//! ```
//!
//! Each direction owns its half of each socket and its own keys, so the two
//! directions of one connection run as two tasks (in parallel on a
//! multi-threaded runtime); they share only the rustls key schedule, which is
//! touched on a TLS 1.3 key update (about every 2^24 records).
//!
//! Wire behaviour is plain TLS: any rustls peer interoperates (the tests use
//! tokio-rustls clients and servers). EOF becomes close_notify + FIN; a peer's
//! close_notify becomes a write shutdown on the unix side; a TCP EOF without
//! close_notify is a truncation error, as rustls reports it.

use std::io::{self, IoSlice, IoSliceMut};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ConnectionTrafficSecrets, ProtocolVersion, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use crate::counters::MigrationCounters;
use crate::rate_limit::RateLimit;
use crate::record::{
    self, DirectionKeys, PostHandshake, RecordError, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    CONTENT_HANDSHAKE, MAX_FRAGMENT, MAX_RECORD,
};

/// rustls refuses handshake messages above 64 KiB; records carry at most that.
const HANDSHAKE_BUFFER: usize = 64 * 1024 + MAX_RECORD;

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn record_err(e: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The part of rustls' key schedule that outlives the handshake.
trait KeySchedule: Send {
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
}

impl<D: Send> KeySchedule for KernelConnection<D> {
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }
}

/// Client and server unbuffered connections, driven by one handshake loop.
trait Unbuffered {
    type Data: Send + 'static;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn version(&self) -> Option<ProtocolVersion>;
    fn handshaking(&self) -> bool;
    #[allow(clippy::type_complexity)]
    fn into_kernel(
        self,
    ) -> Result<(rustls::ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error>;
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn version(&self) -> Option<ProtocolVersion> {
        self.protocol_version()
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
    fn into_kernel(
        self,
    ) -> Result<(rustls::ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn version(&self) -> Option<ProtocolVersion> {
        self.protocol_version()
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
    fn into_kernel(
        self,
    ) -> Result<(rustls::ExtractedSecrets, KernelConnection<Self::Data>), rustls::Error> {
        self.dangerous_into_kernel_connection()
    }
}

/// A connection after a successful handshake, not yet split into directions.
pub struct Established {
    tcp: TcpStream,
    version: ProtocolVersion,
    tx: DirectionKeys,
    rx: DirectionKeys,
    schedule: Arc<Mutex<Box<dyn KeySchedule>>>,
    /// Ciphertext received after the handshake, not yet opened.
    incoming: Vec<u8>,
    /// Plaintext rustls already decrypted during the handshake (the peer's
    /// first bytes may arrive together with its Finished).
    early: Vec<u8>,
    /// The peer's close_notify came in with the first records.
    peer_closed: bool,
    /// The peer asked for a key update (TLS 1.3 update_requested).
    key_update_requested: Arc<AtomicBool>,
    tx_records_per_key: Option<u64>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("version", &self.version)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish_non_exhaustive()
    }
}

/// Client handshake over `tcp` (the source agent dialing the target).
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<Established> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_err)?;
    handshake(conn, tcp).await
}

/// Server handshake over `tcp` (the target agent accepting a peer); the peer's
/// certificate and role are verified inside it.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Established> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_err)?;
    handshake(conn, tcp).await
}

async fn handshake<C: Unbuffered>(mut conn: C, tcp: TcpStream) -> io::Result<Established>
where
    KernelConnection<C::Data>: KeySchedule,
{
    let mut incoming = vec![0u8; HANDSHAKE_BUFFER];
    let mut used = 0usize;
    let mut outgoing: Vec<u8> = Vec::new();
    let mut early = Vec::new();
    let mut peer_closed = false;
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..used]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                incoming.copy_within(discard..used, 0);
                used -= discard;
                send_alerts(&mut conn, &tcp, outgoing, &mut incoming[..used]).await;
                return Err(tls_err(e));
            }
        };
        let mut done = false;
        let mut closed = false;
        match state {
            ConnectionState::EncodeTlsData(mut enc) => {
                let start = outgoing.len();
                outgoing.resize(start + 4096, 0);
                let n = match enc.encode(&mut outgoing[start..]) {
                    Ok(n) => n,
                    Err(EncodeError::InsufficientSize(need)) => {
                        outgoing.resize(start + need.required_size, 0);
                        enc.encode(&mut outgoing[start..])
                            .map_err(|e| io::Error::other(e.to_string()))?
                    }
                    Err(e) => return Err(io::Error::other(e.to_string())),
                };
                outgoing.truncate(start + n);
            }
            ConnectionState::TransmitTlsData(t) => {
                write_all(&tcp, &outgoing).await?;
                outgoing.clear();
                t.done();
            }
            ConnectionState::BlockedHandshake => {
                if used == incoming.len() {
                    return Err(tls_err(rustls::Error::General(
                        "handshake message larger than 64 KiB".into(),
                    )));
                }
                tcp.readable().await?;
                match tcp.try_read(&mut incoming[used..]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed the connection during the TLS handshake",
                        ))
                    }
                    Ok(n) => used += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            ConnectionState::ReadTraffic(mut r) => {
                // Application data that came in with the peer's last flight;
                // rustls has decrypted it already, so its sequence numbers count it.
                while let Some(rec) = r.next_record() {
                    early.extend_from_slice(rec.map_err(tls_err)?.payload);
                }
            }
            ConnectionState::WriteTraffic(_) => done = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => closed = true,
            _ => {
                return Err(io::Error::other(
                    "unexpected TLS state during the handshake (early data?)",
                ))
            }
        }
        if closed {
            // A peer may send its data and close_notify right behind its
            // Finished: that is a finished handshake and a half-closed stream.
            // Before the handshake is over it is a refusal.
            if conn.handshaking() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                ));
            }
            peer_closed = true;
            done = true;
        }
        incoming.copy_within(discard..used, 0);
        used -= discard;
        if done {
            break;
        }
    }
    let version = conn
        .version()
        .ok_or_else(|| tls_err(rustls::Error::HandshakeNotComplete))?;
    let (secrets, kernel) = conn.into_kernel().map_err(tls_err)?;
    let tx = DirectionKeys::new(version, secrets.tx.0, secrets.tx.1).map_err(record_err)?;
    let rx = DirectionKeys::new(version, secrets.rx.0, secrets.rx.1).map_err(record_err)?;
    incoming.truncate(used);
    Ok(Established {
        tcp,
        version,
        tx,
        rx,
        schedule: Arc::new(Mutex::new(Box::new(kernel))),
        incoming,
        early,
        peer_closed,
        key_update_requested: Arc::new(AtomicBool::new(false)),
        tx_records_per_key: None,
    })
}

/// After a failed handshake: send the alert rustls queued, best effort.
///
/// rustls pops queued records before it looks at input again, so one more call
/// yields the alert without processing anything (a second call could process
/// input again and fail again). `incoming` is what is left of the receive
/// buffer: rustls may hold ranges into it, so it must be those bytes.
async fn send_alerts<C: Unbuffered>(
    conn: &mut C,
    tcp: &TcpStream,
    mut outgoing: Vec<u8>,
    incoming: &mut [u8],
) {
    let UnbufferedStatus { state, .. } = conn.process(incoming);
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state {
        let start = outgoing.len();
        outgoing.resize(start + 1024, 0);
        match enc.encode(&mut outgoing[start..]) {
            Ok(n) => outgoing.truncate(start + n),
            Err(_) => outgoing.truncate(start),
        }
    }
    if !outgoing.is_empty() {
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            write_all(tcp, &outgoing),
        )
        .await;
    }
}

async fn write_all(tcp: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Established {
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Test hook: make every send key "wear out" after `records` records, so
    /// TLS 1.3 key updates happen within a short test.
    #[doc(hidden)]
    pub fn set_tx_records_per_key(&mut self, records: u64) {
        self.tx_records_per_key = Some(records);
        let limit = self.tx.seq() + records + record::KEY_UPDATE_MARGIN;
        self.tx.set_limit(limit);
    }

    /// Send `data` as application data (the stream header, before relaying).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::new();
        for chunk in data.chunks(MAX_FRAGMENT) {
            let p = self.tx.prefix_len();
            let start = out.len();
            out.resize(start + p + chunk.len() + self.tx.suffix_len(), 0);
            out[start + p..start + p + chunk.len()].copy_from_slice(chunk);
            self.tx
                .seal(CONTENT_APPLICATION_DATA, &mut out[start..], chunk.len())
                .map_err(record_err)?;
        }
        write_all(&self.tcp, &out).await
    }

    /// Receive exactly `N` bytes of application data (the stream header);
    /// anything after them stays queued for the relay.
    pub async fn recv_exact<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let n = N;
        let mut down = Downstream::new(
            std::mem::take(&mut self.incoming),
            MAX_RECORD,
            &mut self.rx,
            self.version,
            &self.schedule,
        );
        down.closed = self.peer_closed;
        let mut ranges = Vec::new();
        while self.early.len() < n {
            ranges.clear();
            let closed = down.open_available(&mut ranges, Some(&self.key_update_requested))?;
            for r in &ranges {
                self.early.extend_from_slice(&down.buf[r.clone()]);
            }
            if self.early.len() >= n {
                break;
            }
            if closed {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            down.compact();
            if down.fill(&self.tcp).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        down.compact();
        self.peer_closed = down.closed;
        // (`down` started from `self.peer_closed`, so this never forgets one.)
        self.incoming = down.into_pending();
        let mut out = [0u8; N];
        out.copy_from_slice(&self.early[..n]);
        self.early.drain(..n);
        Ok(out)
    }

    /// Relay between this connection and `unix` until both directions have
    /// ended. `up` counts (and optionally paces) unix -> TLS plaintext, `down`
    /// TLS -> unix. Returns the bytes carried each way.
    pub async fn relay(
        self,
        unix: UnixStream,
        up: Direction,
        down: Direction,
        buffer_size: usize,
    ) -> io::Result<(u64, u64)> {
        let Established {
            tcp,
            version,
            tx,
            mut rx,
            schedule,
            incoming,
            early,
            peer_closed,
            key_update_requested,
            tx_records_per_key,
        } = self;
        let (tcp_r, tcp_w) = tcp.into_split();
        let (unix_r, unix_w) = unix.into_split();
        let up_side = Upstream {
            tx,
            version,
            schedule: schedule.clone(),
            key_update_requested: key_update_requested.clone(),
            records_per_key: tx_records_per_key,
            records_per_batch: (buffer_size / MAX_FRAGMENT).max(1),
        };
        // The upstream task must not outlive this future: a dropped ProxyTask
        // aborts the connection's task, and with it both directions.
        let mut upstream = AbortOnDrop(tokio::spawn(up_side.run(unix_r, tcp_w, up)));
        let downstream = async {
            let mut state = Downstream::new(incoming, buffer_size, &mut rx, version, &schedule);
            state.closed = peer_closed;
            downstream(
                &mut state,
                tcp_r,
                unix_w,
                early,
                &key_update_requested,
                down,
            )
            .await
        };
        let up_done = async {
            (&mut upstream.0)
                .await
                .map_err(|e| io::Error::other(format!("upstream task: {e}")))?
        };
        tokio::try_join!(up_done, downstream)
    }
}

/// One direction's byte counter and optional pacing.
#[derive(Debug, Clone)]
pub struct Direction {
    pub counter: Arc<MigrationCounters>,
    pub which: Which,
    pub limit: Option<Arc<RateLimit>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    ToTarget,
    FromTarget,
}

impl Direction {
    fn add(&self, n: u64) {
        let c = match self.which {
            Which::ToTarget => &self.counter.to_target,
            Which::FromTarget => &self.counter.from_target,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Aborts the task when the future holding it is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// unix -> TLS state, moved into its own task.
struct Upstream {
    tx: DirectionKeys,
    version: ProtocolVersion,
    schedule: Arc<Mutex<Box<dyn KeySchedule>>>,
    key_update_requested: Arc<AtomicBool>,
    records_per_key: Option<u64>,
    records_per_batch: usize,
}

impl Upstream {
    /// Read plaintext straight into record slots, seal in place, write the
    /// batch. EOF sends close_notify and shuts the TCP write side.
    async fn run(
        mut self,
        unix: tokio::net::unix::OwnedReadHalf,
        mut tcp: tokio::net::tcp::OwnedWriteHalf,
        dir: Direction,
    ) -> io::Result<u64> {
        let prefix = self.tx.prefix_len();
        let stride = prefix + MAX_FRAGMENT + self.tx.suffix_len();
        let mut buf = vec![0u8; stride * self.records_per_batch];
        let mut total = 0u64;
        loop {
            let n = {
                let mut slots: Vec<IoSliceMut<'_>> = buf
                    .chunks_mut(stride)
                    .map(|slot| IoSliceMut::new(&mut slot[prefix..prefix + MAX_FRAGMENT]))
                    .collect();
                let unix: &UnixStream = unix.as_ref();
                unix.readable().await?;
                match unix.try_read_vectored(&mut slots) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                break;
            }
            if let Some(limit) = &dir.limit {
                limit.take(n).await;
            }
            if self.tx.wants_key_update() || self.key_update_requested.swap(false, Ordering::AcqRel)
            {
                self.key_update(&mut tcp).await?;
            }
            // Seal the filled slots; only the last one can be partial, so the
            // sealed records lie back to back from the start of the buffer.
            let mut wire = 0usize;
            let mut left = n;
            for slot in buf.chunks_mut(stride) {
                if left == 0 {
                    break;
                }
                let len = left.min(MAX_FRAGMENT);
                wire += self
                    .tx
                    .seal(CONTENT_APPLICATION_DATA, slot, len)
                    .map_err(record_err)?;
                left -= len;
            }
            tcp.write_all(&buf[..wire]).await?;
            dir.add(n as u64);
            total += n as u64;
        }
        // Carry the half-close: close_notify, then FIN.
        self.send_record(&mut tcp, CONTENT_ALERT, &[1, 0]).await?;
        tcp.shutdown().await?;
        Ok(total)
    }

    async fn send_record(
        &mut self,
        tcp: &mut tokio::net::tcp::OwnedWriteHalf,
        typ: u8,
        body: &[u8],
    ) -> io::Result<()> {
        let p = self.tx.prefix_len();
        let mut rec = vec![0u8; p + body.len() + self.tx.suffix_len()];
        rec[p..p + body.len()].copy_from_slice(body);
        let len = self
            .tx
            .seal(typ, &mut rec, body.len())
            .map_err(record_err)?;
        tcp.write_all(&rec[..len]).await
    }

    /// Send a KeyUpdate under the old key, then switch to the next one.
    async fn key_update(&mut self, tcp: &mut tokio::net::tcp::OwnedWriteHalf) -> io::Result<()> {
        self.send_record(tcp, CONTENT_HANDSHAKE, &record::key_update_message(false))
            .await?;
        let (seq, secrets) = self
            .schedule
            .lock()
            .map_err(|_| io::Error::other("key schedule lock poisoned"))?
            .next_tx()
            .map_err(tls_err)?;
        self.tx = DirectionKeys::new(self.version, seq, secrets).map_err(record_err)?;
        if let Some(records) = self.records_per_key {
            self.tx.set_limit(seq + records + record::KEY_UPDATE_MARGIN);
        }
        Ok(())
    }
}

/// Receive-side state: ciphertext buffer and keys.
struct Downstream<'k> {
    buf: Vec<u8>,
    /// Opened (or skipped) records end here; the next record starts here.
    start: usize,
    /// Received bytes end here.
    end: usize,
    rx: &'k mut DirectionKeys,
    version: ProtocolVersion,
    schedule: &'k Mutex<Box<dyn KeySchedule>>,
    closed: bool,
    /// A record failed after others in the same read opened fine: those are
    /// delivered first, then this fails the stream.
    failed: Option<io::Error>,
}

impl<'k> Downstream<'k> {
    fn new(
        pending: Vec<u8>,
        buffer_size: usize,
        rx: &'k mut DirectionKeys,
        version: ProtocolVersion,
        schedule: &'k Mutex<Box<dyn KeySchedule>>,
    ) -> Self {
        let end = pending.len();
        let mut buf = pending;
        buf.resize((buffer_size + MAX_RECORD).max(end + MAX_RECORD), 0);
        Downstream {
            buf,
            start: 0,
            end,
            rx,
            version,
            schedule,
            closed: false,
            failed: None,
        }
    }

    /// Unopened ciphertext, for handing back to `Established`.
    fn into_pending(mut self) -> Vec<u8> {
        self.buf.truncate(self.end);
        self.buf.drain(..self.start);
        self.buf
    }

    /// Open every complete record in the buffer; push plaintext ranges of
    /// application data. Returns true once the peer's close_notify is seen.
    fn open_available(
        &mut self,
        out: &mut Vec<Range<usize>>,
        key_update_requested: Option<&AtomicBool>,
    ) -> io::Result<bool> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match self.open_records(out, key_update_requested) {
            Err(e) if !out.is_empty() => {
                self.failed = Some(e);
                Ok(false)
            }
            other => other,
        }
    }

    fn open_records(
        &mut self,
        out: &mut Vec<Range<usize>>,
        key_update_requested: Option<&AtomicBool>,
    ) -> io::Result<bool> {
        while !self.closed {
            let len = match record::complete_record(&self.buf[self.start..self.end])
                .map_err(record_err)?
            {
                Some(len) => len,
                None => break,
            };
            let at = self.start;
            let (typ, range) = self
                .rx
                .open(&mut self.buf[at..at + len])
                .map_err(record_err)?;
            self.start += len;
            let range = at + range.start..at + range.end;
            match typ {
                CONTENT_APPLICATION_DATA => {
                    if !range.is_empty() {
                        out.push(range);
                    }
                }
                CONTENT_ALERT => match &self.buf[range] {
                    // close_notify: the peer is done writing.
                    [_, 0] => self.closed = true,
                    [_, desc] => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("peer sent TLS alert {desc}"),
                        ))
                    }
                    _ => return Err(record_err(RecordError::TooShort { len })),
                },
                CONTENT_HANDSHAKE if self.version == ProtocolVersion::TLSv1_3 => {
                    let msgs = record::parse_post_handshake(&self.buf[range])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    for m in msgs {
                        if let PostHandshake::KeyUpdate { update_requested } = m {
                            let (seq, secrets) = self
                                .schedule
                                .lock()
                                .map_err(|_| io::Error::other("key schedule lock poisoned"))?
                                .next_rx()
                                .map_err(tls_err)?;
                            *self.rx = DirectionKeys::new(self.version, seq, secrets)
                                .map_err(record_err)?;
                            if update_requested {
                                if let Some(flag) = key_update_requested {
                                    flag.store(true, Ordering::Release);
                                }
                            }
                        }
                    }
                }
                other => return Err(record_err(RecordError::UnexpectedType(other))),
            }
        }
        Ok(self.closed)
    }

    /// Move the unopened tail to the front (plaintext ranges become invalid).
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Read more ciphertext; 0 at EOF.
    async fn fill(&mut self, tcp: &TcpStream) -> io::Result<usize> {
        loop {
            tcp.readable().await?;
            match tcp.try_read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// TLS -> unix: read ciphertext, open records in place, write their
/// plaintexts with one vectored write. close_notify shuts the unix write side.
async fn downstream(
    state: &mut Downstream<'_>,
    tcp: tokio::net::tcp::OwnedReadHalf,
    mut unix: tokio::net::unix::OwnedWriteHalf,
    early: Vec<u8>,
    key_update_requested: &AtomicBool,
    dir: Direction,
) -> io::Result<u64> {
    let mut total = 0u64;
    if !early.is_empty() {
        if let Some(limit) = &dir.limit {
            limit.take(early.len()).await;
        }
        unix.write_all(&early).await?;
        dir.add(early.len() as u64);
        total += early.len() as u64;
    }
    let mut ranges: Vec<Range<usize>> = Vec::new();
    loop {
        ranges.clear();
        let closed = state.open_available(&mut ranges, Some(key_update_requested))?;
        let n: usize = ranges.iter().map(|r| r.len()).sum();
        if n > 0 {
            if let Some(limit) = &dir.limit {
                limit.take(n).await;
            }
            let mut slices: Vec<IoSlice<'_>> = ranges
                .iter()
                .map(|r| IoSlice::new(&state.buf[r.clone()]))
                .collect();
            write_all_vectored(&mut unix, &mut slices).await?;
            dir.add(n as u64);
            total += n as u64;
        }
        if closed {
            break;
        }
        if let Some(e) = state.failed.take() {
            return Err(e);
        }
        state.compact();
        if state.end == state.buf.len() {
            // Cannot happen with a buffer above one maximal record; guard anyway.
            return Err(record_err(RecordError::TooLarge { len: state.end }));
        }
        if state.fill(tcp.as_ref()).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection without close_notify (truncated)",
            ));
        }
    }
    unix.shutdown().await?;
    Ok(total)
}

async fn write_all_vectored(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
