//! The served state — descriptors, and every method with its rules — built in one go and swapped whole.
//!
//! A call takes an `Arc` of its method when it starts, so a reload never changes a call in flight.
//! [`reload`] watches the folders and swaps a new state in.
//!
//! Services protodrop answers with its own code ([`NativeService`]: the admin API) come in with the
//! sources and join each state as it is built: their methods in the one method table (so every
//! protocol finds them with the one lookup it already makes, after which a native method is served
//! as any other), their `google.api.http` routes tried after the user's, their files listed by
//! reflection. Their descriptors stay in a pool of their own: a user's tree, and its reloads, are
//! the same with or without them. A state of a native service alone ([`State::native_only`]) is
//! what a listener of its own serves (`--admin-listen`).

pub(crate) mod reload;
pub(crate) mod runtime;

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
    /// Services answered by protodrop's own code, served beside the protos' (the admin API when it
    /// shares the port); none for `check`.
    pub natives: Vec<Arc<NativeService>>,
}

#[cfg(test)]
impl Sources {
    /// A protos folder and a handlers folder, with every other source and setting at its default.
    pub(crate) fn folders(protos: PathBuf, handlers: PathBuf) -> Sources {
        Sources {
            protos,
            handlers,
            include_roots: Vec::new(),
            exclude: Vec::new(),
            descriptor_sets: Vec::new(),
            script_limits: Default::default(),
            reflection: false,
            reads: Default::default(),
            natives: Vec::new(),
        }
    }
}

/// A service protodrop answers with its own code (the admin API): native `engine::Method`s over a
/// pool of its own, compiled once at start-up, and the HTTP routes of its annotations.
#[derive(Debug)]
pub struct NativeService {
    /// The service's full name (`protodrop.admin.v1.Admin`).
    pub(crate) name: String,
    /// What it is, for the warning about a copy of it in the user's protos.
    pub(crate) what: &'static str,
    pub(crate) pool: prost_reflect::DescriptorPool,
    pub(crate) methods: Vec<Arc<Method>>,
    pub(crate) routes: Arc<crate::protos::http_routes::Routes>,
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
    /// The OpenAPI document of `routes`, gzipped, made when first asked for (`GET /openapi.json`),
    /// kept while the routes are: a handler reload shares it, a proto reload starts a new one.
    pub(crate) openapi: Arc<tokio::sync::OnceCell<bytes::Bytes>>,
    /// Health overrides from the handler files' `[health]` tables.
    pub(crate) health_overrides: BTreeMap<String, ServingStatus>,
    /// Warnings about services of the protos that protodrop serves itself (health, reflection):
    /// the built-in answers their paths.
    pub(crate) builtin_copies: Vec<Diagnostic>,
    /// The files' rules of the methods runtime rules are layered over, by HTTP path: what those
    /// methods are rebuilt from when their runtime rules change ([`runtime`]).
    pub(crate) beneath: HashMap<String, Option<rules::MethodRules>>,
    /// The script engine the rules were compiled with, and the handlers folder (where a runtime
    /// rule's `script = "…"` is read from): runtime rules are compiled as the files' were.
    pub(crate) scripts: ScriptEngine,
    pub(crate) handlers_dir: Arc<std::path::Path>,
    /// The native services served with this state: their routes are tried after the user's.
    natives: Vec<Arc<NativeService>>,
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
        let reflection = sources.reflection.then(|| {
            let natives: Vec<_> = sources.natives.iter().map(|n| n.pool.clone()).collect();
            Reflection::new(&protos.pool, &natives)
        });
        tracing::debug!(?compiled, ?routed, elapsed = ?started.elapsed(), "protos compiled");
        let state = Self::with_handlers(protos, routes, Arc::default(), reflection, sources);
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
                self.openapi.clone(),
                self.reflection.clone(),
                sources,
            )
        })
    }

    fn with_handlers(
        protos: Protos,
        routes: Arc<crate::protos::http_routes::Routes>,
        openapi: Arc<tokio::sync::OnceCell<bytes::Bytes>>,
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
            let native = sources
                .natives
                .iter()
                .find(|n| n.name == service.full_name())
                .map(|n| n.what);
            let builtin = native.or(match service.full_name() {
                crate::builtin::HEALTH_SERVICE => Some("health"),
                name if reflection.is_some()
                    && crate::builtin::REFLECTION_SERVICES.contains(&name) =>
                {
                    Some("server reflection")
                }
                _ => None,
            });
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
        for method in sources.natives.iter().flat_map(|n| &n.methods) {
            served.insert(format!("/{}", method.name), method.clone());
        }
        Ok(State {
            routes,
            openapi,
            reflection,
            protos,
            methods: served,
            rule_count,
            handler_files: files.len(),
            health_overrides: health,
            builtin_copies,
            beneath: HashMap::new(),
            scripts: engine,
            handlers_dir,
            natives: sources.natives.clone(),
        })
    }

    /// A copy to change a few methods of: the maps of `Arc`s are copied, nothing is compiled.
    pub(crate) fn derived(&self) -> State {
        State {
            protos: self.protos.clone(),
            methods: self.methods.clone(),
            rule_count: self.rule_count,
            handler_files: self.handler_files,
            reflection: self.reflection.clone(),
            routes: self.routes.clone(),
            health_overrides: self.health_overrides.clone(),
            builtin_copies: self.builtin_copies.clone(),
            beneath: self.beneath.clone(),
            scripts: self.scripts.clone(),
            handlers_dir: self.handlers_dir.clone(),
            natives: self.natives.clone(),
            // The same routes: the same document.
            openapi: self.openapi.clone(),
        }
    }

    /// The HTTP route tables served: the user's, then the native services' (the admin API's).
    pub(crate) fn route_tables(&self) -> Vec<Arc<crate::protos::http_routes::Routes>> {
        std::iter::once(self.routes.clone())
            .chain(self.natives.iter().map(|n| n.routes.clone()))
            .collect()
    }

    /// A state serving `native` alone, for a listener of its own: its pool stands for the protos
    /// (reflection lists it, errors name its services), its methods and routes are the only ones.
    pub(crate) fn native_only(native: &Arc<NativeService>, reflection: bool) -> State {
        let methods = native
            .methods
            .iter()
            .map(|m| (format!("/{}", m.name), m.clone()))
            .collect();
        State {
            protos: Protos {
                pool: native.pool.clone(),
                files: Vec::new(),
                generation: 0,
                reloaded: None,
            },
            methods,
            rule_count: 0,
            handler_files: 0,
            reflection: reflection.then(|| Reflection::new(&native.pool, &[])),
            routes: native.routes.clone(),
            health_overrides: BTreeMap::new(),
            builtin_copies: Vec::new(),
            openapi: Default::default(),
            beneath: HashMap::new(),
            scripts: ScriptEngine::new(ScriptLimits::default()),
            handlers_dir: Arc::from(std::path::Path::new("")),
            natives: Vec::new(),
        }
    }

    /// The HTTP route `method path` names: the user's routes first, then the native services'.
    pub(crate) fn route(
        &self,
        method: &http::Method,
        path: &str,
    ) -> crate::protos::http_routes::Lookup<'_> {
        use crate::protos::http_routes::Lookup;
        let found = self.routes.find(method, path);
        if !matches!(found, Lookup::NotFound) {
            return found;
        }
        self.natives
            .iter()
            .map(|n| n.routes.find(method, path))
            .find(|l| !matches!(l, Lookup::NotFound))
            .unwrap_or(found)
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
            .chain(self.natives.iter().map(|n| n.name.clone()))
            .map(|name| (name, ServingStatus::Serving))
            .collect();
        statuses.extend(self.health_overrides.clone());
        statuses
    }
}

/// The current state, swapped atomically by reloads and by changes of the runtime rules, and the
/// health statuses that follow it.
pub(crate) struct Registry {
    current: ArcSwap<State>,
    pub health: Health,
    /// The journal, told when a reload replaces the protos so that it lets go of the old ones.
    journal: std::sync::OnceLock<&'static Journal>,
    /// The runtime rules; its lock serializes every swap ([`runtime`]).
    runtime: std::sync::Mutex<runtime::Runtime>,
    /// Most runtime rules kept at once (`--max-runtime-rules`).
    max_runtime_rules: usize,
}

/// `--max-runtime-rules` unless given: room for any test suite's stubs, where a client adding rules
/// in a loop without a reset is stopped before it has taken a few hundred megabytes.
pub(crate) const DEFAULT_MAX_RUNTIME_RULES: usize = 10_000;

impl Registry {
    pub(crate) fn new(state: State) -> Self {
        let health = Health::new();
        health.update(&BTreeMap::new(), &state.health_statuses());
        Self {
            current: ArcSwap::new(Arc::new(state)),
            health,
            journal: std::sync::OnceLock::new(),
            runtime: Default::default(),
            max_runtime_rules: DEFAULT_MAX_RUNTIME_RULES,
        }
    }

    /// The registry, keeping at most `max` runtime rules at once.
    pub(crate) fn with_max_runtime_rules(self, max: usize) -> Self {
        Self {
            max_runtime_rules: max,
            ..self
        }
    }

    /// Keeps `journal` from holding protos a reload replaced (see `Journal::settle`).
    pub(crate) fn settle_on_reload(&self, journal: &'static Journal) {
        let _ = self.journal.set(journal);
    }

    pub(crate) fn current(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Swaps in a state built from the files, with the runtime rules layered over them.
    pub(crate) fn swap(&self, state: State) {
        let mut runtime = self.lock_runtime();
        let state = runtime.relayer(state);
        self.install(state);
    }

    fn lock_runtime(&self) -> std::sync::MutexGuard<'_, runtime::Runtime> {
        // A change that panicked left the store as it was before it (changes edit a copy).
        self.runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Swaps in a state that differs from the current one in its methods' rules only (health stays
    /// as it is); the caller holds the runtime rules' lock.
    fn install_methods(&self, state: State) {
        self.current.store(Arc::new(state));
    }

    /// Swaps `state` in; the caller holds the runtime rules' lock.
    fn install(&self, state: State) {
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
