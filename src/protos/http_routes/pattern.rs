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
//!
//! http.proto says `**` should be the last segment, but its grammar allows it anywhere and real APIs
//! put segments after it (googleapis' firestore `{parent=projects/*/databases/*/documents/**}/{collection_id}`,
//! kms inventory `…/cryptoKeys/**}/protectedResourcesSummary`, remoteworkers `{name=**/botSessions/*}`).
//! As grpc-gateway and Envoy do, such templates are taken: one `**` per template, the segments before
//! it matched from the start of the path, those after it from the end, `**` taking what lies between
//! (zero segments or more).

use std::cmp::Ordering;

use percent_encoding::percent_decode_str;

/// One path segment of a template.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: zero or more segments (at most one per template; segments may follow it).
    Rest,
}

/// `{field.path=…}`: the segments `start..end` of the template.
#[derive(Clone, Debug)]
pub struct Variable {
    pub field_path: Vec<String>,
    start: usize,
    end: usize,
}

impl Variable {
    /// The template's segments the variable takes (`{name}` alone takes one `*`).
    pub fn span(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
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
pub(crate) type Bindings = Vec<(usize, String)>;

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
        if segments.iter().filter(|s| **s == Segment::Rest).count() > 1 {
            // Two `**` would make the split between them ambiguous.
            return Err(fail("'**' may appear only once".into()));
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
        let one = |segment: &Segment, part: &str| match segment {
            Segment::Literal(literal) => part == literal || decode(part, true) == *literal,
            Segment::Single => !part.is_empty(),
            Segment::Rest => unreachable!("`**` is matched by position"),
        };
        // Where each template segment starts in `parts`, and where the last one ends.
        let mut starts = Vec::with_capacity(self.segments.len() + 1);
        match self.segments.iter().position(|s| *s == Segment::Rest) {
            None => {
                if parts.len() != self.segments.len() {
                    return None;
                }
                for (i, (segment, part)) in self.segments.iter().zip(&parts).enumerate() {
                    if !one(segment, part) {
                        return None;
                    }
                    starts.push(i);
                }
            }
            Some(rest) => {
                // Before `**` from the start, after it from the end; `**` takes what is between.
                let after = self.segments.len() - rest - 1;
                if parts.len() < rest + after {
                    return None;
                }
                let tail = parts.len() - after;
                for (i, segment) in self.segments[..rest].iter().enumerate() {
                    if !one(segment, parts[i]) {
                        return None;
                    }
                    starts.push(i);
                }
                starts.push(rest);
                for (j, segment) in self.segments[rest + 1..].iter().enumerate() {
                    if !one(segment, parts[tail + j]) {
                        return None;
                    }
                    starts.push(tail + j);
                }
            }
        }
        starts.push(parts.len());
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
    pub(crate) fn specificity(&self) -> (Vec<u8>, bool) {
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
    pub(crate) fn first_literal(&self) -> Option<&str> {
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
            "/v1/**/x/**",
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

    /// googleapis' templates with segments after `**` (firestore ListDocuments and CreateDocument,
    /// kms inventory, remoteworkers): they parsed as "'**' must be the last segment".
    #[test]
    fn segments_after_double_star_match_from_the_end() {
        let firestore = "/v1/{parent=projects/*/databases/*/documents/**}/{collection_id}";
        assert_eq!(
            bind(firestore, "/v1/projects/p/databases/d/documents/a/b/c/coll"),
            Some(vec![
                "projects/p/databases/d/documents/a/b/c".into(),
                "coll".into()
            ])
        );
        // `**` takes zero segments.
        assert_eq!(
            bind(firestore, "/v1/projects/p/databases/d/documents/coll"),
            Some(vec![
                "projects/p/databases/d/documents".into(),
                "coll".into()
            ])
        );
        assert_eq!(
            bind(firestore, "/v1/projects/p/databases/d/documents"),
            None
        );
        assert_eq!(
            bind(firestore, "/v1/projects/p/databases/d/documents/a/"),
            None
        );
        let firestore_list = "/v1/{parent=projects/*/databases/*/documents/*/**}/{collection_id}";
        assert_eq!(
            bind(firestore_list, "/v1/projects/p/databases/d/documents/coll"),
            None
        );
        assert_eq!(
            bind(
                firestore_list,
                "/v1/projects/p/databases/d/documents/a/coll"
            ),
            Some(vec![
                "projects/p/databases/d/documents/a".into(),
                "coll".into()
            ])
        );
        let kms =
            "/v1/{name=projects/*/locations/*/keyRings/*/cryptoKeys/**}/protectedResourcesSummary";
        assert_eq!(
            bind(kms, "/v1/projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1/protectedResourcesSummary"),
            Some(vec!["projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1".into()])
        );
        assert_eq!(
            bind(
                kms,
                "/v1/projects/p/locations/l/keyRings/r/cryptoKeys/k/other"
            ),
            None
        );
        let purge =
            "/v1/{parent=projects/*/locations/*/dataStores/**}/suggestionDenyListEntries:purge";
        assert_eq!(
            bind(
                purge,
                "/v1/projects/p/locations/l/dataStores/s/x/suggestionDenyListEntries:purge"
            ),
            Some(vec!["projects/p/locations/l/dataStores/s/x".into()])
        );
        let bots = "/v1test2/{name=**/botSessions/*}";
        assert_eq!(
            bind(bots, "/v1test2/a/b/botSessions/7"),
            Some(vec!["a/b/botSessions/7".into()])
        );
        assert_eq!(
            bind(bots, "/v1test2/botSessions/7"),
            Some(vec!["botSessions/7".into()])
        );
        assert_eq!(bind(bots, "/v1test2/botSessions"), None);
        assert!(Template::parse("/v1/**/x/**").is_err());
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
