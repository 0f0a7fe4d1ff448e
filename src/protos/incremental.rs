//! Reloading a proto tree by compiling again only what changed and what imports it.
//!
//! Compiling a file into the pool (names, resolution, options) is most of a load, and a one-line
//! edit changes one file. So a good load leaves a [`Memo`]: its pool, how each file's name was
//! resolved ([`Origin`]) and a [`Stamp`] of each file read from disk, taken before reading it. The
//! next load of the same sources first checks every file of that pool: each name must resolve as
//! before (decided by the same code, `Tree::origin`), and a file whose stamp differs is *changed*.
//! The changed files and every file importing one, directly or not, are *affected*; the others
//! are kept. Then:
//!
//! 1. the affected files are parsed again (from their sources, as a cold load would);
//! 2. the order a cold load compiles files in is worked out from the import lists (the kept files'
//!    from the pool, the others' freshly parsed): protox's order, each file after its imports, in
//!    the order the load asks for them;
//! 3. the kept files are moved into a new pool in that order without being compiled again
//!    (`DescriptorPool::with_files`, a patch of prost-reflect that renumbers their definitions),
//!    the affected files are compiled onto it in that order, and the pool is put in the cold
//!    load's order.
//!
//! A kept file's compiled form depends only on itself and what it imports, none of which changed,
//! so each file comes out as a cold load makes it, in the same order: the same pool. What does not
//! hold for an error — which of two files defining one name is reported depends on the order they
//! were added in — so any problem (a parse error, a file that does not compile, an import never
//! compiled before), as well as a changed file list, descriptor sets, or a name resolved next to
//! its importer (which depends on the order of importers), means a cold load instead, which then
//! reports what it always reported.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use prost_reflect::DescriptorPool;
use protox::file::FileResolver;

use super::ahead::ParseAhead;
use super::layout::{Layout, Origin, Tree};
use super::stamp::Stamp;

/// The arguments of a load: a memo serves a load of the same ones only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Key {
    pub root: PathBuf,
    pub include_roots: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub descriptor_sets: Vec<PathBuf>,
}

/// What a good load leaves for the next one.
pub(super) struct Memo {
    key: Key,
    /// The protos folder's files as found (relative names), and as compiled (known name, path).
    found: Vec<String>,
    files: Vec<(String, PathBuf)>,
    /// Shared with the next memo when a reload resolved every name as this one did (it checks so).
    origins: Arc<HashMap<String, Origin>>,
    stamps: HashMap<PathBuf, Stamp>,
    pool: DescriptorPool,
    /// The load's [`Generation`].
    generation: Generation,
}

/// Which load a pool comes from: what lets a reload's users (the HTTP routes) tell which earlier
/// load the files it did not compile again were kept from.
pub(crate) type Generation = u64;

/// A generation no load had before.
pub(super) fn next_generation() -> Generation {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An incremental load: the load it was made from, and the files compiled again (the changed files
/// and every file importing one); every other file is as that load compiled it.
#[derive(Clone, Debug)]
pub struct Reloaded {
    pub from: Generation,
    pub recompiled: Arc<HashSet<String>>,
}

/// The last good loads, the latest last: one per set of sources (a server has one), a few at most.
static LAST: Mutex<Vec<Arc<Memo>>> = Mutex::new(Vec::new());
/// Unit tests load many trees at once in one process: with 4 kept, the others' loads pushed a
/// test's memo out between two of its loads.
const KEPT: usize = if cfg!(test) { 256 } else { 4 };

fn last(key: &Key) -> Option<Arc<Memo>> {
    if bypassed() {
        return None;
    }
    let memos = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    memos.iter().find(|m| m.key == *key).cloned()
}

/// Tests: forgets the loads of the protos folder `root`.
#[cfg(test)]
pub(super) fn forget(root: &Path) {
    LAST.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|m| m.key.root != root);
}

#[cfg(test)]
thread_local! {
    /// Tests: whether the last load on this thread was incremental; whether to leave memos alone.
    pub(super) static USED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    pub(super) static BYPASS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn bypassed() -> bool {
    #[cfg(test)]
    if BYPASS.with(|b| b.get()) {
        return true;
    }
    false
}

/// Keeps a good load for the next one. `stamps`: of every file read from disk, before reading it.
pub(super) fn remember(
    key: Key,
    found: Vec<String>,
    files: Vec<(String, PathBuf)>,
    origins: Arc<HashMap<String, Origin>>,
    stamps: HashMap<PathBuf, Stamp>,
    pool: &DescriptorPool,
    generation: Generation,
) {
    if bypassed() {
        return;
    }
    let mut memos = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    memos.retain(|m| m.key != key);
    if memos.len() >= KEPT {
        memos.remove(0);
    }
    memos.push(Arc::new(Memo {
        key,
        found,
        files,
        origins,
        stamps,
        pool: pool.clone(),
        generation,
    }));
}

/// The pool a cold load of these files would compile, made from the last good load, what it was
/// made from, and its generation (`generation` when remembered, the last load's when unchanged); `None` when it cannot be made exactly that way (see
/// the module's doc). `folder_stamps`: the protos folder's files, stamped before anything was read
/// (taken for the next memo when the reload is made).
pub(super) fn reload(
    key: &Key,
    found: &[String],
    files: &[(String, PathBuf)],
    layout: &Arc<Layout>,
    folder_stamps: &mut HashMap<PathBuf, Stamp>,
    first: &[&str],
    generation: Generation,
) -> Option<(DescriptorPool, Reloaded, Generation)> {
    #[cfg(test)]
    USED.with(|u| u.set(false));
    let memo = last(key)?;
    match try_reload(
        &memo,
        key,
        found,
        files,
        layout,
        folder_stamps,
        first,
        generation,
    ) {
        Ok((pool, recompiled, generation)) => {
            #[cfg(test)]
            USED.with(|u| u.set(true));
            let from = memo.generation;
            Some((
                pool,
                Reloaded {
                    from,
                    recompiled: Arc::new(recompiled),
                },
                generation,
            ))
        }
        Err(why) => {
            tracing::debug!(why, "compiling every proto again");
            None
        }
    }
}

fn try_reload(
    memo: &Memo,
    key: &Key,
    found: &[String],
    files: &[(String, PathBuf)],
    layout: &Arc<Layout>,
    folder_stamps: &mut HashMap<PathBuf, Stamp>,
    first: &[&str],
    generation: Generation,
) -> Result<(DescriptorPool, HashSet<String>, Generation), &'static str> {
    let started = std::time::Instant::now();
    if memo.found != found || memo.files != files {
        return Err("the list of files changed");
    }
    if !key.descriptor_sets.is_empty() {
        return Err("descriptor sets");
    }
    let ahead = ParseAhead::new(files);
    let tree = Tree::new(
        layout.clone(),
        ahead.clone(),
        found.to_vec(),
        super::sets::Sets::default().resolver(),
    );
    let pool = &memo.pool;
    let descriptors: Vec<_> = pool.files().collect();
    // Each file's imports, as indices into `descriptors`: read once (through `dependencies()`, not
    // `file_descriptor_proto()`, which makes and keeps a `prost_types` copy of each file, source
    // info decoded), for the importers here and the compile order below.
    let imports_of: Vec<Vec<usize>> = descriptors
        .iter()
        .map(|f| f.dependencies().map(|d| d.index()).collect())
        .collect();
    // Each file's importers, by index.
    let mut importers: Vec<Vec<usize>> = vec![Vec::new(); descriptors.len()];
    for (file, deps) in imports_of.iter().enumerate() {
        for &dep in deps {
            importers[dep].push(file);
        }
    }
    let mut changed: Vec<usize> = Vec::new();
    let mut changed_paths: HashSet<PathBuf> = HashSet::new();
    for (index, file) in descriptors.iter().enumerate() {
        let name = file.name();
        let old = memo.origins.get(name).ok_or("a file of unknown origin")?;
        // The importers' folders, where the name might resolve next to one: asked only for a name
        // that is not the protos folder's own (those resolve first), each folder once (a
        // well-known type has thousands of importers, a few hundred folders).
        let mut dirs: Vec<&Path> = Vec::new();
        if ahead.path_of(name).is_none() {
            dirs.extend(
                importers[index]
                    .iter()
                    .filter_map(|&i| memo.origins.get(descriptors[i].name())?.path()?.parent()),
            );
            // By their bytes: comparing paths component by component costs more than the rest.
            dirs.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
            dirs.dedup();
        }
        let now = tree
            .origin(name, false, &dirs)
            .ok_or("an import may resolve next to its importer")?;
        if now != *old {
            return Err("an import resolves to another file");
        }
        if matches!(now, Origin::Neighbour(_) | Origin::Set) {
            return Err("a file next to its importer, or from a descriptor set");
        }
        if let Some(path) = now.path() {
            let stamp = folder_stamps.get(path).copied().or_else(|| Stamp::of(path));
            if stamp.is_none() || stamp != memo.stamps.get(path).copied() {
                changed.push(index);
                changed_paths.insert(path.to_path_buf());
            }
        }
    }
    let checked_time = started.elapsed();
    if changed.is_empty() {
        tracing::debug!(elapsed = ?started.elapsed(), "protos unchanged");
        // The same pool: the same generation.
        return Ok((pool.clone(), HashSet::new(), memo.generation));
    }
    // Every file importing a changed one, directly or not.
    let mut reached = vec![false; descriptors.len()];
    let mut todo = changed.clone();
    for &i in &changed {
        reached[i] = true;
    }
    while let Some(file) = todo.pop() {
        for &importer in &importers[file] {
            if !std::mem::replace(&mut reached[importer], true) {
                todo.push(importer);
            }
        }
    }
    let affected: HashSet<&str> = (0..descriptors.len())
        .filter(|&i| reached[i])
        .map(|i| descriptors[i].name())
        .collect();
    let parsed = parse(&tree, &affected).ok_or("a file does not parse")?;
    if !tree
        .problems
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty()
    {
        return Err("a problem resolving imports");
    }
    let parse_time = started.elapsed();
    // Names as the memo's pool spells them: the order borrows them rather than copying each.
    let by_name: HashMap<&str, usize> = descriptors
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name(), i))
        .collect();
    let known = |name: &str| by_name.get_key_value(name).map(|(name, _)| *name);
    let imports = |name: &str| -> Option<Vec<&str>> {
        match parsed.get(name) {
            // An import the last load did not compile: none (a cold load then).
            Some(file) => file.dependency.iter().map(|d| known(d)).collect(),
            None if affected.contains(name) => None,
            None => Some(
                imports_of[*by_name.get(name)?]
                    .iter()
                    .map(|&d| descriptors[d].name())
                    .collect(),
            ),
        }
    };
    let roots: Vec<&str> = first
        .iter()
        .copied()
        .chain(files.iter().map(|(n, _)| n.as_str()))
        .map(known)
        .collect::<Option<_>>()
        .ok_or("a file never compiled before")?;
    let order = compile_order(roots.into_iter(), imports)
        .ok_or("an import never compiled before, listed twice or in a cycle")?;
    let kept: Vec<&str> = order
        .iter()
        .copied()
        .filter(|n| !affected.contains(n))
        .collect();
    let order_time = started.elapsed();
    let mut new = pool
        .clone()
        .with_files(&kept)
        .ok_or("the kept files are not closed under imports")?;
    let kept_time = started.elapsed();
    let mut parsed = parsed;
    for name in order.iter().filter(|n| affected.contains(*n)) {
        let file = parsed.remove(*name).ok_or("a file compiled twice")?;
        if new.add_file_descriptor_proto(file).is_err() {
            return Err("a file does not compile");
        }
    }
    let added_time = started.elapsed();
    if new.files().len() != order.len() || !new.files().zip(&order).all(|(f, n)| f.name() == *n) {
        new = new.with_files(&order).ok_or("not in import order")?;
    }
    tracing::debug!(
        changed = changed.len(),
        affected = affected.len(),
        kept_files = kept.len(),
        checked = ?checked_time,
        parse = ?parse_time,
        order = ?order_time,
        kept = ?kept_time,
        added = ?added_time,
        elapsed = ?started.elapsed(),
        "protos compiled incrementally"
    );
    // The memo for the next load: what changed is stamped as it was before it was read.
    let (origins, stamps) = tree.record().take();
    // Every name resolved as before (checked above): the same origins, shared.
    let memo_origins = if origins.iter().all(|(n, o)| memo.origins.get(n) == Some(o)) {
        memo.origins.clone()
    } else {
        let mut all = (*memo.origins).clone();
        all.extend(origins);
        Arc::new(all)
    };
    // The folder's files as stamped now, the others' as before unless changed, and those read now.
    let mut memo_stamps = std::mem::take(folder_stamps);
    memo_stamps.extend(
        memo.stamps
            .iter()
            .filter(|(p, _)| !changed_paths.contains(*p) && !memo_stamps.contains_key(*p))
            .map(|(p, s)| (p.clone(), *s))
            .collect::<Vec<_>>(),
    );
    memo_stamps.extend(stamps);
    remember(
        key.clone(),
        found.to_vec(),
        files.to_vec(),
        memo_origins,
        memo_stamps,
        &new,
        generation,
    );
    Ok((
        new,
        affected.into_iter().map(str::to_string).collect(),
        generation,
    ))
}

/// The `affected` files parsed, on two threads; `None` if one does not parse.
fn parse(
    tree: &Tree,
    affected: &HashSet<&str>,
) -> Option<HashMap<String, prost_types::FileDescriptorProto>> {
    let names: Vec<&str> = affected.iter().copied().collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2)
        .min(names.len());
    let chunk = names.len().div_ceil(threads.max(1));
    std::thread::scope(|scope| {
        let workers: Vec<_> = names
            .chunks(chunk.max(1))
            .map(|share| {
                std::thread::Builder::new()
                    .name("protodrop-parse".into())
                    .stack_size(super::BUILD_STACK)
                    .spawn_scoped(scope, move || {
                        share
                            .iter()
                            .map(|name| {
                                let file = tree.open_file(name).ok()?;
                                Some((name.to_string(), file.into()))
                            })
                            .collect::<Option<Vec<_>>>()
                    })
            })
            .collect();
        let mut out = HashMap::with_capacity(names.len());
        for worker in workers {
            out.extend(worker.ok()?.join().ok()??);
        }
        Some(out)
    })
}

/// The order protox's compiler adds files in when asked for `roots` in turn: each file after its
/// imports (in the order it lists them), depth first. `None` on a file of unknown imports, an import
/// listed twice or an import cycle (errors: a cold load reports them).
fn compile_order<'a>(
    roots: impl Iterator<Item = &'a str>,
    imports: impl Fn(&str) -> Option<Vec<&'a str>>,
) -> Option<Vec<&'a str>> {
    let mut order = Vec::new();
    let mut done: HashSet<&str> = HashSet::new();
    let mut open: HashSet<&str> = HashSet::new();
    // (file, its imports, the next import to visit)
    let mut stack: Vec<(&str, Vec<&str>, usize)> = Vec::new();
    for root in roots {
        if done.contains(root) {
            continue;
        }
        let deps = imports(root)?;
        open.insert(root);
        stack.push((root, deps, 0));
        while let Some((_, deps, next)) = stack.last_mut() {
            if let Some(&dep) = deps.get(*next) {
                *next += 1;
                if deps[..*next - 1].contains(&dep) || open.contains(dep) {
                    return None;
                }
                if done.contains(dep) {
                    continue;
                }
                let deps = imports(dep)?;
                open.insert(dep);
                stack.push((dep, deps, 0));
            } else {
                let (name, _, _) = stack.pop()?;
                open.remove(name);
                done.insert(name);
                order.push(name);
            }
        }
    }
    Some(order)
}

#[cfg(test)]
mod relocate_tests;
