//! The kube adapter: moves objects between a real API server and the pure
//! decisions. Thin by design; every decision lives in a pure module.

pub mod eviction;
pub mod ipam;
pub mod network_watch;
pub mod signer;
pub mod vmi;

/// Field manager for every write the manager makes, so `managedFields`
/// says who set what.
pub const FIELD_MANAGER: &str = "mignet-manager";

/// Whether retrying the same request later can succeed: conflicts,
/// throttling, server errors and transport failures can; a 4xx such as
/// Forbidden or Invalid needs a human.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => {
            status.code == 409 || status.code == 429 || status.code >= 500 || status.code == 0
        }
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) | kube::Error::InferConfig(_) => {
            false
        }
        _ => true,
    }
}

/// Parameters for our merge patches: a fixed field manager.
pub fn patch_params() -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}
