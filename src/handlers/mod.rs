//! Handler files: the file model, checked against the descriptors at load; matching; templates; scripts.

pub mod budget;
mod load;
pub mod matcher;
pub mod metadata;
pub mod rule;
pub mod script;
mod script_convert;
mod script_lazy;
pub mod starter;
pub mod template;
mod toml_tree;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub use load::{load, load_source};
pub use rule::{Answer, MethodRules, Rule};

/// Every rule of the handlers folder, by method (`package.Service/Method`).
#[derive(Clone, Debug, Default)]
pub struct Handlers {
    pub methods: HashMap<String, MethodRules>,
    /// The handler files read, in the order their rules were taken.
    pub files: Vec<PathBuf>,
    /// `[health]` overrides: service name (or "" for the server) → the status to report.
    pub health: BTreeMap<String, tonic_health::ServingStatus>,
}

impl Handlers {
    pub fn rule_count(&self) -> usize {
        self.methods.values().map(|m| m.rules.len()).sum()
    }
}
