//! AFL++ entry point for the `ipam_pool` target (checks in `src/ipam_pool.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::ipam_pool::check(data));
}
