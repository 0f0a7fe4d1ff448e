//! Watches the protos and handlers folders; on a change, rebuilds the whole state off the request path
//! and swaps it in. A broken edit is logged precisely and the last good state keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{EventKind, ModifyKind};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use crate::registry::{Registry, Sources, State};

/// How long the watcher waits for a burst of file events (an editor's save) to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Keeps watching while alive.
pub struct Watcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Starts watching `sources`' folders; every relevant change rebuilds and swaps `registry`.
pub fn watch(sources: Sources, registry: Arc<Registry>) -> notify::Result<Watcher> {
    let folders = [sources.protos.clone(), sources.handlers.clone()];
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let events = match result {
            Ok(events) => events,
            Err(errors) => {
                for e in errors {
                    tracing::warn!("watching files: {e}");
                }
                return;
            }
        };
        let changed: Vec<_> = events
            .iter()
            .filter(|e| is_change(&e.kind))
            .flat_map(|e| e.paths.iter())
            .filter(|p| is_watched_file(p))
            .collect();
        if let Some(first) = changed.first() {
            tracing::debug!(file = %first.display(), "change seen");
            rebuild(&sources, &registry);
        }
    })?;
    for folder in &folders {
        debouncer.watch(folder, RecursiveMode::Recursive)?;
    }
    Ok(Watcher {
        _debouncer: debouncer,
    })
}

/// Rebuilds from disk and swaps the state in, or keeps the old one and says why.
pub fn rebuild(sources: &Sources, registry: &Registry) {
    let started = Instant::now();
    match State::build(sources) {
        Ok(state) => {
            tracing::info!(
                services = state.service_count(),
                methods = state.methods.len(),
                rules = state.rule_count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reloaded"
            );
            registry.swap(state);
        }
        Err(problems) => {
            tracing::error!("reload failed, still serving the previous state:\n{problems}");
        }
    }
}

/// Reading files (protox's own reads included) emits access events; only writes, creates, removes and
/// renames are changes, or every reload would trigger the next.
fn is_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
    )
}

fn is_watched_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "proto" || e == "toml" || e == "rhai")
        || path.extension().is_none()
}
