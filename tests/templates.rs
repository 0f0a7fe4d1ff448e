//! `{{path}}` templates in replies: text, whole values, numbers, lists, metadata, client-stream roots.

mod common;

use common::*;
use serde_json::Value as Json;

/// `t.Svc/Unary` rules, each answering the requests whose `name` is its first half with its second.
const UNARY_BY_NAME: [(&str, &str); 10] = [
    (
        "interp",
        r#"reply.text = "Hello, {{request.name}} #{{request.num}} ({{request.inner.label}}/{{request.items.1.id}})!""#,
    ),
    (
        "copy",
        r#"reply = { inner = "{{request.inner}}", items = "{{request.items}}", list = "{{request.tags}}" }"#,
    ),
    (
        "numbers",
        r#"reply = { ratio = "{{request.num}}", big = "{{request.num}}", count = "{{request.num}}", num = "{{request.ratio}}", text = "{{request.ratio}}" }"#,
    ),
    (
        "each",
        r##"reply.list = { for_each = "request.tags", value = "{{index}}:{{item}}" }
reply.ids = { for_each = "request.tags", value = "{{index}}" }
reply.items = { for_each = "request.items", value = { id = "{{item.id}}", label = "#{{index}} {{item.label}}" } }"##,
    ),
    ("md", r#"reply.text = "user={{metadata.x-user}};""#),
    (
        "enum",
        r#"reply = { text = "color={{request.color}}", color = "{{request.color}}" }"#,
    ),
    (
        "int64-const",
        r#"reply = { big = 9007199254740993, ids = [9223372036854775807, "-9223372036854775808"] }"#,
    ),
    (
        "int64-copy",
        r#"reply = { big = "{{request.big}}", text = "{{request.big}}", ids = ["{{request.big}}", "1{{request.num}}"] }"#,
    ),
    ("message-text", r#"reply.text = "inner={{request.inner}}""#),
    (
        "inject",
        r#"reply = { text = "[{{request.tags.0}}] {{request.inner}}", list = ["{{request.tags.1}}"] }
headers = { x-tag = "{{request.tags.2}}" }"#,
    ),
];

fn rules() -> String {
    let mut rules: String = UNARY_BY_NAME
        .iter()
        .map(|(name, answer)| {
            rule(
                "t.Svc/Unary",
                &format!("when.request.name = \"{name}\"\n{answer}"),
            )
        })
        .collect();
    rules += &rule("t.Svc/Echo", r#"reply = "{{request}}""#);
    rules += &rule(
        "t.Svc/ClientStream",
        r#"reply = { text = "{{first.name}}..{{request.name}}", num = "{{count}}", inner = "{{first.inner}}" }"#,
    );
    rules
}

async fn setup() -> (Server, Client) {
    serve_t(&rules()).await
}

/// The one reply to a successful `t.Svc/Unary` call.
async fn unary(c: &Client, request: Json) -> Json {
    c.unary("t.Svc/Unary", request).await.single().clone()
}

/// The one reply to a successful `t.Svc/ClientStream` call.
async fn client_stream(c: &Client, requests: Vec<Json>) -> Json {
    c.client_stream("t.Svc/ClientStream", requests)
        .await
        .single()
        .clone()
}

#[tokio::test]
async fn interpolation_into_text() {
    let (_s, c) = setup().await;
    let req = json!({ "name": "interp", "num": 3, "inner": { "label": "in" }, "items": [{ "id": 1 }, { "id": 22 }] });
    assert_eq!(
        unary(&c, req).await,
        json!({ "text": "Hello, interp #3 (in/22)!" })
    );
}

#[tokio::test]
async fn whole_sub_message_and_list_copy() {
    let (_s, c) = setup().await;
    let req = json!({
        "name": "copy",
        "inner": { "id": 5, "label": "five" },
        "items": [{ "id": 1, "label": "a" }, { "id": 2 }],
        "tags": ["t1", "t2"],
    });
    assert_eq!(
        unary(&c, req).await,
        json!({ "inner": { "id": 5, "label": "five" }, "items": [{ "id": 1, "label": "a" }, { "id": 2 }], "list": ["t1", "t2"] })
    );
}

#[tokio::test]
async fn whole_request_echo() {
    let (_s, c) = setup().await;
    let req = json!({
        "name": "echo",
        "num": -4,
        "big": "-9007199254740993",
        "flag": true,
        "color": "RED",
        "tags": ["a"],
        "inner": { "id": 1 },
        "items": [{ "label": "x" }],
        "ratio": 0.25,
    });
    let out = c.unary("t.Svc/Echo", req.clone()).await;
    assert_eq!(out.single(), &req);
}

#[tokio::test]
async fn numbers_copied_into_other_numeric_types() {
    let (_s, c) = setup().await;
    let req = json!({ "name": "numbers", "num": 12, "ratio": 3.0 });
    // int32 → double, int64, uint64; double (integral) → int32; double → string.
    assert_eq!(
        unary(&c, req).await,
        json!({ "ratio": 12.0, "big": "12", "count": "12", "num": 3, "text": "3" })
    );
}

#[tokio::test]
async fn for_each_builds_lists_with_index_and_item() {
    let (_s, c) = setup().await;
    let req = json!({ "name": "each", "tags": ["a", "b", "c"], "items": [{ "id": 10, "label": "ten" }, { "id": 20, "label": "twenty" }] });
    assert_eq!(
        unary(&c, req).await,
        json!({
            "list": ["0:a", "1:b", "2:c"],
            "ids": ["0", "1", "2"],
            "items": [{ "id": 10, "label": "#0 ten" }, { "id": 20, "label": "#1 twenty" }],
        })
    );
    assert_eq!(
        unary(&c, json!({ "name": "each" })).await,
        json!({}),
        "empty source lists give empty lists"
    );
}

#[tokio::test]
async fn metadata_values_in_templates() {
    let (_s, c) = setup().await;
    let md = [("x-user", "alice")];
    let out = c
        .unary_md("t.Svc/Unary", json!({ "name": "md" }), &md)
        .await;
    assert_eq!(out.single(), &json!({ "text": "user=alice;" }));
    assert_eq!(
        unary(&c, json!({ "name": "md" })).await,
        json!({ "text": "user=;" }),
        "missing metadata renders as nothing"
    );
}

#[tokio::test]
async fn client_stream_count_first_and_last_request() {
    let (_s, c) = setup().await;
    let reqs = vec![
        json!({ "name": "first", "inner": { "id": 1 } }),
        json!({ "name": "middle", "inner": { "id": 2 } }),
        json!({ "name": "last", "inner": { "id": 3 } }),
    ];
    assert_eq!(
        client_stream(&c, reqs).await,
        json!({ "text": "first..last", "num": 3, "inner": { "id": 1 } })
    );
    let reqs = vec![json!({ "name": "only", "inner": { "id": 9 } })];
    assert_eq!(
        client_stream(&c, reqs).await,
        json!({ "text": "only..only", "num": 1, "inner": { "id": 9 } }),
        "one message is both first and last"
    );
}

/// `inner = "{{request.inner}}"` on a request without `inner` must not invent an empty `inner`: a client
/// checking `HasField("inner")` on the reply would see a sub-message the request never had.
#[tokio::test]
async fn copying_an_unset_sub_message_leaves_it_unset() {
    let (_s, c) = setup().await;
    assert_eq!(
        unary(&c, json!({ "name": "copy" })).await,
        json!({}),
        "nothing was set in the request, so nothing is set in the reply"
    );
    assert_eq!(
        client_stream(&c, vec![json!({ "name": "only" })]).await,
        json!({ "text": "only..only", "num": 1 })
    );
}

#[tokio::test]
async fn enum_written_as_its_name_and_copied_as_an_enum() {
    let (_s, c) = setup().await;
    assert_eq!(
        unary(&c, json!({ "name": "enum", "color": "GREEN" })).await,
        json!({ "text": "color=GREEN", "color": "GREEN" })
    );
}

#[tokio::test]
async fn int64_values_keep_every_digit() {
    let (_s, c) = setup().await;
    assert_eq!(
        unary(&c, json!({ "name": "int64-const" })).await,
        json!({ "big": "9007199254740993", "ids": ["9223372036854775807", "-9223372036854775808"] })
    );
    let req = json!({ "name": "int64-copy", "big": "-9007199254740993", "num": 7 });
    assert_eq!(
        unary(&c, req).await,
        json!({ "big": "-9007199254740993", "text": "-9007199254740993", "ids": ["-9007199254740993", "17"] })
    );
}

#[tokio::test]
async fn a_message_inside_text_is_written_as_json() {
    let (_s, c) = setup().await;
    let req = json!({ "name": "message-text", "inner": { "id": 4, "label": "x" } });
    let reply = unary(&c, req).await;
    let text = reply["text"].as_str().unwrap().to_string();
    let json_part: serde_json::Value = serde_json::from_str(text.strip_prefix("inner=").unwrap())
        .unwrap_or_else(|e| panic!("not JSON after 'inner=': {text}: {e}"));
    assert_eq!(json_part, json!({ "id": 4, "label": "x" }));
}

/// Values from the request are data: a value that looks like a template is not expanded, one that
/// closes a JSON string stays inside it, and one that would add a header line is refused (the call
/// fails cleanly; no header is smuggled in).
#[tokio::test]
async fn request_values_cannot_inject_into_templates_json_or_headers() {
    let (_s, c) = setup().await;
    let sneaky_label = r#"x","id":99,"label":"y"#;
    let req = json!({
        "name": "inject",
        "tags": ["{{request.name}}", "{{metadata.authorization}}", "plain"],
        "inner": { "id": 1, "label": sneaky_label },
    });
    let out = c.unary("t.Svc/Unary", req).await;
    let reply = out.single();
    let text = reply["text"].as_str().unwrap();
    let (tag, json_part) = text.split_once(' ').unwrap();
    assert_eq!(
        tag, "[{{request.name}}]",
        "a request value was expanded as a template"
    );
    let inner: serde_json::Value = serde_json::from_str(json_part).unwrap();
    assert_eq!(inner, json!({ "id": 1, "label": sneaky_label }));
    assert_eq!(reply["list"], json!(["{{metadata.authorization}}"]));
    assert_eq!(out.header("x-tag").as_deref(), Some("plain"));

    let req = json!({ "name": "inject", "tags": ["a", "b", "v\r\nx-evil: 1"] });
    let out = c.unary("t.Svc/Unary", req).await;
    assert!(out.header("x-evil").is_none(), "{out:?}");
    out.err(tonic::Code::Internal);
    // The server serves on.
    let req = json!({ "name": "inject", "tags": ["a", "b", "c"] });
    assert_eq!(
        c.unary("t.Svc/Unary", req).await.header("x-tag").as_deref(),
        Some("c")
    );
}
