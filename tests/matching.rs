//! `when` conditions, rule order, and the UNIMPLEMENTED answers when nothing can answer.

mod common;

use common::*;
use tonic::Code;

/// Starts a server with `t.toml` = `rules`, and answers `Unary` calls with the reply's `text`.
struct Fixture {
    server: Server,
    client: Client,
}

impl Fixture {
    async fn new(rules: &str) -> Fixture {
        let server = Server::start(&t_proto(), &[("t.toml", rules)]);
        let client = server.client().await;
        Fixture { server, client }
    }

    async fn text(&self, request: serde_json::Value) -> String {
        self.text_md(request, &[]).await
    }

    async fn text_md(&self, request: serde_json::Value, md: &[(&str, &str)]) -> String {
        let out = self
            .client
            .unary_md("t.Svc/Unary", request.clone(), md)
            .await;
        let reply = out.single();
        reply["text"]
            .as_str()
            .unwrap_or_else(|| panic!("reply to {request} has no text: {reply}"))
            .to_string()
    }
}

#[tokio::test]
async fn equality_on_string_int_int64_enum_and_bool() {
    let f = Fixture::new(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = "tom"
reply.text = "string"

[[rule]]
method = "t.Svc/Unary"
when.request.num = 42
reply.text = "int"

[[rule]]
method = "t.Svc/Unary"
when.request.big = "9007199254740993"
reply.text = "int64"

[[rule]]
method = "t.Svc/Unary"
when.request.color = "GREEN"
reply.text = "enum"

[[rule]]
method = "t.Svc/Unary"
when.request.flag = true
reply.text = "bool"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default"
"#,
    )
    .await;
    assert_eq!(f.text(json!({ "name": "tom" })).await, "string");
    assert_eq!(
        f.text(json!({ "name": "tommy" })).await,
        "default",
        "equality is not a prefix match"
    );
    assert_eq!(f.text(json!({ "num": 42 })).await, "int");
    assert_eq!(f.text(json!({ "num": 41 })).await, "default");
    assert_eq!(f.text(json!({ "big": "9007199254740993" })).await, "int64");
    assert_eq!(
        f.text(json!({ "big": "9007199254740992" })).await,
        "default",
        "int64 compared exactly, not as a double"
    );
    assert_eq!(f.text(json!({ "color": "GREEN" })).await, "enum");
    assert_eq!(f.text(json!({ "color": "RED" })).await, "default");
    assert_eq!(f.text(json!({ "flag": true })).await, "bool");
    assert_eq!(f.text(json!({ "flag": false })).await, "default");
}

#[tokio::test]
async fn all_conditions_of_a_rule_must_hold() {
    let f = Fixture::new(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = "tom"
when.request.num = 1
reply.text = "both"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default"
"#,
    )
    .await;
    assert_eq!(f.text(json!({ "name": "tom", "num": 1 })).await, "both");
    assert_eq!(f.text(json!({ "name": "tom", "num": 2 })).await, "default");
    assert_eq!(f.text(json!({ "name": "tim", "num": 1 })).await, "default");
}

#[tokio::test]
async fn contains_on_a_string_and_on_a_repeated_field() {
    let f = Fixture::new(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = { contains = "@" }
reply.text = "email"

[[rule]]
method = "t.Svc/Unary"
when.request.tags = { contains = "vip" }
reply.text = "vip"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default"
"#,
    )
    .await;
    assert_eq!(f.text(json!({ "name": "a@b.c" })).await, "email");
    assert_eq!(f.text(json!({ "name": "abc" })).await, "default");
    assert_eq!(f.text(json!({ "tags": ["x", "vip", "y"] })).await, "vip");
    assert_eq!(
        f.text(json!({ "tags": ["vipp", "v"] })).await,
        "default",
        "an element equal to it, not a substring"
    );
    assert_eq!(f.text(json!({ "tags": [] })).await, "default");
}

#[tokio::test]
async fn regex_condition() {
    let f = Fixture::new(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = { regex = "^[a-z]+[0-9]$" }
reply.text = "matched"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default"
"#,
    )
    .await;
    assert_eq!(f.text(json!({ "name": "abc7" })).await, "matched");
    assert_eq!(f.text(json!({ "name": "Abc7" })).await, "default");
    assert_eq!(f.text(json!({ "name": "abc77" })).await, "default");
}

#[tokio::test]
async fn present_true_and_false_on_a_sub_message_and_a_scalar() {
    let f = Fixture::new(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.request.inner = { present = true }
when.request.num = { present = true }
reply.text = "inner and num"

[[rule]]
method = "t.Svc/Unary"
when.request.inner = { present = true }
reply.text = "inner"

[[rule]]
method = "t.Svc/Unary"
when.request.inner = { present = false }
when.request.num = { present = false }
reply.text = "neither"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default"
"#,
    )
    .await;
    assert_eq!(
        f.text(json!({ "inner": { "id": 1 }, "num": 3 })).await,
        "inner and num"
    );
    assert_eq!(
        f.text(json!({ "inner": {} })).await,
        "inner",
        "an empty sub-message that is set is present"
    );
    assert_eq!(
        f.text(json!({ "inner": { "label": "x" }, "num": 0 })).await,
        "inner",
        "a scalar at its default is absent"
    );
    assert_eq!(f.text(json!({})).await, "neither");
    assert_eq!(f.text(json!({ "num": 5 })).await, "default");
}

#[tokio::test]
async fn nested_paths_dotted_key_nested_tables_and_list_index() {
    let f = Fixture::new(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.request."inner.id" = 7
reply.text = "dotted"

[[rule]]
method = "t.Svc/Unary"
when.request.inner = { label = "deep" }
reply.text = "nested table"

[[rule]]
method = "t.Svc/Unary"
[rule.when.request.inner]
id = 8
label = "both"
[rule.reply]
text = "nested header table"

[[rule]]
method = "t.Svc/Unary"
when.request."items.1.label" = "second"
reply.text = "indexed"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default"
"#,
    )
    .await;
    assert_eq!(f.text(json!({ "inner": { "id": 7 } })).await, "dotted");
    assert_eq!(
        f.text(json!({ "inner": { "label": "deep" } })).await,
        "nested table"
    );
    assert_eq!(
        f.text(json!({ "inner": { "id": 8, "label": "both" } }))
            .await,
        "nested header table"
    );
    assert_eq!(
        f.text(json!({ "inner": { "id": 8, "label": "one" } }))
            .await,
        "default"
    );
    assert_eq!(
        f.text(json!({ "items": [{ "label": "first" }, { "label": "second" }] }))
            .await,
        "indexed"
    );
    assert_eq!(
        f.text(json!({ "items": [{ "label": "second" }] })).await,
        "default",
        "index past the end does not match"
    );
    assert_eq!(f.text(json!({})).await, "default");
}

#[tokio::test]
async fn metadata_conditions() {
    let f = Fixture::new(
        r#"
[[rule]]
method = "t.Svc/Unary"
when.metadata.x-user = "alice"
reply.text = "alice"

[[rule]]
method = "t.Svc/Unary"
when.metadata.X-Tenant = "acme"
reply.text = "tenant (key written in upper case)"

[[rule]]
method = "t.Svc/Unary"
when.metadata.x-role = { regex = "^adm" }
reply.text = "admin"

[[rule]]
method = "t.Svc/Unary"
when.metadata.x-agent = { contains = "bot" }
reply.text = "bot"

[[rule]]
method = "t.Svc/Unary"
when.metadata.x-trace = { present = true }
reply.text = "traced"

[[rule]]
method = "t.Svc/Unary"
when.request.name = "md"
when.metadata.x-trace = { present = false }
reply.text = "untraced"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default"
"#,
    )
    .await;
    assert_eq!(f.text_md(json!({}), &[("x-user", "alice")]).await, "alice");
    assert_eq!(f.text_md(json!({}), &[("x-user", "bob")]).await, "default");
    assert_eq!(
        f.text_md(json!({}), &[("x-tenant", "acme")]).await,
        "tenant (key written in upper case)"
    );
    assert_eq!(f.text_md(json!({}), &[("x-role", "admin")]).await, "admin");
    assert_eq!(
        f.text_md(json!({}), &[("x-role", "user-adm")]).await,
        "default"
    );
    assert_eq!(
        f.text_md(json!({}), &[("x-agent", "a-robot/1")]).await,
        "bot"
    );
    assert_eq!(f.text_md(json!({}), &[("x-trace", "")]).await, "traced");
    assert_eq!(f.text_md(json!({ "name": "md" }), &[]).await, "untraced");
    assert_eq!(
        f.text_md(json!({ "name": "md" }), &[("x-trace", "1")])
            .await,
        "traced"
    );
}

/// Rules with `when` first, in file order (files sorted by path), then the default rules in file order.
#[tokio::test]
async fn first_match_across_files_in_path_order_and_defaults_last() {
    let first_file = r#"
[[rule]]
method = "t.Svc/Unary"
reply.text = "default in 10"

[[rule]]
method = "t.Svc/Unary"
when.request.name = "x"
reply.text = "x in 10"
"#;
    let second_file = r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = "x"
reply.text = "x in 20"

[[rule]]
method = "t.Svc/Unary"
when.request.name = "y"
reply.text = "y in 20"

[[rule]]
method = "t.Svc/Unary"
reply.text = "default in 20"
"#;
    let third_file = r#"
[[rule]]
method = "t.Svc/Unary"
when.request.name = { regex = "^[xyz]$" }
reply.text = "xyz in sub/30"
"#;
    // Written in an order other than their sorted one.
    let server = Server::start(
        &t_proto(),
        &[
            ("sub/30-c.toml", third_file),
            ("20-b.toml", second_file),
            ("10-a.toml", first_file),
        ],
    );
    let c = server.client().await;
    let text = |out: common::Outcome| out.single()["text"].as_str().unwrap().to_string();
    assert_eq!(
        text(c.unary("t.Svc/Unary", json!({ "name": "x" })).await),
        "x in 10"
    );
    assert_eq!(
        text(c.unary("t.Svc/Unary", json!({ "name": "y" })).await),
        "y in 20",
        "a `when` rule beats an earlier default"
    );
    assert_eq!(
        text(c.unary("t.Svc/Unary", json!({ "name": "z" })).await),
        "xyz in sub/30"
    );
    assert_eq!(
        text(c.unary("t.Svc/Unary", json!({ "name": "w" })).await),
        "default in 10",
        "defaults in file order"
    );
}

#[tokio::test]
async fn no_rule_matched_is_unimplemented_and_lists_the_rules() {
    let rules = r#"[[rule]]
method = "t.Svc/Unary"
when.request.name = "a"
reply.text = "a"

[[rule]]
method = "t.Svc/Unary"
when.request.name = "b"
reply.text = "b"
"#;
    let f = Fixture::new(rules).await;
    let out = f.client.unary("t.Svc/Unary", json!({ "name": "c" })).await;
    let msg = out.err(Code::Unimplemented);
    assert!(msg.contains("no rule for t.Svc/Unary matched"), "{msg}");
    let file = f.server.handlers_dir().join("t.toml");
    for line in [1, 6] {
        let origin = format!("{}:{line}", file.display());
        assert!(
            msg.contains(&origin),
            "the message should list the rule at {origin}: {msg}"
        );
    }
}

#[tokio::test]
async fn unknown_service_and_unknown_method_are_unimplemented_naming_them() {
    let f = Fixture::new("").await;
    let req = f.client.pool.get_message_by_name("t.Req").unwrap();
    let resp = f.client.pool.get_message_by_name("t.Resp").unwrap();
    let msg = |m| f.client.message(&req, m);

    let out = f
        .client
        .call_path("/t.Nope/Unary", resp.clone(), vec![msg(json!({}))], &[])
        .await;
    let text = out.err(Code::Unimplemented);
    assert!(text.contains("t.Nope"), "names the unknown service: {text}");
    assert!(
        text.contains("t.Svc"),
        "lists the services there are: {text}"
    );

    let out = f
        .client
        .call_path("/t.Svc/Nope", resp, vec![msg(json!({}))], &[])
        .await;
    let text = out.err(Code::Unimplemented);
    assert!(text.contains("Nope"), "names the unknown method: {text}");
    assert!(
        text.contains("Unary") && text.contains("Bidi"),
        "lists the methods there are: {text}"
    );
}

/// A method without any rule tells where to add one, with an example that is itself a valid rule.
#[tokio::test]
async fn method_without_rules_suggests_a_rule_that_loads() {
    let f = Fixture::new("[[rule]]\nmethod = \"t.Svc/Ping\"\n").await;
    for method in ["t.Svc/Unary", "t.Svc/ServerStream"] {
        let out = f.client.unary(method, json!({})).await;
        let msg = out.err(Code::Unimplemented);
        let file = f.server.handlers_dir().join("t.toml");
        let expected = format!(
            "no handler for {method}: add a rule to {}, e.g.",
            file.display()
        );
        assert!(
            msg.starts_with(&expected),
            "expected a message starting with {expected:?}, got {msg:?}"
        );
        let example = msg.split_once("e.g.").unwrap().1.trim();
        assert!(
            example.contains(&format!("method = \"{method}\"")),
            "{example}"
        );
        let (code, stdout, stderr) = check(&t_proto(), &[("t.toml", example)]);
        assert_eq!(code, 0, "the suggested rule should load as it is:\n{example}\n--- stderr ---\n{stderr}\n{stdout}");
    }
}
