//! AFL++ entry point for the `quantity` target (checks in `src/quantity.rs`).
fn main() {
    afl::fuzz!(|data: &[u8]| mignet_fuzz::quantity::check(data));
}
