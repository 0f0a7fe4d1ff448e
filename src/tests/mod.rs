//! Tests of the crate's internals that span several modules, moved here from tests/ when the library
//! stopped exporting its modules (tests/ drives the binary; these drive the code directly).

mod editions;
mod encoding;
mod fuzz_regressions;
mod memory;
mod runtime_rules;

/// The binary's allocator meter (`main.rs` wraps mimalloc in it): the memory measurement reads it,
/// and scripts' memory limits are checked against it as in the server.
#[global_allocator]
static ALLOCATOR: alloc_meter::Metered<std::alloc::System> =
    alloc_meter::Metered(std::alloc::System);
