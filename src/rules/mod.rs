//! Handler files as rules: the model ([`rule`]), the loader that checks a handlers folder against
//! the descriptors ([`load`](mod@load), one file per section of a handler file), `when` conditions
//! ([`matcher`]), verification [`filter`]s in the same language, [`template`]s, request [`metadata`] as rules see it, and [`starter`] rules.
//!
//! Rules only describe what to answer; running them is the engine's job, and running a Rhai
//! script is [`crate::script`]'s (a rule holds a compiled [`crate::script::Script`], so `rules`
//! depends on `script`, never the other way).

pub(crate) mod filter;
mod load;
pub(crate) mod matcher;
pub(crate) mod metadata;
pub(crate) mod rule;
pub(crate) mod starter;
pub(crate) mod template;
mod toml_tree;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub(crate) use filter::Filter;
pub(crate) use load::load;
#[cfg(any(test, feature = "fuzzing"))]
pub use load::load_source;
pub(crate) use load::{lone_script_problem, runtime_rules, Submitted, Written};
pub(crate) use rule::{Answer, MethodRules, Rule};

/// Every rule of the handlers folder, by method (`package.Service/Method`).
#[derive(Clone, Debug, Default)]
pub struct Handlers {
    pub methods: HashMap<String, MethodRules>,
    /// The handler files read, in the order their rules were taken.
    pub files: Vec<PathBuf>,
    /// `[health]` overrides: service name (or "" for the server) → the status to report.
    pub(crate) health: BTreeMap<String, tonic_health::ServingStatus>,
}

impl Handlers {
    pub(crate) fn rule_count(&self) -> usize {
        self.methods.values().map(|m| m.rules.len()).sum()
    }
}
