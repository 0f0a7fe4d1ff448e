//! Issue 17, items 3 and 11: names in protos resolve with protoc's scoping whatever the file order
//! (envoy's layout in small), and each load problem is reported once, at its place, naming the other
//! place when there is one.

mod common;

use common::*;

/// envoy's layout in small: `envoy.extensions.pkp.v3` uses `config.core.v3.DataSource` from an
/// import, while an unrelated file, sorted (and compiled) before it, declares the package
/// `envoy.extensions.config.v3alpha`. protoc resolves the name to `envoy.config.core.v3.DataSource`
/// (the unrelated package is not in the file's scope); the dependency sits in an `-I` root as
/// envoy's do.
const KV: &str = "syntax = \"proto3\";\npackage envoy.extensions.config.v3alpha;\n\
                  message KvStore { string name = 1; }\n";
const BASE: &str = "syntax = \"proto3\";\npackage envoy.config.core.v3;\n\
                    message DataSource { string filename = 1; }\n";
const PKP: &str = "syntax = \"proto3\";\npackage envoy.extensions.pkp.v3;\n\
                   import \"envoy/config/core/v3/base.proto\";\n\
                   message Key { config.core.v3.DataSource private_key = 1; }\n\
                   service Keys { rpc Get(Key) returns (Key); }\n";

#[test]
fn check_accepts_a_partly_qualified_name_next_to_an_unrelated_package() {
    let (code, stdout, stderr) = check_with(
        &[
            ("envoy/extensions/config/v3alpha/kv.proto", KV),
            ("envoy/extensions/pkp/v3/pkp.proto", PKP),
            ("../deps/envoy/config/core/v3/base.proto", BASE),
        ],
        &[],
        &["-I", "deps"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok: 1 services, 1 methods"), "{stdout}");
}

#[tokio::test]
async fn the_method_is_served_with_the_type_protoc_resolves() {
    let handler = "[[rule]]\nmethod = \"envoy.extensions.pkp.v3.Keys/Get\"\n\
                   reply = { private_key = { filename = \"{{request.private_key.filename}}!\" } }\n";
    let s = Server::start_with(
        &[
            ("envoy/extensions/config/v3alpha/kv.proto", KV),
            ("envoy/extensions/pkp/v3/pkp.proto", PKP),
        ],
        &[("k.toml", handler)],
        Options {
            include: vec!["deps".into()],
            files: vec![("deps/envoy/config/core/v3/base.proto".into(), BASE.into())],
            ..Options::default()
        },
    );
    let c = s.client().await;
    let out = c
        .unary(
            "envoy.extensions.pkp.v3.Keys/Get",
            json!({ "private_key": { "filename": "k.pem" } }),
        )
        .await;
    assert_eq!(
        out.ok().single(),
        &json!({ "privateKey": { "filename": "k.pem!" } })
    );
}

/// One broken file imported by three others: each of its problems once, at its place — not once
/// more per importing file; each importer gets one line at its import naming the broken file
/// (protoc's "Import … was not found or had errors"), so a user sees which files wait on it.
#[test]
fn a_broken_file_imported_by_three_is_reported_once() {
    let broken =
        "syntax = \"proto3\";\npackage p;\nmessage B {\n  Nope x = 1;\n  Nope2 y = 2;\n}\n";
    let user = |i: usize| {
        format!("syntax = \"proto3\";\npackage p;\nimport \"broken.proto\";\nmessage U{i} {{ B b = 1; }}\n")
    };
    let (u1, u2, u3) = (user(1), user(2), user(3));
    // Two importers sort before the broken file, one after it.
    let (code, _, stderr) = check(
        &[
            ("a1.proto", &u1),
            ("a2.proto", &u2),
            ("broken.proto", broken),
            ("c3.proto", &u3),
        ],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr
            .matches("protos/broken.proto:4:3: name 'Nope' is not defined")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("protos/broken.proto:5:3: name 'Nope2' is not defined")
            .count(),
        1,
        "{stderr}"
    );
    for importer in ["a1", "a2", "c3"] {
        assert_eq!(
            stderr
                .matches(&format!(
                    "protos/{importer}.proto:3:1: import 'broken.proto' has errors (reported at \
                     broken.proto)"
                ))
                .count(),
            1,
            "{stderr}"
        );
    }
    assert!(stderr.contains("5 problem(s) found"), "{stderr}");
}

/// A folder file importing a file of an `-I` root that imports a broken one: its import line names
/// both the import and the broken file further down.
#[test]
fn an_importer_of_a_file_importing_a_broken_one_names_both() {
    let broken = "syntax = \"proto3\";\npackage p;\nmessage B { Nope x = 1; }\n";
    let mid =
        "syntax = \"proto3\";\npackage p;\nimport \"broken.proto\";\nmessage M { B b = 1; }\n";
    let user = "syntax = \"proto3\";\npackage p;\nimport \"google/protobuf/empty.proto\";\n\
                import \"mid.proto\";\nmessage U { M m = 1; }\n";
    let (code, _, stderr) = check_with(
        &[
            ("u.proto", user),
            ("../deps/mid.proto", mid),
            ("../deps/broken.proto", broken),
        ],
        &[],
        &["-I", "deps"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("deps/broken.proto:3:13: name 'Nope' is not defined"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "protos/u.proto:4:1: import 'mid.proto' has errors (it imports broken.proto, which \
             has errors reported there)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");
}

/// A name defined in two files: reported at the second, naming the first by path, line and column
/// — once, not again for each of its fields.
#[test]
fn a_duplicate_across_two_files_names_both_places() {
    let a = "syntax = \"proto3\";\npackage p;\nmessage M { string x = 1; }\n";
    let b = "syntax = \"proto3\";\npackage p;\n\nmessage M { string x = 1; int32 y = 2; }\n";
    let (code, _, stderr) = check(&[("a.proto", a), ("sub/b.proto", b)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "protos/sub/b.proto:4:9: name 'p.M' is already defined at protos/a.proto:3:9"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem(s) found"), "{stderr}");
}

/// The same file reached under two names (the folder, and an `-I` inside it): one file, known by
/// its shorter name (`protos::layout`), so neither "already defined in file X" with X the very file
/// nor a duplicate of each of its names.
#[test]
fn a_file_reachable_under_two_names_is_not_a_duplicate() {
    let x = "syntax = \"proto3\";\npackage q;\nmessage X {}\nmessage X2 { int32 a = 1; }\n\
             enum E { E0 = 0; }\n";
    let y = "syntax = \"proto3\";\npackage q;\nimport \"x.proto\";\nmessage Y { X x = 1; }\n\
             service S { rpc Get(Y) returns (X2); }\n";
    let (code, stdout, stderr) = check_with(
        &[("sub/x.proto", x), ("y.proto", y)],
        &[],
        &["-I", "protos/sub"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok: 1 services, 1 methods"), "{stdout}");
}

/// A duplicate within one file is reported at the second occurrence (the one to remove), naming
/// the first; and every problem of the file is reported, not only the first.
#[test]
fn duplicates_within_a_file_are_reported_at_the_second_occurrence() {
    let t = "syntax = \"proto3\";\npackage p;\nmessage N { int32 a = 1; int32 b = 1; }\n\
             enum E { A = 0; B = 0; }\n";
    let (code, _, stderr) = check(&[("t.proto", t)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "protos/t.proto:3:36: field number '1' is already used; first defined here: \
             protos/t.proto:3:23"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "protos/t.proto:4:21: enum number '0' has already been used; first defined here: \
             protos/t.proto:4:14"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");
}

/// A copy of a file: a few of its duplicated names one by one, then how many more — not one
/// problem per name of a big file.
#[test]
fn a_copied_file_is_summarized() {
    let messages: String = (0..10)
        .map(|i| format!("message M{i} {{ string x = 1; }}\n"))
        .collect();
    let text = format!("syntax = \"proto3\";\npackage p;\n{messages}");
    let (code, _, stderr) = check(&[("a.proto", &text), ("copy/a.proto", &text)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr
            .matches("is already defined at protos/a.proto:")
            .count(),
        3,
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "protos/copy/a.proto: 7 more names of this file are already defined in protos/a.proto"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("4 problem(s) found"), "{stderr}");
}

/// Two copies of a big file are diagnosed in about the time one takes to load, not in time growing
/// with (names × file size): each duplicate's place used to be found by scanning the file from its
/// start, in prost-reflect and again here (two copies of googleapis' compute.proto: 3 minutes).
#[test]
fn a_copy_of_a_big_file_is_diagnosed_in_about_the_time_one_loads() {
    let messages: String = (0..4000)
        .map(|i| {
            format!(
                "// Message {i}: a comment long enough to make the file as large as real ones are.\n\
                 message M{i} {{ string x = 1; int64 y = 2; }}\n"
            )
        })
        .collect();
    let text = format!("syntax = \"proto3\";\npackage p;\n{messages}");
    let timed = |files: &[(&str, &str)]| {
        let started = std::time::Instant::now();
        let (code, _, stderr) = check(files, &[]);
        (started.elapsed(), code, stderr)
    };
    let (one, code, stderr) = timed(&[("a.proto", &text)]);
    assert_eq!(code, 0, "{stderr}");
    let (two, code, stderr) = timed(&[("a.proto", &text), ("copy/a.proto", &text)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("3997 more names of this file are already defined in protos/a.proto"),
        "{stderr}"
    );
    // Generous for a busy machine; the quadratic version took over a minute here.
    let bound = one * 4 + std::time::Duration::from_secs(5);
    assert!(two < bound, "two copies took {two:?}, one {one:?}");
}

/// A duplicate name does not hide the file's other problems (prost-reflect stopped before resolving
/// names when one was defined twice): a typo and a duplicate field number are reported with it, in
/// one load, as protoc does. A use of the duplicated name itself is not reported again.
#[test]
fn a_duplicate_name_does_not_hide_the_other_problems_of_its_file() {
    let a = "syntax = \"proto3\";\npackage p;\nmessage M { string x = 1; }\n";
    let b = "syntax = \"proto3\";\npackage p;\nmessage M { string x = 1; }\n\
             message N { Strin y = 1; int32 z = 1; M m = 3; }\n";
    let (code, _, stderr) = check(&[("a.proto", a), ("b.proto", b)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("protos/b.proto:3:9: name 'p.M' is already defined at protos/a.proto:3:9"),
        "{stderr}"
    );
    assert!(
        stderr.contains("protos/b.proto:4:13: name 'Strin' is not defined"),
        "{stderr}"
    );
    assert!(
        stderr.contains("protos/b.proto:4:36: field number '1' is already used"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s) found"), "{stderr}");
}
