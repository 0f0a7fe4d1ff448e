//! Runtime rules through the registry, answered by the engine as a protocol would have it answer
//! (the admin API that calls them is wired in elsewhere): tried before the files' rules, gone on
//! delete, refused whole with a diagnostic into the submitted text, kept across a handler reload
//! and a proto reload, the same from JSON as from TOML, and added from several threads at once;
//! and the verification filter counting answered calls.

use std::sync::Arc;

use prost_reflect::DynamicMessage;
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::engine::{answer, Call, Request, Requests};
use crate::rules::Filter;
use crate::state::runtime::{Refused, Submission};
use crate::state::{Registry, Sources, State};

const PROTO: &str = r#"syntax = "proto3";
package t;
message Req { string name = 1; int32 n = 2; }
message Resp { string text = 1; }
service Svc {
  rpc Unary(Req) returns (Resp);
  rpc Other(Req) returns (Resp);
  rpc Chat(stream Req) returns (stream Resp);
}
"#;

const FILE_RULES: &str = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"file\" }\n\n[[rule]]\nmethod = \"t.Svc/Chat\"\ncode = \"\"\"\nloop { let m = next(); if m == () { break; } send(#{ text: m.name }); }\n\"\"\"\n";

/// A server's registry over a small tree of its own.
struct Tree {
    _dir: tempfile::TempDir,
    sources: Sources,
    registry: Registry,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let (protos, handlers) = (dir.path().join("protos"), dir.path().join("handlers"));
        std::fs::create_dir_all(&protos).unwrap();
        std::fs::create_dir_all(&handlers).unwrap();
        std::fs::write(protos.join("t.proto"), PROTO).unwrap();
        std::fs::write(handlers.join("t.toml"), FILE_RULES).unwrap();
        let sources = Sources::folders(protos, handlers);
        let registry = Registry::new(State::build(&sources).unwrap());
        Tree {
            _dir: dir,
            sources,
            registry,
        }
    }

    fn add(&self, toml: &str) -> Vec<String> {
        match self.registry.add_rules(Submission::Toml(toml)) {
            Ok(listed) => listed.into_iter().map(|l| l.id).collect(),
            Err(e) => panic!("the rules should be taken:\n{e}"),
        }
    }

    /// What the served state answers `name` on `method`: the reply's text, or the status.
    async fn ask(&self, method: &str, name: &str) -> Result<String, (Code, String)> {
        let method = self.registry.current().methods[&format!("/t.Svc/{method}")].clone();
        ask_method(method, name).await
    }

    fn handler_reload(&self, text: &str) {
        std::fs::write(self.sources.handlers.join("t.toml"), text).unwrap();
        let state = self
            .registry
            .current()
            .rebuild_handlers(&self.sources)
            .unwrap();
        self.registry.swap(state);
    }

    fn proto_reload(&self, proto: &str) {
        std::fs::write(self.sources.protos.join("t.proto"), proto).unwrap();
        self.registry.swap(State::build(&self.sources).unwrap());
    }
}

fn request_of(method: &crate::engine::Method, name: &str) -> DynamicMessage {
    DynamicMessage::deserialize(method.desc.input(), json!({ "name": name })).unwrap()
}

async fn ask_method(
    method: Arc<crate::engine::Method>,
    name: &str,
) -> Result<String, (Code, String)> {
    let request = request_of(&method, name);
    let output = method.desc.output();
    let call = Call {
        method,
        metadata: MetadataMap::new(),
        requests: Requests::One(Request::Decoded(request)),
        limit: 1 << 20,
        reserve: 0,
        watch: None,
    };
    let ready = answer(call)
        .await
        .whole()
        .await
        .map_err(|end| (end.code, end.message.clone()))?;
    if ready.end.code != Code::Ok {
        return Err((ready.end.code, ready.end.message));
    }
    let message = ready.message.unwrap().into_decoded(&output).unwrap();
    Ok(message
        .get_field_by_name("text")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default())
}

const DEFAULT_RULE: &str =
    "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"runtime {{request.name}}\" }\n";

#[tokio::test]
async fn a_runtime_rule_answers_before_the_files_and_delete_gives_the_files_back() {
    let tree = Tree::new();
    assert_eq!(tree.ask("Unary", "a").await, Ok("file".into()));
    let in_flight = tree.registry.current().methods["/t.Svc/Unary"].clone();

    assert_eq!(tree.add(DEFAULT_RULE), ["r1"]);
    assert_eq!(tree.ask("Unary", "a").await, Ok("runtime a".into()));
    // A call that started before keeps the method it started with.
    assert_eq!(ask_method(in_flight, "a").await, Ok("file".into()));
    // Other methods are untouched.
    assert!(tree.ask("Other", "a").await.is_err());

    // A conditional one added later is still tried first among runtime rules, as in a file.
    let ids = tree.add("[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = \"x\"\nerror = { code = \"NOT_FOUND\", message = \"no x\" }\n");
    assert_eq!(ids, ["r2"]);
    assert_eq!(
        tree.ask("Unary", "x").await,
        Err((Code::NotFound, "no x".into()))
    );
    assert_eq!(tree.ask("Unary", "y").await, Ok("runtime y".into()));

    tree.registry.delete_rule("r1").unwrap();
    assert_eq!(tree.ask("Unary", "y").await, Ok("file".into()));
    assert_eq!(
        tree.ask("Unary", "x").await,
        Err((Code::NotFound, "no x".into()))
    );
    assert!(matches!(
        tree.registry.delete_rule("r1"),
        Err(Refused::UnknownId(id)) if id == "r1"
    ));
    assert_eq!(tree.registry.reset_rules(), 1);
    assert_eq!(tree.ask("Unary", "x").await, Ok("file".into()));
    // Ids are never given twice in a run.
    assert_eq!(tree.add(DEFAULT_RULE), ["r3"]);
}

#[tokio::test]
async fn a_bad_submission_is_refused_at_its_line_and_column_and_changes_nothing() {
    let tree = Tree::new();
    let before = tree.registry.current();
    let listed = tree.registry.list_rules(None);
    // A good rule, then a bad one: neither is taken.
    let text =
        format!("{DEFAULT_RULE}\n[[rule]]\nmethod = \"t.Svc/Other\"\nreply = {{ txt = \"x\" }}\n");
    let Err(Refused::Invalid(problems)) = tree.registry.add_rules(Submission::Toml(&text)) else {
        panic!("refused");
    };
    let d = &problems.0[0];
    assert_eq!(
        (d.file.to_str().unwrap(), d.line, d.column),
        ("submitted.toml", 7, 11),
        "{problems}"
    );
    assert!(
        d.message.contains("t.Resp has no field 'txt'"),
        "{problems}"
    );
    assert!(problems.to_string().contains("reply = { txt = \"x\" }"));
    assert!(Arc::ptr_eq(&before, &tree.registry.current()), "no swap");
    assert_eq!(tree.registry.list_rules(None), listed);
    assert_eq!(tree.ask("Unary", "a").await, Ok("file".into()));
    // The refused submission took no id.
    assert_eq!(tree.add(DEFAULT_RULE), ["r1"]);

    // A client stream answered by a file's script cannot take another rule: the script would
    // read the whole stream.
    let Err(Refused::Invalid(problems)) = tree.registry.add_rules(Submission::Toml(
        "[[rule]]\nmethod = \"t.Svc/Chat\"\nreply = { text = \"r\" }\n",
    )) else {
        panic!("refused");
    };
    assert!(
        problems.to_string().contains("can have only that one rule"),
        "{problems}"
    );
}

#[tokio::test]
async fn runtime_rules_survive_handler_and_proto_reloads() {
    let tree = Tree::new();
    tree.add(DEFAULT_RULE);
    tree.handler_reload(&FILE_RULES.replace("\"file\"", "\"file two\""));
    assert_eq!(tree.ask("Unary", "a").await, Ok("runtime a".into()));
    tree.registry.delete_rule("r1").unwrap();
    assert_eq!(tree.ask("Unary", "a").await, Ok("file two".into()));

    // A proto reload that takes the method away keeps the rule aside, listed with its problem.
    let ids = tree.add("[[rule]]\nmethod = \"t.Svc/Other\"\nreply = { text = \"other\" }\n");
    assert_eq!(ids, ["r2"]);
    tree.proto_reload(&PROTO.replace("  rpc Other(Req) returns (Resp);\n", ""));
    let aside = tree.registry.list_rules(Some("t.Svc/Other"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        (aside[0].id.as_str(), aside[0].origin.as_str()),
        ("r2", "runtime:r2")
    );
    let problem = aside[0].problem.as_deref().unwrap();
    assert!(
        problem.contains("runtime:r2:2:10") && problem.contains("no method 'Other'"),
        "{problem}"
    );
    // Back: served again.
    tree.proto_reload(PROTO);
    assert_eq!(tree.ask("Other", "a").await, Ok("other".into()));
    assert_eq!(
        tree.registry.list_rules(Some("t.Svc/Other"))[0].problem,
        None
    );

    // A handler edit that gives a bidi method a script, which reads the whole stream, keeps that
    // method's runtime rule aside; the script answers meanwhile.
    let unary_only = &FILE_RULES[..FILE_RULES
        .find("\n\n[[rule]]\nmethod = \"t.Svc/Chat\"")
        .unwrap()];
    tree.handler_reload(unary_only);
    assert_eq!(
        tree.add("[[rule]]\nmethod = \"t.Svc/Chat\"\nreply = { text = \"runtime\" }\n"),
        ["r3"]
    );
    tree.handler_reload(FILE_RULES);
    let chat = tree.registry.list_rules(Some("t.Svc/Chat"));
    let seen: Vec<(&str, bool)> = chat
        .iter()
        .map(|l| (l.id.as_str(), l.problem.is_some()))
        .collect();
    assert_eq!(seen, [("", false), ("r3", true)], "{chat:?}");
    assert!(chat[1]
        .problem
        .as_deref()
        .unwrap()
        .contains("can have only that one rule"));
    let rules = tree.registry.current().methods["/t.Svc/Chat"]
        .rules
        .clone()
        .unwrap();
    assert_eq!(rules.rules.len(), 1, "the file's script alone is served");
}

#[tokio::test]
async fn json_is_the_same_rule_as_toml() {
    let toml = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.n = 2\nreply = { text = \"two {{request.name}}\" }\n";
    let json = json!({"rule": [{
        "method": "t.Svc/Unary",
        "when": {"request": {"n": 2.0}},
        "reply": {"text": "two {{request.name}}"}
    }]});
    let mut answers = Vec::new();
    for submission in [Submission::Toml(toml), Submission::Json(&json)] {
        let tree = Tree::new();
        tree.registry.add_rules(submission).unwrap();
        let method = tree.registry.current().methods["/t.Svc/Unary"].clone();
        let mut answer = vec![];
        for n in [1, 2] {
            let request =
                DynamicMessage::deserialize(method.desc.input(), json!({"name": "a", "n": n}))
                    .unwrap();
            let call = Call {
                method: method.clone(),
                metadata: MetadataMap::new(),
                requests: Requests::One(Request::Decoded(request)),
                limit: 1 << 20,
                reserve: 0,
                watch: None,
            };
            let ready = crate::engine::answer(call)
                .await
                .whole()
                .await
                .ok()
                .unwrap();
            let message = ready
                .message
                .unwrap()
                .into_decoded(&method.desc.output())
                .unwrap();
            answer.push(serde_json::to_value(&message).unwrap());
        }
        answers.push(answer);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0][1], json!({"text": "two a"}));
    assert_eq!(answers[0][0], json!({"text": "file"}));

    // A JSON problem names its path and the line of the JSON as printed.
    let tree = Tree::new();
    let bad = json!({"rule": [{"method": "t.Svc/Unary", "reply": {"txt": "x"}}]});
    let Err(Refused::Invalid(problems)) = tree.registry.add_rules(Submission::Json(&bad)) else {
        panic!("refused");
    };
    assert!(
        problems.to_string().contains("(at rule[0].reply.txt)"),
        "{problems}"
    );
}

#[tokio::test]
async fn the_listing_gives_every_rule_served_in_order_and_replace_keeps_id_and_place() {
    let tree = Tree::new();
    tree.add(DEFAULT_RULE);
    tree.add("[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"second\" }\n");
    let listed = tree.registry.list_rules(Some("/t.Svc/Unary"));
    let seen: Vec<(&str, &str)> = listed
        .iter()
        .map(|l| (l.id.as_str(), l.origin.as_str()))
        .collect();
    let file_origin = format!("{}:1", tree.sources.handlers.join("t.toml").display());
    assert_eq!(
        seen,
        [
            ("r1", "runtime:r1"),
            ("r2", "runtime:r2"),
            ("", &*file_origin)
        ]
    );
    assert_eq!(listed[0].text, DEFAULT_RULE.trim_end());
    assert_eq!(
        listed[2].text,
        "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"file\" }"
    );
    assert!(listed.iter().all(|l| l.method == "t.Svc/Unary"));
    // Every method with rules when no method is given.
    let all = tree.registry.list_rules(None);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[0].method, "t.Svc/Chat");

    let replaced = tree
        .registry
        .replace_rule(
            "r1",
            Submission::Toml("[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"new\" }\n"),
        )
        .unwrap();
    assert_eq!(
        (replaced.id.as_str(), replaced.origin.as_str()),
        ("r1", "runtime:r1")
    );
    assert_eq!(tree.ask("Unary", "a").await, Ok("new".into()));
    let ids: Vec<String> = tree
        .registry
        .list_rules(Some("t.Svc/Unary"))
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, ["r1", "r2", ""]);
    // Replacing takes exactly one rule, and an id that exists.
    let two = format!("{DEFAULT_RULE}{DEFAULT_RULE}");
    assert!(matches!(
        tree.registry.replace_rule("r1", Submission::Toml(&two)),
        Err(Refused::Invalid(_))
    ));
    assert!(matches!(
        tree.registry
            .replace_rule("r9", Submission::Toml(DEFAULT_RULE)),
        Err(Refused::UnknownId(_))
    ));
    assert_eq!(tree.ask("Unary", "a").await, Ok("new".into()));
}

#[test]
fn concurrent_adds_all_land_with_distinct_ids() {
    let tree = Tree::new();
    let (threads, each) = (6, 10);
    let ids: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let tree = &tree;
                s.spawn(move || {
                    (0..each)
                        .flat_map(|i| {
                            tree.add(&format!(
                                "[[rule]]\nmethod = \"t.Svc/Other\"\nwhen.request.name = \"{t}-{i}\"\nreply = {{ text = \"{t}-{i}\" }}\n"
                            ))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), threads * each, "{ids:?}");
    let served = tree.registry.current().methods["/t.Svc/Other"]
        .rules
        .as_ref()
        .unwrap()
        .rules
        .len();
    assert_eq!(served, threads * each, "every rule is served");
}

#[tokio::test]
async fn a_filter_counts_the_calls_it_matches_status_included() {
    let tree = Tree::new();
    tree.add("[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = { regex = \"^bad\" }\nerror = { code = \"NOT_FOUND\", message = \"bad\" }\n");
    // A journal of what was answered: method, request, final code.
    let mut journal = Vec::new();
    for (method, name) in [
        ("Unary", "ann"),
        ("Unary", "bad1"),
        ("Unary", "bad2"),
        ("Unary", "tom"),
        ("Other", "tom"),
    ] {
        let m = tree.registry.current().methods[&format!("/t.Svc/{method}")].clone();
        let request = request_of(&m, name);
        let code = match ask_method(m.clone(), name).await {
            Ok(_) => Code::Ok,
            Err((code, _)) => code,
        };
        journal.push((m.name.clone(), request, code));
    }
    let pool = tree.registry.current().protos.pool.clone();
    let count = |filter: &str| {
        let f = Filter::toml(filter, &pool).unwrap();
        journal
            .iter()
            .filter(|(m, r, c)| f.matches(m, &MetadataMap::new(), Some(r), *c))
            .count()
    };
    assert_eq!(count("method = \"t.Svc/Unary\"\n"), 4);
    assert_eq!(
        count("method = \"t.Svc/Unary\"\nstatus = \"NOT_FOUND\"\n"),
        2
    );
    assert_eq!(
        count("status = 0\n"),
        2,
        "ann; Other has no rule: UNIMPLEMENTED"
    );
    assert_eq!(
        count("method = \"t.Svc/Unary\"\nwhen.request.name = \"tom\"\nstatus = \"OK\"\n"),
        1
    );
    assert_eq!(count("status = \"UNIMPLEMENTED\"\n"), 1);
    let problem = Filter::toml("when.request.name = \"tom\"\n", &pool).unwrap_err();
    assert!(
        problem.to_string().starts_with("submitted.toml:1:6:"),
        "{problem}"
    );
}

/// What a change costs on a real tree (run by hand, figures in the report):
/// `PROTODROP_TREE=/path/to/protos cargo test --lib large_tree -- --ignored --nocapture`
/// (`PROTODROP_TREE_INCLUDES`: `-I` roots, `:`-separated).
#[test]
#[ignore]
fn large_tree_changes_cost_one_method() {
    use std::time::Instant;
    let protos = std::path::PathBuf::from(std::env::var("PROTODROP_TREE").unwrap());
    let handlers = tempfile::tempdir().unwrap();
    let sources = Sources {
        include_roots: std::env::var("PROTODROP_TREE_INCLUDES")
            .map(|s| s.split(':').map(Into::into).collect())
            .unwrap_or_default(),
        ..Sources::folders(protos, handlers.path().to_path_buf())
    };
    let started = Instant::now();
    let registry = Registry::new(State::build(&sources).unwrap());
    let state = registry.current();
    eprintln!(
        "loaded {} methods in {:?}",
        state.methods.len(),
        started.elapsed()
    );
    let mut names: Vec<&String> = state.methods.keys().collect();
    names.sort();
    let pick = |i: usize| {
        names[i * names.len() / 10]
            .trim_start_matches('/')
            .to_string()
    };
    let methods: Vec<String> = (0..10).map(pick).collect();
    drop(state);
    let rule = |m: &str| format!("[[rule]]\nmethod = \"{m}\"\n");
    let timed = |what: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        eprintln!("{what}: {:?}", t.elapsed());
    };
    timed("add 1 rule", &mut || {
        registry
            .add_rules(Submission::Toml(&rule(&methods[0])))
            .unwrap();
    });
    let ten: String = methods.iter().map(|m| rule(m)).collect();
    timed("add 10 rules (10 methods)", &mut || {
        registry.add_rules(Submission::Toml(&ten)).unwrap();
    });
    timed("replace 1", &mut || {
        registry
            .replace_rule("r1", Submission::Toml(&rule(&methods[1])))
            .unwrap();
    });
    timed("delete 1", &mut || registry.delete_rule("r2").unwrap());
    timed("list all", &mut || {
        eprintln!("  {} rules listed", registry.list_rules(None).len());
    });
    timed("handler reload with 10 runtime rules", &mut || {
        let state = registry.current().rebuild_handlers(&sources).unwrap();
        registry.swap(state);
    });
    timed("reset", &mut || {
        registry.reset_rules();
    });
}
