//! Byte and connection counters of one migration's proxy, shared (atomics)
//! between the relay tasks that count and whoever reports status; kept out
//! of `proxy` so the record layer (`session`) can count without depending on
//! the proxy that drives it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Per-migration counters, shared with whoever reports status.
#[derive(Debug, Default)]
pub struct MigrationCounters {
    /// Plaintext bytes carried from the source QEMU towards the target QEMU.
    pub to_target: AtomicU64,
    /// Plaintext bytes carried back from the target QEMU to the source QEMU.
    pub from_target: AtomicU64,
    /// Connections fully established (TLS up and, on the target, QEMU connected).
    pub connections: AtomicU64,
    /// Target side: peers refused during the TLS handshake (or timed out in it).
    pub refused: AtomicU64,
    /// Connections that failed after being accepted (connect, backend, relay errors).
    pub failed: AtomicU64,
}

impl MigrationCounters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            to_target: self.to_target.load(Ordering::Relaxed),
            from_target: self.from_target.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountersSnapshot {
    pub to_target: u64,
    pub from_target: u64,
    pub connections: u64,
    pub refused: u64,
    pub failed: u64,
}

/// Why a TLS handshake of the data path failed: a fixed set, so the
/// metric's `reason` label cannot grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer's certificate was refused (or refused ours): expired, wrong
    /// role or name, none presented.
    BadCertificate,
    /// Signed by a CA the other side does not trust.
    UnknownCa,
    /// No progress within the handshake timeout.
    Timeout,
    /// Any other TLS error (version, cipher, a malformed message).
    Protocol,
    /// Not a TLS error: the connection broke during the handshake.
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::BadCertificate,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Timeout,
        HandshakeFailure::Protocol,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Other => "other",
        }
    }

    /// The reason behind a handshake's I/O error (rustls' error inside it,
    /// from our side's checks or from the peer's alert).
    pub fn classify(e: &std::io::Error) -> Self {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
            return if e.kind() == std::io::ErrorKind::TimedOut {
                HandshakeFailure::Timeout
            } else {
                HandshakeFailure::Other
            };
        };
        match tls {
            E::InvalidCertificate(C::UnknownIssuer) | E::AlertReceived(A::UnknownCA) => {
                HandshakeFailure::UnknownCa
            }
            E::InvalidCertificate(_)
            | E::NoCertificatesPresented
            | E::AlertReceived(
                A::BadCertificate
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateRequired
                | A::AccessDenied,
            ) => HandshakeFailure::BadCertificate,
            _ => HandshakeFailure::Protocol,
        }
    }
}

/// Failed handshakes by reason, for one agent (all its migrations, both
/// sides); counters, so they persist.
#[derive(Debug, Default)]
pub struct HandshakeFailures([AtomicU64; HandshakeFailure::ALL.len()]);

impl HandshakeFailures {
    pub fn count(&self, why: HandshakeFailure) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (label, count) for every reason, in a fixed order.
    pub fn snapshot(&self) -> [(&'static str, u64); HandshakeFailure::ALL.len()] {
        HandshakeFailure::ALL.map(|r| (r.label(), self.0[r as usize].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error};

    fn io(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_errors_map_to_fixed_reasons() {
        let c = HandshakeFailure::classify;
        assert_eq!(
            c(&io(Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            HandshakeFailure::UnknownCa
        );
        assert_eq!(
            c(&io(Error::AlertReceived(AlertDescription::UnknownCA))),
            HandshakeFailure::UnknownCa
        );
        assert_eq!(
            c(&io(Error::InvalidCertificate(CertificateError::Expired))),
            HandshakeFailure::BadCertificate
        );
        assert_eq!(
            c(&io(Error::AlertReceived(AlertDescription::BadCertificate))),
            HandshakeFailure::BadCertificate
        );
        assert_eq!(
            c(&io(Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic
            ))),
            HandshakeFailure::Protocol
        );
        assert_eq!(
            c(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            HandshakeFailure::Other
        );
        let f = HandshakeFailures::default();
        f.count(HandshakeFailure::Timeout);
        assert_eq!(f.snapshot()[2], ("timeout", 1));
        assert_eq!(f.snapshot()[0], ("bad_certificate", 0));
    }
}
