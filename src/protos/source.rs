//! A `.proto` file's bytes as protoc takes them: a UTF-8 byte order mark at the start is skipped,
//! and bytes that are not UTF-8 are accepted in comments (Latin-1 comments are common in older
//! trees). Elsewhere such a byte is refused with its line and column: protoc keeps it raw inside a
//! string literal (a descriptor string that is not UTF-8, which prost cannot hold) and refuses it in
//! code.
//!
//! Every reader of a proto file — the parser, and the diagnostics that quote a line — goes through
//! [`decode`], so offsets, lines and columns agree with each other, and with what an editor shows.

use std::path::Path;

use crate::diagnostic::Diagnostic;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A file's text, or why it cannot be taken.
pub(crate) type Decoded = Result<String, Diagnostic>;

/// Reads `path` as [`decode`] takes it; `None` when it cannot be read.
pub(crate) fn read(path: &Path) -> Option<Decoded> {
    std::fs::read(path).ok().map(|bytes| decode(path, bytes))
}

/// Reads `path` for quoting a line of it in a diagnostic: whatever can be shown.
pub(crate) fn read_for_display(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(text(bytes).0)
}

/// The text protox parses: without a leading BOM, each non-UTF-8 byte in a comment read as
/// Latin-1 (one character, as an editor showing the file that way counts columns). A non-UTF-8
/// byte outside comments is refused with its place.
pub(crate) fn decode(path: &Path, bytes: Vec<u8>) -> Decoded {
    let (text, refused) = text(bytes);
    match refused {
        None => Ok(text),
        Some((offset, byte, place)) => Err(Diagnostic::at(
            path,
            &text,
            offset..offset + 1,
            format!(
                "byte 0x{byte:02X} is not UTF-8 ({place}): protoc accepts such bytes in comments \
                 only, or keeps them raw in a string, which a descriptor cannot hold here; save \
                 the file as UTF-8"
            ),
        )),
    }
}

/// The text, and the first non-UTF-8 byte found outside a comment (its offset in the text, the
/// byte, where it is).
fn text(mut bytes: Vec<u8>) -> (String, Option<(usize, u8, &'static str)>) {
    if bytes.starts_with(BOM) {
        bytes.drain(..BOM.len());
    }
    match String::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => latin1_in_comments(e.as_bytes()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Lexing {
    Code,
    LineComment,
    BlockComment,
    String(u8),
}

/// The slow path, for a file that is not UTF-8: walks it as the proto lexer would, to tell comments
/// from strings and code.
fn latin1_in_comments(bytes: &[u8]) -> (String, Option<(usize, u8, &'static str)>) {
    let mut text = String::with_capacity(bytes.len() + bytes.len() / 8);
    let mut refused = None;
    let mut state = Lexing::Code;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b >= 0x80 {
            let width = utf8_width(b);
            match bytes.get(i..i + width).map(std::str::from_utf8) {
                Some(Ok(c)) if width > 0 => {
                    text.push_str(c);
                    i += width;
                }
                _ => {
                    if refused.is_none() {
                        let place = match state {
                            Lexing::LineComment | Lexing::BlockComment => None,
                            Lexing::String(_) => Some("in a string literal"),
                            Lexing::Code => Some("outside comments and strings"),
                        };
                        refused = place.map(|p| (text.len(), b, p));
                    }
                    text.push(char::from(b));
                    i += 1;
                }
            }
            continue;
        }
        let next = bytes.get(i + 1).copied();
        state = match (state, b) {
            (Lexing::Code, b'/') if next == Some(b'/') => Lexing::LineComment,
            (Lexing::Code, b'/') if next == Some(b'*') => {
                text.push_str("/*");
                i += 2;
                state = Lexing::BlockComment;
                continue;
            }
            (Lexing::Code, b'"' | b'\'') => Lexing::String(b),
            (Lexing::LineComment, b'\n') => Lexing::Code,
            (Lexing::BlockComment, b'*') if next == Some(b'/') => {
                text.push_str("*/");
                i += 2;
                state = Lexing::Code;
                continue;
            }
            (Lexing::String(_), b'\\') if next.is_some_and(|n| n < 0x80) => {
                text.push(char::from(b));
                text.push(char::from(next.unwrap_or_default()));
                i += 2;
                continue;
            }
            (Lexing::String(q), _) if b == q || b == b'\n' => Lexing::Code,
            (s, _) => s,
        };
        text.push(char::from(b));
        i += 1;
    }
    (text, refused)
}

/// Length of the UTF-8 sequence `lead` starts (0 when it starts none).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8]) -> Decoded {
        decode(Path::new("t.proto"), bytes.to_vec())
    }

    #[test]
    fn a_bom_is_skipped() {
        let text = decoded(b"\xEF\xBB\xBFsyntax = \"proto3\";\n").unwrap();
        assert_eq!(text, "syntax = \"proto3\";\n");
    }

    #[test]
    fn latin1_in_comments_is_read_as_latin1() {
        let text =
            decoded(b"// caf\xe9\n/* \xe9t\xe9\n */ message M {} // \xff\n// d\xc3\xa9j\xc3\xa0\n")
                .unwrap();
        assert_eq!(
            text,
            "// caf\u{e9}\n/* \u{e9}t\u{e9}\n */ message M {} // \u{ff}\n// d\u{e9}j\u{e0}\n"
        );
    }

    #[test]
    fn outside_comments_it_is_refused_at_its_place() {
        let d = decoded(b"// \xe9\nsyntax = \"proto3\";\noption x = \"a\\\"\xe9\";\n").unwrap_err();
        assert_eq!((d.line, d.column), (3, 16), "{d}");
        assert!(d.message.contains("0xE9"), "{d}");
        assert!(d.message.contains("string literal"), "{d}");
        // A quote inside a comment opens no string; a `//` inside a string opens no comment.
        let d = decoded(b"// it's\nmessage M\xe9 {}\n").unwrap_err();
        assert_eq!((d.line, d.column), (2, 10), "{d}");
        assert!(d.message.contains("outside comments"), "{d}");
        let d = decoded(b"option x = \"//\xe9\";\n").unwrap_err();
        assert_eq!((d.line, d.column), (1, 15), "{d}");
    }
}
