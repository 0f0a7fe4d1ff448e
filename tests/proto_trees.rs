//! Proto trees as they ship load as protoc takes them (issue 17, items 6 and 7): a BOM, Latin-1
//! comments, a vendored `third_party/` root inside the protos folder, one file reachable under two
//! names (etcd's layout), an excluded folder, an edit under an `-I` root, and a vendored copy of
//! grpc-proto's health and reflection protos, which must not hide the built-in services.

mod common;
mod http_client;

use std::path::Path;
use std::time::Duration;

use common::*;
use tonic::Code;

const POLL_LIMIT: Duration = Duration::from_secs(10);

/// `protodrop ARGS` run in a fresh folder holding `files` (path, bytes) — bytes, so that a file
/// may be anything but UTF-8. Returns (exit code, stdout, stderr).
fn run_in(files: &[(&str, &[u8])], args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("handlers")).unwrap();
    for (path, bytes) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    protodrop(args, Some(dir.path()), &[])
}

fn check_in(files: &[(&str, &[u8])], extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["check", "--protos", "protos", "--handlers", "handlers"];
    args.extend_from_slice(extra);
    run_in(files, &args)
}

/// A client whose descriptors come from `files` (clean copies of what the server loads, for trees
/// the test's own protox could not compile).
async fn client_of(s: &Server, files: &[(&str, &str)]) -> Client {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    Client::connect(s.addr, compile_protos(dir.path(), &[]).unwrap()).await
}

const KV: &str = "syntax = \"proto3\";\npackage t;\nmessage M { string text = 1; }\n\
                  service Svc { rpc Unary(M) returns (M); }\n";
const KV_RULE: &str = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.text = \"served\"\n";

#[tokio::test]
async fn a_bom_at_the_start_of_a_proto_is_skipped() {
    let with_bom = format!("\u{FEFF}{KV}");
    let s = Server::start(&[("t.proto", &with_bom)], &[("t.toml", KV_RULE)]);
    let c = client_of(&s, &[("t.proto", KV)]).await;
    assert_eq!(
        c.unary("t.Svc/Unary", json!({})).await.single()["text"],
        "served"
    );

    // Lines and columns after it are an editor's: the BOM is no column of line 1.
    let broken = "\u{FEFF}syntax = \"proto3\";\npackage t;\nmessage M { strin text = 1; }\n";
    let (code, _, err) = check_in(&[("protos/t.proto", broken.as_bytes())], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/t.proto:3:13:"), "{err}");
}

/// Latin-1 comments (`é` as the one byte 0xE9) on the lines before a problem.
const LATIN1: &[u8] = b"syntax = \"proto3\";\n// Caf\xe9 cr\xe8me, na\xefve\npackage t;\n\
    /* R\xe9sum\xe9:\n   \xab quoted \xbb */\nmessage M { string text = 1; } // \xe9t\xe9\n\
    service Svc { rpc Unary(M) returns (M); }\n";

#[test]
fn latin1_bytes_in_comments_load_and_later_lines_keep_their_columns() {
    let (code, out, err) = check_in(
        &[
            ("protos/t.proto", LATIN1),
            ("handlers/t.toml", KV_RULE.as_bytes()),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 1 services, 1 methods, 1 rules"), "{out}");

    // A problem on a line after Latin-1 text is at its line and column.
    let mut broken = LATIN1.to_vec();
    broken.extend_from_slice(b"message N {\n  /* \xe9 */\n  Nope n = 1;\n}\n");
    let (code, _, err) = check_in(&[("protos/t.proto", &broken)], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/t.proto:10:3:"), "{err}");
    assert!(err.contains("Nope"), "{err}");
}

/// A problem after non-ASCII text on its own line: its column counts characters (what an editor
/// jumps to; protoc counts bytes, and tabs to the next multiple of 8), and the caret is under it.
/// A column one further per extra byte of each non-ASCII character was reported before.
#[test]
fn a_typo_after_a_non_ascii_character_on_its_line_is_at_its_column() {
    let text = "syntax = \"proto3\";\npackage p;\nmessage N { /* \u{e9}\u{e9} */ Strin y = 1; }\n";
    let (code, _, err) = check_in(&[("protos/t.proto", text.as_bytes())], &[]);
    assert_eq!(code, 1, "{err}");
    let line = "message N { /* \u{e9}\u{e9} */ Strin y = 1; }";
    let column = line.chars().position(|c| c == 'S').unwrap() + 1;
    assert!(
        err.contains(&format!(
            "protos/t.proto:3:{column}: name 'Strin' is not defined"
        )),
        "{err}"
    );
    // The caret line: the gutter, then the caret under the `S`.
    let caret = format!("  | {}^", " ".repeat(column - 1));
    assert!(err.lines().any(|l| l == caret), "{err}");
}

#[test]
fn a_latin1_byte_in_a_string_literal_is_an_error_at_its_place() {
    let text = b"syntax = \"proto3\";\n// caf\xe9\noption java_package = \"caf\xe9\";\n";
    let (code, _, err) = check_in(&[("protos/t.proto", text)], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/t.proto:3:27:"), "{err}");
    assert!(
        err.contains("0xE9 is not UTF-8 (in a string literal)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

const ANNOTATIONS: &str = include_str!("../src/protos/include/google/api/annotations.proto");
const HTTP: &str = include_str!("../src/protos/include/google/api/http.proto");
const ACME: &str =
    "syntax = \"proto3\";\npackage acme.v1;\nimport \"google/api/annotations.proto\";\n\
    message M { string text = 1; }\nservice Svc {\n  rpc Get(M) returns (M) {\n    \
    option (google.api.http) = { get: \"/v1/things/{text}\" };\n  }\n}\n";

/// `protos/third_party/google/api/*.proto` vendored beside `protos/acme/v1/x.proto`, which imports
/// "google/api/annotations.proto": the copy is one file, whether or not `third_party` is an `-I`.
#[tokio::test]
async fn a_vendored_third_party_root_inside_the_protos_folder_loads() {
    let protos = [
        ("third_party/google/api/annotations.proto", ANNOTATIONS),
        ("third_party/google/api/http.proto", HTTP),
        ("acme/v1/x.proto", ACME),
    ];
    let handlers = [(
        "x.toml",
        "[[rule]]\nmethod = \"acme.v1.Svc/Get\"\nreply.text = \"{{request.text}}!\"\n",
    )];
    for include in [vec![], vec!["protos/third_party".to_string()]] {
        let options = Options {
            include: include.clone(),
            ..Options::default()
        };
        let s = Server::try_start(&protos, &handlers, options)
            .unwrap_or_else(|e| panic!("with -I {include:?}: {e}"));
        let c = client_of(
            &s,
            &[(
                "x.proto",
                "syntax = \"proto3\";\npackage acme.v1;\nmessage M { string text = 1; }\n\
                 service Svc { rpc Get(M) returns (M); }\n",
            )],
        )
        .await;
        let reply = c.unary("acme.v1.Svc/Get", json!({"text": "grpc"})).await;
        assert_eq!(reply.single()["text"], "grpc!", "with -I {include:?}");
        // The route comes from the vendored `google.api.http`.
        let r = http_client::get(s.addr, "/v1/things/http").await;
        assert_eq!(r.expect(200).json()["text"], "http!", "with -I {include:?}");
    }
}

/// etcd's layout: `proj/api/pb/internal.proto` imports its neighbour as "rpc.proto", a file in
/// another folder imports it as "proj/api/pb/rpc.proto" through `-I <parent of proj>`, and the
/// protos folder names it "api/pb/rpc.proto". With or without `-I proj/api/pb` (a third name), it
/// is one file and both services answer.
#[tokio::test]
async fn a_file_reachable_under_two_names_is_one_file() {
    let rpc = "syntax = \"proto3\";\npackage pb;\nmessage Header { string id = 1; }\n\
               service KV { rpc Range(Header) returns (Header); }\n";
    let internal = "syntax = \"proto3\";\npackage pb;\nimport \"rpc.proto\";\n\
                    message Internal { Header header = 1; }\n";
    let lock = "syntax = \"proto3\";\npackage lock;\nimport \"protos/api/pb/rpc.proto\";\n\
                import \"protos/api/pb/internal.proto\";\n\
                message LockResponse { pb.Header header = 1; pb.Internal internal = 2; }\n\
                service Lock { rpc Lock(pb.Header) returns (LockResponse); }\n";
    let protos = [
        ("api/pb/rpc.proto", rpc),
        ("api/pb/internal.proto", internal),
        ("server/lock.proto", lock),
    ];
    let handlers = [(
        "h.toml",
        "[[rule]]\nmethod = \"pb.KV/Range\"\nreply.id = \"kv\"\n\n\
         [[rule]]\nmethod = \"lock.Lock/Lock\"\nreply.header.id = \"lock\"\n",
    )];
    let clean = [
        ("rpc.proto", rpc),
        (
            "lock.proto",
            "syntax = \"proto3\";\npackage lock;\nimport \"rpc.proto\";\n\
             message LockResponse { pb.Header header = 1; }\n\
             service Lock { rpc Lock(pb.Header) returns (LockResponse); }\n",
        ),
    ];
    for extra in [None, Some("protos/api/pb")] {
        let mut include = vec![".".to_string()];
        include.extend(extra.map(str::to_string));
        let options = Options {
            include,
            ..Options::default()
        };
        let s = Server::try_start(&protos, &handlers, options)
            .unwrap_or_else(|e| panic!("with -I {extra:?}: {e}"));
        let c = client_of(&s, &clean).await;
        let kv = c.unary("pb.KV/Range", json!({})).await;
        assert_eq!(kv.single()["id"], "kv", "with -I {extra:?}");
        let lock = c.unary("lock.Lock/Lock", json!({})).await;
        assert_eq!(lock.single()["header"]["id"], "lock", "with -I {extra:?}");
    }
}

/// Two folders each import their own neighbour as "x.proto": one name cannot be two files, and the
/// second importer is told which name to use instead.
#[test]
fn an_import_meaning_two_different_neighbours_is_reported() {
    let x = |p: &str| format!("syntax = \"proto3\";\npackage {p};\nmessage X {{}}\n");
    let y = |p: &str| {
        format!(
            "syntax = \"proto3\";\npackage {p};\nimport \"x.proto\";\nmessage Y {{ X x = 1; }}\n"
        )
    };
    let (xa, xb, ya, yb) = (x("a"), x("b"), y("a"), y("b"));
    let (code, _, err) = check_in(
        &[
            ("protos/a/x.proto", xa.as_bytes()),
            ("protos/b/x.proto", xb.as_bytes()),
            ("protos/a/y.proto", ya.as_bytes()),
            ("protos/b/y.proto", yb.as_bytes()),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "protos/b/y.proto: imports \"x.proto\", meaning its neighbour protos/b/x.proto"
        ),
        "{err}"
    );
    assert!(err.contains("import it as \"b/x.proto\""), "{err}");
}

const BROKEN: &str = "syntax = \"proto3\";\npackage broken;\nmessage B { int32 a = ; }\n";
const DEP: &str = "syntax = \"proto3\";\npackage dep;\nmessage D { string text = 1; }\n";
const USES_DEP: &str = "syntax = \"proto3\";\npackage t;\nimport \"vendor/dep.proto\";\n\
                        service Svc { rpc Unary(dep.D) returns (dep.D); }\n";

/// A folder of test fixtures (one broken) is left out by `--exclude` or `.protodropignore`; an
/// excluded file that is imported is still compiled.
#[tokio::test]
async fn an_excluded_folder_with_a_broken_file_is_not_compiled_unless_imported() {
    let files: [(&str, &[u8]); 4] = [
        ("protos/t.proto", USES_DEP.as_bytes()),
        ("protos/testdata/broken.proto", BROKEN.as_bytes()),
        ("protos/vendor/dep.proto", DEP.as_bytes()),
        ("handlers/t.toml", KV_RULE.as_bytes()),
    ];
    let (code, _, err) = check_in(&files, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/testdata/broken.proto:3:"), "{err}");

    let (code, out, err) = check_in(&files, &["--exclude", "testdata/", "--exclude", "vendor"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 1 services, 1 methods, 1 rules"), "{out}");

    let mut with_ignore_file = files.to_vec();
    with_ignore_file.push(("protos/.protodropignore", b"# fixtures\n**/testdata\n"));
    let (code, out, err) = check_in(&with_ignore_file, &[]);
    assert_eq!(code, 0, "{out}{err}");

    // Excluded by the environment variable, it serves.
    let options = Options::default().env("PROTODROP_EXCLUDE", "testdata/,nothing/");
    let s = Server::try_start(
        &[
            ("t.proto", USES_DEP),
            ("testdata/broken.proto", BROKEN),
            ("vendor/dep.proto", DEP),
        ],
        &[("t.toml", KV_RULE)],
        options,
    )
    .unwrap();
    let c = client_of(&s, &[("t.proto", USES_DEP), ("vendor/dep.proto", DEP)]).await;
    assert_eq!(
        c.unary("t.Svc/Unary", json!({})).await.single()["text"],
        "served"
    );

    // A pattern that does not parse is an error at its line.
    let mut bad = files.to_vec();
    bad.push(("protos/.protodropignore", b"testdata/\nvendor/[z-a\n"));
    let (code, _, err) = check_in(&bad, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("protos/.protodropignore:2:"), "{err}");
}

/// `.protodropignore` is watched: a broken fixture dropped in the folder fails the reload (the last
/// good state serves on); listing its folder in the ignore file loads the tree again.
#[tokio::test]
async fn the_ignore_file_is_watched_and_applied_on_reload() {
    let s = Server::start(&[("t.proto", KV)], &[("t.toml", KV_RULE)]);
    let since = s.logs().len();
    s.write_proto("testdata/broken.proto", BROKEN);
    s.wait_for_log(since, "reload failed", POLL_LIMIT).await;

    let since = s.logs().len();
    let two = format!("{KV}service Other {{ rpc Get(M) returns (M); }}\n");
    s.write_proto("t.proto", &two);
    s.wait_for_log(since, "reload failed", POLL_LIMIT).await;
    // Only the ignore file changes now: its own change reloads.
    let since = s.logs().len();
    s.write_proto(".protodropignore", "testdata/\n");
    let c = client_of(&s, &[("t.proto", &two)]).await;
    eventually(POLL_LIMIT, || {
        let c = c.clone();
        async move {
            let r = c.unary("t.Other/Get", json!({})).await;
            match r.code() {
                Code::Unimplemented if r.message().starts_with("no handler") => Ok(()),
                _ => Err(format!("{:?} {}", r.code(), r.message())),
            }
        }
    })
    .await;
    assert!(s.logs()[since..].contains("reloaded"), "{}", s.logs());
}

/// An edit to a file under an `-I` root is reloaded like one in the protos folder.
#[tokio::test]
async fn an_edit_under_an_include_root_is_reloaded() {
    let dep_v1 = "syntax = \"proto3\";\npackage dep;\nmessage D { string text = 1; }\n";
    let dep_v2 = "syntax = \"proto3\";\npackage dep;\nmessage D { string text = 1; }\n\
                  service Extra { rpc Get(D) returns (D); }\n";
    let uses = "syntax = \"proto3\";\npackage t;\nimport \"dep.proto\";\n\
                service Svc { rpc Unary(dep.D) returns (dep.D); }\n";
    let options = Options {
        include: vec!["inc".into()],
        ..Options::default()
    }
    .file("inc/dep.proto", dep_v1);
    let s = Server::start_with(
        &[("t.proto", uses)],
        &[(
            "t.toml",
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.text = \"t\"\n",
        )],
        options,
    );
    let c = s.client().await;
    c.unary("t.Svc/Unary", json!({})).await.ok();

    std::fs::write(s.root().join("inc/dep.proto"), dep_v2).unwrap();
    let c = Client::connect(
        s.addr,
        compile_protos(&s.protos_dir(), &[s.root().join("inc")]).unwrap(),
    )
    .await;
    let message = eventually(POLL_LIMIT, || {
        let c = c.clone();
        async move {
            let r = c.unary("dep.Extra/Get", json!({})).await;
            match r.code() {
                Code::Unimplemented if r.message().starts_with("no handler") => {
                    Ok(r.message().to_string())
                }
                _ => Err(format!("{:?} {}", r.code(), r.message())),
            }
        }
    })
    .await;
    assert!(message.contains("dep.Extra/Get"), "{message}");
}

/// Enough of grpc-proto's `grpc/health/v1/health.proto` to call Check with (same names and numbers).
const HEALTH: &str = "syntax = \"proto3\";\npackage grpc.health.v1;\n\
    message HealthCheckRequest { string service = 1; }\n\
    message HealthCheckResponse {\n  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }\n  ServingStatus status = 1;\n}\n\
    service Health {\n  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);\n  \
    rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);\n}\n";

/// Enough of grpc-proto's `grpc/reflection/v1/reflection.proto` to list services with.
const REFLECTION: &str = "syntax = \"proto3\";\npackage grpc.reflection.v1;\n\
    message ServerReflectionRequest {\n  string host = 1;\n  oneof message_request {\n    \
    string file_by_filename = 3;\n    string file_containing_symbol = 4;\n    \
    string list_services = 7;\n  }\n}\n\
    message ServiceResponse { string name = 1; }\n\
    message ListServiceResponse { repeated ServiceResponse service = 1; }\n\
    message ErrorResponse { int32 error_code = 1; string error_message = 2; }\n\
    message ServerReflectionResponse {\n  string valid_host = 1;\n  \
    ServerReflectionRequest original_request = 2;\n  oneof message_response {\n    \
    ListServiceResponse list_services_response = 6;\n    ErrorResponse error_response = 7;\n  }\n}\n\
    service ServerReflection {\n  rpc ServerReflectionInfo(stream ServerReflectionRequest) \
    returns (stream ServerReflectionResponse);\n}\n";

/// grpc-proto vendors the health and reflection protos: loaded as the protos folder, the built-in
/// services still answer (the dynamic service used to catch their paths: UNIMPLEMENTED), and a
/// warning names the vendored file.
#[tokio::test]
async fn vendored_health_and_reflection_protos_leave_the_built_ins_answering() {
    let protos = [
        ("grpc/health/v1/health.proto", HEALTH),
        ("grpc/reflection/v1/reflection.proto", REFLECTION),
        ("t.proto", KV),
    ];
    // A rule for the vendored Check is not used either (the built-in answers); it says so.
    let handlers = [(
        "t.toml",
        "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.text = \"served\"\n\n\
         [[rule]]\nmethod = \"grpc.health.v1.Health/Check\"\nreply.status = \"NOT_SERVING\"\n",
    )];
    let s = Server::start(&protos, &handlers);
    let c = s.client().await;

    let health = c.unary("grpc.health.v1.Health/Check", json!({})).await;
    assert_eq!(health.single()["status"], "SERVING");
    let health = c
        .unary("grpc.health.v1.Health/Check", json!({"service": "t.Svc"}))
        .await;
    assert_eq!(health.single()["status"], "SERVING");

    let listing = c
        .bidi(
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            vec![json!({"list_services": ""})],
        )
        .await;
    let listing = listing.single();
    let names: Vec<&str> = listing["listServicesResponse"]["service"]
        .as_array()
        .unwrap_or_else(|| panic!("{listing}"))
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(names.contains(&"t.Svc"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    assert_eq!(
        c.unary("t.Svc/Unary", json!({})).await.single()["text"],
        "served"
    );

    let logs = s.logs();
    let health_file = Path::new("grpc/health/v1/health.proto");
    let warning = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains("grpc.health.v1.Health"))
        .unwrap_or_else(|| panic!("no warning about the vendored health proto:\n{logs}"));
    assert!(
        warning.contains(&*health_file.to_string_lossy()),
        "{warning}"
    );
    assert!(warning.contains("grpc.health.v1.Health/Check"), "{warning}");
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("grpc/reflection/v1/reflection.proto")),
        "{logs}"
    );

    // `check` prints the same warnings and passes.
    let files: Vec<(String, Vec<u8>)> = protos
        .iter()
        .map(|(p, t)| (format!("protos/{p}"), t.as_bytes().to_vec()))
        .chain([(
            "handlers/t.toml".to_string(),
            handlers[0].1.as_bytes().to_vec(),
        )])
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let (code, out, err) = check_in(&files, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: protos/grpc/health/v1/health.proto: declares grpc.health.v1.Health"),
        "{err}"
    );
    // Turned off, reflection is no built-in: a copy is served like any service (and mockable).
    let (code, out, err) = check_in(&files, &["--no-reflection"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("grpc/reflection/v1/reflection.proto"),
        "{err}"
    );
    assert!(
        out.contains("grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
        "{out}"
    );
}

/// inotify watches `pid` holds (Linux: one `inotify wd:` line per watch in its fds' fdinfo).
fn inotify_watches(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count()
        })
        .sum()
}

/// Polls until `method` answers UNIMPLEMENTED "no handler" (it is served), with a client of
/// `pool()`'s descriptors.
async fn wait_until_served(
    s: &Server,
    pool: impl Fn() -> Result<prost_reflect::DescriptorPool, String>,
    method: &str,
) {
    eventually(POLL_LIMIT, || async {
        let c = Client::connect(s.addr, pool()?).await;
        let r = c.unary(method, json!({})).await;
        match r.code() {
            Code::Unimplemented if r.message().starts_with("no handler") => Ok(()),
            code => Err(format!("{code:?} {}", r.message())),
        }
    })
    .await;
}

/// An `-I` root of a whole checkout: only the folders of the files a load read from it are
/// watched (not its 40 other folders), and that follows the loads: a file imported only since an
/// edit is watched from then on.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn only_the_folders_read_from_an_include_root_are_watched() {
    let x = |i: usize| format!("syntax = \"proto3\";\npackage f{i};\nmessage X {{}}\n");
    let mut options = Options {
        include: vec!["inc".into()],
        ..Options::default()
    }
    .file(
        "inc/dep/dep.proto",
        "syntax = \"proto3\";\npackage dep;\nmessage D { string text = 1; }\n",
    );
    for i in 0..40 {
        options = options.file(format!("inc/f{i}/x.proto"), x(i));
    }
    let uses = "syntax = \"proto3\";\npackage t;\nimport \"dep/dep.proto\";\n\
                service Svc { rpc Unary(dep.D) returns (dep.D); }\n";
    let s = Server::start_with(&[("t.proto", uses)], &[], options);
    // The protos and handlers folders, the root itself, inc/dep.
    let watches = inotify_watches(s.pid());
    assert!(watches <= 6, "{watches} watches");

    // dep.proto now imports f3/x.proto: served, and f3 watched from then on.
    std::fs::write(
        s.root().join("inc/dep/dep.proto"),
        "syntax = \"proto3\";\npackage dep;\nimport \"f3/x.proto\";\n\
         message D { string text = 1; }\nservice Extra { rpc Get(f3.X) returns (D); }\n",
    )
    .unwrap();
    let pool = || compile_protos(&s.protos_dir(), &[s.root().join("inc")]);
    wait_until_served(&s, pool, "dep.Extra/Get").await;
    std::fs::write(
        s.root().join("inc/f3/x.proto"),
        format!("{}service X3 {{ rpc Get(X) returns (X); }}\n", x(3)),
    )
    .unwrap();
    wait_until_served(&s, pool, "f3.X3/Get").await;
    let watches = inotify_watches(s.pid());
    assert!(watches <= 7, "{watches} watches");
}

/// A `--descriptor-set` file outside the protos folder is watched: a new set is served.
#[tokio::test]
async fn a_descriptor_set_outside_the_protos_folder_is_reloaded() {
    let set = |proto: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dep.proto"), proto).unwrap();
        let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
        compiler.include_imports(true);
        compiler.open_files(["dep.proto"]).unwrap();
        compiler.encode_file_descriptor_set()
    };
    let v1 = "syntax = \"proto3\";\npackage dep;\nmessage D { string text = 1; }\n\
              service Svc { rpc Get(D) returns (D); }\n";
    let v2 = format!("{v1}service Extra {{ rpc Get(D) returns (D); }}\n");
    let s = Server::start_with(
        &[],
        &[],
        Options::default()
            .binary("sets/dep.binpb", set(v1))
            .arg("--descriptor-set")
            .arg("sets/dep.binpb"),
    );
    let v2 = set(&v2);
    std::fs::write(s.root().join("sets/dep.binpb"), &v2).unwrap();
    let pool = || prost_reflect::DescriptorPool::decode(v2.as_slice()).map_err(|e| e.to_string());
    wait_until_served(&s, pool, "dep.Extra/Get").await;
}

/// grpc-proto's current `health.proto` (with `List`) vendored: the built-in health service answers
/// every method that file (and so reflection) describes, `List` too, with the statuses `Check`
/// gives.
#[tokio::test]
async fn the_built_in_health_answers_list_as_grpc_proto_describes_it() {
    let protos = [
        (
            "grpc/health/v1/health.proto",
            include_str!("../src/builtin/proto/health.proto"),
        ),
        ("t.proto", KV),
    ];
    let s = Server::start(&protos, &[]);
    let c = s.client().await;
    let list = c.unary("grpc.health.v1.Health/List", json!({})).await;
    let statuses = &list.single()["statuses"];
    assert_eq!(statuses["t.Svc"]["status"], "SERVING", "{statuses}");
    assert_eq!(statuses[""]["status"], "SERVING", "{statuses}");
}
