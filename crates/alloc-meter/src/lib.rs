//! A `#[global_allocator]` wrapper that keeps one number per thread: the bytes that thread has
//! allocated minus the bytes it has freed (its *net* allocation, which may go negative when it frees
//! memory another thread allocated).
//!
//! protodrop uses it to bound the memory of one script call (`--script-max-memory`): a script runs
//! synchronously on one thread from start to end, so the growth of that thread's net count between
//! the start of the call and any point in it is what the call holds. Rhai has no accounting of its
//! own, and its per-value limits (string, array and map sizes) do not bound the total.
//!
//! With the feature `mimalloc`, it also asks mimalloc to hand the memory it holds free back to the
//! operating system ([`release_free_memory`]): after a large proto tree is loaded, or its old state
//! dropped by a reload, mimalloc keeps the freed pages for reuse and purges them only when later
//! allocations come by, which an idle server never does.
//!
//! Why a crate of its own: implementing `GlobalAlloc` and calling mimalloc's C API take `unsafe`,
//! which protodrop's library and binary forbid; this crate is the one place that allows it, and
//! does nothing else. The crates on
//! crates.io that count allocations either keep process-wide totals only or are little used.
//!
//! Cost: one thread-local add per allocation and per free (a const-initialised `Cell`, no lazy
//! initialisation, no atomics, never allocates), so it can sit on every path.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

thread_local! {
    static NET: Cell<isize> = const { Cell::new(0) };
}

/// Wraps allocator `A`, counting on the calling thread.
pub struct Metered<A>(pub A);

#[inline(always)]
fn add(n: isize) {
    // `try_with`: a thread being torn down may still allocate after its locals are gone.
    let _ = NET.try_with(|net| net.set(net.get().wrapping_add(n)));
}

// SAFETY: every method forwards to `A` with the same arguments and returns its result unchanged;
// the bookkeeping touches only a thread-local `Cell` and neither allocates nor unwinds.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Metered<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc_zeroed(layout);
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0.dealloc(ptr, layout);
        add(-(layout.size() as isize));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.0.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add((new_size as isize).wrapping_sub(layout.size() as isize));
        }
        p
    }
}

/// This thread's net allocation in bytes, since it started (0 when no [`Metered`] allocator is
/// installed). Only differences between two readings on the same thread mean anything.
#[inline]
pub fn net_allocated() -> isize {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// Asks mimalloc to free what it caches for the calling thread and to return every free page of
/// the process to the operating system now, rather than after its purge delay (and only when
/// something allocates again). Costs a few milliseconds on a large heap: call it after a load, not
/// on a request path. Does nothing useful unless mimalloc is the global allocator.
#[cfg(feature = "mimalloc")]
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointer and may be called from any thread at any time (it
    // collects the calling thread's heap and purges the process-wide arenas).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static A: Metered<std::alloc::System> = Metered(std::alloc::System);

    #[test]
    fn counts_this_threads_allocations_and_frees() {
        let before = net_allocated();
        let v: Vec<u8> = Vec::with_capacity(1 << 20);
        assert_eq!(net_allocated() - before, 1 << 20);
        let mut v = std::hint::black_box(v);
        v.reserve_exact(2 << 20);
        assert!(net_allocated() - before >= 2 << 20);
        drop(v);
        assert_eq!(net_allocated(), before);
    }

    #[test]
    fn other_threads_do_not_count_here() {
        let before = net_allocated();
        // Starting and joining a thread allocates a little here; its megabyte is counted there.
        let kept = std::thread::spawn(|| vec![0u8; 1 << 20]).join().unwrap();
        assert!((net_allocated() - before).abs() < 64 << 10);
        let before = net_allocated();
        drop(kept); // freed here: this thread's count goes below where it was
        assert_eq!(net_allocated(), before - (1 << 20));
    }
}
