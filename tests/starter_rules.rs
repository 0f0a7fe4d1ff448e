//! Starter rules (`check --starter-rules`, and the rule an UNIMPLEMENTED answer suggests): pasted as
//! they are, they load and answer, whatever the output message holds — well-known types, oneofs,
//! maps, enums, proto2 groups. Issue 17 found 41 % of googleapis' methods got an invalid one.

mod common;

use common::*;
use serde_json::json;
use tonic::Code;

const SHAPES: &str = r#"syntax = "proto3";
package s;
import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

enum Color { COLOR_UNSPECIFIED = 0; RED = 1; }
message Inner { string a = 1; }
message All {
  google.protobuf.Timestamp ts = 1;
  google.protobuf.Duration d = 2;
  google.protobuf.FieldMask mask = 3;
  google.protobuf.Any any = 4;
  google.protobuf.Struct st = 5;
  google.protobuf.Value v = 6;
  google.protobuf.ListValue lv = 7;
  google.protobuf.Empty e = 8;
  google.protobuf.StringValue sw = 9;
  google.protobuf.BytesValue bw = 10;
  google.protobuf.BoolValue bo = 11;
  google.protobuf.DoubleValue dw = 12;
  google.protobuf.FloatValue fw = 13;
  google.protobuf.Int32Value i32w = 14;
  google.protobuf.UInt32Value u32w = 15;
  google.protobuf.Int64Value i64w = 16;
  google.protobuf.UInt64Value u64w = 17;
  oneof choice { Inner first = 18; string second = 19; google.protobuf.Timestamp third = 20; }
  oneof other { int64 n = 21; bytes b = 22; }
  map<string, Inner> by_name = 23;
  repeated google.protobuf.Timestamp times = 24;
  Color color = 25;
  optional int32 maybe = 26;
  Inner inner = 27;
  double x = 28;
  sint64 y = 29;
  fixed32 z = 30;
}
service Shapes {
  rpc Get(Inner) returns (All);
  rpc Watch(Inner) returns (stream All);
  rpc Nothing(Inner) returns (google.protobuf.Empty);
  rpc Wrapped(Inner) returns (google.protobuf.Struct);
}
"#;

const LEGACY: &str = r#"syntax = "proto2";
package l;
message Reply {
  required string id = 1;
  optional group Extra = 2 { optional int32 n = 3; }
  repeated int32 values = 4 [packed = true];
  oneof pick { string p = 5; int32 q = 6; }
}
service Legacy { rpc Get(Reply) returns (Reply); }
"#;

const METHODS: [&str; 5] = [
    "s.Shapes/Get",
    "s.Shapes/Nothing",
    "s.Shapes/Wrapped",
    "l.Legacy/Get",
    "s.Shapes/Watch",
];

#[test]
fn starter_rules_for_every_method_load_without_a_problem() {
    let protos = [("s.proto", SHAPES), ("l.proto", LEGACY)];
    let (code, stdout, stderr) = check_with(&protos, &[], &["--starter-rules"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("ok: 2 services, 5 methods"), "{stderr}");
    for method in METHODS {
        assert!(
            stdout.contains(&format!("method = \"{method}\"")),
            "a starter for {method}:\n{stdout}"
        );
    }
    let (code, out, err) = check(&protos, &[("starter.toml", &stdout)]);
    assert_eq!(code, 0, "the starter rules load:\n{stdout}\n{out}\n{err}");
    assert!(out.contains("5 rules in 1 handler files"), "{out}");
    assert!(!out.contains("without a handler"), "{out}");
}

/// The rule an UNIMPLEMENTED answer suggests is the starter rule: pasted into the file it names,
/// the method answers OK (hot reload picks the file up).
#[tokio::test]
async fn the_rule_an_unimplemented_answer_suggests_answers_once_pasted() {
    let server = Server::start(&[("s.proto", SHAPES), ("l.proto", LEGACY)], &[]);
    let client = server.client().await;
    let mut pasted = String::new();
    for method in METHODS {
        let outcome = if method.ends_with("/Watch") {
            client.server_stream(method, json!({})).await
        } else {
            client.unary(method, json!({})).await
        };
        let message = outcome.err(Code::Unimplemented).to_string();
        let (_, rule) = message
            .split_once(", e.g.\n")
            .unwrap_or_else(|| panic!("a suggested rule in: {message}"));
        pasted.push_str(rule);
        pasted.push_str("\n\n");
    }
    let since = server.logs().len();
    server.write_handler("starter.toml", &pasted);
    server
        .wait_for_log(since, "reloaded", std::time::Duration::from_secs(20))
        .await;
    let logs = server.logs();
    assert!(
        !logs[since..].contains("problem"),
        "the pasted rules load:\n{pasted}\n{}",
        &logs[since..]
    );
    for method in METHODS {
        let outcome = if method.ends_with("/Watch") {
            client.server_stream(method, json!({})).await
        } else {
            client.unary(method, json!({})).await
        };
        outcome.ok();
    }
    let all = client.unary("s.Shapes/Get", json!({})).await;
    let reply = all.ok().single();
    assert_eq!(reply["ts"], json!("1970-01-01T00:00:00Z"), "{reply}");
    assert_eq!(reply["d"], json!("0s"), "{reply}");
}
