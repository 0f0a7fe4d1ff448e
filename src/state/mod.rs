//! The served state — descriptors, and every method with its rules — built in one go and swapped whole.
//!
//! A call takes an `Arc` of its method when it starts, so a reload never changes a call in flight.
//! [`reload`] watches the folders and swaps a new state in.

pub(crate) mod reload;

use std::collections::{BTreeMap, HashMap};

use std::path::PathBuf;
use std::sync::Arc;
use tonic_health::ServingStatus;

use arc_swap::ArcSwap;

use crate::builtin::health::Health;
use crate::builtin::reflection::Reflection;
use crate::diagnostic::{Diagnostic, Diagnostics};
pub use crate::engine::Method;
use crate::observe::journal::Journal;
use crate::protos::{self, Protos};
use crate::rules::{self, Handlers};
use crate::script::{ScriptEngine, ScriptLimits};

/// Runs a load on a thread of its own with [`crate::protos::BUILD_STACK`]: whichever thread asks (the main thread at
/// start-up, the reload thread later), the parsers get the same stack. A panic that escapes the
/// finer-grained catches is a diagnostic about `blame` (the folder being loaded), not a dead thread.
pub(crate) fn contained(
    blame: &std::path::Path,
    load: impl FnOnce() -> Result<State, Diagnostics> + Send,
) -> Result<State, Diagnostics> {
    let failed = |message: String| Diagnostics(vec![Diagnostic::file(blame, message)]);
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("protodrop-load".into())
            .stack_size(crate::protos::BUILD_STACK)
            .spawn_scoped(scope, load)
            .map_err(|e| failed(format!("cannot start a thread to load the files: {e}")))?;
        worker.join().unwrap_or_else(|panic| {
            Err(failed(format!(
                "loading failed on an unexpected input (please report it): {}",
                crate::diagnostic::panic_message(&panic)
            )))
        })
    })
}

/// Where the state is built from; what a reload re-reads.
#[derive(Clone, Debug)]
pub struct Sources {
    pub protos: PathBuf,
    pub handlers: PathBuf,
    pub include_roots: Vec<PathBuf>,
    /// Gitignore patterns of protos not to compile unless imported (`--exclude`).
    pub exclude: Vec<String>,
    /// `FileDescriptorSet` files loaded with the protos folder's own (`--descriptor-set`).
    pub descriptor_sets: Vec<PathBuf>,
    pub script_limits: ScriptLimits,
    /// Serve server reflection.
    pub reflection: bool,
    /// What each load read outside the protos folder: the files the watcher watches there.
    pub reads: protos::ReadLog,
}

/// Everything a call needs, as of one load.
#[derive(Debug)]
pub struct State {
    pub protos: Protos,
    /// By HTTP path, `/pkg.Service/Method`.
    pub methods: HashMap<String, Arc<Method>>,
    pub(crate) rule_count: usize,
    pub(crate) handler_files: usize,
    /// Reflection over this state's descriptors; `None` when turned off.
    reflection: Option<Reflection>,
    /// HTTP/JSON transcoding routes from the `google.api.http` annotations, rebuilt with the protos.
    pub routes: Arc<crate::protos::http_routes::Routes>,
    /// Health overrides from the handler files' `[health]` tables.
    pub(crate) health_overrides: BTreeMap<String, ServingStatus>,
    /// Warnings about services of the protos that protodrop serves itself (health, reflection):
    /// the built-in answers their paths.
    pub(crate) builtin_copies: Vec<Diagnostic>,
}

impl State {
    /// Loads protos, then handlers against them. All problems of both are reported together when the
    /// protos compile; handlers cannot be checked without them.
    pub fn build(sources: &Sources) -> Result<State, Diagnostics> {
        contained(&sources.protos, || Self::build_here(sources))
    }

    /// [`State::build`] on the calling thread.
    fn build_here(sources: &Sources) -> Result<State, Diagnostics> {
        let started = std::time::Instant::now();
        let protos = protos::load_noting(
            &sources.protos,
            &sources.include_roots,
            &sources.exclude,
            &sources.descriptor_sets,
            &sources.reads,
        )?;
        // A bad google.api.http annotation costs only its route: a warning at its line (see
        // `Routes::skipped`), not a load problem.
        let proto_roots: Vec<PathBuf> = std::iter::once(sources.protos.clone())
            .chain(sources.include_roots.iter().cloned())
            .collect();
        let compiled = started.elapsed();
        let routes = crate::protos::http_routes::Routes::of(&protos, &proto_roots);
        let routed = started.elapsed();
        let reflection = sources.reflection.then(|| Reflection::new(&protos.pool));
        tracing::debug!(?compiled, ?routed, elapsed = ?started.elapsed(), "protos compiled");
        let state = Self::with_handlers(protos, routes, reflection, sources);
        tracing::debug!(elapsed = ?started.elapsed(), "handlers loaded");
        state
    }

    /// This state's protos with the handlers read again: what a handler edit needs (compiling a
    /// large proto tree takes far longer than reading its handlers).
    pub(crate) fn rebuild_handlers(&self, sources: &Sources) -> Result<State, Diagnostics> {
        contained(&sources.handlers, || {
            Self::with_handlers(
                self.protos.clone(),
                self.routes.clone(),
                self.reflection.clone(),
                sources,
            )
        })
    }

    fn with_handlers(
        protos: Protos,
        routes: Arc<crate::protos::http_routes::Routes>,
        reflection: Option<Reflection>,
        sources: &Sources,
    ) -> Result<State, Diagnostics> {
        let engine = ScriptEngine::new(sources.script_limits.clone());
        let handlers = rules::load(&sources.handlers, &protos.pool, &engine)?;
        let rule_count = handlers.rule_count();
        let Handlers {
            mut methods,
            files,
            health,
        } = handlers;
        let mut served = HashMap::new();
        let handlers_dir: Arc<std::path::Path> = Arc::from(sources.handlers.as_path());
        let mut builtin_copies = Vec::new();
        for service in protos.pool.services() {
            let builtin = match service.full_name() {
                crate::builtin::HEALTH_SERVICE => Some("health"),
                name if reflection.is_some()
                    && crate::builtin::REFLECTION_SERVICES.contains(&name) =>
                {
                    Some("server reflection")
                }
                _ => None,
            };
            if let Some(what) = builtin {
                let prefix = format!("{}/", service.full_name());
                let mut unused: Vec<String> = methods
                    .keys()
                    .filter(|m| m.starts_with(&prefix))
                    .cloned()
                    .collect();
                unused.sort_unstable();
                let mut message = format!(
                    "declares {}, which protodrop serves itself (built-in {what}): the built-in \
                     answers and this copy's methods are not served",
                    service.full_name()
                );
                if !unused.is_empty() {
                    message.push_str(&format!(
                        "; the handler rules for {} are not used",
                        unused.join(", ")
                    ));
                }
                builtin_copies.push(Diagnostic::file(
                    protos::path_or_folder(
                        &sources.protos,
                        &sources.include_roots,
                        service.parent_file().name(),
                    ),
                    message,
                ));
                continue;
            }
            for desc in service.methods() {
                let name = format!("{}/{}", service.full_name(), desc.name());
                let rules = methods.remove(&name);
                let method = Method::new(desc, name, rules, handlers_dir.clone());
                served.insert(format!("/{}", method.name), Arc::new(method));
            }
        }
        Ok(State {
            routes,
            reflection,
            protos,
            methods: served,
            rule_count,
            handler_files: files.len(),
            health_overrides: health,
            builtin_copies,
        })
    }

    /// Logs the warnings of a load (skipped HTTP routes, copies of built-in services).
    pub(crate) fn log_warnings(&self) {
        self.routes.log_skipped();
        for d in &self.builtin_copies {
            tracing::warn!("{d}");
        }
    }

    /// Reflection over this state's descriptors; `None` when turned off.
    pub(crate) fn reflection(&self) -> Option<&Reflection> {
        self.reflection.as_ref()
    }

    pub(crate) fn service_count(&self) -> usize {
        self.protos.pool.services().count()
    }

    /// What health reports: every service (and "", the server) SERVING unless a handler says otherwise.
    pub(crate) fn health_statuses(&self) -> BTreeMap<String, ServingStatus> {
        let mut statuses: BTreeMap<String, ServingStatus> = std::iter::once(String::new())
            .chain(
                self.protos
                    .pool
                    .services()
                    .map(|s| s.full_name().to_string()),
            )
            .map(|name| (name, ServingStatus::Serving))
            .collect();
        statuses.extend(self.health_overrides.clone());
        statuses
    }
}

/// The current state, swapped atomically by reloads, and the health statuses that follow it.
pub(crate) struct Registry {
    current: ArcSwap<State>,
    pub health: Health,
    /// The journal, told when a reload replaces the protos so that it lets go of the old ones.
    journal: std::sync::OnceLock<&'static Journal>,
}

impl Registry {
    pub(crate) fn new(state: State) -> Self {
        let health = Health::new();
        health.update(&BTreeMap::new(), &state.health_statuses());
        Self {
            current: ArcSwap::new(Arc::new(state)),
            health,
            journal: std::sync::OnceLock::new(),
        }
    }

    /// Keeps `journal` from holding protos a reload replaced (see `Journal::settle`).
    pub(crate) fn settle_on_reload(&self, journal: &'static Journal) {
        let _ = self.journal.set(journal);
    }

    pub(crate) fn current(&self) -> Arc<State> {
        self.current.load_full()
    }

    pub(crate) fn swap(&self, state: State) {
        let now = state.health_statuses();
        let state = Arc::new(state);
        let before = self.current.swap(state.clone());
        self.health.update(&before.health_statuses(), &now);
        if let Some(journal) = self.journal.get() {
            if state.protos.pool != before.protos.pool {
                journal.settle(&state.protos.pool);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_loading_is_a_diagnostic_about_the_folder() {
        let err = contained(std::path::Path::new("protos"), || panic!("parser bug"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("protos: loading failed"), "{err}");
        assert!(err.contains("parser bug"), "{err}");
    }
}
