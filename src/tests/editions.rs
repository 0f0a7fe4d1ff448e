//! Editions semantics (moved from tests/editions.rs, which drives the binary): each editions message
//! encodes (and reads) as its proto2 or proto3 twin, through the crate's own loader and encoder.

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage};
use serde_json::{json, Value as Json};

fn write_files(dir: &std::path::Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Editions semantics: each editions message encodes (and reads) as its proto2 or proto3 twin.

/// Every editions feature protodrop resolves per field (shared with tests/editions.rs).
const EDITIONS: &str = include_str!("../../tests/fixtures/editions/ed.proto");

/// File-wide IMPLICIT presence and EXPANDED encoding, overridden back on one field.
const EDITIONS_IMPLICIT: &str = r#"edition = "2023";
package imp;
option features.field_presence = IMPLICIT;
option features.repeated_field_encoding = EXPANDED;
message I {
  int32 implicit_zero = 1;
  string text = 2;
  repeated int32 expanded = 3;
  repeated int32 packed = 4 [features.repeated_field_encoding = PACKED];
  int32 explicit = 5 [features.field_presence = EXPLICIT];
}
"#;

const PROTO2_TWIN: &str = r#"syntax = "proto2";
package p2;
message E {
  optional int32 explicit_zero = 1;
  required int32 required = 3;
  repeated int32 packed = 4 [packed = true];
  repeated int32 expanded = 5;
  optional group Delimited = 6 { optional int32 x = 1; }
  repeated group Many = 7 { optional int32 x = 1; }
  optional string name = 8;
  message Inner { optional int32 x = 1; }
  map<string, Inner> by_name = 9;
}
"#;

const PROTO3_TWIN: &str = r#"syntax = "proto3";
package p3;
message I {
  int32 implicit_zero = 1;
  string text = 2;
  repeated int32 expanded = 3 [packed = false];
  repeated int32 packed = 4;
  optional int32 explicit = 5;
}
"#;

fn editions_pool() -> DescriptorPool {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("ed.proto", EDITIONS),
            ("imp.proto", EDITIONS_IMPLICIT),
            ("p2.proto", PROTO2_TWIN),
            ("p3.proto", PROTO3_TWIN),
        ],
    );
    crate::protos::load(dir.path(), &[])
        .unwrap_or_else(|e| panic!("{e}"))
        .pool
}

/// `value` as a message of `edition` and of `twin`: the same bytes (both encoders), the same JSON, and
/// each reads the other's bytes back to the same value.
fn assert_twins(pool: &DescriptorPool, edition: &str, twin: &str, value: Json) -> Vec<u8> {
    let message = |name: &str| {
        let desc = pool.get_message_by_name(name).unwrap();
        DynamicMessage::deserialize(desc, value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (ed, tw) = (message(edition), message(twin));
    let bytes = ed.encode_to_vec();
    assert_eq!(
        bytes,
        tw.encode_to_vec(),
        "{edition} and {twin} encode alike"
    );
    assert_eq!(
        crate::codec::encode::encode_to_vec(&ed),
        bytes,
        "protodrop's encoder agrees"
    );
    assert_eq!(
        serde_json::to_value(&ed).unwrap(),
        serde_json::to_value(&tw).unwrap(),
        "same JSON"
    );
    let back = DynamicMessage::decode(ed.descriptor(), bytes.as_slice()).unwrap();
    assert_eq!(
        back.encode_to_vec(),
        bytes,
        "{edition} reads its bytes back"
    );
    bytes
}

#[test]
fn editions_messages_encode_as_their_proto2_and_proto3_twins() {
    let pool = editions_pool();
    let bytes = assert_twins(
        &pool,
        "ed.E",
        "p2.E",
        json!({
            "explicitZero": 0, "required": 0, "packed": [1, 2, 300], "expanded": [4, 5],
            "delimited": {"x": 7}, "many": [{"x": 1}, {}], "name": "", "byName": {"k": {"x": 0}}
        }),
    );
    // Explicit presence keeps a zero: field 1, varint 0, first on the wire.
    assert_eq!(&bytes[..2], &[0x08, 0x00]);
    assert_twins(&pool, "ed.E", "p2.E", json!({"required": 5}));

    let bytes = assert_twins(
        &pool,
        "imp.I",
        "p3.I",
        json!({"implicitZero": 0, "text": "", "expanded": [1, 2], "packed": [3, 4], "explicit": 0}),
    );
    assert_eq!(&bytes[..2], &[0x18, 0x01], "implicit zeros are not written");
    assert_twins(
        &pool,
        "imp.I",
        "p3.I",
        json!({"implicitZero": 9, "text": "t"}),
    );

    let field = |m: &str, f: &str| {
        pool.get_message_by_name(m)
            .unwrap()
            .get_field_by_name(f)
            .unwrap()
    };
    assert!(field("ed.E", "delimited").is_group());
    assert!(field("ed.E", "packed").is_packed());
    assert!(
        field("p2.E", "packed").is_packed(),
        "proto2 [packed = true] compiled from source"
    );
    assert!(
        !field("p3.I", "expanded").is_packed(),
        "proto3 [packed = false] compiled from source"
    );
    assert!(
        !field("ed.E", "by_name").is_group(),
        "map entries stay length-prefixed"
    );
    assert_eq!(
        field("ed.E", "required").cardinality(),
        prost_reflect::Cardinality::Required
    );
    assert_eq!(
        pool.get_file_by_name("ed.proto").unwrap().syntax(),
        prost_reflect::Syntax::Editions
    );
}
