//! What a loaded tree keeps in memory, measured (moved from tests/memory.rs: it drives the crate's
//! loader and route table). Counted by the allocator meter, which this test binary installs
//! (`tests/mod.rs`) as the `protodrop` binary does.

use prost::Message as _;

/// Not a check, a measurement (`PROTODROP_TREE=/path/to/googleapis taskset -c 0 cargo test
/// --release --lib what_a_tree_keeps -- --ignored --nocapture`): the bytes a loaded tree keeps, counted by
/// the allocator. On one core the load parses on the calling thread alone, so this thread's net
/// count is the whole of it.
#[test]
#[ignore]
fn what_a_tree_keeps() {
    let Some(tree) = std::env::var_os("PROTODROP_TREE") else {
        return;
    };
    let before = alloc_meter::net_allocated();
    let protos = crate::protos::load(std::path::Path::new(&tree), &[]).unwrap();
    let kept = alloc_meter::net_allocated() - before;
    let before = alloc_meter::net_allocated();
    let routes = crate::protos::http_routes::Routes::build(&protos.pool, &[tree.clone().into()]);
    let routes_kept = alloc_meter::net_allocated() - before;
    drop(routes);
    let encoded = protos.pool.encode_to_vec().len();
    let without_source_info: usize = protos
        .pool
        .files()
        .map(|f| {
            let mut file =
                prost_types::FileDescriptorProto::decode(f.encode_to_vec().as_slice()).unwrap();
            file.source_code_info = None;
            file.encoded_len()
        })
        .sum();
    println!(
        "{} files: {} MiB kept, and {} MiB by their HTTP routes; the pool encoded {} MiB, {} MiB of \
         it without source info",
        protos.files.len(),
        kept >> 20,
        routes_kept >> 20,
        encoded >> 20,
        without_source_info >> 20
    );
}
