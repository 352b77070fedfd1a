//! AFL++ entry point for the `cni_config` target (checks in `src/cni_config.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::cni_config::check(data));
}
