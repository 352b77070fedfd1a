//! mignet-dataplane: the node agent data path (no Kubernetes dependency).
pub mod certs;
pub mod counters;
pub mod listener;
pub mod migration_ip;
pub mod monitor;
pub mod proxy;
pub mod qemu;
pub mod rate_limit;
pub mod record;
pub mod session;
pub mod tls;
