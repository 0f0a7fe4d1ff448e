//! A problem found while loading protos, handler files or scripts, pinned to file, line and column.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// One load problem. Displayed as `file:line:column: message`, then the offending line with a caret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the whole file.
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    pub message: String,
    /// The text of the offending line, when known.
    pub source_line: Option<String>,
}

impl Diagnostic {
    /// A problem with a whole file (unreadable, missing), not a place in it.
    pub(crate) fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: 0,
            column: 0,
            message: message.into(),
            source_line: None,
        }
    }

    /// A problem at a byte offset range of `source` (the file's text).
    pub(crate) fn at(
        file: impl Into<PathBuf>,
        source: &str,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column, text) = locate(source, span.start);
        Self {
            file: file.into(),
            line,
            column,
            message: message.into(),
            source_line: Some(text.to_string()),
        }
    }

    /// A problem at a 0-based line and byte column of `source`, as a `SourceCodeInfo` span gives
    /// them (protox-parse counts columns in bytes): reported with its column in characters.
    pub(crate) fn at_location(
        file: impl Into<PathBuf>,
        source: Option<&str>,
        line: usize,
        byte_column: usize,
        message: impl Into<String>,
    ) -> Self {
        let Some(source) = source else {
            return Self::at_line(file, None, line + 1, byte_column + 1, message);
        };
        let start = if line == 0 {
            Some(0)
        } else {
            source.match_indices('\n').nth(line - 1).map(|(i, _)| i + 1)
        };
        let Some(start) = start else {
            return Self::at_line(file, Some(source), line + 1, byte_column + 1, message);
        };
        let rest = &source[start..];
        let end = rest.find('\n').unwrap_or(rest.len());
        let offset = start + byte_column.min(end);
        Self::at(file, source, offset..offset, message)
    }

    /// A problem at a known 1-based line and column of `source`.
    pub(crate) fn at_line(
        file: impl Into<PathBuf>,
        source: Option<&str>,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        let source_line = source
            .and_then(|s| s.lines().nth(line.saturating_sub(1)))
            .map(str::to_string);
        Self {
            file: file.into(),
            line,
            column,
            message: message.into(),
            source_line,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset, and the text of that line.
pub(crate) fn locate(source: &str, offset: usize) -> (usize, usize, &str) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..]
        .find('\n')
        .map_or(source.len(), |i| offset + i);
    let line = source[..line_start].matches('\n').count() + 1;
    let column = source[line_start..offset].chars().count() + 1;
    (
        line,
        column,
        source[line_start..line_end].trim_end_matches('\r'),
    )
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if self.line == 0 {
            return write!(f, "{file}: {}", self.message);
        }
        write!(f, "{file}:{}:{}: {}", self.line, self.column, self.message)?;
        if let Some(text) = &self.source_line {
            let (shown, caret) = excerpt(text, self.column);
            let gutter = self.line.to_string().len();
            // The caret is padded by hand: a `{:>width$}` width is a u16, and a column past 65,535
            // (one long line) made formatting panic.
            write!(
                f,
                "\n{:gutter$} |\n{} | {shown}\n{:gutter$} | {}^",
                "",
                self.line,
                "",
                " ".repeat(caret.saturating_sub(1)),
            )?;
        }
        Ok(())
    }
}

/// Longest source line shown whole; a longer one (minified JSON pasted into a file, a generated
/// line) is cut to a window around the column, so one problem does not print megabytes.
const MAX_SHOWN_LINE: usize = 160;

/// The part of `line` to show and the 1-based column of the caret in it.
fn excerpt(line: &str, column: usize) -> (String, usize) {
    let len = line.chars().count();
    if len <= MAX_SHOWN_LINE {
        return (line.to_string(), column);
    }
    let column = column.clamp(1, len + 1);
    let start = column
        .saturating_sub(MAX_SHOWN_LINE / 2)
        .min(len - MAX_SHOWN_LINE);
    let end = start + MAX_SHOWN_LINE;
    let mut shown = String::new();
    if start > 0 {
        shown.push('…');
    }
    shown.extend(line.chars().skip(start).take(MAX_SHOWN_LINE));
    if end < len {
        shown.push('…');
    }
    (shown, column - start + usize::from(start > 0))
}

/// Everything wrong with one load, in file order. Displayed one problem after another.
#[derive(Clone, Debug, Default, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub(crate) fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// Ok when nothing was reported.
    pub(crate) fn into_result(mut self) -> Result<(), Diagnostics> {
        if self.0.is_empty() {
            return Ok(());
        }
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(self)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// What a caught panic says, for a diagnostic.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_past_u16_is_displayed_with_a_window_of_its_line() {
        let line = format!("x = \"{}\", nope = 1", "a".repeat(70_000));
        let column = line.find("nope").unwrap() + 1;
        let d = Diagnostic::at_line("t.toml", Some(&line), 1, column, "no field 'nope'");
        let shown = d.to_string();
        assert!(
            shown.starts_with(&format!("t.toml:1:{column}: no field 'nope'")),
            "{shown}"
        );
        let lines: Vec<&str> = shown.lines().collect();
        assert!(
            lines[2].len() < 2 * MAX_SHOWN_LINE,
            "the line is cut: {}",
            lines[2].len()
        );
        // The caret sits under the `n` of `nope`.
        let caret = lines[3].chars().count() - 1;
        assert_eq!(lines[2].chars().nth(caret), Some('n'), "{shown}");
    }

    #[test]
    fn a_short_line_is_shown_whole_with_the_caret_under_the_column() {
        let d = Diagnostic::at_line("t.toml", Some("a = 1"), 1, 5, "bad");
        assert_eq!(d.to_string(), "t.toml:1:5: bad\n  |\n1 | a = 1\n  |     ^");
    }
}
