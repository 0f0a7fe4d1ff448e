//! A verification filter's text (see [`crate::rules::filter`]): `method`, `when` read exactly as a
//! rule's, `status`.

use prost_reflect::DescriptorPool;

use super::{FileCtx, Reported, Res, Submitted};
use crate::diagnostic::Diagnostics;
use crate::rules::filter::Filter;
use crate::script::ScriptEngine;

/// The keys a filter may have.
const FILTER_KEYS: &[&str] = &["method", "when", "status"];

/// The filter written in `submitted`; every problem, at its line and column.
fn filter(submitted: &Submitted, pool: &DescriptorPool) -> Result<Filter, Diagnostics> {
    let mut problems = Diagnostics::default();
    // No script is read; the loader's context wants an engine all the same.
    let engine = ScriptEngine::new(Default::default());
    let mut ctx = FileCtx {
        path: submitted.name(),
        script_dir: std::path::Path::new("."),
        confined: true,
        source: submitted.source(),
        pool,
        engine: &engine,
        problems: &mut problems,
    };
    let read = ctx.filter(submitted.root());
    match read {
        Ok(filter) if problems.0.is_empty() => Ok(filter),
        _ => Err(submitted.explain(problems)),
    }
}

impl Filter {
    /// A filter written in TOML; problems name line and column of `text` (`submitted.toml:L:C`).
    pub(crate) fn toml(text: &str, pool: &DescriptorPool) -> Result<Filter, Diagnostics> {
        filter(&Submitted::toml(text)?, pool)
    }

    /// The same filter as a JSON object (problems as for JSON runtime rules: the line of its
    /// print and the JSON path).
    pub(crate) fn json(
        value: &serde_json::Value,
        pool: &DescriptorPool,
    ) -> Result<Filter, Diagnostics> {
        filter(&Submitted::json(value)?, pool)
    }
}

impl FileCtx<'_> {
    fn filter(&mut self, root: &super::Node) -> Res<Filter> {
        let Some(table) = root.as_table() else {
            return Err(self.error(root.span.clone(), "a filter is a table"));
        };
        for (key, _) in table {
            if !FILTER_KEYS.contains(&key.name.as_str()) {
                self.error(
                    key.span.clone(),
                    format!(
                        "unknown filter key '{}' (expected one of: {})",
                        key.name,
                        FILTER_KEYS.join(", ")
                    ),
                );
            }
        }
        let method = root.get("method").map(|m| self.method(m)).transpose();
        let status = root.get("status").map(|s| self.code(s)).transpose();
        let method = method?;
        let conditions = match (root.get("when"), &method) {
            (None, _) => vec![],
            (Some(when), Some(m)) => self.conditions(when, &m.input())?,
            (Some(when), None) => self.untyped_conditions(when)?,
        };
        Ok(Filter {
            method: method
                .as_ref()
                .map(|m| format!("{}/{}", m.parent_service().full_name(), m.name())),
            input: method.as_ref().map(|m| m.input()),
            conditions,
            status: status?,
        })
    }

    /// `when` without a method: metadata conditions only (the request's type is unknown).
    fn untyped_conditions(
        &mut self,
        when: &super::Node,
    ) -> Res<Vec<crate::rules::matcher::Condition>> {
        let Some(table) = when.as_table() else {
            return Err(self.error(
                when.span.clone(),
                "`when` must be a table, e.g. when.metadata.x-user = \"u1\"",
            ));
        };
        let mut out = Vec::new();
        let mut failed = false;
        for (key, node) in table {
            let res = match key.name.as_str() {
                "metadata" => self.metadata_conditions(node, &mut out),
                "request" => Err(self.error(
                    key.span.clone(),
                    "conditions on the request need `method = \"pkg.Service/Method\"`: its input type says what the fields are",
                )),
                other => Err(self.error(
                    key.span.clone(),
                    format!("unknown condition '{other}' (expected `request` or `metadata`)"),
                )),
            };
            failed |= res.is_err();
        }
        if failed {
            Err(Reported)
        } else {
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use prost_reflect::DynamicMessage;
    use tonic::Code;

    use super::super::testkit::{metadata, pool, pos, request};
    use crate::rules::filter::Filter;

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
        let again = crate::protos::compile_texts(&[("t.proto", super::super::testkit::PROTO)]);
        let desc = again.get_message_by_name("t.Req").unwrap();
        let tom = DynamicMessage::deserialize(desc, json!({"name": "tom"})).unwrap();
        assert!(f.matches("t.Svc/Unary", &metadata(&[]), Some(&tom), Code::Ok));
    }
}
