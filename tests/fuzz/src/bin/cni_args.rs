//! AFL++ entry point for the `cni_args` target (checks in `src/cni_args.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::cni_args::check(data));
}
