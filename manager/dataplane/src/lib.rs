//! mignet-dataplane: the node agent data path (no Kubernetes dependency).
pub mod certs;
