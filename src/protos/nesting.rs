//! A bound on how deeply a `.proto` file nests, checked on its text before protox parses it.
//!
//! protox's parser, and prost-reflect's text-format parser that reads message-literal option values
//! (`option (google.api.http) = { additional_bindings { … } }`), recurse once per level with no limit:
//! a few thousand levels overflow the thread's stack, which aborts the process (it cannot be caught).
//! Past 100 levels prost-reflect also panics when it decodes such an option (prost's own recursion
//! limit). So every file is scanned first, and one nested deeper than [`MAX_NESTING`] is refused with
//! its line and column; the build thread's stack ([`crate::protos::BUILD_STACK`]) is sized for a
//! file at the limit.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::diagnostic::Diagnostic;

/// Deepest nesting of `{`, `[` and `<` a `.proto` file may have (messages declared inside messages,
/// message-literal option values, `map<…>`). Real trees stay far below it (googleapis: under 10); it
/// stays below prost's decoding limit of 100 with room for the declarations around an option.
pub(crate) const MAX_NESTING: usize = 64;

/// The byte offset of the first bracket that opens level `MAX_NESTING + 1`, if any. Brackets in
/// comments and string literals do not count; unbalanced closers are left to the parser to report.
pub(crate) fn too_deep(source: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = memchr(b'\n', bytes, i).unwrap_or(bytes.len());
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = source[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |e| i + 2 + e + 2);
                continue;
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'<' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(i);
                }
            }
            b'}' | b']' | b'>' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

fn memchr(byte: u8, bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..]
        .iter()
        .position(|&b| b == byte)
        .map(|p| from + p)
}

/// The error a resolver returns for a file it refuses before parsing (nested too deeply, bytes
/// that are not UTF-8). protox passes a resolver's error on as it is; `source()` leads back to the
/// diagnostic (see `protos::to_diagnostic`).
#[derive(Debug)]
pub(crate) struct Refused {
    inner: RefusedAt,
}

/// The diagnostic itself, reachable through `Refused::source`.
#[derive(Debug)]
pub(crate) struct RefusedAt(pub Diagnostic);

impl fmt::Display for RefusedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RefusedAt {}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.0.message)
    }
}

impl std::error::Error for Refused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner)
    }
}

/// `diagnostic` as the error a resolver returns.
pub(crate) fn refused(diagnostic: Diagnostic) -> protox::Error {
    protox::Error::new(Refused {
        inner: RefusedAt(diagnostic),
    })
}

/// Reads `path` (the file protox knows as `name`) as protoc would (`super::source`), refuses it when
/// nested too deeply, parses it otherwise. What protox's `File::open` does, with the checks between
/// reading and parsing (one read: the text checked is the text parsed).
pub(crate) fn open_checked(name: &str, path: &Path) -> Result<protox::file::File, protox::Error> {
    let text = match super::source::read(path) {
        Some(Ok(text)) => text,
        Some(Err(diagnostic)) => return Err(refused(diagnostic)),
        // Missing or unreadable: protox says so in its own words.
        None => return protox::file::File::open(name, path),
    };
    if let Some(offset) = too_deep(&text) {
        return Err(refused(Diagnostic::at(
            PathBuf::from(path),
            &text,
            offset..offset + 1,
            format!(
                "nested more than {MAX_NESTING} levels deep (messages within messages, or \
                 braces within an option value such as additional_bindings): flatten it"
            ),
        )));
    }
    protox::file::File::from_source(name, &text)
}

/// The diagnostic of a `Refused` error, if `err` is one.
pub(crate) fn diagnostic_of(err: &protox::Error) -> Option<&Diagnostic> {
    let source = std::error::Error::source(err)?;
    source.downcast_ref::<RefusedAt>().map(|d| &d.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "{".repeat(n), "}".repeat(n))
    }

    #[test]
    fn counts_brackets_outside_comments_and_strings() {
        assert_eq!(too_deep(&nested(MAX_NESTING)), None);
        assert_eq!(too_deep(&nested(MAX_NESTING + 1)), Some(MAX_NESTING));
        let hidden = format!(
            "// {0}\n/* {0} */ x = \"{0}\\\" {0}\"; y = '{0}';\n",
            "{".repeat(200)
        );
        assert_eq!(too_deep(&hidden), None);
        let mixed = "[<{".repeat(30);
        assert_eq!(too_deep(&mixed), Some(MAX_NESTING));
    }

    #[test]
    fn the_diagnostic_survives_protox() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("syntax = \"proto3\";\nmessage A {}\n", nested(100));
        std::fs::write(dir.path().join("a.proto"), &text).unwrap();
        let err = open_checked("a.proto", &dir.path().join("a.proto")).unwrap_err();
        let d = diagnostic_of(&err).expect("a Refused error");
        assert_eq!((d.line, d.column), (2, 11 + MAX_NESTING));
    }
}
