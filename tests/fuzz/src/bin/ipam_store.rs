//! AFL++ entry point for the `ipam_store` target (checks in `src/ipam_store.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::ipam_store::check(data));
}
