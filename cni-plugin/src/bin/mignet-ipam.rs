//! `mignet-ipam`: the whereabouts-compatible IPAM plugin. Installed as
//! `whereabouts` too, so NADs with `"ipam":{"type":"whereabouts"}` resolve to it.

fn main() {
    mignet_cni::skel::run(
        &mignet_cni::ipam::Whereabouts,
        "mignet-ipam: whereabouts-compatible IPAM (local file store), CNI 0.3.0-1.1.0",
    )
}
