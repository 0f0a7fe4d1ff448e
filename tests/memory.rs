//! What a loaded proto tree keeps in memory (issue 17 item 10): a descriptor pool holds each file
//! once, with its source locations compact, and still hands out everything it was given — the
//! comments reflection serves, the `prost_types` view, the positions of error labels.
//!
//! Counted with the allocator protodrop itself wraps (`alloc_meter::Metered`), around a pool built
//! on this thread alone (`DescriptorPool::decode`, the path of `--descriptor-set` files, runs the
//! same build as protox's files), so the count is exact and independent of the machine's load.

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorSet;

#[global_allocator]
static ALLOCATOR: alloc_meter::Metered<std::alloc::System> =
    alloc_meter::Metered(std::alloc::System);

/// A file of `messages` messages of `fields` fields, each field with a one-line comment: source
/// locations (six or so per field) and comments outweigh the declarations, as in googleapis.
fn commented_file(messages: usize, fields: usize) -> String {
    let mut text = String::from("syntax = \"proto3\";\npackage mem;\n");
    for m in 0..messages {
        text.push_str(&format!("// Message number {m}.\nmessage M{m} {{\n"));
        for f in 1..=fields {
            text.push_str(&format!(
                "  // The field {f} of M{m}: what it holds, when it is set, and its units.\n  \
                 string field_{f} = {f};\n"
            ));
        }
        text.push_str("}\n");
    }
    text
}

/// protox's descriptor set for `files` (name, text), with source info, encoded.
fn compiled(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
    compiler.include_source_info(true).include_imports(true);
    for (name, _) in files {
        compiler.open_file(name).unwrap();
    }
    compiler.encode_file_descriptor_set()
}

#[test]
fn a_pool_keeps_each_file_once_and_its_locations_compact() {
    let set = compiled(&[("big.proto", &commented_file(40, 50))]);
    let locations: usize = FileDescriptorSet::decode(set.as_slice())
        .unwrap()
        .file
        .iter()
        .map(|f| f.source_code_info.as_ref().map_or(0, |s| s.location.len()))
        .sum();
    assert!(locations > 5_000, "{locations} locations");

    let before = alloc_meter::net_allocated();
    let pool = DescriptorPool::decode(set.as_slice()).unwrap();
    let kept = alloc_meter::net_allocated() - before;
    // Two decoded copies of each file (prost-reflect's own and a `prost_types` one) kept about 14.5
    // times the encoded size here; one copy with its locations encoded keeps about 5 times it (the
    // rest is the pool's indexes of names, fields and JSON names).
    let ratio = kept as f64 / set.len() as f64;
    assert!(
        ratio < 7.0,
        "the pool keeps {kept} bytes for a {} byte descriptor set ({ratio:.1}x)",
        set.len()
    );
    drop(pool);
}

#[test]
fn a_compact_pool_still_hands_out_its_comments_and_positions() {
    let text = commented_file(2, 3);
    let set = compiled(&[("small.proto", &text)]);
    let pool = DescriptorPool::decode(set.as_slice()).unwrap();
    let file = pool.get_file_by_name("small.proto").unwrap();

    // What reflection sends: the file's own encoding, source info included.
    let served = prost_types::FileDescriptorProto::decode(file.encode_to_vec().as_slice()).unwrap();
    let original = FileDescriptorSet::decode(set.as_slice()).unwrap().file[0].clone();
    assert_eq!(served, original, "the file comes back as it was given");
    let comment = |info: &prost_types::SourceCodeInfo| {
        info.location
            .iter()
            .filter_map(|l| l.leading_comments.clone())
            .find(|c| c.contains("The field 2 of M1"))
    };
    assert!(comment(served.source_code_info.as_ref().unwrap()).is_some());

    // The `prost_types` view, made on demand, carries them too.
    assert_eq!(file.file_descriptor_proto(), &original);
    let field = pool
        .get_message_by_name("mem.M1")
        .unwrap()
        .get_field_by_name("field_2")
        .unwrap();
    assert_eq!(field.field_descriptor_proto().name(), "field_2");
    assert!(comment(
        file.file_descriptor_proto()
            .source_code_info
            .as_ref()
            .unwrap()
    )
    .is_some());

    // An error in a later file still finds the place of the first definition in a built one.
    let mut pool = pool;
    let err = pool
        .add_file_descriptor_proto(prost_types::FileDescriptorProto {
            name: Some("clash.proto".into()),
            package: Some("mem".into()),
            message_type: vec![prost_types::DescriptorProto {
                name: Some("M1".into()),
                ..Default::default()
            }],
            syntax: Some("proto3".into()),
            ..Default::default()
        })
        .unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("message M1"))
        .unwrap()
        + 1;
    assert!(
        err.to_string()
            .contains(&format!("already defined in file 'small.proto' at {line}:")),
        "{err}"
    );
}
