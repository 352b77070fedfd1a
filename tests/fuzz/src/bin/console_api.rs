//! AFL++ entry point for the `console_api` target (checks in `src/console_api.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::console_api::check(data));
}
