//! mignet-dataplane: the node agent data path (no Kubernetes dependency).
pub mod certs;
pub mod listener;
pub mod migration_ip;
pub mod monitor;
pub mod proxy;
pub mod qemu;
pub mod record;
pub mod session;
pub mod tls;
