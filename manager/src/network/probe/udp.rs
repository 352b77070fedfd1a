//! The probe's UDP side: the echo server on its own migration address, and
//! echo series against one peer from a socket that never fragments.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::barrier::Barrier;
use super::outcome::Udp;
use super::wire::{self, Message};

/// Largest datagram read (an IPv4 UDP payload cannot be larger).
const BUFFER: usize = 65_536;

/// Never fragment: a datagram larger than the interface or the known path
/// MTU is refused with EMSGSIZE, one larger than a segment on the way is
/// lost; neither reaches the peer in pieces that a smaller segment carries
/// (which would hide exactly the MTU problem the probe looks for).
pub fn set_dont_fragment(sock: &UdpSocket, ip: IpAddr) -> io::Result<()> {
    let (level, name, value) = if ip.is_ipv6() {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    let value: libc::c_int = value;
    // SAFETY: the fd is open (borrowed from `sock` for the call); the value
    // points at a c_int on this stack frame and the length is its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bind the echo server's socket on `addr` (the migration address only,
/// never a wildcard: the probe must not answer over the pod network).
pub async fn bind_server(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr).await?;
    set_dont_fragment(&sock, addr.ip())?;
    Ok(sock)
}

/// Answer echoes (same size back) and "are you done with me?" for ever.
pub async fn serve(sock: UdpSocket, barrier: Arc<Barrier>) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "probe: receiving");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let reply = match wire::decode(&buf[..n]) {
            Ok(Message::Echo { nonce }) => wire::encode(&Message::EchoReply { nonce }, n),
            Ok(Message::DoneQuery { from: node }) => {
                // Asked only once the asker is done with us (barrier.rs).
                let done = barrier.answer(&node);
                wire::encode(&Message::DoneReply { from: node, done }, 0)
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(%from, error = %e, "probe: ignoring a datagram");
                continue;
            }
        };
        if let Err(e) = sock.send_to(&reply, from).await {
            tracing::debug!(%from, error = %e, "probe: answering");
        }
    }
}

/// How one echo request ended.
enum Try {
    Echoed,
    Lost,
    Refused,
    TooBig(io::Error),
    Failed(io::Error),
}

fn is_emsgsize(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMSGSIZE)
}

/// A socket from our migration address to one peer's probe.
pub struct PeerSocket {
    sock: UdpSocket,
    nonce: u64,
    buf: Vec<u8>,
}

impl PeerSocket {
    /// Connected, so ICMP errors (port unreachable, fragmentation needed)
    /// come back as errors of this socket.
    pub async fn open(own: IpAddr, peer: SocketAddr) -> io::Result<Self> {
        let sock = UdpSocket::bind(SocketAddr::new(own, 0)).await?;
        set_dont_fragment(&sock, own)?;
        sock.connect(peer).await?;
        Ok(PeerSocket {
            sock,
            nonce: 0,
            buf: vec![0u8; BUFFER],
        })
    }

    async fn try_echo(&mut self, size: usize, wait: Duration) -> Try {
        self.nonce += 1;
        let nonce = self.nonce;
        let packet = wire::encode(&Message::Echo { nonce }, size);
        match self.sock.send(&packet).await {
            Ok(_) => {}
            Err(e) if is_emsgsize(&e) => return Try::TooBig(e),
            // An ICMP error of an earlier datagram is reported on the next call.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Try::Refused,
            Err(e) => return Try::Failed(e),
        }
        let until = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, self.sock.recv(&mut self.buf)).await {
                Err(_) => return Try::Lost,
                Ok(Ok(n)) => match wire::decode(&self.buf[..n]) {
                    Ok(Message::EchoReply { nonce: got }) if got == nonce && n == packet.len() => {
                        return Try::Echoed
                    }
                    // A late answer to an earlier try, or the barrier's.
                    _ => continue,
                },
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return Try::Refused,
                Ok(Err(e)) if is_emsgsize(&e) => return Try::TooBig(e),
                Ok(Err(e)) => return Try::Failed(e),
            }
        }
    }

    /// Echo requests of `size` bytes, each waiting `wait`, until one is
    /// echoed or too big to send; at least `min_tries`, then until `until`
    /// (and at most `max_tries`). A try that fails at once waits out its
    /// `wait` anyway, so a peer not serving yet is not flooded. What the
    /// last try saw decides the result: the peer's latest state.
    pub async fn echo_series(
        &mut self,
        size: usize,
        wait: Duration,
        min_tries: u32,
        max_tries: Option<u32>,
        until: Instant,
    ) -> Udp {
        let start = Instant::now();
        let mut tries = 0u32;
        let mut last = Try::Lost;
        loop {
            let enough = tries >= min_tries && Instant::now() >= until;
            if enough || max_tries.is_some_and(|m| tries >= m) {
                break;
            }
            tries += 1;
            let t0 = Instant::now();
            last = self.try_echo(size, wait).await;
            match &last {
                Try::Echoed => return Udp::Echoed,
                Try::TooBig(e) => {
                    return Udp::TooBig {
                        error: e.to_string(),
                    }
                }
                Try::Lost => {}
                Try::Refused | Try::Failed(_) => tokio::time::sleep_until(t0 + wait).await,
            }
        }
        let waited = start.elapsed();
        match last {
            Try::Refused => Udp::Refused { tries, waited },
            Try::Failed(e) => Udp::Error {
                error: e.to_string(),
            },
            _ => Udp::NoEcho { tries, waited },
        }
    }

    /// Ask the peer whether it has finished its checks of `me` (and so tell
    /// it we have finished ours of it); `None` when no answer came in
    /// `wait`.
    pub async fn ask_done(&mut self, me: &str, wait: Duration) -> Option<bool> {
        let q = wire::encode(
            &Message::DoneQuery {
                from: me.to_owned(),
            },
            0,
        );
        self.sock.send(&q).await.ok()?;
        let until = Instant::now() + wait;
        loop {
            let n = tokio::time::timeout_at(until, self.sock.recv(&mut self.buf))
                .await
                .ok()?
                .ok()?;
            if let Ok(Message::DoneReply { from, done }) = wire::decode(&self.buf[..n]) {
                if from == me {
                    return Some(done);
                }
            }
        }
    }
}
