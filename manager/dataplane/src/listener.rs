//! Migration listeners: bound to the migration IP only, on an ephemeral port.
//!
//! Binding to one address (never 0.0.0.0 / ::) is what keeps the listener off the
//! pod network: a SYN to the pod IP of the same namespace finds no socket and is
//! answered with a reset.
//!
//! The socket is created synchronously so a caller can create it on a thread that
//! entered the agent's network namespace; a socket stays in the namespace it was
//! created in, wherever it is used afterwards.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("refusing to listen on {ip}: a migration listener binds the migration IP only")]
    NotUnicast { ip: IpAddr },
    #[error("creating a listening socket for {ip}")]
    Socket {
        ip: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("binding {ip}")]
    Bind {
        ip: IpAddr,
        #[source]
        source: io::Error,
    },
}

/// Format `ip:port`, IPv6 in brackets (what `targetNodeAddress` records).
pub fn format_endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// A bound, listening TCP socket on the migration IP.
#[derive(Debug)]
pub struct MigrationListener {
    socket: std::net::TcpListener,
    local: SocketAddr,
}

impl MigrationListener {
    /// Bind `ip` on an ephemeral port and listen. Unspecified, multicast and
    /// broadcast addresses are refused: the listener must never cover other
    /// interfaces of the namespace.
    pub fn bind(ip: IpAddr) -> Result<Self, ListenerError> {
        let unicast = match ip {
            IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
            IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
        };
        if !unicast {
            return Err(ListenerError::NotUnicast { ip });
        }
        let sock_err = |source| ListenerError::Socket { ip, source };
        let addr = SocketAddr::new(ip, 0);
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(sock_err)?;
        if ip.is_ipv6() {
            // A v6 socket bound to a specific address cannot take v4 anyway; be explicit.
            socket.set_only_v6(true).map_err(sock_err)?;
        }
        socket.set_nonblocking(true).map_err(sock_err)?;
        socket
            .bind(&addr.into())
            .map_err(|source| ListenerError::Bind { ip, source })?;
        socket
            .listen(1024)
            .map_err(|source| ListenerError::Bind { ip, source })?;
        let socket: std::net::TcpListener = socket.into();
        let local = socket
            .local_addr()
            .map_err(|source| ListenerError::Bind { ip, source })?;
        Ok(MigrationListener { socket, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// `ip:port` to publish for the source agent.
    pub fn published(&self) -> String {
        self.local.to_string()
    }

    /// Hand the socket to the tokio runtime (must be called inside one).
    pub fn into_tokio(self) -> io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::from_std(self.socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn refuses_wildcard_addresses() {
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
            "224.0.0.1".parse().unwrap(),
            "ff02::1".parse().unwrap(),
        ] {
            assert!(
                matches!(
                    MigrationListener::bind(ip),
                    Err(ListenerError::NotUnicast { .. })
                ),
                "{ip}"
            );
        }
    }

    #[test]
    fn endpoint_brackets_ipv6() {
        assert_eq!(
            format_endpoint("fd00:5::2".parse().unwrap(), 4444),
            "[fd00:5::2]:4444"
        );
        assert_eq!(
            format_endpoint("10.200.5.2".parse().unwrap(), 4444),
            "10.200.5.2:4444"
        );
    }
}
