//! `when` conditions, rule order, and the UNIMPLEMENTED answers when nothing can answer.

mod common;

use common::*;
use serde_json::Value as Json;
use tonic::Code;

/// `t.Svc/Unary` rules, one for each `(when, text)`: the rule's `when` lines (none for a default
/// rule), and it replies `text`.
fn unary_rules(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(when, text)| {
            let lines = format!("{when}\nreply.text = \"{text}\"");
            rule("t.Svc/Unary", lines.trim_start())
        })
        .collect()
}

/// A request, its metadata, and the text it should be answered with.
type MetadataCase<'a> = (Json, &'a [(&'a str, &'a str)], &'a str);

/// A server on these handler files, answering `Unary` calls with the reply's `text`.
struct Fixture {
    server: Server,
    client: Client,
}

impl Fixture {
    /// `t.toml` = `rules`.
    async fn new(rules: &str) -> Fixture {
        Self::files(&[("t.toml", rules)]).await
    }

    /// `t.toml` = [`unary_rules`]`(list)`.
    async fn rules(list: &[(&str, &str)]) -> Fixture {
        Self::new(&unary_rules(list)).await
    }

    async fn files(handlers: &[(&str, &str)]) -> Fixture {
        let server = Server::start(&t_proto(), handlers);
        let client = server.client().await;
        Fixture { server, client }
    }

    async fn text(&self, request: Json) -> String {
        self.text_md(request, &[]).await
    }

    async fn text_md(&self, request: Json, md: &[(&str, &str)]) -> String {
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

    /// Each request is answered with its text.
    async fn answers(&self, cases: &[(Json, &str)]) {
        for (request, want) in cases {
            assert_eq!(self.text(request.clone()).await, *want, "{request}");
        }
    }

    /// The request is answered with `want`, for the reason `why`.
    async fn answers_because(&self, request: Json, want: &str, why: &str) {
        assert_eq!(self.text(request).await, want, "{why}");
    }

    /// Each request, with its metadata, is answered with its text.
    async fn answers_md(&self, cases: &[MetadataCase<'_>]) {
        for (request, md, want) in cases {
            let got = self.text_md(request.clone(), md).await;
            assert_eq!(got, *want, "{request} with {md:?}");
        }
    }
}

#[tokio::test]
async fn equality_on_string_int_int64_enum_and_bool() {
    let f = Fixture::rules(&[
        (r#"when.request.name = "tom""#, "string"),
        ("when.request.num = 42", "int"),
        (r#"when.request.big = "9007199254740993""#, "int64"),
        (r#"when.request.color = "GREEN""#, "enum"),
        ("when.request.flag = true", "bool"),
        ("", "default"),
    ])
    .await;
    f.answers(&[(json!({ "name": "tom" }), "string")]).await;
    f.answers_because(
        json!({ "name": "tommy" }),
        "default",
        "equality is not a prefix match",
    )
    .await;
    f.answers(&[
        (json!({ "num": 42 }), "int"),
        (json!({ "num": 41 }), "default"),
        (json!({ "big": "9007199254740993" }), "int64"),
    ])
    .await;
    f.answers_because(
        json!({ "big": "9007199254740992" }),
        "default",
        "int64 compared exactly, not as a double",
    )
    .await;
    f.answers(&[
        (json!({ "color": "GREEN" }), "enum"),
        (json!({ "color": "RED" }), "default"),
        (json!({ "flag": true }), "bool"),
        (json!({ "flag": false }), "default"),
    ])
    .await;
}

#[tokio::test]
async fn all_conditions_of_a_rule_must_hold() {
    let f = Fixture::rules(&[
        ("when.request.name = \"tom\"\nwhen.request.num = 1", "both"),
        ("", "default"),
    ])
    .await;
    f.answers(&[
        (json!({ "name": "tom", "num": 1 }), "both"),
        (json!({ "name": "tom", "num": 2 }), "default"),
        (json!({ "name": "tim", "num": 1 }), "default"),
    ])
    .await;
}

#[tokio::test]
async fn contains_on_a_string_and_on_a_repeated_field() {
    let f = Fixture::rules(&[
        (r#"when.request.name = { contains = "@" }"#, "email"),
        (r#"when.request.tags = { contains = "vip" }"#, "vip"),
        ("", "default"),
    ])
    .await;
    f.answers(&[
        (json!({ "name": "a@b.c" }), "email"),
        (json!({ "name": "abc" }), "default"),
        (json!({ "tags": ["x", "vip", "y"] }), "vip"),
    ])
    .await;
    f.answers_because(
        json!({ "tags": ["vipp", "v"] }),
        "default",
        "an element equal to it, not a substring",
    )
    .await;
    f.answers(&[(json!({ "tags": [] }), "default")]).await;
}

#[tokio::test]
async fn regex_condition() {
    let f = Fixture::rules(&[
        (
            r#"when.request.name = { regex = "^[a-z]+[0-9]$" }"#,
            "matched",
        ),
        ("", "default"),
    ])
    .await;
    f.answers(&[
        (json!({ "name": "abc7" }), "matched"),
        (json!({ "name": "Abc7" }), "default"),
        (json!({ "name": "abc77" }), "default"),
    ])
    .await;
}

#[tokio::test]
async fn present_true_and_false_on_a_sub_message_and_a_scalar() {
    let f = Fixture::rules(&[
        (
            "when.request.inner = { present = true }\nwhen.request.num = { present = true }",
            "inner and num",
        ),
        ("when.request.inner = { present = true }", "inner"),
        (
            "when.request.inner = { present = false }\nwhen.request.num = { present = false }",
            "neither",
        ),
        ("", "default"),
    ])
    .await;
    f.answers(&[(json!({ "inner": { "id": 1 }, "num": 3 }), "inner and num")])
        .await;
    f.answers_because(
        json!({ "inner": {} }),
        "inner",
        "an empty sub-message that is set is present",
    )
    .await;
    f.answers_because(
        json!({ "inner": { "label": "x" }, "num": 0 }),
        "inner",
        "a scalar at its default is absent",
    )
    .await;
    f.answers(&[(json!({}), "neither"), (json!({ "num": 5 }), "default")])
        .await;
}

#[tokio::test]
async fn nested_paths_dotted_key_nested_tables_and_list_index() {
    // The third rule is written with table headers, which the one-line `when` of `rules` cannot say.
    let handlers = [
        unary_rules(&[
            (r#"when.request."inner.id" = 7"#, "dotted"),
            (r#"when.request.inner = { label = "deep" }"#, "nested table"),
        ]),
        rule(
            "t.Svc/Unary",
            "[rule.when.request.inner]\nid = 8\nlabel = \"both\"\n[rule.reply]\ntext = \"nested header table\"",
        ),
        unary_rules(&[
            (r#"when.request."items.1.label" = "second""#, "indexed"),
            ("", "default"),
        ]),
    ]
    .concat();
    let f = Fixture::new(&handlers).await;
    f.answers(&[
        (json!({ "inner": { "id": 7 } }), "dotted"),
        (json!({ "inner": { "label": "deep" } }), "nested table"),
        (
            json!({ "inner": { "id": 8, "label": "both" } }),
            "nested header table",
        ),
        (json!({ "inner": { "id": 8, "label": "one" } }), "default"),
        (
            json!({ "items": [{ "label": "first" }, { "label": "second" }] }),
            "indexed",
        ),
    ])
    .await;
    f.answers_because(
        json!({ "items": [{ "label": "second" }] }),
        "default",
        "index past the end does not match",
    )
    .await;
    f.answers(&[(json!({}), "default")]).await;
}

#[tokio::test]
async fn metadata_conditions() {
    let f = Fixture::rules(&[
        (r#"when.metadata.x-user = "alice""#, "alice"),
        (
            r#"when.metadata.X-Tenant = "acme""#,
            "tenant (key written in upper case)",
        ),
        (r#"when.metadata.x-role = { regex = "^adm" }"#, "admin"),
        (r#"when.metadata.x-agent = { contains = "bot" }"#, "bot"),
        ("when.metadata.x-trace = { present = true }", "traced"),
        (
            "when.request.name = \"md\"\nwhen.metadata.x-trace = { present = false }",
            "untraced",
        ),
        ("", "default"),
    ])
    .await;
    f.answers_md(&[
        (json!({}), &[("x-user", "alice")], "alice"),
        (json!({}), &[("x-user", "bob")], "default"),
        (
            json!({}),
            &[("x-tenant", "acme")],
            "tenant (key written in upper case)",
        ),
        (json!({}), &[("x-role", "admin")], "admin"),
        (json!({}), &[("x-role", "user-adm")], "default"),
        (json!({}), &[("x-agent", "a-robot/1")], "bot"),
        (json!({}), &[("x-trace", "")], "traced"),
        (json!({ "name": "md" }), &[], "untraced"),
        (json!({ "name": "md" }), &[("x-trace", "1")], "traced"),
    ])
    .await;
}

/// Rules with `when` first, in file order (files sorted by path), then the default rules in file order.
#[tokio::test]
async fn first_match_across_files_in_path_order_and_defaults_last() {
    let first_file = unary_rules(&[
        ("", "default in 10"),
        (r#"when.request.name = "x""#, "x in 10"),
    ]);
    let second_file = unary_rules(&[
        (r#"when.request.name = "x""#, "x in 20"),
        (r#"when.request.name = "y""#, "y in 20"),
        ("", "default in 20"),
    ]);
    let third_file = unary_rules(&[(
        r#"when.request.name = { regex = "^[xyz]$" }"#,
        "xyz in sub/30",
    )]);
    // Written in an order other than their sorted one.
    let f = Fixture::files(&[
        ("sub/30-c.toml", &third_file),
        ("20-b.toml", &second_file),
        ("10-a.toml", &first_file),
    ])
    .await;
    f.answers(&[(json!({ "name": "x" }), "x in 10")]).await;
    f.answers_because(
        json!({ "name": "y" }),
        "y in 20",
        "a `when` rule beats an earlier default",
    )
    .await;
    f.answers(&[(json!({ "name": "z" }), "xyz in sub/30")])
        .await;
    f.answers_because(
        json!({ "name": "w" }),
        "default in 10",
        "defaults in file order",
    )
    .await;
}

#[tokio::test]
async fn no_rule_matched_is_unimplemented_and_lists_the_rules() {
    let f = Fixture::rules(&[
        (r#"when.request.name = "a""#, "a"),
        (r#"when.request.name = "b""#, "b"),
    ])
    .await;
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
