//! `google.api.http` path templates, as google/api/http.proto defines them:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! A template is parsed into flat segments, with each variable a span over them, and matched against
//! request paths segment by segment.

use std::cmp::Ordering;

use percent_encoding::percent_decode_str;

/// One path segment of a template.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: zero or more segments, the last thing before the verb.
    Rest,
}

/// `{field.path=…}`: the segments `start..end` of the template.
#[derive(Clone, Debug)]
pub struct Variable {
    pub field_path: Vec<String>,
    start: usize,
    end: usize,
}

#[derive(Clone, Debug)]
pub struct Template {
    pub segments: Vec<Segment>,
    pub verb: Option<String>,
    pub variables: Vec<Variable>,
}

/// Why a template does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad path template \"{template}\": {message}")]
pub struct TemplateError {
    pub template: String,
    pub message: String,
}

/// A variable's value as matched, percent-decoded (a multi-segment value keeps `%2F` encoded, as
/// http.proto asks).
pub type Bindings = Vec<(usize, String)>;

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let fail = |message: String| TemplateError {
            template: text.to_string(),
            message,
        };
        if !text.starts_with('/') {
            return Err(fail("it must start with '/'".into()));
        }
        let (path, verb) = split_verb(text);
        if let Some(verb) = verb {
            if verb.is_empty() || verb.contains(['/', '{', '}', '*']) {
                return Err(fail(format!(
                    "':{verb}' is not a verb (a literal after the last ':')"
                )));
            }
        }
        let mut parser = Parser {
            text: path,
            pos: 1,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        parser.segments(false).map_err(fail)?;
        if parser.pos != path.len() {
            return Err(fail(format!(
                "unexpected '{}' at character {}",
                &path[parser.pos..].chars().next().unwrap_or(' '),
                parser.pos + 1
            )));
        }
        let Parser {
            segments,
            variables,
            ..
        } = parser;
        if let Some(i) = segments.iter().position(|s| *s == Segment::Rest) {
            if i + 1 != segments.len() {
                return Err(fail("'**' must be the last segment".into()));
            }
        }
        for (i, v) in variables.iter().enumerate() {
            if variables[..i].iter().any(|w| w.field_path == v.field_path) {
                return Err(fail(format!(
                    "variable '{}' appears twice",
                    v.field_path.join(".")
                )));
            }
        }
        Ok(Template {
            segments,
            verb: verb.map(str::to_string),
            variables,
        })
    }

    /// The variables' values if `path` (the request's, still percent-encoded) matches.
    pub fn matches(&self, path: &str) -> Option<Bindings> {
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        // Where each template segment starts in `parts`.
        let mut starts = Vec::with_capacity(self.segments.len() + 1);
        let mut i = 0;
        for segment in &self.segments {
            starts.push(i);
            match segment {
                Segment::Literal(literal) => {
                    let part = parts.get(i)?;
                    if part != literal && decode(part, true) != *literal {
                        return None;
                    }
                    i += 1;
                }
                Segment::Single => {
                    if parts.get(i)?.is_empty() {
                        return None;
                    }
                    i += 1;
                }
                Segment::Rest => i = parts.len(),
            }
        }
        starts.push(i);
        if i != parts.len() {
            return None;
        }
        let bindings = self
            .variables
            .iter()
            .enumerate()
            .map(|(n, v)| {
                let raw = parts[starts[v.start]..starts[v.end]].join("/");
                let single = v.end == v.start + 1 && self.segments[v.start] == Segment::Single;
                (n, decode(&raw, single))
            })
            .collect();
        Some(bindings)
    }

    /// How specific the template is, to choose among templates matching one path: segment by
    /// segment a literal beats `*`, which beats the path's end, which beats `**`; then a verb wins.
    pub fn specificity(&self) -> (Vec<u8>, bool) {
        let mut rank: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 3,
                Segment::Single => 2,
                Segment::Rest => 0,
            })
            .collect();
        if self.segments.last() != Some(&Segment::Rest) {
            rank.push(1);
        }
        (rank, self.verb.is_some())
    }

    /// Orders two matching templates, the more specific first.
    pub fn compare(&self, other: &Template) -> Ordering {
        other.specificity().cmp(&self.specificity())
    }

    /// The first segment when it is a literal (for indexing routes).
    pub fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(l)) => Some(l),
            _ => None,
        }
    }
}

/// Splits `:verb` off: a ':' outside braces after the last '/' outside braces.
fn split_verb(text: &str) -> (&str, Option<&str>) {
    let mut depth = 0i32;
    let mut last_slash = 0;
    let mut colon = None;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                last_slash = i;
                colon = None;
            }
            ':' if depth == 0 && i > last_slash => colon = Some(i),
            _ => {}
        }
    }
    match colon {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn segments(&mut self, in_variable: bool) -> Result<(), String> {
        loop {
            self.segment(in_variable)?;
            if self.peek() == Some('/') {
                self.pos += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), String> {
        let rest = &self.text[self.pos..];
        if rest.starts_with("**") {
            self.pos += 2;
            self.segments.push(Segment::Rest);
        } else if rest.starts_with('*') {
            self.pos += 1;
            self.segments.push(Segment::Single);
        } else if rest.starts_with('{') {
            if in_variable {
                return Err("variables cannot be nested".into());
            }
            self.variable()?;
        } else {
            let len = rest.find(['/', '{', '}']).unwrap_or(rest.len());
            let literal = &rest[..len];
            if literal.is_empty() {
                return Err(format!("empty segment at character {}", self.pos + 1));
            }
            if literal.contains('*') {
                return Err(format!(
                    "'*' must be a whole segment, not part of '{literal}'"
                ));
            }
            self.pos += len;
            self.segments.push(Segment::Literal(decode(literal, true)));
        }
        Ok(())
    }

    fn variable(&mut self) -> Result<(), String> {
        self.pos += 1; // '{'
        let rest = &self.text[self.pos..];
        let len = rest.find(['=', '}']).ok_or("'{' without '}'")?;
        let name = &rest[..len];
        let field_path: Vec<String> = name.split('.').map(str::to_string).collect();
        if field_path.iter().any(|ident| !is_ident(ident)) {
            return Err(format!(
                "'{name}' is not a field path (identifiers joined by '.')"
            ));
        }
        self.pos += len;
        let start = self.segments.len();
        if self.peek() == Some('=') {
            self.pos += 1;
            self.segments(true)?;
        } else {
            self.segments.push(Segment::Single);
        }
        if self.peek() != Some('}') {
            return Err(format!("variable '{name}' is not closed by '}}'"));
        }
        self.pos += 1;
        self.variables.push(Variable {
            field_path,
            start,
            end: self.segments.len(),
        });
        Ok(())
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Percent-decodes a path piece; `all = false` keeps `%2F` encoded (multi-segment variables).
fn decode(raw: &str, all: bool) -> String {
    if !raw.contains('%') {
        return raw.to_string();
    }
    if all {
        return percent_decode_str(raw).decode_utf8_lossy().into_owned();
    }
    // Split on `%2F`/`%2f` in one pass (lower-casing the rest at each hit would be quadratic).
    let mut out = String::with_capacity(raw.len());
    let mut start = 0;
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i + 3 <= bytes.len() {
        if bytes[i] == b'%' && bytes[i + 1] == b'2' && (bytes[i + 2] | 0x20) == b'f' {
            out.push_str(&percent_decode_str(&raw[start..i]).decode_utf8_lossy());
            out.push_str(&raw[i..i + 3]);
            i += 3;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&percent_decode_str(&raw[start..]).decode_utf8_lossy());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(template: &str, path: &str) -> Option<Vec<String>> {
        let t = Template::parse(template).unwrap();
        t.matches(path)
            .map(|b| b.into_iter().map(|(_, v)| v).collect())
    }

    #[test]
    fn parses_the_grammar() {
        let t = Template::parse("/v1/{name=messages/*}/x/**:run").unwrap();
        assert_eq!(
            t.segments,
            vec![
                Segment::Literal("v1".into()),
                Segment::Literal("messages".into()),
                Segment::Single,
                Segment::Literal("x".into()),
                Segment::Rest
            ]
        );
        assert_eq!(t.verb.as_deref(), Some("run"));
        assert_eq!(t.variables[0].field_path, vec!["name"]);
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "v1/x",
            "/v1/{name",
            "/v1/{a={b}}",
            "/v1/**/x",
            "/v1//x",
            "/v1/a*",
            "/v1/{1x}",
            "/v1/{a}/{a}",
            "/v1/x:",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn matches_variables_and_rest() {
        assert_eq!(bind("/v1/{id}", "/v1/42"), Some(vec!["42".into()]));
        assert_eq!(bind("/v1/{id}", "/v1/42/x"), None);
        assert_eq!(
            bind("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(vec!["shelves/1/books/2".into()])
        );
        assert_eq!(
            bind("/files/{path=**}", "/files/a/b%2Fc/d%20e"),
            Some(vec!["a/b%2Fc/d e".into()])
        );
        assert_eq!(bind("/files/{path=**}", "/files"), Some(vec!["".into()]));
        assert_eq!(bind("/v1/{id}", "/v1/a%2Fb"), Some(vec!["a/b".into()]));
        assert_eq!(bind("/v1/{name}:run", "/v1/x:run"), Some(vec!["x".into()]));
        assert_eq!(bind("/v1/{name}:run", "/v1/x"), None);
        assert_eq!(bind("/v1/a:b/c", "/v1/a:b/c"), Some(vec![]));
    }

    #[test]
    fn more_specific_first() {
        let t = |s| Template::parse(s).unwrap();
        assert_eq!(t("/v1/a").compare(&t("/v1/*")), Ordering::Less);
        assert_eq!(t("/v1/*").compare(&t("/v1/**")), Ordering::Less);
        assert_eq!(t("/v1").compare(&t("/v1/**")), Ordering::Less);
        assert_eq!(t("/v1/a/**").compare(&t("/v1/*/b")), Ordering::Less);
        assert_eq!(t("/v1/{x}:run").compare(&t("/v1/{x}")), Ordering::Less);
    }
}
