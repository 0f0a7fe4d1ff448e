//! What metering adds to an allocation and free: `cargo run --release -p alloc-meter --example overhead`.
//! Allocates and frees blocks of a few sizes through mimalloc, directly and through `Metered`, in
//! alternating rounds, and prints the median nanoseconds per alloc+free pair of each.

use std::alloc::{GlobalAlloc, Layout};
use std::time::Instant;

use alloc_meter::Metered;
use mimalloc::MiMalloc;

const PAIRS: usize = 10_000_000;
const ROUNDS: usize = 7;

fn pairs<A: GlobalAlloc>(allocator: &A) -> f64 {
    let layouts = [16, 64, 256, 1024].map(|size| Layout::from_size_align(size, 8).unwrap());
    let start = Instant::now();
    for i in 0..PAIRS {
        let layout = layouts[i & 3];
        // SAFETY: a non-zero layout; the block is freed with the same layout by the same allocator.
        unsafe {
            let p = allocator.alloc(layout);
            std::hint::black_box(p);
            allocator.dealloc(p, layout);
        }
    }
    start.elapsed().as_nanos() as f64 / PAIRS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let plain = MiMalloc;
    let metered = Metered(MiMalloc);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(pairs(&plain));
        b.push(pairs(&metered));
    }
    let (a, b) = (median(a), median(b));
    println!(
        "mimalloc: {a:.2} ns per alloc+free; metered: {b:.2} ns (+{:.2} ns)",
        b - a
    );
}
