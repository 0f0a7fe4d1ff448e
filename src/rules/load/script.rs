//! `script` (a file next to the handler file) and `code` (inline Rhai): compiled once at load, with
//! positions inside inline code counted from the handler file's own lines.

use super::{FileCtx, Reported, Res};
use crate::rules::toml_tree::Node;

impl FileCtx<'_> {
    pub(super) fn script(&mut self, node: &Node, is_file: bool) -> Res<crate::script::Script> {
        let Some(text) = node.as_str() else {
            return Err(self.error(
                node.span.clone(),
                "a script is a string: a file name, or Rhai code with `code = \"\"\"…\"\"\"`",
            ));
        };
        if is_file {
            let escapes = std::path::Path::new(text).components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if self.confined && escapes {
                return Err(self.error(
                    node.span.clone(),
                    format!("a runtime rule's script is a file inside the handlers folder ({}): no absolute path, no '..'", self.script_dir.display()),
                ));
            }
            let path = self.script_dir.join(text);
            // Only a regular file: `/dev/zero` or a FIFO would hang the load (found by fuzzing).
            if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
                return Err(self.error(
                    node.span.clone(),
                    format!("cannot read script {}: not a regular file", path.display()),
                ));
            }
            let source = std::fs::read_to_string(&path).map_err(|e| {
                self.error(
                    node.span.clone(),
                    format!("cannot read script {}: {e}", path.display()),
                )
            })?;
            self.engine.compile(&path, &source, 0).map_err(|d| {
                self.problems.push(d);
                Reported
            })
        } else {
            // Inline code: positions count from the line the string starts on (after `"""` and its newline).
            let (line, _, _) = crate::diagnostic::locate(self.source, node.span.start);
            let starts_on_next_line = self.source[node.span.start..].starts_with("\"\"\"\n")
                || self.source[node.span.start..].starts_with("'''\n");
            let offset = line - 1 + usize::from(starts_on_next_line);
            self.engine.compile(self.path, text, offset).map_err(|d| {
                self.problems.push(d);
                Reported
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::ReflectMessage;
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::super::testkit::*;
    use crate::rules::Answer;
    use crate::script::{Inline, Script, ScriptCall, ScriptRequest};

    fn script_of(rule: &crate::rules::Rule) -> &Script {
        match &rule.answer {
            Answer::Script(s) => s,
            other => panic!("a script: {other:?}"),
        }
    }

    /// What `script` answers a unary `t.Svc/Unary` call with `request`, as JSON.
    fn run(script: &Script, req: serde_json::Value) -> serde_json::Value {
        let req = request(req);
        let output = pool().get_message_by_name("t.Resp").unwrap();
        let call = ScriptCall {
            request: Some(ScriptRequest::Decoded(std::sync::Arc::new(req))),
            metadata: metadata(&[]),
            incoming: None,
            output,
            streaming_response: false,
            cancel: CancellationToken::new(),
        };
        let Inline::Ran { result, .. } = script.try_run_inline(call) else {
            panic!("a script that does not wait runs inline");
        };
        let reply = result.unwrap().reply.unwrap();
        assert_eq!(reply.descriptor().full_name(), "t.Resp");
        serde_json::to_value(&reply).unwrap()
    }

    #[test]
    fn inline_code_and_a_script_file_both_answer() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = '''\n#{ text: \"hi \" + request.name }\n'''\n";
        let r = rule(h, "Svc/Unary");
        assert_eq!(
            run(script_of(&r), json!({ "name": "x" })),
            json!({ "text": "hi x" })
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/a.rhai"), "#{ num: request.num + 1 }").unwrap();
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"s/a.rhai\"\n";
        let handlers = load_at(&dir.path().join("t.toml"), h).unwrap();
        let r = &handlers.methods["t.Svc/Unary"].rules[0];
        assert_eq!(
            run(script_of(r), json!({ "num": 4 })),
            json!({ "num": 5 }),
            "read next to the handler file"
        );
    }

    #[test]
    fn a_script_that_cannot_be_read_is_refused_at_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::create_dir(dir.path().join("folder.rhai")).unwrap();
        for (name, words) in [
            ("missing.rhai", "cannot read script"),
            ("folder.rhai", "not a regular file"),
        ] {
            let h = format!("[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = \"{name}\"\n");
            let problems = load_at(&file, &h).unwrap_err().0;
            assert_eq!(problems.len(), 1, "{problems:?}");
            let p = &problems[0];
            assert_eq!(
                (p.file.as_path(), p.line, p.column),
                (file.as_path(), 3, 10)
            );
            assert!(
                p.message.contains(words)
                    && p.message
                        .contains(&dir.path().join(name).display().to_string()),
                "{}",
                p.message
            );
        }
        problem_at(
            "[[rule]]\nmethod = \"t.Svc/Unary\"\nscript = 1\n",
            "1",
            &["a script is a string"],
        );
    }

    /// Problems inside inline code are on the handler file's own lines, whether the code starts
    /// on the line after `'''` or on the same line.
    #[test]
    fn a_syntax_error_in_inline_code_is_on_the_handler_files_line() {
        for h in [
            "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = '''\nlet a = 1;\nlet b = a +;\n#{}\n'''\n",
            "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = '''let a = 1;\nlet b = a +;\n#{}\n'''\n",
            "[[rule]]\nmethod = \"t.Svc/Unary\"\ncode = \"\"\"\nlet a = 1;\nlet b = a +;\n#{}\n\"\"\"\n",
        ] {
            let (line, _) = pos(h, "let b");
            let all = problems(h);
            assert_eq!(all.len(), 1, "{all:?}");
            assert_eq!((all[0].file.to_str(), all[0].line), (Some(FILE), line), "{h}\n{all:?}");
        }
    }

    #[test]
    fn a_client_streams_script_has_no_when() {
        let h =
            "[[rule]]\nmethod = \"t.Svc/ClientStream\"\nwhen.metadata.a = \"1\"\ncode = \"#{}\"\n";
        problem_at(
            h,
            "\"#{}\"",
            &[
                "t.Svc/ClientStream is a client/bidi stream",
                "cannot have `when`",
            ],
        );
    }
}
