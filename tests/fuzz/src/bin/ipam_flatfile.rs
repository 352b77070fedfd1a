//! AFL++ entry point for the `ipam_flatfile` target (checks in `src/ipam_flatfile.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::ipam_flatfile::check(data));
}
