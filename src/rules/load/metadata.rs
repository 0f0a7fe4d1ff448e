//! `headers` and `trailers`: metadata keys checked as gRPC would send them, values as templates (a
//! constant one is also checked as a value, so a bad `-bin` value fails at load, not per call).

use tonic::metadata::{Ascii, Binary, MetadataKey};

use super::{FileCtx, Res};
use crate::rules::rule::MetadataTemplate;
use crate::rules::template::Roots;
use crate::rules::toml_tree::Node;

impl FileCtx<'_> {
    pub(super) fn metadata(
        &mut self,
        node: Option<&Node>,
        roots: &Roots,
    ) -> Res<Vec<MetadataTemplate>> {
        let Some(node) = node else { return Ok(vec![]) };
        let Some(table) = node.as_table() else {
            return Err(self.error(
                node.span.clone(),
                "headers and trailers are tables of strings: { x-name = \"value\" }",
            ));
        };
        let mut out = Vec::new();
        for (key, value) in table {
            let name = key.name.to_ascii_lowercase();
            let valid_key = if name.ends_with("-bin") {
                MetadataKey::<Binary>::from_bytes(name.as_bytes()).is_ok()
            } else {
                MetadataKey::<Ascii>::from_bytes(name.as_bytes()).is_ok()
            };
            if !valid_key {
                return Err(self.error(
                    key.span.clone(),
                    format!(
                        "'{}' is not a valid metadata key (lower-case letters, digits, - _ .)",
                        key.name
                    ),
                ));
            }
            let Some(s) = value.as_str() else {
                return Err(self.error(
                    value.span.clone(),
                    format!("metadata values are strings, not {}", value.type_name()),
                ));
            };
            let text = self.text(s, value, roots)?;
            if text.is_constant() {
                let mut probe = tonic::metadata::MetadataMap::new();
                if let Err(e) = crate::rules::rule::insert_metadata(&mut probe, &name, s) {
                    return Err(self.error(value.span.clone(), e.message().to_string()));
                }
            }
            out.push(MetadataTemplate {
                key: name,
                value: text,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testkit::*;
    use crate::rules::template::Scope;

    #[test]
    fn headers_and_trailers_are_sent_as_written_or_filled_in() {
        let h = "[[rule]]\nmethod = \"t.Svc/Unary\"\nheaders = { X-Id = \"{{request.num}}\", x-tenant = \"{{metadata.x-tenant}}\" }\ntrailers = { x-t-bin = \"aGk=\", x-done = \"yes\" }\n";
        let r = rule(h, "Svc/Unary");
        let req = request(json!({ "num": 7 }));
        let md = metadata(&[("x-tenant", "acme")]);
        let scope = Scope::new(Some(&req), &md);
        let headers = r.headers(&scope).unwrap();
        // Keys are lower case, as HTTP/2 sends them.
        assert_eq!(headers.get("x-id").unwrap(), "7");
        assert_eq!(headers.get("x-tenant").unwrap(), "acme");
        let trailers = r.trailers(&scope).unwrap();
        assert_eq!(trailers.get("x-done").unwrap(), "yes");
        assert_eq!(
            trailers.get_bin("x-t-bin").unwrap().to_bytes().unwrap(),
            &b"hi"[..],
            "a -bin value is written in base64 and sent as its bytes"
        );
    }

    #[test]
    fn bad_metadata_is_refused_where_it_is_written() {
        let h = |m: &str| format!("[[rule]]\nmethod = \"t.Svc/Unary\"\n{m}\n");
        problem_at(
            &h("headers = \"x\""),
            "\"x\"",
            &["headers and trailers are tables of strings"],
        );
        problem_at(
            &h("headers = { \"x y\" = \"1\" }"),
            "\"x y\"",
            &["'x y' is not a valid metadata key"],
        );
        problem_at(
            &h("trailers = { x-n = 1 }"),
            "1 }",
            &["metadata values are strings, not an integer"],
        );
        problem_at(
            &h("trailers = { x-t-bin = \"not base64!\" }"),
            "\"not base64!\"",
            &["x-t-bin"],
        );
        problem_at(
            &h("headers = { x-n = \"{{request.nope}}\" }"),
            "{{request.nope}}",
            &["nope"],
        );
    }

    /// A client or bidi stream's script reads the messages itself: its headers and trailers are
    /// rendered from metadata alone, so a template on the request is refused where it is written.
    #[test]
    fn a_stream_scripts_metadata_sees_metadata_only() {
        let h = "[[rule]]\nmethod = \"t.Svc/ClientStream\"\ncode = \"#{}\"\nheaders = { x-n = \"{{request.name}}\" }\n";
        problem_at(h, "{{request.name}}", &["request", "metadata.KEY"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Bidi\"\ncode = \"()\"\ntrailers = { x-n = \"{{count}}\" }\n";
        problem_at(h, "{{count}}", &["count", "metadata.KEY"]);
        let h = "[[rule]]\nmethod = \"t.Svc/Bidi\"\ncode = \"()\"\ntrailers = { x-n = \"{{metadata.a}}\" }\n";
        assert_eq!(rule(h, "Svc/Bidi").trailers.len(), 1);
    }
}
