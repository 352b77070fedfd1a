//! AFL++ entry point for the `stream_header` target (checks in `src/stream_header.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::stream_header::check(data));
}
