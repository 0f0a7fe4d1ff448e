//! `script` (a file next to the handler file) and `code` (inline Rhai): compiled once at load, with
//! positions inside inline code counted from the handler file's own lines.

use std::path::Path as FsPath;

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
            let path = self.path.parent().unwrap_or(FsPath::new(".")).join(text);
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
