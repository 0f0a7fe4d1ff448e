//! Watches the protos and handlers folders, and the `-I` roots; on a change, rebuilds the whole state
//! off the request path and swaps it in. A broken edit is logged precisely and the last good state
//! keeps serving.
//!
//! Outside those two folders only the files a load read are watched: each load notes the files it
//! read from the `-I` roots (`protos::ReadLog`), and their folders are watched one by one, not
//! recursively, filtered to those files, from one load to the next (a failed load adds what it read
//! and drops nothing, so the fix of a broken import is seen). An `-I` root of a whole checkout
//! (thousands of folders) so costs a watch per folder actually imported from, not one per folder
//! under it; a new file there that nothing imports yet is no change. `--descriptor-set` files
//! outside the protos folder are watched the same way. An `-I` root's own folder is watched too
//! (alone): a root that is missing gets a warning, not a refusal to serve, and one that appears
//! later is loaded then.
//!
//! A folder that disappears (`rm -rf`, a checkout or a deploy script that swaps it) takes its inotify
//! watch with it, and a watch never comes back by itself. So the watcher notes when a folder is
//! removed or renamed away, and while one is gone it looks for it every 250 ms and
//! watches it again when it is back. While a folder is gone nothing is rebuilt: the last good state
//! keeps serving (an empty or half-deleted folder must not become the served state), and a warning
//! says so.
//!
//! A save caught half-way must not replace a good state either: a changed file found empty, or a load
//! that fails, waits up to [`SETTLE`] for the rest of the save before it is applied.
//!
//! Loads run on a thread of their own with any panic turned into a diagnostic
//! ([`crate::state::contained`]); the loop itself is supervised too: restarted after a panic,
//! and should it stop for good, an ERROR is logged and health turns NOT_SERVING.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{EventKind, ModifyKind};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use crate::diagnostic::Diagnostics;
use crate::state::{Registry, Sources, State};

/// How long the watcher waits for a burst of file events (an editor's save) to settle.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(50);

/// While a folder is gone, how often to look for it: no event says a removed folder is back.
const POLL_WHILE_GONE: Duration = Duration::from_millis(250);

/// How long a load that looks like a save caught half-way waits for the rest of it: a changed file
/// that is empty (an editor that truncates, then writes), or a load that fails (a file cut short).
/// Any further change within it is loaded at once; if none comes, what is on disk then applies (a
/// file really emptied is served empty, a broken one logged). Other edits do not wait.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

/// Panics of the reload loop tolerated within [`RESTART_WINDOW`]; one more and hot reload stops
/// for good (logged as an error, health turns NOT_SERVING) rather than spin.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

type FsDebouncer = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Keeps watching while alive; dropping it stops the watcher thread.
pub(crate) struct Watcher {
    signals: mpsc::Sender<Signal>,
    worker: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.signals.send(Signal::Stop);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

enum Signal {
    Events(DebounceEventResult),
    Stop,
}

/// Starts watching `sources`' folders; every relevant change rebuilds and swaps `registry`. The
/// folders are watched when this returns, so an edit made right after is seen.
pub(crate) fn watch(sources: Sources, registry: Arc<Registry>) -> notify::Result<Watcher> {
    let (signals, inbox) = mpsc::channel();
    let events = signals.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let _ = events.send(Signal::Events(result));
    })?;
    let mut watched = Watched::new(&sources)?;
    watched.arm_all(&mut debouncer)?;
    watched.follow(&mut debouncer, sources.reads.take(), true);
    let worker = std::thread::Builder::new()
        .name("protodrop-reload".into())
        .spawn(move || {
            let mut stopped = StopsForGood {
                registry: &registry,
                on_purpose: false,
            };
            stopped.on_purpose = supervise(|restarted| {
                run(
                    &mut debouncer,
                    &mut watched,
                    &inbox,
                    &sources,
                    &registry,
                    restarted,
                )
            });
        })
        .map_err(notify::Error::io)?;
    Ok(Watcher {
        signals,
        worker: Some(worker),
    })
}

/// Runs `body` again after each panic (with `true`: a change may have been lost, reload all), up to
/// [`MAX_RESTARTS`] within [`RESTART_WINDOW`]. True when `body` returned (asked to stop); false when
/// it gave up.
fn supervise(mut body: impl FnMut(bool)) -> bool {
    let mut panics: Vec<Instant> = Vec::new();
    let mut restarted = false;
    loop {
        let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| body(restarted))) else {
            return true;
        };
        let message = crate::diagnostic::panic_message(&panic);
        let now = Instant::now();
        panics.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        panics.push(now);
        if panics.len() > MAX_RESTARTS {
            tracing::error!(
                "the reload thread failed {} times within {}s ({message}); giving up",
                panics.len(),
                RESTART_WINDOW.as_secs()
            );
            return false;
        }
        tracing::error!(
            "the reload thread failed ({message}); restarting it and reloading everything"
        );
        restarted = true;
    }
}

/// Says so, loudly, when the reload thread ends other than on request (it gave up, or unwound past
/// the supervisor): the log gets an ERROR and health turns NOT_SERVING, so an orchestrator restarts
/// a server that would otherwise go on serving stale files in silence.
struct StopsForGood<'a> {
    registry: &'a Registry,
    on_purpose: bool,
}

impl Drop for StopsForGood<'_> {
    fn drop(&mut self) {
        if self.on_purpose {
            return;
        }
        tracing::error!(
            "hot reload has stopped: edits are no longer served; health reports NOT_SERVING; restart protodrop"
        );
        let now = self.registry.current().health_statuses();
        self.registry.health.update(&now, &Default::default());
    }
}

/// The watcher thread's loop: owns the debouncer (re-arming needs it) and does the rebuilds. Returns
/// when asked to stop. `restarted`: a previous run panicked, so everything is reloaded first.
fn run(
    debouncer: &mut FsDebouncer,
    watched: &mut Watched,
    inbox: &mpsc::Receiver<Signal>,
    sources: &Sources,
    registry: &Registry,
    restarted: bool,
) {
    // A proto edit (or a lost event, or a folder back) needs a full build; until one succeeds, later
    // handler edits must not be checked against the old compiled protos alone.
    let mut protos_dirty = restarted;
    // A change seen and not yet applied (or reported).
    let mut pending = restarted;
    // The watched files changed since the last applied load.
    let mut changed_files: BTreeSet<PathBuf> = BTreeSet::new();
    // While a save looks half-done: when to stop waiting for the rest (see SETTLE), and the load
    // made meanwhile, applied as it is if nothing else changes.
    let mut settle_until: Option<Instant> = None;
    let mut held: Option<Result<State, Diagnostics>> = None;
    loop {
        let timeout = [
            watched.any_folder_gone().then_some(POLL_WHILE_GONE),
            settle_until.map(|d| d.saturating_duration_since(Instant::now())),
        ]
        .into_iter()
        .flatten()
        .min();
        let signal = match timeout {
            Some(t) => inbox.recv_timeout(t),
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut fresh = false;
        match signal {
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
            Ok(Signal::Events(Err(errors))) => {
                for e in errors {
                    tracing::warn!("watching files: {e}");
                }
            }
            Ok(Signal::Events(Ok(events))) => {
                for event in &events {
                    watched.note(&event.event);
                    // A rescan means the kernel's queue overflowed: events were lost, rebuild.
                    let relevant = event.need_rescan()
                        || (is_change(&event.kind)
                            && event.paths.iter().any(|p| watched.is_watched_file(p)));
                    if !relevant {
                        continue;
                    }
                    if !only_handler_files(&event.paths) {
                        protos_dirty = true;
                    }
                    if !fresh {
                        if let Some(p) = event.paths.first() {
                            tracing::debug!(file = %p.display(), "change seen");
                        }
                    }
                    fresh = true;
                    changed_files.extend(event.paths.iter().filter(|p| is_source_file(p)).cloned());
                }
            }
        }
        if watched.refresh(debouncer) {
            protos_dirty = true;
            fresh = true;
        }
        if fresh {
            pending = true;
            // Whatever was held is out of date.
            held = None;
        }
        if !pending {
            continue;
        }
        if let Some(gone) = watched.gone_folder() {
            // Building now would fail (or serve a half-deleted tree); the warning was logged.
            tracing::debug!(folder = %gone.display(), "not reloading: folder is gone");
            continue;
        }
        let settled = settle_until.is_some_and(|d| Instant::now() >= d);
        if settle_until.is_some() && !settled && !fresh {
            continue;
        }
        if !settled && any_empty(&changed_files) {
            tracing::debug!("a changed file is empty: waiting for the rest of the save");
            settle_until.get_or_insert_with(|| Instant::now() + SETTLE);
            continue;
        }
        let started = Instant::now();
        let built = match held.take() {
            Some(built) if settled => built,
            _ if protos_dirty => {
                let built = State::build(sources);
                watched.follow(debouncer, sources.reads.take(), built.is_ok());
                built
            }
            _ => registry.current().rebuild_handlers(sources),
        };
        if !settled && (built.is_err() || any_empty(&changed_files)) {
            tracing::debug!("the load failed or a file is empty: waiting for the rest of the save");
            settle_until.get_or_insert_with(|| Instant::now() + SETTLE);
            held = Some(built);
            continue;
        }
        let full = protos_dirty;
        let swapped = swap_in(built, started, registry);
        crate::metrics::global().reloaded(swapped);
        // The old state (once no call holds it) or the failed load is freed: return its pages.
        alloc_meter::release_free_memory();
        if full {
            protos_dirty = !swapped;
        }
        pending = false;
        changed_files.clear();
        settle_until = None;
    }
}

/// A `.proto`, `.toml` or `.rhai` file, or a descriptor set (`.binpb`, `.pb`).
fn is_source_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "proto" || e == "toml" || e == "rhai")
        || crate::protos::sets::is_descriptor_set(path)
}

/// Whether one of `files` is there and empty: more likely a save caught between truncating and
/// writing than meant (a removed file is not empty, it is gone).
fn any_empty(files: &BTreeSet<PathBuf>) -> bool {
    files
        .iter()
        .any(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.len() == 0))
}

/// Handler files only (`.toml`, `.rhai`): the compiled protos can be kept.
fn only_handler_files(paths: &[PathBuf]) -> bool {
    paths
        .iter()
        .all(|p| p.extension().is_some_and(|e| e == "toml" || e == "rhai"))
}

/// Swaps a built state in, or keeps the old one and says why. True when swapped.
fn swap_in(
    built: Result<State, crate::diagnostic::Diagnostics>,
    started: Instant,
    registry: &Registry,
) -> bool {
    match built {
        Ok(state) => {
            tracing::info!(
                services = state.service_count(),
                methods = state.methods.len(),
                rules = state.rule_count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reloaded"
            );
            // Only when the routes were built again (a handler edit keeps them, and their
            // warnings), or the warnings about built-in services changed (a rule for one).
            let current = registry.current();
            if !Arc::ptr_eq(&state.routes, &current.routes) {
                state.log_warnings();
            } else if state.builtin_copies != current.builtin_copies {
                for d in &state.builtin_copies {
                    tracing::warn!("{d}");
                }
            }
            registry.swap(state);
            true
        }
        Err(problems) => {
            tracing::error!("reload failed, still serving the previous state:\n{problems}");
            false
        }
    }
}

/// One watched folder.
struct Entry {
    /// Absolute, as notify reports event paths.
    path: PathBuf,
    /// The protos or handlers folder: while it is gone nothing is rebuilt. An `-I` root is not.
    required: bool,
    /// Watched with what is inside it (the protos and handlers folders), or alone (an `-I` root,
    /// whose files are watched through `Watched::dirs`).
    recursive: bool,
    /// Whether a watch for it is in place (notify drops the watch when the folder is removed).
    armed: bool,
    /// An event said the folder itself was removed, renamed or created: its watch, if notify still
    /// holds one, may follow an old inode.
    touched: bool,
    /// An `-I` root that is there but could not be watched: tried again only when an event says
    /// it changed (each try walks the whole tree).
    failed: bool,
}

struct Watched {
    /// Outer folders first: watching one again re-walks what is inside it.
    entries: Vec<Entry>,
    /// The files watched outside the protos and handlers folders: those the loads read (see the
    /// module's doc) and the `--descriptor-set` files. Absolute.
    files: BTreeSet<PathBuf>,
    /// The `--descriptor-set` files outside the protos and handlers folders, always in `files`.
    sets: BTreeSet<PathBuf>,
    /// The folders of `files` that no entry covers, each watched alone; whether a watch is in place.
    dirs: BTreeMap<PathBuf, bool>,
}

impl Watched {
    fn new(sources: &Sources) -> notify::Result<Watched> {
        let cwd = std::env::current_dir().map_err(notify::Error::io)?;
        let mut entries: Vec<Entry> = Vec::new();
        let folders = [&sources.protos, &sources.handlers]
            .into_iter()
            .map(|f| (f, true))
            .chain(sources.include_roots.iter().map(|f| (f, false)));
        for (folder, required) in folders {
            let path = cwd.join(folder);
            // A root inside a required folder is watched with it.
            if entries
                .iter()
                .any(|e| e.path == path || (e.required && path.starts_with(&e.path)))
            {
                continue;
            }
            entries.push(Entry {
                path,
                required,
                recursive: required,
                armed: false,
                touched: false,
                failed: false,
            });
        }
        entries.sort_by_key(|e| e.path.components().count());
        let sets: BTreeSet<PathBuf> = sources
            .descriptor_sets
            .iter()
            .map(|s| cwd.join(s))
            .filter(|s| !entries.iter().any(|e| e.required && s.starts_with(&e.path)))
            .collect();
        Ok(Watched {
            entries,
            files: BTreeSet::new(),
            sets,
            dirs: BTreeMap::new(),
        })
    }

    /// Watches the files a load read outside the protos and handlers folders (`reads`, as the
    /// load noted them; `None` when no load noted anything), with the descriptor sets: after a
    /// load that succeeded, exactly those; after one that failed, those as well as the ones
    /// watched already.
    fn follow(
        &mut self,
        debouncer: &mut FsDebouncer,
        reads: Option<BTreeSet<PathBuf>>,
        succeeded: bool,
    ) {
        let Ok(cwd) = std::env::current_dir() else {
            return;
        };
        let mut files = self.sets.clone();
        if let Some(reads) = reads {
            files.extend(reads.iter().map(|p| cwd.join(p)).filter(|p| {
                !self
                    .entries
                    .iter()
                    .any(|e| e.required && p.starts_with(&e.path))
            }));
        } else {
            files.extend(self.files.iter().cloned());
        }
        if !succeeded {
            files.extend(self.files.iter().cloned());
        }
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent())
            .filter(|d| !self.entries.iter().any(|e| e.path == *d))
            .map(Path::to_path_buf)
            .collect();
        self.dirs.retain(|dir, armed| {
            let keep = dirs.contains(dir);
            if !keep && *armed {
                let _ = debouncer.unwatch(dir);
            }
            keep
        });
        for dir in dirs {
            let armed = self.dirs.entry(dir.clone()).or_insert(false);
            if !*armed {
                match debouncer.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => *armed = true,
                    Err(err) => tracing::debug!(folder = %dir.display(), "cannot watch: {err}"),
                }
            }
        }
        if files != self.files {
            tracing::debug!(
                files = files.len(),
                folders = self.dirs.len(),
                "watching the files read outside the protos folder"
            );
        }
        self.files = files;
    }

    /// At start-up a required folder that cannot be watched is an error; an `-I` root a warning.
    fn arm_all(&mut self, debouncer: &mut FsDebouncer) -> notify::Result<()> {
        for e in &mut self.entries {
            let mode = if e.recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match debouncer.watch(&e.path, mode) {
                Ok(()) => e.armed = true,
                Err(err) if e.required => return Err(err),
                Err(_) if !e.path.is_dir() => tracing::warn!(
                    folder = %e.path.display(),
                    "include root not found: it is watched, and loaded, once it appears"
                ),
                Err(err) => {
                    e.failed = true;
                    tracing::warn!(
                        folder = %e.path.display(),
                        "include root cannot be watched ({err}): edits under it are not reloaded"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether a change to `path` can change the state: any source file (or folder) in the protos
    /// and handlers folders; elsewhere a file a load read or a descriptor set, or a folder watched
    /// (an `-I` root, a folder of such files: removed or renamed).
    fn is_watched_file(&self, path: &Path) -> bool {
        if self
            .entries
            .iter()
            .any(|e| e.required && path.starts_with(&e.path))
        {
            return is_watched_file(path);
        }
        self.files.contains(path)
            || self.dirs.contains_key(path)
            || self.entries.iter().any(|e| e.path == path)
    }

    /// Records what an event says about a folder itself.
    fn note(&mut self, event: &notify::Event) {
        let about_the_folder = matches!(
            event.kind,
            EventKind::Remove(_) | EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
        );
        if !about_the_folder {
            return;
        }
        for e in &mut self.entries {
            if event.paths.iter().any(|p| p == &e.path) {
                e.touched = true;
            }
        }
    }

    /// Brings the watches in line with the disk: forgets a folder that is gone (with a warning),
    /// watches again one that is back or was replaced. Returns whether a folder came back or was
    /// replaced (and so must be re-read).
    fn refresh(&mut self, debouncer: &mut FsDebouncer) -> bool {
        let mut came_back = false;
        // Folders watched again below: what is inside them was unwatched and re-walked with them.
        let mut rearmed: Vec<PathBuf> = Vec::new();
        for e in &mut self.entries {
            let touched = std::mem::take(&mut e.touched);
            if !e.path.is_dir() {
                if e.armed && e.required {
                    tracing::warn!(
                        folder = %e.path.display(),
                        "folder is gone: still serving the last good state; it is reloaded when the folder is back"
                    );
                } else if e.armed {
                    tracing::warn!(
                        folder = %e.path.display(),
                        "include root is gone: imports from it fail until it is back"
                    );
                    // Reloaded now: the state may be built without it (or say why not).
                    came_back = true;
                }
                e.armed = false;
                e.failed = false;
                continue;
            }
            if e.failed && !touched {
                continue;
            }
            let inside_rearmed = rearmed.iter().any(|r| e.path.starts_with(r));
            if e.armed && !touched && !inside_rearmed {
                continue;
            }
            if !inside_rearmed {
                // A watch notify still holds (the folder was renamed away, or replaced within one
                // burst of events) follows the old inode: drop it first. None held is fine.
                let _ = debouncer.unwatch(&e.path);
            }
            let mode = if e.recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match debouncer.watch(&e.path, mode) {
                Ok(()) => {
                    if !e.armed {
                        tracing::info!(folder = %e.path.display(), "folder is back: watching it again");
                    } else if !inside_rearmed {
                        tracing::info!(folder = %e.path.display(), "folder was replaced: watching the new one");
                    }
                    e.armed = true;
                    came_back = true;
                    rearmed.push(e.path.clone());
                }
                // Probably gone again already; the next event or poll tries again.
                Err(err) if e.required || !e.path.is_dir() => {
                    e.armed = false;
                    tracing::debug!(folder = %e.path.display(), "cannot watch yet: {err}");
                }
                Err(err) => {
                    e.armed = false;
                    e.failed = true;
                    tracing::warn!(
                        folder = %e.path.display(),
                        "include root cannot be watched ({err}): edits under it are not reloaded"
                    );
                }
            }
        }
        // The folders of read files under a root watched again, or not watched yet: their watches
        // (if any) follow the old folders.
        for (dir, armed) in &mut self.dirs {
            if *armed && !rearmed.iter().any(|r| dir.starts_with(r)) {
                continue;
            }
            let _ = debouncer.unwatch(dir);
            *armed = debouncer.watch(dir, RecursiveMode::NonRecursive).is_ok();
        }
        came_back
    }

    /// Whether a folder is looked for every [`POLL_WHILE_GONE`] (no event says it is back).
    fn any_folder_gone(&self) -> bool {
        self.entries.iter().any(|e| !e.armed && !e.failed)
    }

    /// A protos or handlers folder that is gone: nothing is rebuilt meanwhile.
    fn gone_folder(&self) -> Option<&Path> {
        self.entries
            .iter()
            .find(|e| !e.armed && e.required)
            .map(|e| e.path.as_path())
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
    is_source_file(path) || path.extension().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_an_include_root_only_the_files_read_count() {
        let sources = Sources {
            include_roots: vec!["/deps/googleapis".into(), "/p/protos/third_party".into()],
            descriptor_sets: vec!["/sets/a.binpb".into(), "/p/protos/b.binpb".into()],
            ..Sources::folders("/p/protos".into(), "/p/handlers".into())
        };
        let mut watched = Watched::new(&sources).unwrap();
        let roots: Vec<_> = watched.entries.iter().map(|e| e.path.clone()).collect();
        // A root inside the protos folder is watched with it.
        assert_eq!(roots.len(), 3, "{roots:?}");
        let mut debouncer = new_debouncer(DEBOUNCE, None, |_: DebounceEventResult| {}).unwrap();
        let read = |files: &[&str]| Some(files.iter().map(PathBuf::from).collect());
        watched.follow(
            &mut debouncer,
            read(&[
                "/deps/googleapis/google/api/http.proto",
                "/p/protos/third_party/x.proto",
            ]),
            true,
        );
        let counts = |w: &Watched, p: &str| w.is_watched_file(Path::new(p));
        assert!(counts(&watched, "/deps/googleapis/google/api/http.proto"));
        assert!(
            counts(&watched, "/deps/googleapis/google/api"),
            "its folder, renamed or removed"
        );
        assert!(counts(&watched, "/deps/googleapis"), "the root itself");
        assert!(!counts(&watched, "/deps/googleapis/google/api/other.proto"));
        assert!(!counts(&watched, "/deps/googleapis/google/type/date.proto"));
        assert!(!counts(&watched, "/deps/googleapis/.git/objects/ab/cdef"));
        assert!(counts(&watched, "/sets/a.binpb"), "a descriptor set");
        assert!(!counts(&watched, "/sets/c.binpb"));
        assert!(
            counts(&watched, "/p/protos/.protodropignore"),
            "the protos folder as before"
        );
        assert!(counts(&watched, "/p/handlers/t.toml"));
        assert!(!counts(&watched, "/elsewhere/x.proto"));
        // A failed load adds what it read and keeps the rest; a good one replaces them.
        watched.follow(
            &mut debouncer,
            read(&["/deps/googleapis/google/type/date.proto"]),
            false,
        );
        assert!(counts(&watched, "/deps/googleapis/google/type/date.proto"));
        assert!(counts(&watched, "/deps/googleapis/google/api/http.proto"));
        watched.follow(
            &mut debouncer,
            read(&["/deps/googleapis/google/type/date.proto"]),
            true,
        );
        assert!(!counts(&watched, "/deps/googleapis/google/api/http.proto"));
        assert!(counts(&watched, "/sets/a.binpb"), "sets stay");
    }

    #[test]
    fn a_panicking_loop_is_restarted_and_told_to_reload_everything() {
        let mut runs = Vec::new();
        let stopped_on_request = supervise(|restarted| {
            runs.push(restarted);
            if runs.len() <= 2 {
                panic!("boom {}", runs.len());
            }
        });
        assert!(stopped_on_request);
        assert_eq!(runs, [false, true, true]);
    }

    #[test]
    fn a_loop_that_keeps_panicking_is_given_up_on() {
        let mut runs = 0;
        let stopped_on_request = supervise(|_| {
            runs += 1;
            panic!("always");
        });
        assert!(!stopped_on_request, "it gave up");
        assert_eq!(runs, MAX_RESTARTS + 1);
    }

    /// Asks the registry's health service for `service`'s status (1 SERVING, 2 NOT_SERVING).
    fn health_of(registry: &Registry, service: &str) -> u8 {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;
        let mut message = Vec::new();
        if !service.is_empty() {
            message.push(0x0a);
            message.push(service.len() as u8);
            message.extend_from_slice(service.as_bytes());
        }
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        let request = http::Request::post("/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from(body),
            )))
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = registry
                .health
                .service
                .clone()
                .oneshot(request)
                .await
                .unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            // One frame: 5 header bytes, then `status` (field 1, varint).
            assert_eq!(&bytes[..6], &[0, 0, 0, 0, 2, 0x08], "{bytes:?}");
            bytes[6]
        })
    }

    #[test]
    fn a_reload_thread_that_stops_for_good_turns_health_not_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (protos, handlers) = (dir.path().join("protos"), dir.path().join("handlers"));
        std::fs::create_dir_all(&protos).unwrap();
        std::fs::create_dir_all(&handlers).unwrap();
        std::fs::write(
            protos.join("t.proto"),
            "syntax = \"proto3\";\npackage t;\nmessage M {}\nservice Svc { rpc Unary(M) returns (M); }\n",
        )
        .unwrap();
        let sources = Sources::folders(protos, handlers);
        let registry = Registry::new(State::build(&sources).unwrap());
        assert_eq!(health_of(&registry, ""), 1);
        drop(StopsForGood {
            registry: &registry,
            on_purpose: true,
        });
        assert_eq!(
            health_of(&registry, ""),
            1,
            "a stop on request changes nothing"
        );
        drop(StopsForGood {
            registry: &registry,
            on_purpose: false,
        });
        assert_eq!(health_of(&registry, ""), 2, "the server");
        assert_eq!(health_of(&registry, "t.Svc"), 2, "each service");
    }
}
