//! A verification filter's text (see [`crate::rules::filter`]): `method`, `when` read exactly as a
//! rule's, `status`.

// Called by the admin service (issue 19), which is wired in at its merge; until then only the
// tests call it.
#![cfg_attr(not(test), allow(dead_code))]

use prost_reflect::DescriptorPool;

use super::{FileCtx, Reported, Res, Submitted};
use crate::diagnostic::Diagnostics;
use crate::rules::filter::Filter;
use crate::script::ScriptEngine;

/// The keys a filter may have.
const FILTER_KEYS: &[&str] = &["method", "when", "status"];

/// The filter written in `submitted`; every problem, at its line and column.
pub(crate) fn filter(submitted: &Submitted, pool: &DescriptorPool) -> Result<Filter, Diagnostics> {
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
