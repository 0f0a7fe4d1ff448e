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

/// The pool decoded from `set`, the bytes it keeps allocated, and those as a multiple of the set's
/// size.
fn decoded_and_kept(set: &[u8]) -> (DescriptorPool, isize, f64) {
    let before = alloc_meter::net_allocated();
    let pool = DescriptorPool::decode(set).unwrap();
    let kept = alloc_meter::net_allocated() - before;
    (pool, kept, kept as f64 / set.len() as f64)
}

fn kept_text(kept: isize, set: &[u8], ratio: f64) -> String {
    format!(
        "the pool keeps {kept} bytes for a {} byte descriptor set ({ratio:.1}x)",
        set.len()
    )
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

    let (pool, kept, ratio) = decoded_and_kept(&set);
    // Two decoded copies of each file (prost-reflect's own and a `prost_types` one) kept about 14.5
    // times the encoded size here; one copy with its locations encoded keeps about 5 times it (the
    // rest is the pool's indexes of names, fields and JSON names).
    assert!(ratio < 7.0, "{}", kept_text(kept, &set, ratio));
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

/// A file of declarations as a large API has them, comments aside: messages of many fields, most
/// with an option, and enums.
fn declared_file(messages: usize, fields: usize) -> String {
    let mut text = String::from("syntax = \"proto3\";\npackage mem;\n");
    for m in 0..messages {
        text.push_str(&format!("message Request{m} {{\n"));
        for f in 1..=fields {
            let option = if f % 3 == 0 {
                ""
            } else {
                " [deprecated = true]"
            };
            text.push_str(&format!("  string some_field_{f} = {f}{option};\n"));
        }
        text.push_str(&format!("}}\nenum State{m} {{\n"));
        for v in 0..fields / 2 {
            text.push_str(&format!("  STATE_{m}_VALUE_{v} = {v};\n"));
        }
        text.push_str("}\n");
    }
    text
}

#[test]
fn a_pool_keeps_its_declarations_in_a_few_times_their_encoded_size() {
    let set = compiled(&[("declared.proto", &declared_file(40, 60))]);
    let mut files = FileDescriptorSet::decode(set.as_slice()).unwrap();
    for file in &mut files.file {
        file.source_code_info = None;
    }
    let set = files.encode_to_vec();
    // Made once, on first use, by the first build resolving options: not this pool's.
    let _ = DescriptorPool::global();

    let (pool, kept, ratio) = decoded_and_kept(&set);
    // A declaration takes far more room decoded than encoded (a field is a few bytes on the wire,
    // hundreds in the pool). Each options' decoded value kept beside its bytes, a field's default
    // value inline, and per message two hash maps keyed by copies of the field names and json
    // names (per enum one of the value names) kept 21 times the encoded size here; options kept
    // encoded, the default boxed, and names found through the fields' and values' own
    // (`NameIndex` in vendor/prost-reflect) keep 16 times it.
    assert!(ratio < 18.5, "{}", kept_text(kept, &set, ratio));

    // And still finds every field by name and json name, and every value by name.
    let message = pool.get_message_by_name("mem.Request7").unwrap();
    for f in 1..=60 {
        let field = message
            .get_field_by_name(&format!("some_field_{f}"))
            .unwrap();
        assert_eq!(field.number(), f);
        let by_json = message
            .get_field_by_json_name(&format!("someField{f}"))
            .unwrap();
        assert_eq!(by_json.number(), f);
        assert_eq!(
            field
                .field_descriptor_proto()
                .options
                .as_ref()
                .and_then(|o| o.deprecated),
            (f % 3 != 0).then_some(true)
        );
    }
    assert!(message.get_field_by_name("some_field_61").is_none());
    assert!(message.get_field_by_json_name("some_field_1").is_none());
    let state = pool.get_enum_by_name("mem.State7").unwrap();
    for v in 0..30 {
        assert_eq!(
            state
                .get_value_by_name(&format!("STATE_7_VALUE_{v}"))
                .unwrap()
                .number(),
            v
        );
    }
    assert!(state.get_value_by_name("STATE_7_VALUE_30").is_none());
    drop(pool);
}
