//! (c, continued) The `google.api.http` path-template parser itself, `Template::parse` (what a proto's
//! annotation goes through at load), and `Template::matches`.
//!
//! Input: UTF-8 text, the template up to the first newline, a request path after it.
//!
//! Properties: nothing panics; matching gives one binding per variable; a template that parses
//! matches a path built from it (literals percent-encoded, `*` as one segment, `**` as two) with the
//! values that path puts in its variables; a template is as specific as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use protodrop::fuzzing::protos::http_routes::pattern::{Segment, Template};

/// A request path the template must match: each literal percent-encoded (so no literal character is
/// taken for a separator), `*` as `x`, `**` as `r/s`.
fn path_for(template: &Template) -> String {
    let mut path = String::new();
    for segment in &template.segments {
        path.push('/');
        match segment {
            Segment::Literal(literal) => {
                path.extend(utf8_percent_encode(literal, NON_ALPHANUMERIC))
            }
            Segment::Single => path.push('x'),
            Segment::Rest => path.push_str("r/s"),
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(verb) = &template.verb {
        path.push(':');
        path.push_str(verb);
    }
    path
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, path) = text.split_once('\n').unwrap_or((text, "/"));
    let Ok(template) = Template::parse(pattern) else {
        return;
    };
    assert!(template.compare(&template).is_eq());
    if let Some(bindings) = template.matches(path) {
        assert_eq!(
            bindings.len(),
            template.variables.len(),
            "{pattern:?} on {path:?}"
        );
    }
    let own = path_for(&template);
    let bindings = template
        .matches(&own)
        .unwrap_or_else(|| panic!("{pattern:?} does not match {own:?}, a path made from it"));
    assert_eq!(
        bindings.len(),
        template.variables.len(),
        "{pattern:?} on {own:?}"
    );
});
