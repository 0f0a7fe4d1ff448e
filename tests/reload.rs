//! Hot reload: changes to protos and handlers are served within a second; broken edits keep the last
//! good state serving and are logged with file:line.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

/// The reload deadline the project promises (debounce 50 ms + rebuild).
const RELOAD_DEADLINE: Duration = Duration::from_secs(1);
/// How long tests keep polling before giving up (beyond the deadline, to report how late it was).
const POLL_LIMIT: Duration = Duration::from_secs(10);

const HANDLER_V1: &str = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.text = \"v1\"\n";
const HANDLER_V2: &str = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.text = \"v2\"\n";

/// The server prints its listen line before it starts watching the folders, so an edit made at once
/// may be missed; give the watcher a moment (see the test report).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Polls `method` until its reply's text is `want`; returns how long that took.
async fn wait_for_text(server: &Server, client: &Client, method: &str, want: &str) -> Duration {
    wait_for_reply_text(server, client, method, want, POLL_LIMIT).await
}

#[tokio::test]
async fn new_proto_and_handler_are_served_within_a_second() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    settle().await;
    let new_proto = "syntax = \"proto3\";\npackage n;\nmessage M { string text = 1; }\nservice N { rpc Get(M) returns (M); }\n";
    let new_handler = "[[rule]]\nmethod = \"n.N/Get\"\nreply.text = \"new {{request.text}}\"\n";
    let start = Instant::now();
    s.write_proto("sub/n.proto", new_proto);
    s.write_handler("n.toml", new_handler);
    eventually(POLL_LIMIT, || async {
        let c = s.client().await;
        let out = c.unary("n.N/Get", json!({ "text": "x" })).await;
        match out.code() {
            Code::Ok if out.messages == vec![json!({ "text": "new x" })] => Ok(()),
            _ => Err(format!(
                "{:?} {} {:?}; log:\n{}",
                out.code(),
                out.message(),
                out.messages,
                s.logs()
            )),
        }
    })
    .await;
    let took = start.elapsed();
    assert!(
        took < RELOAD_DEADLINE,
        "the new method was answered after {took:?}"
    );
    // The old method still answers.
    let c = s.client().await;
    assert_eq!(reply_text(&c, "t.Svc/Unary").await.unwrap(), "v1");
}

#[tokio::test]
async fn edited_reply_is_served_within_a_second() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    assert_eq!(reply_text(&c, "t.Svc/Unary").await.unwrap(), "v1");
    settle().await;
    s.write_handler("t.toml", HANDLER_V2);
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert!(took < RELOAD_DEADLINE, "the edit was served after {took:?}");
}

#[tokio::test]
async fn broken_handler_keeps_the_old_state_and_logs_where_then_recovers() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    settle().await;
    let since = s.logs().len();
    let broken = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.txt = \"oops\"\n";
    s.write_handler("t.toml", broken);
    let log = s.wait_for_log(since, "t.toml:3:", POLL_LIMIT).await;
    assert!(log.contains("txt"), "the log says what is wrong: {log}");
    assert_eq!(
        reply_text(&c, "t.Svc/Unary").await.unwrap(),
        "v1",
        "the last good state keeps serving"
    );

    s.write_handler("t.toml", HANDLER_V2);
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert!(took < RELOAD_DEADLINE, "recovered after {took:?}");
}

#[tokio::test]
async fn broken_proto_keeps_the_old_state() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    settle().await;
    let since = s.logs().len();
    let broken = T_PROTO.replace("string name = 1;", "string name = ;");
    let line = line_of(&broken, "string name = ;");
    s.write_proto("t.proto", &broken);
    s.wait_for_log(since, &format!("t.proto:{line}:"), POLL_LIMIT)
        .await;
    assert_eq!(
        reply_text(&c, "t.Svc/Unary").await.unwrap(),
        "v1",
        "the last good state keeps serving"
    );

    // Fixing it (with a new handler) brings the new state in.
    s.write_proto("t.proto", T_PROTO);
    s.write_handler("t.toml", HANDLER_V2);
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert!(took < RELOAD_DEADLINE, "recovered after {took:?}");
}

#[tokio::test]
async fn removed_handler_file_makes_the_method_unimplemented() {
    let s = Server::start(
        &t_proto(),
        &[
            ("t.toml", HANDLER_V1),
            ("other.toml", "[[rule]]\nmethod = \"t.Svc/Ping\"\n"),
        ],
    );
    let c = s.client().await;
    assert_eq!(reply_text(&c, "t.Svc/Unary").await.unwrap(), "v1");
    settle().await;
    let start = Instant::now();
    s.remove("handlers/t.toml");
    let msg = eventually(POLL_LIMIT, || async {
        let out = c.unary("t.Svc/Unary", json!({})).await;
        if out.code() == Code::Unimplemented {
            Ok(out.message().to_string())
        } else {
            Err(format!("{:?} {:?}", out.code(), out.messages))
        }
    })
    .await;
    let took = start.elapsed();
    assert!(msg.contains("no handler for t.Svc/Unary"), "{msg}");
    assert!(took < RELOAD_DEADLINE, "took {took:?}");
    assert_eq!(
        c.unary("t.Svc/Ping", json!({})).await.single(),
        &json!({}),
        "other files still answer"
    );
}

/// A call in flight keeps the state it started with.
#[tokio::test]
async fn a_call_in_flight_finishes_with_the_state_it_started_with() {
    let slow = "[[rule]]\nmethod = \"t.Svc/Unary\"\ndelay = \"800ms\"\nreply.text = \"v1\"\n";
    let s = Server::start(&t_proto(), &[("t.toml", slow)]);
    let c = s.client().await;
    settle().await;
    let c2 = c.clone();
    let in_flight = tokio::spawn(async move { reply_text(&c2, "t.Svc/Unary").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_handler("t.toml", HANDLER_V2);
    wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert_eq!(in_flight.await.unwrap().unwrap(), "v1");
}

/// Tools and tests read the listen line to know the server is up; an edit made right after it must not
/// be lost. (Today the line is printed before the folders are watched: edits in the first milliseconds
/// are never seen.) Several servers at once, each edited at once, all must pick their edit up.
#[tokio::test]
async fn an_edit_right_after_the_listen_line_is_not_lost() {
    let servers: Vec<Server> = (0..4)
        .map(|_| {
            let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
            s.write_handler("t.toml", HANDLER_V2);
            s
        })
        .collect();
    for s in &servers {
        let c = s.client().await;
        let start = Instant::now();
        let seen = loop {
            let t = reply_text(&c, "t.Svc/Unary").await;
            if t.as_deref() == Ok("v2") || start.elapsed() > Duration::from_secs(2) {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            seen.as_deref(),
            Ok("v2"),
            "an edit made just after `listening on` was never served"
        );
    }
}

/// The log names `file:line:column:` (the column a number), as `protodrop check` does.
#[track_caller]
fn assert_points_at(log: &str, file: &str, line: usize) {
    let prefix = format!("{file}:{line}:");
    let found = log.match_indices(&prefix).any(|(i, _)| {
        let rest = &log[i + prefix.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && rest[digits..].starts_with(':')
    });
    assert!(
        found,
        "the log should point at {prefix}COLUMN:, log:\n{log}"
    );
}

/// Every kind of broken edit a user makes while the server runs: the log says where (file:line:col),
/// the last good state keeps answering, and the next good edit is served.
#[tokio::test]
async fn each_kind_of_broken_edit_keeps_the_last_good_state_and_is_logged_where() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    settle().await;
    let half_written = "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply.text = \"v2 is not fini";
    let cases: [(&str, &str, &str, usize); 5] = [
        (
            "a method the proto does not have",
            "t.toml",
            "[[rule]]\nmethod = \"t.Svc/Nope\"\nreply.text = \"x\"\n",
            2,
        ),
        (
            "a field the reply does not have",
            "t.toml",
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nreply = { text = \"x\", nope = 1 }\n",
            3,
        ),
        (
            "a Rhai syntax error in inline code",
            "t.toml",
            "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = \"\"\"\nlet x = ;\n\"\"\"\n",
            4,
        ),
        (
            "a file cut short while it is being saved",
            "t.toml",
            half_written,
            3,
        ),
        (
            "a Rhai syntax error in a script file",
            "s.rhai",
            "let a = 1;\nlet b = a +;\n#{ text: \"x\" }\n",
            2,
        ),
    ];
    for (what, file, broken, line) in cases {
        let since = s.logs().len();
        if file == "s.rhai" {
            // The handler file refers to the script; both change in one save.
            s.write_handler("s.rhai", broken);
            s.write_handler(
                "t.toml",
                "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"s.rhai\"\n",
            );
        } else {
            s.write_handler(file, broken);
        }
        let log = s.wait_for_log(since, "reload failed", POLL_LIMIT).await;
        assert_points_at(&log, file, line);
        assert_eq!(
            reply_text(&c, "t.Svc/Unary").await.as_deref(),
            Ok("v1"),
            "{what}: the last good state keeps serving"
        );
    }
    s.write_handler("t.toml", HANDLER_V2);
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert!(took < RELOAD_DEADLINE, "recovered after {took:?}");
}

/// An editor's atomic save (vim: rename the file to a backup, write the new file, delete the backup)
/// deletes the file for a moment: the new content is served and the server keeps watching.
#[tokio::test]
async fn an_atomic_save_that_removes_the_file_for_a_moment_is_served() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    settle().await;
    let file = s.handlers_dir().join("t.toml");
    let backup = s.handlers_dir().join("t.toml~");
    std::fs::rename(&file, &backup).unwrap();
    std::fs::write(&file, HANDLER_V2).unwrap();
    std::fs::remove_file(&backup).unwrap();
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert!(took < RELOAD_DEADLINE, "served after {took:?}");
    // Or the other way: write a temporary file and rename it over the old one.
    let tmp = s.handlers_dir().join(".t.toml.swp");
    std::fs::write(&tmp, HANDLER_V1).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v1").await;
    assert!(took < RELOAD_DEADLINE, "served after {took:?}");
}

/// Regression: notify drops its watch when a watched folder is removed, and never watched it again:
/// after `rm -rf handlers` and a new `handlers/`, no edit was ever seen. While the folder is gone the
/// last good state serves (not an empty one) and a warning says so; when it is back it is read, and
/// later edits are seen too.
#[tokio::test]
async fn handlers_folder_removed_and_restored_is_watched_again() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    settle().await;
    let since = s.logs().len();
    std::fs::remove_dir_all(s.handlers_dir()).unwrap();
    let log = s.wait_for_log(since, "folder is gone", POLL_LIMIT).await;
    assert!(log.contains("WARN"), "a warning: {log}");
    assert!(
        !log.contains("reloaded services="),
        "nothing was reloaded: {log}"
    );
    for _ in 0..5 {
        assert_eq!(
            reply_text(&c, "t.Svc/Unary").await.as_deref(),
            Ok("v1"),
            "the last good state serves while the folder is gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::create_dir(s.handlers_dir()).unwrap();
    s.write_handler("t.toml", HANDLER_V2);
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert!(
        took < RELOAD_DEADLINE,
        "the restored folder was read after {took:?}"
    );

    // The folder is watched again: a later edit is served.
    settle().await;
    s.write_handler("t.toml", HANDLER_V1);
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v1").await;
    assert!(
        took < RELOAD_DEADLINE,
        "a later edit was served after {took:?}"
    );
}

/// The same for the protos folder: gone, the last good services answer; back (here with one more
/// service), it is read, and a later edit to a proto is seen.
#[tokio::test]
async fn protos_folder_removed_and_restored_is_watched_again() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    settle().await;
    let since = s.logs().len();
    std::fs::remove_dir_all(s.protos_dir()).unwrap();
    s.wait_for_log(since, "folder is gone", POLL_LIMIT).await;
    assert_eq!(reply_text(&c, "t.Svc/Unary").await.as_deref(), Ok("v1"));

    let n_proto = "syntax = \"proto3\";\npackage n;\nmessage M { string text = 1; }\nservice N { rpc Get(M) returns (M); }\n";
    std::fs::create_dir(s.protos_dir()).unwrap();
    s.write_proto("t.proto", T_PROTO);
    s.write_proto("n.proto", n_proto);
    s.write_handler(
        "n.toml",
        "[[rule]]\nmethod = \"n.N/Get\"\nreply.text = \"n1\"\n",
    );
    let c = s.client().await;
    let took = wait_for_text(&s, &c, "n.N/Get", "n1").await;
    assert!(
        took < RELOAD_DEADLINE,
        "the restored folder was read after {took:?}"
    );
    assert_eq!(reply_text(&c, "t.Svc/Unary").await.as_deref(), Ok("v1"));

    // A later proto edit is seen: a renamed method answers, the old name is gone.
    settle().await;
    s.write_proto("n.proto", &n_proto.replace("rpc Get", "rpc Fetch"));
    s.write_handler(
        "n.toml",
        "[[rule]]\nmethod = \"n.N/Fetch\"\nreply.text = \"n2\"\n",
    );
    let c = s.client().await;
    let took = wait_for_text(&s, &c, "n.N/Fetch", "n2").await;
    assert!(
        took < RELOAD_DEADLINE,
        "a later edit was served after {took:?}"
    );
}

/// A folder swapped in one go, faster than the debounce: removed and created again, or a new folder
/// renamed into place (as a deploy script or `git checkout` may do). Each time the new content is
/// served, and the folder is still watched afterwards.
#[tokio::test]
async fn a_folder_replaced_in_one_go_is_read_and_watched_again() {
    let s = Server::start(&t_proto(), &[("t.toml", HANDLER_V1)]);
    let c = s.client().await;
    settle().await;

    std::fs::remove_dir_all(s.handlers_dir()).unwrap();
    std::fs::create_dir(s.handlers_dir()).unwrap();
    s.write_handler("t.toml", HANDLER_V2);
    wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;

    settle().await;
    let fresh = s.root().join("handlers.new");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join("t.toml"), HANDLER_V1.replace("v1", "v3")).unwrap();
    std::fs::rename(s.handlers_dir(), s.root().join("handlers.old")).unwrap();
    std::fs::rename(&fresh, s.handlers_dir()).unwrap();
    wait_for_text(&s, &c, "t.Svc/Unary", "v3").await;

    // Edits in the old folder, now elsewhere, are not served; edits in the new one are.
    settle().await;
    std::fs::write(s.root().join("handlers.old/t.toml"), HANDLER_V1).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reply_text(&c, "t.Svc/Unary").await.as_deref(), Ok("v3"));
    s.write_handler("t.toml", HANDLER_V2);
    let took = wait_for_text(&s, &c, "t.Svc/Unary", "v2").await;
    assert!(
        took < RELOAD_DEADLINE,
        "a later edit was served after {took:?}"
    );
}
