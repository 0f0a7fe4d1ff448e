//! Runtime rules: rules added, replaced and deleted while serving, layered over the handler files'.
//!
//! A submission is TOML written exactly as a handler file (`[[rule]]` tables), or the same
//! structure as JSON, read by the handler files' own loader (`rules::runtime_rules`): a bad one is
//! refused with diagnostics pointing into it, whole (nothing of a submission of several rules is
//! taken). Each rule gets an id (`r1`, `r2`, … never reused in a run) and the origin `runtime:ID`,
//! which messages and logs name as they name `file:line`.
//!
//! **Layering.** A method's runtime rules are tried before its files' rules; among themselves as
//! within a file: those with `when` in the order added, then the default ones in the order added
//! (so a default added first does not hide a conditional one added later, as in a handler file).
//! The state keeps each layered method's files' rules aside ([`State::beneath`]), so a change
//! rebuilds only the methods it touches — one `engine::Method` each, its emitters compiled again —
//! in a shallow copy of the current state (the maps of `Arc`s copied, nothing recompiled or
//! re-read) that is swapped in whole: a call in flight keeps the method it started with.
//!
//! **Reloads.** A reload builds a state from the files alone; [`Registry::swap`] reads every
//! runtime rule again against it before swapping (the protos may have changed). A rule that no
//! longer loads (its method gone, a field renamed) is kept aside, not served, with a warning in
//! the log, and listed with its problem; it is read again on every later reload, and served again
//! once it loads — a proto edit that breaks it for a moment does not lose it.
//!
//! **Concurrency.** One lock serializes every change and every reload's swap: a change reads the
//! current state, compiles, swaps, all under it, so concurrent changes never lose one another, and
//! a reload swapping meanwhile layers the store as it is then.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::rules::{self, MethodRules, Rule, Submitted, Written};
use crate::state::State;

/// Rules as submitted: TOML text, or the same structure as a JSON object.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Submission<'a> {
    Toml(&'a str),
    Json(&'a serde_json::Value),
}

impl Submission<'_> {
    fn read(self) -> Result<Submitted, Diagnostics> {
        match self {
            Submission::Toml(text) => Submitted::toml(text),
            Submission::Json(value) => Submitted::json(value),
        }
    }
}

/// One rule as listed: a runtime rule (with its id) or a handler file's (no id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    /// `r3`; empty for a file's rule.
    pub id: String,
    /// `pkg.Service/Method`.
    pub method: String,
    /// `handlers/x.toml:12` or `runtime:r3`.
    pub origin: String,
    /// The rule as written.
    pub text: String,
    /// A runtime rule kept aside: why it is not served (its diagnostics against the current protos).
    pub problem: Option<String>,
}

/// Why a change was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The submission does not load: every problem, at its line and column.
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
    #[error("no runtime rule '{0}'")]
    UnknownId(String),
    /// The rules would pass `--max-runtime-rules`.
    #[error(
        "{adding} more runtime rule(s) would make {total}, over the limit of {max} \
         (--max-runtime-rules); delete some, or reset them"
    )]
    TooMany {
        adding: usize,
        total: usize,
        max: usize,
    },
}

/// The runtime rules, in the order added; owned by the registry, behind its lock.
#[derive(Clone, Default)]
pub(crate) struct Runtime {
    /// The number of the last id given.
    last: u64,
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    id: String,
    written: Written,
    /// As compiled against the current protos, or as written when it does not load.
    method: String,
    /// The compiled rule (origin `runtime:ID`); `None` when it does not load.
    rule: Option<Rule>,
    /// Why it is kept aside (not served), when it is.
    problem: Option<String>,
}

impl Entry {
    fn served(&self) -> Option<&Rule> {
        self.rule.as_ref().filter(|_| self.problem.is_none())
    }

    fn listed(&self) -> Listed {
        Listed {
            id: self.id.clone(),
            method: self.method.clone(),
            origin: origin(&self.id),
            text: self.written.text().to_string(),
            problem: self.problem.clone(),
        }
    }
}

fn origin(id: &str) -> String {
    format!("runtime:{id}")
}

impl Runtime {
    /// `rules` read against `state` as new entries (ids not yet given); every problem, or none.
    fn read(&self, state: &State, submitted: &Submitted) -> Result<Vec<Entry>, Diagnostics> {
        let read = rules::runtime_rules(
            submitted,
            &state.protos.pool,
            &state.scripts,
            &state.handlers_dir,
        )?;
        let mut problems = Diagnostics::default();
        let mut entries = Vec::new();
        for (method, rule, written) in read {
            if !state.methods.contains_key(&format!("/{method}")) {
                // A copy of a built-in service (health, reflection): protodrop answers it itself.
                problems.push(Diagnostic::file(
                    submitted.name(),
                    format!("{method} is answered by protodrop's built-in service: rules for it are not used"),
                ));
                continue;
            }
            entries.push(Entry {
                id: String::new(),
                written,
                method,
                rule: Some(rule),
                problem: None,
            });
        }
        problems.into_result()?;
        Ok(entries)
    }

    fn name(&mut self, entry: &mut Entry) {
        self.last += 1;
        entry.id = format!("r{}", self.last);
        if let Some(rule) = &mut entry.rule {
            rule.origin = origin(&entry.id);
        }
    }

    /// The served runtime rules of `method`, in the order they are tried.
    fn served_rules(&self, method: &str) -> Vec<Rule> {
        let of_method = || {
            self.entries
                .iter()
                .filter(move |e| e.method == method)
                .filter_map(Entry::served)
        };
        let conditional = of_method().filter(|r| !r.is_default());
        let default = of_method().filter(|r| r.is_default());
        conditional.chain(default).cloned().collect()
    }

    /// Rebuilds `methods` of `state` as the store says: runtime rules over the files'. Returns the
    /// methods whose rules cannot answer together (a client/bidi stream's script with other rules),
    /// left with their files' rules alone, and why.
    fn layer(&self, state: &mut State, methods: &BTreeSet<String>) -> Vec<(String, String)> {
        let mut conflicts = Vec::new();
        for name in methods {
            let path = format!("/{name}");
            let Some(current) = state.methods.get(&path).cloned() else {
                continue;
            };
            let layered = state.beneath.remove(&path);
            let was_layered = layered.is_some();
            let files: Option<MethodRules> = layered.unwrap_or_else(|| current.rules.clone());
            let mut rules = self.served_rules(name);
            if rules.is_empty() {
                if was_layered {
                    state
                        .methods
                        .insert(path, Arc::new(current.with_rules(files)));
                }
                continue;
            }
            rules.extend(files.iter().flat_map(|f| f.rules.iter().cloned()));
            let combined = MethodRules { rules };
            if let Some(problem) = rules::lone_script_problem(&current.desc, &combined) {
                conflicts.push((name.clone(), problem));
                if was_layered {
                    state
                        .methods
                        .insert(path, Arc::new(current.with_rules(files)));
                }
                continue;
            }
            state.beneath.insert(path.clone(), files);
            state
                .methods
                .insert(path, Arc::new(current.with_rules(Some(combined))));
        }
        conflicts
    }

    /// A state built from the files, with every runtime rule read again against it and layered
    /// over them; those that no longer load are kept aside, with a warning.
    pub(super) fn relayer(&mut self, mut state: State) -> State {
        for entry in &mut self.entries {
            let name = origin(&entry.id);
            let compiled = entry.written.compile(
                &name,
                &state.protos.pool,
                &state.scripts,
                &state.handlers_dir,
            );
            let was_aside = entry.problem.is_some();
            match compiled {
                Ok((method, _)) if !state.methods.contains_key(&format!("/{method}")) => {
                    entry.method = method;
                    entry.rule = None;
                    entry.problem = Some(format!(
                        "{name}: {} is answered by protodrop's built-in service",
                        entry.method
                    ));
                }
                Ok((method, rule)) => {
                    entry.method = method;
                    entry.rule = Some(rule);
                    entry.problem = None;
                    if was_aside {
                        tracing::info!(rule = %name, method = %entry.method, "runtime rule loads again: served");
                    }
                }
                Err(problems) => {
                    entry.method = entry.written.method().to_string();
                    entry.rule = None;
                    entry.problem = Some(problems.to_string());
                }
            }
        }
        let methods: BTreeSet<String> = self.entries.iter().map(|e| e.method.clone()).collect();
        for (method, problem) in self.layer(&mut state, &methods) {
            for entry in self.entries.iter_mut().filter(|e| e.method == method) {
                entry.problem = Some(problem.clone());
            }
        }
        for entry in self.entries.iter().filter(|e| e.problem.is_some()) {
            tracing::warn!(
                rule = %origin(&entry.id),
                method = %entry.method,
                "runtime rule kept aside, not served, after the reload:\n{}",
                entry.problem.as_deref().unwrap_or_default()
            );
        }
        state
    }

    /// Every rule `state` serves, per method (by name), in the order tried, and the runtime rules
    /// kept aside after them; only `method`'s when given.
    pub(super) fn list(&self, state: &State, method: Option<&str>) -> Vec<Listed> {
        let only = method.map(|m| m.trim_start_matches('/'));
        let ids: BTreeMap<String, &Entry> =
            self.entries.iter().map(|e| (origin(&e.id), e)).collect();
        let mut by_method: BTreeMap<&str, Vec<Listed>> = BTreeMap::new();
        for m in state.methods.values() {
            if only.is_some_and(|o| o != m.name) {
                continue;
            }
            let Some(rules) = &m.rules else { continue };
            let listed = rules.rules.iter().map(|r| match ids.get(&r.origin) {
                Some(entry) => entry.listed(),
                None => Listed {
                    id: String::new(),
                    method: m.name.clone(),
                    origin: r.origin.clone(),
                    text: r.text.to_string(),
                    problem: None,
                },
            });
            by_method.entry(&m.name).or_default().extend(listed);
        }
        for entry in self.entries.iter().filter(|e| e.problem.is_some()) {
            if only.is_some_and(|o| o != entry.method) {
                continue;
            }
            by_method
                .entry(&entry.method)
                .or_default()
                .push(entry.listed());
        }
        by_method.into_values().flatten().collect()
    }
}

/// The changes, each under the registry's lock (see the module's doc).
impl super::Registry {
    /// Adds the rules of `submission`, tried before every rule there is for their methods; all or
    /// none. The rules added, in the order written.
    pub(crate) fn add_rules(&self, submission: Submission<'_>) -> Result<Vec<Listed>, Refused> {
        let submitted = submission.read().map_err(Refused::Invalid)?;
        let max = self.max_runtime_rules;
        self.change(
            |runtime, state| {
                let mut entries = runtime.read(state, &submitted)?;
                let total = runtime.entries.len() + entries.len();
                if total > max {
                    let adding = entries.len();
                    return Err(Refused::TooMany { adding, total, max });
                }
                for entry in &mut entries {
                    runtime.name(entry);
                }
                let listed: Vec<Listed> = entries.iter().map(Entry::listed).collect();
                let touched = entries.iter().map(|e| e.method.clone()).collect();
                runtime.entries.extend(entries);
                Ok((listed, touched))
            },
            submitted.name(),
        )
    }

    /// Replaces runtime rule `id` by the one rule of `submission`, keeping its id and its place.
    pub(crate) fn replace_rule(
        &self,
        id: &str,
        submission: Submission<'_>,
    ) -> Result<Listed, Refused> {
        let submitted = submission.read().map_err(Refused::Invalid)?;
        self.change(
            |runtime, state| {
                let Some(at) = runtime.entries.iter().position(|e| e.id == id) else {
                    return Err(Refused::UnknownId(id.to_string()));
                };
                let mut entries = runtime.read(state, &submitted)?;
                if entries.len() != 1 {
                    return Err(Refused::Invalid(Diagnostics(vec![Diagnostic::file(
                        submitted.name(),
                        format!(
                            "a rule is replaced by one rule; this text has {}",
                            entries.len()
                        ),
                    )])));
                }
                let mut entry = entries.remove(0);
                entry.id = id.to_string();
                if let Some(rule) = &mut entry.rule {
                    rule.origin = origin(id);
                }
                let old = std::mem::replace(&mut runtime.entries[at], entry);
                let listed = runtime.entries[at].listed();
                Ok((
                    listed,
                    BTreeSet::from([old.method, runtime.entries[at].method.clone()]),
                ))
            },
            submitted.name(),
        )
    }

    /// Deletes runtime rule `id`: the rules beneath it answer again.
    pub(crate) fn delete_rule(&self, id: &str) -> Result<(), Refused> {
        self.change(
            |runtime, _| {
                let Some(at) = runtime.entries.iter().position(|e| e.id == id) else {
                    return Err(Refused::UnknownId(id.to_string()));
                };
                let old = runtime.entries.remove(at);
                Ok(((), BTreeSet::from([old.method])))
            },
            Path::new("runtime"),
        )
    }

    /// Deletes every runtime rule; how many there were.
    pub(crate) fn reset_rules(&self) -> usize {
        self.change(
            |runtime, _| {
                let touched = runtime.entries.iter().map(|e| e.method.clone()).collect();
                let count = runtime.entries.len();
                runtime.entries.clear();
                Ok((count, touched))
            },
            Path::new("runtime"),
        )
        .unwrap_or(0)
    }

    /// Every rule served, files' and runtime, per method (sorted by name) in the order tried, and
    /// the runtime rules kept aside; only `method`'s when given.
    pub(crate) fn list_rules(&self, method: Option<&str>) -> Vec<Listed> {
        let runtime = self.lock_runtime();
        runtime.list(&self.current(), method)
    }

    /// Applies `edit` to a copy of the store, rebuilds the methods it touched in a copy of the
    /// current state, and swaps both in — or, on any problem, neither.
    fn change<T>(
        &self,
        edit: impl FnOnce(&mut Runtime, &State) -> Result<(T, BTreeSet<String>), Refused>,
        blame: &Path,
    ) -> Result<T, Refused> {
        let mut runtime = self.lock_runtime();
        let current = self.current();
        let mut draft = runtime.clone();
        let (out, touched) = edit(&mut draft, &current)?;
        let mut state = current.derived();
        let conflicts = draft.layer(&mut state, &touched);
        if !conflicts.is_empty() {
            return Err(Refused::Invalid(Diagnostics(
                conflicts
                    .into_iter()
                    .map(|(_, problem)| Diagnostic::file(blame, problem))
                    .collect(),
            )));
        }
        *runtime = draft;
        tracing::info!(
            runtime_rules = runtime.entries.len(),
            methods = ?touched,
            "runtime rules changed"
        );
        // The same services and health overrides: health has nothing to update.
        self.install_methods(state);
        Ok(out)
    }
}
