//! A verification filter: which journaled calls count. Written as a rule's `when` is (the same
//! conditions, read by the same loader), plus the method and the status the call ended with:
//!
//! ```toml
//! method = "helloworld.Greeter/SayHello"   # optional
//! when.request.name = "tom"                # request conditions need `method`: it types them
//! when.metadata.x-user = { present = true }
//! status = "OK"                            # optional; a code name (any case) or number
//! ```
//!
//! It knows no journal: [`Filter::matches`] takes what one call had, so whoever keeps calls asks
//! it per call.

// Called by the admin service (issue 19), which is wired in at its merge; until then only the
// tests call it.
#![cfg_attr(not(test), allow(dead_code))]

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage};
use tonic::metadata::MetadataMap;
use tonic::Code;

use super::matcher::{Condition, Subject};
use super::template::Scope;
use crate::diagnostic::Diagnostics;

/// A compiled filter; see the module's doc.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    /// `pkg.Service/Method`, when the filter names one.
    pub(crate) method: Option<String>,
    /// The method's input, which typed the request conditions.
    pub(crate) input: Option<MessageDescriptor>,
    pub(crate) conditions: Vec<Condition>,
    pub(crate) status: Option<Code>,
}

impl Filter {
    /// A filter written in TOML; problems name line and column of `text` (`submitted.toml:L:C`).
    pub(crate) fn toml(text: &str, pool: &DescriptorPool) -> Result<Filter, Diagnostics> {
        super::load::filter(&super::load::Submitted::toml(text)?, pool)
    }

    /// The same filter as a JSON object (problems as for JSON runtime rules: the line of its
    /// print and the JSON path).
    pub(crate) fn json(
        value: &serde_json::Value,
        pool: &DescriptorPool,
    ) -> Result<Filter, Diagnostics> {
        super::load::filter(&super::load::Submitted::json(value)?, pool)
    }

    /// Whether a call of `method` (`pkg.Service/Method`, a leading `/` is fine) with `metadata`,
    /// `request` (the message to test: for a stream, whichever the caller picks — each, or the
    /// last) and the final `code` counts. A filter with request conditions does not count a call
    /// without a request; a request of another pool's type (protos reloaded since the call) is
    /// read again as the filter's type.
    pub(crate) fn matches(
        &self,
        method: &str,
        metadata: &MetadataMap,
        request: Option<&DynamicMessage>,
        code: Code,
    ) -> bool {
        if let Some(want) = &self.method {
            if method.trim_start_matches('/') != want {
                return false;
            }
        }
        if self.status.is_some_and(|s| s != code) {
            return false;
        }
        let on_request = self
            .conditions
            .iter()
            .any(|c| matches!(c.subject, Subject::Field(_)));
        let converted;
        let request = match (request, &self.input) {
            (Some(r), Some(input)) if on_request && r.descriptor() != *input => {
                if r.descriptor().full_name() != input.full_name() {
                    return false;
                }
                match DynamicMessage::decode(input.clone(), r.encode_to_vec().as_slice()) {
                    Ok(m) => {
                        converted = m;
                        Some(&converted)
                    }
                    Err(_) => return false,
                }
            }
            (None, _) if on_request => return false,
            (r, _) => r,
        };
        let scope = Scope::new(request, metadata);
        self.conditions.iter().all(|c| c.holds(&scope))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rules::load::testkit::{metadata, pool, pos, request};

    fn filter(text: &str) -> Filter {
        Filter::toml(text, pool()).unwrap_or_else(|d| panic!("the filter should load:\n{d}"))
    }

    #[test]
    fn a_filter_matches_method_request_metadata_and_status() {
        let f = filter("method = \"t.Svc/Unary\"\nwhen.request.name = \"tom\"\nwhen.metadata.x-user = { present = true }\nstatus = \"ok\"\n");
        let tom = request(json!({"name": "tom"}));
        let ann = request(json!({"name": "ann"}));
        let md = metadata(&[("x-user", "u1")]);
        assert!(f.matches("/t.Svc/Unary", &md, Some(&tom), Code::Ok));
        assert!(
            !f.matches("t.Svc/Unary", &md, Some(&ann), Code::Ok),
            "request"
        );
        assert!(
            !f.matches("t.Svc/Unary", &metadata(&[]), Some(&tom), Code::Ok),
            "metadata"
        );
        assert!(
            !f.matches("t.Svc/Unary", &md, Some(&tom), Code::NotFound),
            "status"
        );
        assert!(
            !f.matches("t.Svc/Echo", &md, Some(&tom), Code::Ok),
            "method"
        );
        assert!(!f.matches("t.Svc/Unary", &md, None, Code::Ok), "no request");
    }

    #[test]
    fn every_part_is_optional_and_a_status_is_a_name_or_a_number() {
        let all = filter("");
        assert!(all.matches("t.Other/Ping", &metadata(&[]), None, Code::Internal));
        let not_found = filter("status = 5\n");
        assert!(not_found.matches("t.Svc/Unary", &metadata(&[]), None, Code::NotFound));
        assert!(!not_found.matches("t.Svc/Unary", &metadata(&[]), None, Code::Ok));
        let by_name = filter("status = \"NOT_FOUND\"\nwhen.metadata.x-user = \"u1\"\n");
        assert!(by_name.matches(
            "t.Svc/Echo",
            &metadata(&[("x-user", "u1")]),
            None,
            Code::NotFound
        ));
        assert!(!by_name.matches(
            "t.Svc/Echo",
            &metadata(&[("x-user", "u2")]),
            None,
            Code::NotFound
        ));
    }

    #[test]
    fn json_is_the_same_filter() {
        let f = Filter::json(
            &json!({"method": "t.Svc/Unary", "when": {"request": {"num": 2}}, "status": "OK"}),
            pool(),
        )
        .unwrap();
        let md = metadata(&[]);
        assert!(f.matches(
            "t.Svc/Unary",
            &md,
            Some(&request(json!({"num": 2}))),
            Code::Ok
        ));
        assert!(!f.matches(
            "t.Svc/Unary",
            &md,
            Some(&request(json!({"num": 3}))),
            Code::Ok
        ));
    }

    #[test]
    fn bad_filters_name_line_and_column() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "when.request.name = \"tom\"\n",
                "request",
                "need `method = ",
            ),
            (
                "method = \"t.Svc/Unary\"\nwhen.request.nam = \"x\"\n",
                "nam",
                "no field 'nam'",
            ),
            (
                "method = \"t.Svc/Nope\"\n",
                "\"t.Svc/Nope\"",
                "no method 'Nope'",
            ),
            ("status = \"FINE\"\n", "\"FINE\"", "not a gRPC status code"),
            (
                "methd = \"t.Svc/Unary\"\n",
                "methd",
                "unknown filter key 'methd'",
            ),
            ("when.body = 1\n", "body", "unknown condition 'body'"),
        ];
        for (text, needle, words) in cases {
            let (line, column) = pos(text, needle);
            let problems = Filter::toml(text, pool()).unwrap_err().0;
            let d = problems
                .iter()
                .find(|d| (d.line, d.column) == (line, column))
                .unwrap_or_else(|| {
                    panic!("{text}: a problem at {line}:{column}; got {problems:?}")
                });
            assert_eq!(d.file.to_str(), Some("submitted.toml"));
            assert!(d.message.contains(words), "{text}: {}", d.message);
        }
    }

    #[test]
    fn a_request_of_a_reloaded_pool_is_read_as_the_filters_type() {
        let f = filter("method = \"t.Svc/Unary\"\nwhen.request.name = \"tom\"\n");
        let again =
            crate::protos::compile_texts(&[("t.proto", crate::rules::load::testkit::PROTO)]);
        let desc = again.get_message_by_name("t.Req").unwrap();
        let tom = DynamicMessage::deserialize(desc, json!({"name": "tom"})).unwrap();
        assert!(f.matches("t.Svc/Unary", &metadata(&[]), Some(&tom), Code::Ok));
    }
}
