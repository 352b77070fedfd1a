//! The probe's TLS side: a listener with the agent's server config and a
//! handshake with the agent's client config, through the same handshake
//! code the migration proxy uses (`mignet_dataplane::session`).
//!
//! TLS 1.3 lets the client finish before the server has checked the
//! client's certificate, so a handshake that "succeeded" on the client may
//! still be refused by the server. The server therefore sends [`ACK`] once
//! it has accepted the client; only that proves both directions.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mignet_dataplane::counters::HandshakeFailure;
use mignet_dataplane::session;
use mignet_dataplane::tls::ReloadingTls;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;

use crate::error_chain;

/// What the server sends after accepting the client's certificate.
pub const ACK: [u8; 8] = *b"MGPBTLS1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// Connection attempts (a refused connect is retried: the peer's listener
/// may be a moment behind its UDP socket).
const CONNECT_TRIES: u32 = 3;

/// Accept handshakes for ever; each accepted client gets [`ACK`].
pub async fn serve(listener: TcpListener, tls: Arc<ReloadingTls>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "probe: accepting a TLS connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let config = tls.current().server.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, session::accept(tcp, config)).await {
                Ok(Ok(mut stream)) => {
                    if let Err(e) = stream.send(&ACK).await {
                        tracing::warn!(%peer, error = %e, "probe: acknowledging a handshake");
                        return;
                    }
                    // Close after the client: closing first with its bytes
                    // unread could reset the connection before it reads ACK.
                    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.recv_exact::<1>()).await;
                }
                Ok(Err(e)) => tracing::warn!(
                    %peer,
                    reason = HandshakeFailure::classify(&e).label(),
                    error = %error_chain(&e),
                    "probe: refused a TLS handshake"
                ),
                Err(_) => tracing::warn!(%peer, "probe: TLS handshake timed out"),
            }
        });
    }
}

/// Connect from `own` to the peer's listener, handshake as a client and
/// wait for the peer's [`ACK`], by `until` at the latest. The error says
/// which step failed, with the TLS error chain.
pub async fn check(
    own: IpAddr,
    peer: SocketAddr,
    tls: &ReloadingTls,
    until: Instant,
) -> Result<(), String> {
    let bounded = |t: Duration| (Instant::now() + t).min(until);
    let mut tries = 0;
    let tcp = loop {
        tries += 1;
        let socket = if own.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .and_then(|s| s.bind(SocketAddr::new(own, 0)).map(|()| s))
        .map_err(|e| format!("opening a TCP socket on {own}: {e}"))?;
        match tokio::time::timeout_at(bounded(CONNECT_TIMEOUT), socket.connect(peer)).await {
            Ok(Ok(tcp)) => break tcp,
            Ok(Err(e)) if tries < CONNECT_TRIES && Instant::now() < until => {
                tracing::debug!(%peer, error = %e, "probe: TLS connect; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "connecting to {peer} for the TLS handshake: {e} (its UDP echo answered)"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "connecting to {peer} for the TLS handshake: no answer within {CONNECT_TIMEOUT:?} (its UDP echo answered)"
                ))
            }
        }
    };
    let name = ServerName::IpAddress(peer.ip().into());
    let config = tls.current().client.clone();
    let failed = |e: &std::io::Error, what: &str| {
        format!(
            "TLS handshake with {peer}: {what} ({}): {}",
            HandshakeFailure::classify(e).label(),
            error_chain(e)
        )
    };
    let mut stream = tokio::time::timeout_at(
        bounded(HANDSHAKE_TIMEOUT),
        session::connect(tcp, config, name),
    )
    .await
    .map_err(|_| format!("TLS handshake with {peer}: no progress within {HANDSHAKE_TIMEOUT:?}"))?
    .map_err(|e| failed(&e, "failed"))?;
    let ack = tokio::time::timeout_at(bounded(HANDSHAKE_TIMEOUT), stream.recv_exact::<8>())
        .await
        .map_err(|_| {
            format!("TLS handshake with {peer}: the peer did not confirm it accepted our certificate within {HANDSHAKE_TIMEOUT:?}")
        })?
        .map_err(|e| failed(&e, "the peer refused our certificate"))?;
    if ack != ACK {
        return Err(format!(
            "TLS handshake with {peer}: the peer answered {ack:02x?}, not a probe's acknowledgement"
        ));
    }
    Ok(())
}
