//! mignet-dataplane: the node agent data path (no Kubernetes dependency).
pub mod certs;
pub mod tls;
pub mod monitor;
pub mod qemu;
pub mod listener;
pub mod proxy;
pub mod migration_ip;
