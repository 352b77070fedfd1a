//! "Never allocate unboundedly from a length field": a counting global
//! allocator that records the largest single allocation made by the current
//! thread while a check runs, so a parser that trusts a length (or a count)
//! from its input and reserves that much fails the check, even when the
//! machine would have had the memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: during thread teardown the slots may be gone already.
    let armed = ARMED.try_with(Cell::get).unwrap_or(false);
    if armed {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only reads and writes const-initialised thread-locals, which
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The most a parser may allocate at once for an input of `len` bytes:
/// proportional to the input (growth doubling, UTF-8 re-encoding, a parsed
/// tree) plus a fixed allowance for fixed-size buffers (one TLS record).
pub fn limit_for(len: usize) -> usize {
    len.saturating_mul(16).saturating_add(256 * 1024)
}

/// Run `f`; panic if any single allocation it made on this thread was
/// larger than [`limit_for`]`(input_len)`.
pub fn bounded<R>(what: &str, input_len: usize, f: impl FnOnce() -> R) -> R {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    let largest = LARGEST.with(Cell::get);
    let limit = limit_for(input_len);
    assert!(
        largest <= limit,
        "{what}: allocated {largest} bytes at once for {input_len} bytes of input (limit {limit})"
    );
    out
}
