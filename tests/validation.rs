//! `protodrop check`: every problem as `path:line:col: message`, the line, a caret; exit 1. And `serve`
//! refuses a broken tree.

mod common;

use common::*;

/// 1-based (line, column) of the first occurrence of `needle` in `text`.
#[track_caller]
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the file"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Checks that `stderr` reports a problem at `file:line:col` whose message has every word of `words`,
/// followed by the source line and a caret under the column. Returns the message.
#[track_caller]
fn assert_problem(
    stderr: &str,
    file: &str,
    source: &str,
    at: (usize, usize),
    words: &[&str],
) -> String {
    let (line, col) = at;
    let prefix = format!("{file}:{line}:{col}: ");
    let lines: Vec<&str> = stderr.lines().collect();
    let Some(i) = lines.iter().position(|l| l.starts_with(&prefix)) else {
        panic!("expected a problem at {file}:{line}:{col}; stderr:\n{stderr}");
    };
    let message = &lines[i][prefix.len()..];
    for w in words {
        assert!(
            message.contains(w),
            "the message at {prefix} should mention {w:?}: {message}"
        );
    }
    // Then: a gutter line, `N | <source line>`, and a caret under column `col`.
    let src_line = source.lines().nth(line - 1).unwrap();
    let shown = lines.get(i + 2).unwrap_or(&"");
    let expected_src = format!("{line} | {src_line}");
    assert_eq!(
        shown.trim_end(),
        expected_src.trim_end(),
        "the offending line is quoted; stderr:\n{stderr}"
    );
    let caret_line = lines.get(i + 3).unwrap_or(&"");
    let gutter = format!("{line} | ").len();
    let caret_at = caret_line
        .find('^')
        .unwrap_or_else(|| panic!("no caret after {prefix}; stderr:\n{stderr}"));
    assert_eq!(
        caret_line[gutter..caret_at].chars().count() + 1,
        col,
        "caret under column {col}:\n{shown}\n{caret_line}"
    );
    message.to_string()
}

/// `check` on t.proto and a handler file that must fail with one problem at `needle`.
#[track_caller]
fn check_handler_fails(handler: &str, needle: &str, words: &[&str]) -> String {
    let (code, stdout, stderr) = check(&t_proto(), &[("t.toml", handler)]);
    assert_eq!(
        code, 1,
        "check should fail (exit 1); stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains("ok:"), "{stdout}");
    assert_problem(
        &stderr,
        "handlers/t.toml",
        handler,
        pos(handler, needle),
        words,
    )
}

#[test]
fn a_clean_tree_passes() {
    let handler =
        "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"hi {{request.name}}\" }\n";
    let (code, stdout, stderr) = check(&t_proto(), &[("t.toml", handler)]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains("1 rules"), "counts the rules: {stdout}");
}

#[test]
fn unknown_method() {
    let h = "[[rule]]\nmethod = \"t.Svc/Nope\"\nreply = {}\n";
    check_handler_fails(h, "\"t.Svc/Nope\"", &["Nope", "Unary", "ServerStream"]);
}

#[test]
fn unknown_service() {
    let h = "[[rule]]\nmethod = \"t.Nope/Unary\"\nreply = {}\n";
    check_handler_fails(h, "\"t.Nope/Unary\"", &["t.Nope", "t.Svc"]);
}

#[test]
fn unknown_field_in_reply() {
    let h =
        "# comment\n[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"a\", txt = \"b\" }\n";
    check_handler_fails(h, "txt", &["txt", "t.Resp", "text"]);
}

/// A nested message written as its own table: the problem is on the line of the bad key, not the
/// table's header.
#[test]
fn unknown_field_in_a_nested_reply_message() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\n[rule.reply]\ntext = \"x\"\n[rule.reply.inner]\nid = 1\nname = \"b\"\n";
    check_handler_fails(h, "name", &["name", "t.Inner", "label"]);
}

#[test]
fn wrong_type_inside_a_list_element() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.items = [\n  { id = 1 },\n  { id = \"x\" },\n]\n";
    check_handler_fails(h, "\"x\"", &["id", "int32"]);
}

#[test]
fn wrong_type_string_into_int32() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\n\nreply = { num = \"abc\" }\n";
    check_handler_fails(h, "\"abc\"", &["num", "int32"]);
}

#[test]
fn bad_enum_name() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { color = \"PURPLE\" }\n";
    let msg = check_handler_fails(h, "\"PURPLE\"", &["t.Color"]);
    assert!(
        msg.contains("PURPLE") || msg.contains("RED"),
        "names the value or the choices: {msg}"
    );
}

#[test]
fn bad_template_path() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"hello {{request.nme}}\" }\n";
    check_handler_fails(h, "{{request.nme}}", &["nme", "t.Req", "name"]);
}

#[test]
fn template_root_not_available_here() {
    // `count` exists in client streams only.
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"{{count}}\" }\n";
    check_handler_fails(h, "{{count}}", &["count", "request"]);
}

#[test]
fn unknown_rule_key() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nrepli = { text = \"x\" }\n";
    check_handler_fails(h, "repli", &["repli", "reply"]);
}

#[test]
fn bad_toml_syntax() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"x\" \n";
    let (code, _stdout, stderr) = check(&t_proto(), &[("t.toml", h)]);
    assert_eq!(code, 1, "{stderr}");
    let want = "handlers/t.toml:3:";
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(want) && l.contains("TOML")),
        "expected {want}… TOML error; stderr:\n{stderr}"
    );
}

#[test]
fn stream_on_a_unary_method() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nstream.messages = [{ text = \"x\" }]\n";
    let (code, _stdout, stderr) = check(&t_proto(), &[("t.toml", h)]);
    assert_eq!(code, 1, "{stderr}");
    let (line, _) = pos(h, "stream");
    let want = format!("handlers/t.toml:{line}:");
    let found = stderr.lines().find(|l| l.starts_with(&want));
    let found =
        found.unwrap_or_else(|| panic!("expected a problem on line {line}; stderr:\n{stderr}"));
    assert!(
        found.contains("t.Svc/Unary") && found.contains("reply"),
        "says it is not a stream and to use reply: {found}"
    );
}

#[test]
fn bad_status_code_name() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nerror.code = \"NOT_FUOND\"\n";
    check_handler_fails(h, "\"NOT_FUOND\"", &["NOT_FOUND", "status code"]);
}

#[test]
fn status_code_number_out_of_range() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nerror.code = 17\n";
    check_handler_fails(h, "17", &["status code", "16"]);
}

#[test]
fn bad_regex() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.name = { regex = \"([a-z\" }\nreply = {}\n";
    check_handler_fails(h, "\"([a-z\"", &["regex"]);
}

#[test]
fn condition_on_an_unknown_field() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.request.nam = \"x\"\nreply = {}\n";
    check_handler_fails(h, "nam ", &["nam", "t.Req"]);
}

#[test]
fn bad_duration() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ndelay = \"soon\"\n";
    check_handler_fails(h, "\"soon\"", &["soon", "150ms"]);
}

#[test]
fn every_problem_of_every_file_is_reported() {
    let a = "[[rule]]\nmethod = \"t.Svc/Nope\"\n";
    let b = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { txt = \"x\" }\n\n[[rule]]\nmethod = \"t.Svc/Echo\"\nreply = { nam = \"x\" }\n";
    let (code, _stdout, stderr) = check(&t_proto(), &[("a.toml", a), ("b.toml", b)]);
    assert_eq!(code, 1);
    assert_problem(
        &stderr,
        "handlers/a.toml",
        a,
        pos(a, "\"t.Svc/Nope\""),
        &["Nope"],
    );
    assert_problem(&stderr, "handlers/b.toml", b, pos(b, "txt"), &["txt"]);
    assert_problem(&stderr, "handlers/b.toml", b, pos(b, "nam"), &["nam"]);
    assert!(stderr.contains("3 problem"), "counts them: {stderr}");
}

#[test]
fn broken_proto_is_reported_at_its_line() {
    let bad = "syntax = \"proto3\";\npackage b;\n\nmessage B {\n  int32 a = ;\n}\n";
    let (code, _stdout, stderr) = check(&[("t.proto", T_PROTO), ("b.proto", bad)], &[]);
    assert_eq!(code, 1, "{stderr}");
    let (line, _) = pos(bad, "= ;");
    let want = format!("protos/b.proto:{line}:");
    assert!(
        stderr.lines().any(|l| l.starts_with(&want)),
        "expected a problem at {want}…; stderr:\n{stderr}"
    );
}

#[test]
fn unknown_type_in_a_proto_points_at_it() {
    let bad = "syntax = \"proto3\";\npackage b;\n\nmessage B {\n  Missing m = 1;\n}\n";
    let (code, _stdout, stderr) = check(&[("b.proto", bad)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_problem(
        &stderr,
        "protos/b.proto",
        bad,
        pos(bad, "Missing"),
        &["Missing"],
    );
}

#[test]
fn duplicate_symbol_in_two_proto_files_names_both() {
    let a = "syntax = \"proto3\";\npackage d;\n\nmessage Thing {\n  string a = 1;\n}\n";
    let b = "syntax = \"proto3\";\npackage d;\n\nmessage Other {}\n\nmessage Thing {\n  string b = 1;\n}\n";
    let (code, _stdout, stderr) = check(&[("a.proto", a), ("b.proto", b)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("d.Thing"), "names the symbol: {stderr}");
    assert!(
        stderr.contains("a.proto") && stderr.contains("b.proto"),
        "names both files: {stderr}"
    );
    let (line, _) = pos(b, "Thing");
    let want = format!("protos/b.proto:{line}:");
    assert!(
        stderr.lines().any(|l| l.starts_with(&want)),
        "points at the second definition ({want}…): {stderr}"
    );
}

#[test]
fn missing_import_is_reported() {
    let p = "syntax = \"proto3\";\npackage m;\nimport \"nowhere/x.proto\";\n";
    let (code, _stdout, stderr) = check(&[("m.proto", p)], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nowhere/x.proto"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("protos/m.proto:3:")),
        "points at the import line: {stderr}"
    );
}

#[test]
fn serve_refuses_a_broken_tree() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { txt = \"x\" }\n";
    let err = match Server::try_start(&t_proto(), &[("t.toml", h)], Options::default()) {
        Ok(_) => panic!("serve started on a broken handler file"),
        Err(e) => e,
    };
    assert!(
        err.contains("exit: exit status: 1"),
        "exits non-zero: {err}"
    );
    assert!(
        err.contains("handlers/t.toml:3:11: ") && err.contains("txt"),
        "the problem is on stderr: {err}"
    );

    let bad = "syntax = \"proto3\";\npackage b;\nmessage B { int32 a = ; }\n";
    let err = match Server::try_start(&[("b.proto", bad)], &[], Options::default()) {
        Ok(_) => panic!("serve started on a broken proto"),
        Err(e) => e,
    };
    assert!(
        err.contains("exit: exit status: 1") && err.contains("protos/b.proto:3:"),
        "{err}"
    );
}

#[test]
fn health_override_for_an_unknown_service() {
    let h = "[health]\n\"t.Nope\" = \"NOT_SERVING\"\n";
    check_handler_fails(h, "\"t.Nope\"", &["t.Nope", "t.Svc"]);
}

#[test]
fn health_override_with_a_bad_status() {
    let h = "[health]\n\"t.Svc\" = \"DOWN\"\n";
    check_handler_fails(h, "\"DOWN\"", &["SERVING", "NOT_SERVING"]);
}

/// `serve` on a folder that does not exist exits 1 and names it, rather than serving nothing.
#[test]
fn serve_refuses_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_files(&dir.path().join("protos"), &t_proto());
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    for (flag, folder, what) in [
        ("--protos", "no-protos", "protos folder not found"),
        ("--handlers", "no-handlers", "handlers folder not found"),
    ] {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        if flag == "--protos" {
            args.extend(["--protos", folder, "--handlers", "handlers"]);
        } else {
            args.extend(["--protos", "protos", "--handlers", folder]);
        }
        let (code, stdout, stderr) = protodrop(&args, Some(dir.path()), &[]);
        assert_eq!(code, 1, "{flag}: stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(!stdout.contains("listening on"), "{stdout}");
        assert!(
            stderr.contains(folder) && stderr.contains(what),
            "{flag}: names the folder: {stderr}"
        );
    }
}

/// A Rhai syntax error stops `serve` at start-up like any other load problem: exit 1, file:line.
#[test]
fn serve_refuses_a_script_with_a_syntax_error() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"s.rhai\"\n";
    let script = "let a = 1;\nlet b = a +;\n#{}\n";
    let err = match Server::try_start(
        &t_proto(),
        &[("t.toml", h), ("s.rhai", script)],
        Options::default(),
    ) {
        Ok(_) => panic!("serve started with a broken script"),
        Err(e) => e,
    };
    assert!(
        err.contains("exit: exit status: 1"),
        "exits non-zero: {err}"
    );
    assert!(
        err.contains("handlers/s.rhai:2:"),
        "points at the line: {err}"
    );
}

/// The sandbox at load time: `import` (the only way a Rhai script could reach a file) is refused
/// where it is written.
#[test]
fn a_script_that_imports_is_refused_at_load() {
    let h =
        "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = '''\nimport \"/etc/passwd\" as p;\np::x\n'''\n";
    let (code, _stdout, stderr) = check(&t_proto(), &[("t.toml", h)]);
    assert_eq!(code, 1, "{stderr}");
    let line = line_of(h, "import");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("handlers/t.toml:{line}:"))),
        "points at the import: {stderr}"
    );
}

/// Issue 16 (9): `error.code = "OK"` (or 0) is no error: a unary call would end with status 0 and no
/// reply message, which clients report as a protocol violation. Refused where it is written, by name
/// in any case or by number, also after a `stream` (whose messages alone already end with OK).
#[test]
fn error_code_ok_is_refused() {
    let unary =
        "[[rule]]\nmethod = \"t.Svc/Unary\"\nerror.code = \"OK\"\nerror.message = \"fine\"\n";
    check_handler_fails(unary, "\"OK\"", &["OK", "reply"]);
    let by_number = "[[rule]]\nmethod = \"t.Svc/Unary\"\nerror = { code = 0, message = \"x\" }\n";
    check_handler_fails(by_number, "0, message", &["OK", "reply"]);
    let after_stream = "[[rule]]\nmethod = \"t.Svc/ServerStream\"\nstream.messages = [{ text = \"a\" }]\nerror.code = \"ok\"\n";
    check_handler_fails(after_stream, "\"ok\"", &["OK", "stream"]);
}

/// Issue 16 (9): a client or bidi stream's script reads the messages itself, so its rule's `headers`
/// and `trailers` (which are applied: tests/errors_metadata.rs) can see metadata only; a template on
/// `request`, `first` or `count` there is refused at its place rather than rendered empty.
#[test]
fn a_stream_scripts_headers_see_metadata_only() {
    let h = "[[rule]]\nmethod = \"t.Svc/ClientStream\"\ncode = \"#{}\"\nheaders = { x-n = \"{{request.name}}\" }\n";
    check_handler_fails(h, "{{request.name}}", &["request", "metadata.KEY"]);
    let h =
        "[[rule]]\nmethod = \"t.Svc/Bidi\"\ncode = \"()\"\ntrailers = { x-n = \"{{count}}\" }\n";
    check_handler_fails(h, "{{count}}", &["count", "metadata.KEY"]);
}

/// A condition on a binary (`-bin`) key compares base64 (README, *Matching*): a value that is not
/// base64 could never hold, so it is refused where it is written (any padding is accepted).
#[test]
fn a_binary_metadata_condition_takes_base64() {
    let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.metadata.\"x-t-bin\" = \"not base64!\"\nreply = {}\n";
    check_handler_fails(h, "\"not base64!\"", &["x-t-bin", "base64"]);
    let ok =
        "[[rule]]\nmethod = \"t.Svc/Unary\"\nwhen.metadata.\"x-t-bin\" = \"aGk\"\nreply = {}\n";
    let (code, stdout, stderr) = check(&t_proto(), &[("t.toml", ok)]);
    assert_eq!(code, 0, "unpadded base64 is fine: {stdout}{stderr}");
}
