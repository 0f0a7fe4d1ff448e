//! `release_free_memory` gives the pages of freed memory back to the operating system at once,
//! where mimalloc alone keeps them until its purge delay has passed and something allocates again
//! (an idle server after a reload).

#![cfg(all(feature = "mimalloc", target_os = "linux"))]

#[global_allocator]
static ALLOCATOR: alloc_meter::Metered<mimalloc::MiMalloc> =
    alloc_meter::Metered(mimalloc::MiMalloc);

/// This process's resident memory, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn freed_memory_leaves_the_process_when_released() {
    const TOTAL: usize = 256 << 20;
    // Many small blocks, as a descriptor pool is made of, allocated on a thread that then ends
    // (as a load does), and freed here.
    let blocks = std::thread::spawn(|| {
        (0..TOTAL / 128)
            .map(|i| vec![i as u8; 128].into_boxed_slice())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let full = rss();
    drop(std::hint::black_box(blocks));
    let freed = rss();
    alloc_meter::release_free_memory();
    let released = rss();
    assert!(
        released + TOTAL / 2 < full,
        "RSS with the blocks {full}, once freed {freed}, once released {released}"
    );
}
