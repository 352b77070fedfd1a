//! The macvlan CNI plugin; also installed as `macvlan` (it does not look at argv[0]).

fn main() {
    mignet_cni::skel::run(
        &mignet_cni::macvlan::Macvlan,
        "mignet macvlan CNI plugin (CNI 0.1.0-1.1.0)",
    )
}
