//! `DescriptorPool::with_files` (a patch of prost-reflect, `vendor/prost-reflect/src/descriptor/build/relocate.rs`):
//! its own tests, here because the vendored crate's test suite does not build without the
//! dev-dependencies it was published without.

use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, Kind};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
    FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto,
};

fn field(name: &str, number: i32, type_name: Option<&str>) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_owned()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: match type_name {
            None => Some(Type::String as i32),
            Some(_) => None,
        },
        type_name: type_name.map(str::to_owned),
        ..Default::default()
    }
}

fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.to_owned()),
        field: fields,
        ..Default::default()
    }
}

/// a; b imports a (a service); c imports a; d imports b and a (a nested message).
fn files() -> Vec<FileDescriptorProto> {
    let file = |name: &str, deps: &[&str], messages: Vec<DescriptorProto>| FileDescriptorProto {
        name: Some(name.to_owned()),
        package: Some("p".to_owned()),
        syntax: Some("proto3".to_owned()),
        dependency: deps.iter().map(|d| d.to_string()).collect(),
        message_type: messages,
        ..Default::default()
    };
    let mut a = file(
        "a.proto",
        &[],
        vec![message("A", vec![field("some_text", 1, None)])],
    );
    a.enum_type.push(EnumDescriptorProto {
        name: Some("E".to_owned()),
        value: vec![EnumValueDescriptorProto {
            name: Some("E_ZERO".to_owned()),
            number: Some(0),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut b = file(
        "b.proto",
        &["a.proto"],
        vec![message(
            "B",
            vec![field("a", 1, Some(".p.A")), field("e", 2, Some(".p.E"))],
        )],
    );
    b.service.push(ServiceDescriptorProto {
        name: Some("S".to_owned()),
        method: vec![MethodDescriptorProto {
            name: Some("Get".to_owned()),
            input_type: Some(".p.B".to_owned()),
            output_type: Some(".p.A".to_owned()),
            ..Default::default()
        }],
        ..Default::default()
    });
    let c = file(
        "c.proto",
        &["a.proto"],
        vec![message("C", vec![field("a", 1, Some(".p.A"))])],
    );
    let mut d_message = message(
        "D",
        vec![field("b", 1, Some(".p.B")), field("n", 2, Some(".p.D.N"))],
    );
    d_message
        .nested_type
        .push(message("N", vec![field("e", 1, Some(".p.E"))]));
    let d = file("d.proto", &["b.proto", "a.proto"], vec![d_message]);
    vec![a, b, c, d]
}

fn build(files: &[FileDescriptorProto], names: &[&str]) -> DescriptorPool {
    let mut pool = DescriptorPool::new();
    for name in names {
        let file = files.iter().find(|f| f.name() == *name).unwrap().clone();
        pool.add_file_descriptor_proto(file).unwrap();
    }
    pool
}

/// Every index, kind and lookup of the pool's definitions.
fn shape(pool: &DescriptorPool) -> String {
    let mut out = String::new();
    for f in pool.files() {
        let deps: Vec<_> = f.dependencies().map(|d| d.index()).collect();
        let _ = writeln!(out, "file {} {} {deps:?}", f.index(), f.name());
    }
    for m in pool.all_messages() {
        let _ = writeln!(
            out,
            "message {} file={} parent={:?}",
            m.full_name(),
            m.parent_file().index(),
            m.parent_message().map(|p| p.full_name().to_owned())
        );
        assert_eq!(pool.get_message_by_name(m.full_name()), Some(m.clone()));
        for f in m.fields() {
            let kind = match f.kind() {
                Kind::Message(k) => format!("message {}", k.full_name()),
                Kind::Enum(k) => format!("enum {}", k.full_name()),
                other => format!("{other:?}"),
            };
            let _ = writeln!(
                out,
                "  {} {} {} {kind}",
                f.full_name(),
                f.number(),
                f.json_name()
            );
            assert_eq!(m.get_field_by_name(f.name()), Some(f.clone()));
            assert_eq!(m.get_field_by_json_name(f.json_name()), Some(f.clone()));
            assert_eq!(m.get_field(f.number()), Some(f.clone()));
        }
    }
    for e in pool.all_enums() {
        let _ = writeln!(
            out,
            "enum {} file={}",
            e.full_name(),
            e.parent_file().index()
        );
        for v in e.values() {
            assert_eq!(e.get_value_by_name(v.name()), Some(v.clone()));
            assert_eq!(e.get_value(v.number()), Some(v.clone()));
        }
    }
    for s in pool.services() {
        for m in s.methods() {
            let _ = writeln!(
                out,
                "method {} {} {}",
                m.full_name(),
                m.input().full_name(),
                m.output().full_name()
            );
        }
    }
    out
}

#[test]
fn relocated_files_are_what_a_fresh_build_makes() {
    let files = files();
    let pool = build(&files, &["a.proto", "b.proto", "c.proto", "d.proto"]);
    let before = shape(&pool);
    let kept = ["a.proto", "b.proto", "d.proto"];
    let relocated = pool.clone().with_files(&kept).unwrap();
    assert_eq!(shape(&relocated), shape(&build(&files, &kept)));
    // The pool it came from is untouched.
    assert_eq!(shape(&pool), before);
    // Another order, from an unshared pool (moved rather than shared).
    let order = ["a.proto", "c.proto", "b.proto", "d.proto"];
    let moved = pool.with_files(&order).unwrap();
    assert_eq!(shape(&moved), shape(&build(&files, &order)));
    // The files at the front stay in place, the last one is dropped.
    let fewer = ["a.proto", "c.proto", "b.proto"];
    let truncated = moved.with_files(&fewer).unwrap();
    assert_eq!(shape(&truncated), shape(&build(&files, &fewer)));
    // A file before its import.
    assert!(truncated.with_files(&["b.proto", "a.proto"]).is_none());
}

#[test]
fn relocating_a_shared_pool_shares_its_names() {
    let files = files();
    let pool = build(&files, &["a.proto", "b.proto", "c.proto", "d.proto"]);
    let relocated = pool
        .clone()
        .with_files(&["a.proto", "b.proto", "d.proto"])
        .unwrap();
    let same = |a: &str, b: &str| std::ptr::eq(a.as_ptr(), b.as_ptr());
    for name in ["p.A", "p.B", "p.D", "p.D.N"] {
        let old = pool.get_message_by_name(name).unwrap();
        let new = relocated.get_message_by_name(name).unwrap();
        assert!(same(old.full_name(), new.full_name()), "{name}");
        for (old, new) in old.fields().zip(new.fields()) {
            assert!(same(old.full_name(), new.full_name()));
            assert!(same(old.json_name(), new.json_name()));
        }
    }
    let old = pool.get_service_by_name("p.S").unwrap();
    let new = relocated.get_service_by_name("p.S").unwrap();
    assert!(same(old.full_name(), new.full_name()));
}
