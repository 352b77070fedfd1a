//! AFL++ entry point for the `qmp` target (checks in `src/qmp.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::qmp::check(data));
}
