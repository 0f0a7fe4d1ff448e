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
