//! The protos folder → one descriptor pool, compiled in-process by protox.
//!
//! Imports resolve, in order, against the folder itself, the extra `-I` roots, the importing file's
//! own folder and vendored roots inside the protos folder (see [`layout`]), the `google/api` and
//! `google/rpc` files bundled in this binary, and protox's bundled well-known types. Files are read
//! as protoc reads them ([`source`]: a BOM, Latin-1 comments). Descriptor sets (`*.binpb`, `*.pb` in
//! the folder, then `--descriptor-set` files; see [`sets`]) come right after the folder's own files.
//!
//! Editions (`edition = "2023"`) are parsed by a patched protox-parse and their features resolved by a
//! patched prost-reflect (see their `vendor/*/PROTODROP.md`).
//!
//! [`http_routes`] is the HTTP/JSON route table built from the pool's `google.api.http` options: it
//! is made with the protos (and kept in the state), below the protocol that serves it.

use std::collections::{BTreeSet, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use miette::Diagnostic as _;
use prost_reflect::DescriptorPool;
use protox::file::{File, FileResolver};
use walkdir::WalkDir;

use crate::diagnostic::{Diagnostic, Diagnostics};

mod ahead;
pub(crate) mod http_routes;
mod incremental;
pub(crate) use incremental::{Generation, Reloaded};
mod layout;
pub(crate) mod nesting;
pub(crate) mod sets;
pub(crate) mod source;
mod stamp;
use ahead::ParseAhead;
use layout::{Layout, Tree};

/// A file in the protos folder listing, in gitignore syntax, files and folders not to compile
/// (unless imported), as `--exclude` does.
pub(crate) const IGNORE_FILE: &str = ".protodropignore";

/// Stack of the threads that load protos and handlers (and parse ahead). The parsers recurse once per
/// nesting level of a file, bounded by `protos::nesting::MAX_NESTING` (and TOML's and Rhai's own
/// limits); a file at that bound needs under 2 MiB in a debug build, and an overflow would abort the
/// process, so the margin is wide (Rhai's compiler recurses on this thread too). Only the pages
/// used are touched.
pub(crate) const BUILD_STACK: usize = 64 << 20;

/// Files compiled into every pool whether or not a user proto imports them: `google.rpc.Status` and the
/// standard error details are what handler `error.details` are written in.
const ALWAYS_LOADED: &[&str] = &["google/rpc/status.proto", "google/rpc/error_details.proto"];

/// `google/api` and `google/rpc` protos (Apache-2.0, from googleapis), served to protox from the binary.
const BUNDLED: &[(&str, &str)] = &[
    (
        "google/api/annotations.proto",
        include_str!("include/google/api/annotations.proto"),
    ),
    (
        "google/api/http.proto",
        include_str!("include/google/api/http.proto"),
    ),
    (
        "google/api/httpbody.proto",
        include_str!("include/google/api/httpbody.proto"),
    ),
    (
        "google/api/field_behavior.proto",
        include_str!("include/google/api/field_behavior.proto"),
    ),
    (
        "google/rpc/status.proto",
        include_str!("include/google/rpc/status.proto"),
    ),
    (
        "google/rpc/error_details.proto",
        include_str!("include/google/rpc/error_details.proto"),
    ),
    (
        "google/rpc/code.proto",
        include_str!("include/google/rpc/code.proto"),
    ),
];

/// protoc's language feature files for editions (`features.(pb.cpp).…`): not bundled, see
/// `to_diagnostic`.
const LANGUAGE_FEATURES: &[&str] = &[
    "google/protobuf/cpp_features.proto",
    "google/protobuf/java_features.proto",
    "google/protobuf/go_features.proto",
];

/// The bundled files as a protox resolver.
struct BundledResolver;

impl FileResolver for BundledResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match BUNDLED.iter().find(|(n, _)| *n == name) {
            Some((name, source)) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// `source`, a proto bundled in the binary under `name` (the admin API's), compiled into a pool of
/// its own with what it may import: the bundled `google/api` and `google/rpc` files and the
/// well-known types. Not the user's pool: a user's tree and its reloads never see it.
pub(crate) fn compile_bundled(
    name: &'static str,
    source: &'static str,
) -> Result<DescriptorPool, protox::Error> {
    struct This(&'static str, &'static str);
    impl FileResolver for This {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            match name == self.0 {
                true => File::from_source(self.0, self.1),
                false => Err(protox::Error::file_not_found(name)),
            }
        }
    }
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(This(name, source));
    resolver.add(BundledResolver);
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file(name)?;
    Ok(compiler.descriptor_pool())
}

/// The compiled protos.
#[derive(Clone, Debug)]
pub struct Protos {
    pub pool: DescriptorPool,
    /// The protos folder's files that were compiled, each under the one name it is known by (see
    /// the `layout` module), sorted.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "read by tests and the memory measurement")
    )]
    pub files: Vec<String>,
    /// Which load this is (see [`Reloaded`]).
    pub generation: incremental::Generation,
    /// For an incremental load, the load it was made from and the files compiled again: what was
    /// derived from the others' descriptors there (their HTTP routes) holds here too.
    pub reloaded: Option<Reloaded>,
}

/// Compiles every `*.proto` under `root` (recursively), with the files of every descriptor set under
/// `root`. Every file is tried, so one load reports the problems of every broken file, not only the
/// first.
#[cfg(any(test, feature = "fuzzing"))]
pub fn load(root: &Path, include_roots: &[PathBuf]) -> Result<Protos, Diagnostics> {
    load_from(root, include_roots, &[], &[])
}

/// [`load`], leaving out the files `exclude` (gitignore patterns relative to `root`) or the folder's
/// [`IGNORE_FILE`] match, unless they are imported; with the files of `descriptor_sets` too
/// (`--descriptor-set`).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn load_from(
    root: &Path,
    include_roots: &[PathBuf],
    exclude: &[String],
    descriptor_sets: &[PathBuf],
) -> Result<Protos, Diagnostics> {
    load_with_helpers(
        root,
        include_roots,
        exclude,
        descriptor_sets,
        ParseAhead::helpers,
        None,
    )
}

/// The files a load read outside the protos folder's own (those of `-I` roots, mostly), noted by
/// each load whether it succeeds or not, for the watcher (`crate::state::reload`) to watch. The clones of
/// one `Sources` share it.
#[derive(Clone, Debug, Default)]
pub struct ReadLog(Arc<Mutex<Option<BTreeSet<PathBuf>>>>);

impl ReadLog {
    /// What the last load read, if a load ran since the last call.
    pub fn take(&self) -> Option<BTreeSet<PathBuf>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn note(&self, reads: BTreeSet<PathBuf>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reads);
    }
}

/// `load_from`, noting in `reads` the files read outside the protos folder.
pub(crate) fn load_noting(
    root: &Path,
    include_roots: &[PathBuf],
    exclude: &[String],
    descriptor_sets: &[PathBuf],
    reads: &ReadLog,
) -> Result<Protos, Diagnostics> {
    load_with_helpers(
        root,
        include_roots,
        exclude,
        descriptor_sets,
        ParseAhead::helpers,
        Some(reads),
    )
}

/// `load` with `helpers(file count)` threads parsing ahead of the compiler (tests pin the count).
fn load_with_helpers(
    root: &Path,
    include_roots: &[PathBuf],
    exclude: &[String],
    descriptor_sets: &[PathBuf],
    helpers: impl FnOnce(usize) -> usize,
    reads: Option<&ReadLog>,
) -> Result<Protos, Diagnostics> {
    let started = std::time::Instant::now();
    let mut problems = Diagnostics::default();
    if !root.is_dir() {
        problems.push(Diagnostic::file(root, "protos folder not found"));
        return Err(problems);
    }
    let (found, mut set_paths) = find_protos(root, exclude, &mut problems);
    set_paths.extend(descriptor_sets.iter().cloned());
    let sets = sets::Sets::read(&set_paths, &mut problems);
    let layout = Arc::new(Layout::new(root, include_roots));
    // Each file under the one name it is known by (two names of one file are one file).
    let mut files: Vec<(String, PathBuf)> = Vec::with_capacity(found.len());
    let mut seen = std::collections::HashSet::with_capacity(found.len());
    for rel in &found {
        let name = layout.known_name(0, rel);
        if seen.insert(name.clone()) {
            files.push((name, root.join(rel)));
        }
    }
    let shadowed: Vec<&str> = sets.names().filter(|n| seen.contains(*n)).collect();
    if let Some(first) = shadowed.first() {
        tracing::warn!(
            "{} file(s) of the descriptor sets are also .proto files in {} ({first}{}): the .proto \
             files are compiled, the sets' copies ignored",
            shadowed.len(),
            root.display(),
            if shadowed.len() > 1 { ", …" } else { "" }
        );
    }
    // Stamped before anything is read: an edit made during the load shows in the next one.
    let mut stamps = stamp::stamp_all(files.iter().map(|(_, path)| path.as_path()));
    tracing::debug!(files = files.len(), elapsed = ?started.elapsed(), "protos found and stamped");
    let key = incremental::Key {
        root: root.to_path_buf(),
        include_roots: include_roots.to_vec(),
        exclude: exclude.to_vec(),
        descriptor_sets: descriptor_sets.to_vec(),
    };
    // Without descriptor sets, and with nothing to report so far: what changed since the last good
    // load compiled onto the rest (see `incremental`), when that gives what this load would.
    let incremental = sets.is_empty() && problems.0.is_empty();
    if incremental {
        if let Some((pool, reloaded, generation)) = incremental::reload(
            &key,
            &found,
            &files,
            &layout,
            &mut stamps,
            ALWAYS_LOADED,
            incremental::next_generation(),
        ) {
            // The kept files' options were read when they were compiled.
            let checking = std::time::Instant::now();
            check_method_options(&pool, Some(&reloaded.recompiled), root, include_roots)?;
            tracing::debug!(elapsed = ?checking.elapsed(), "method options checked");
            let mut files: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
            files.sort_unstable();
            return Ok(Protos {
                pool,
                files,
                generation,
                reloaded: Some(reloaded),
            });
        }
    }
    let memo_files = incremental.then(|| files.clone());
    let ahead = ParseAhead::new(&files);
    let files: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
    let resolver = Tree::new(layout, ahead.clone(), found.clone(), sets.resolver());
    let resolving_problems = resolver.problems.clone();
    let read = resolver.reads.clone();
    let record = resolver.record();

    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    let mut reported = std::collections::HashSet::new();
    std::thread::scope(|scope| {
        for _ in 0..helpers(files.len()) {
            // A failed spawn only means the compiler parses that share itself.
            let _ = std::thread::Builder::new()
                .name("protodrop-parse".into())
                .stack_size(BUILD_STACK)
                .spawn_scoped(scope, || ahead.help());
        }
        let _stop_helpers = ahead.close_on_drop();
        for name in ALWAYS_LOADED
            .iter()
            .copied()
            .map(str::to_string)
            .chain(files.iter().cloned())
            .chain(sets.names().map(str::to_string))
        {
            // Should protox or prost-reflect panic on some input, the file being compiled is named;
            // the compiler's state is not trusted after that, so nothing more is compiled.
            match panic::catch_unwind(AssertUnwindSafe(|| compiler.open_file(&name).err())) {
                Ok(None) => {}
                Ok(Some(err)) => {
                    // A broken file fails every file that imports it with its own error: each
                    // problem is reported once, where it is, and each importer gets one line at
                    // its import (its own problems stay unknown until the import loads).
                    for d in to_diagnostic(&err, root, include_roots, &sets) {
                        if reported.insert(d.to_string()) {
                            problems.push(d);
                        }
                    }
                    if let Some(d) = ahead
                        .path_of(&name)
                        .and_then(|path| failed_import(&compiler, &name, path, &err))
                    {
                        problems.push(d);
                    }
                }
                Err(panic) => {
                    let file = set_only(&name, root, include_roots, &sets)
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.join(&name));
                    problems.push(Diagnostic::file(
                        file,
                        format!(
                            "the proto compiler failed on this file or one it imports: {}",
                            crate::diagnostic::panic_message(&panic)
                        ),
                    ));
                    return;
                }
            }
        }
    });
    problems.0.extend(std::mem::take(
        &mut *resolving_problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    ));
    if let Some(reads) = reads {
        reads.note(std::mem::take(
            &mut *read.lock().unwrap_or_else(PoisonError::into_inner),
        ));
    }
    problems.into_result()?;
    // The pool straight from the compiler keeps custom options such as `google.api.http`
    // (rebuilding it from `file_descriptor_set()` loses them).
    let pool =
        panic::catch_unwind(AssertUnwindSafe(|| compiler.descriptor_pool())).map_err(|panic| {
            Diagnostics(vec![Diagnostic::file(
                root,
                format!(
                    "building the descriptor pool failed: {}",
                    crate::diagnostic::panic_message(&panic)
                ),
            )])
        })?;
    check_method_options(&pool, None, root, include_roots)?;
    let generation = incremental::next_generation();
    if let Some(memo_files) = memo_files {
        let (origins, root_stamps) = record.take();
        let mut stamps = stamps;
        stamps.extend(root_stamps);
        incremental::remember(
            key,
            found,
            memo_files,
            Arc::new(origins),
            stamps,
            &pool,
            generation,
        );
    }
    let mut files = files;
    files.sort_unstable();
    Ok(Protos {
        pool,
        files,
        generation,
        reloaded: None,
    })
}

/// For `name` (a folder file at `path`) that failed on `err`, a problem of another file: the line
/// of `name`'s import that failed (its first import the compiler did not take: imports are linked
/// in order), naming the broken file, as protoc's "Import … was not found or had errors".
fn failed_import(
    compiler: &protox::Compiler,
    name: &str,
    path: &Path,
    err: &protox::Error,
) -> Option<Diagnostic> {
    let broken = err.file().filter(|f| *f != name)?;
    let file = nesting::open_checked(name, path).ok()?;
    let loaded: std::collections::HashSet<&str> = compiler.files().map(|f| f.name()).collect();
    let descriptor = file.file_descriptor_proto();
    let (i, import) = descriptor
        .dependency
        .iter()
        .enumerate()
        .find(|(_, import)| !loaded.contains(import.as_str()))?;
    let message = if import == broken {
        format!("import '{import}' has errors (reported at {broken})")
    } else {
        format!(
            "import '{import}' has errors (it imports {broken}, which has errors reported there)"
        )
    };
    let message = format!("{message}; the rest of this file is checked once it loads");
    let at = descriptor
        .source_code_info
        .iter()
        .flat_map(|info| &info.location)
        .find(|l| l.path == [3, i as i32] && l.span.len() >= 3);
    Some(match at {
        Some(at) => Diagnostic::at_location(
            path,
            file.source(),
            at.span[0] as usize,
            at.span[1] as usize,
            message,
        ),
        None => Diagnostic::file(path, message),
    })
}

/// Decodes every method's options once (of the files `only` names, when given), as transcoding
/// will: prost-reflect panics on options it cannot decode (nested past prost's recursion limit
/// through a dotted option name, which the nesting check does not count). Such a method is reported
/// at its option's line.
fn check_method_options(
    pool: &DescriptorPool,
    only: Option<&HashSet<String>>,
    root: &Path,
    include_roots: &[PathBuf],
) -> Result<(), Diagnostics> {
    let mut problems = Diagnostics::default();
    for method in pool
        .services()
        .filter(|s| only.is_none_or(|only| only.contains(s.parent_file().name())))
        .flat_map(|s| s.methods().collect::<Vec<_>>())
    {
        // Every method, with options or not (an empty one decodes in no time): asking whether it
        // has any through `method_descriptor_proto()` would make the pool's `prost_types` copy of
        // every file with a service, which it otherwise makes only on demand.
        let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| drop(method.options()))) else {
            continue;
        };
        let file = method.parent_file();
        let message = format!(
            "the options of {} cannot be read (nested too deeply?): {}",
            method.full_name(),
            crate::diagnostic::panic_message(&panic)
        );
        let path = path_or_folder(root, include_roots, file.name());
        // The option's own location (MethodDescriptorProto field 4 is `options`), else the method's.
        let mut option_path = method.path().to_vec();
        option_path.push(4);
        let span = file
            .file_descriptor_proto()
            .source_code_info
            .as_ref()
            .and_then(|info| {
                let at = |p: &[i32]| info.location.iter().find(|l| l.path.starts_with(p));
                at(&option_path)
                    .or_else(|| at(method.path()))
                    .map(|l| l.span.clone())
            });
        let source = source::read_for_display(&path);
        problems.push(match span.as_deref() {
            Some([line, column, ..]) => Diagnostic::at_location(
                path,
                source.as_deref(),
                *line as usize,
                *column as usize,
                message,
            ),
            _ => Diagnostic::file(path, message),
        });
    }
    problems.into_result()
}

/// Relative names of every `*.proto` under `root` that is not excluded, sorted, and the paths of its
/// descriptor sets. Excluded folders are not walked.
fn find_protos(
    root: &Path,
    exclude: &[String],
    problems: &mut Diagnostics,
) -> (Vec<String>, Vec<PathBuf>) {
    let excluded = exclusions(root, exclude, problems);
    let mut files = Vec::new();
    let mut sets = Vec::new();
    let walk = WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || !excluded
                    .matched(e.path(), e.file_type().is_dir())
                    .is_ignore()
        });
    for entry in walk {
        match entry {
            Ok(e) if e.file_type().is_file() && sets::is_descriptor_set(e.path()) => {
                sets.push(e.path().to_path_buf());
            }
            Ok(e)
                if e.file_type().is_file()
                    && e.path().extension().is_some_and(|x| x == "proto") =>
            {
                let rel = e.path().strip_prefix(root).unwrap_or(e.path());
                // protox names files with forward slashes whatever the platform.
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push(name);
            }
            Ok(_) => {}
            Err(e) => problems.push(Diagnostic::file(e.path().unwrap_or(root), e.to_string())),
        }
    }
    (files, sets)
}

/// The descriptor set `name` comes from, when no source file of that name is on disk.
fn set_only<'a>(
    name: &str,
    root: &Path,
    include_roots: &[PathBuf],
    sets: &'a sets::Sets,
) -> Option<&'a Path> {
    match on_disk(root, include_roots, name) {
        Some(_) => None,
        None => sets.set_of(name),
    }
}

/// The file on disk a name stands for: in the protos folder or the first `-I` root that has it
/// (the bundled files and descriptor sets' files have none).
pub(crate) fn on_disk(root: &Path, include_roots: &[PathBuf], name: &str) -> Option<PathBuf> {
    std::iter::once(root)
        .chain(include_roots.iter().map(PathBuf::as_path))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// [`on_disk`], else where the protos folder would have it (a path to name in a diagnostic).
pub(crate) fn path_or_folder(root: &Path, include_roots: &[PathBuf], name: &str) -> PathBuf {
    on_disk(root, include_roots, name).unwrap_or_else(|| root.join(name))
}

/// The `--exclude` patterns and the folder's [`IGNORE_FILE`], as one gitignore matcher rooted at
/// the protos folder. A pattern that does not parse is a problem at its place.
fn exclusions(
    root: &Path,
    exclude: &[String],
    problems: &mut Diagnostics,
) -> ignore::gitignore::Gitignore {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
    let file = root.join(IGNORE_FILE);
    if file.is_file() {
        if let Some(err) = builder.add(&file) {
            problems.push(ignore_problem(&file, &err));
        }
    }
    for pattern in exclude {
        if let Err(err) = builder.add_line(None, pattern) {
            problems.push(Diagnostic::file(
                root,
                format!("--exclude {pattern:?}: {}", ignore_message(&err)),
            ));
        }
    }
    builder.build().unwrap_or_else(|err| {
        problems.push(Diagnostic::file(root, format!("exclusions: {err}")));
        ignore::gitignore::Gitignore::empty()
    })
}

/// A problem of the ignore file, at its line when the error names one.
fn ignore_problem(file: &Path, err: &ignore::Error) -> Diagnostic {
    fn line_of(err: &ignore::Error) -> Option<u64> {
        match err {
            ignore::Error::WithLineNumber { line, .. } => Some(*line),
            ignore::Error::WithPath { err, .. } | ignore::Error::WithDepth { err, .. } => {
                line_of(err)
            }
            ignore::Error::Partial(errs) => errs.first().and_then(line_of),
            _ => None,
        }
    }
    let message = ignore_message(err);
    match line_of(err) {
        Some(line) => Diagnostic::at_line(
            file,
            source::read_for_display(file).as_deref(),
            line as usize,
            1,
            message,
        ),
        None => Diagnostic::file(file, message),
    }
}

/// The innermost message of an ignore error (the outer ones repeat the path and line).
fn ignore_message(err: &ignore::Error) -> String {
    match err {
        ignore::Error::WithLineNumber { err, .. }
        | ignore::Error::WithPath { err, .. }
        | ignore::Error::WithDepth { err, .. } => ignore_message(err),
        ignore::Error::Partial(errs) if !errs.is_empty() => ignore_message(&errs[0]),
        other => other.to_string(),
    }
}

/// A protox error (a miette diagnostic) as file:line:column problems with the offending line: its
/// own, then one per further problem it carries (prost-reflect reports every problem of a file in
/// one error, and each is worth fixing before the next load).
fn to_diagnostic(
    err: &protox::Error,
    root: &Path,
    include_roots: &[PathBuf],
    sets: &sets::Sets,
) -> Vec<Diagnostic> {
    if let Some(d) = nesting::diagnostic_of(err) {
        return vec![d.clone()];
    }
    // A file of a descriptor set has no source to point into: the set is named instead.
    if let Some(set) = err
        .file()
        .and_then(|name| set_only(name, root, include_roots, sets))
    {
        let name = err.file().unwrap_or_default();
        let mut message = err.to_string();
        if let Some(help) = err.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        if message.contains("not found") {
            message.push_str(
                " (a set written without its imports? protoc needs --include_imports; buf build \
                 includes them unless --exclude-imports)",
            );
        }
        return vec![Diagnostic::file(
            set,
            format!("{name} (in this descriptor set): {message}"),
        )];
    }
    let path = |name: &str| on_disk(root, include_roots, name);
    let name = err.file();
    let file = name.map_or_else(
        || root.to_path_buf(),
        |name| path_or_folder(root, include_roots, name),
    );
    let source = name.and_then(|_| source::read_for_display(&file));
    let mut out = Vec::new();
    let mut duplicated = std::collections::HashSet::new();
    let mut loaded_twice = false;
    // Per other file: duplicates named so far, and how many more were left out.
    let mut per_file: Vec<(PathBuf, usize)> = Vec::new();
    for d in
        std::iter::once(err as &dyn miette::Diagnostic).chain(err.related().into_iter().flatten())
    {
        let text = d.to_string();
        if let Some(dup) = duplicate_name(&text) {
            // The members of a duplicated message or enum are duplicates because it is: one problem.
            if dup
                .match_indices('.')
                .any(|(i, _)| duplicated.contains(&dup[..i]))
            {
                continue;
            }
            duplicated.insert(dup.to_string());
        }
        // Which duplicates are shown is settled before placing them: placing one finds its line in
        // the source, and a copied file has thousands.
        let (message, other) =
            name_first_definition(text, name.map(|n| (n, file.as_path())), &path);
        match other {
            // A file loaded under two names duplicates every name in it: one problem, said once.
            Other::SameFile if std::mem::replace(&mut loaded_twice, true) => continue,
            // A copy of a file: a few of its names, then how many more.
            Other::File(other) => {
                let i = per_file
                    .iter()
                    .position(|(p, _)| *p == other)
                    .unwrap_or_else(|| {
                        per_file.push((other, 0));
                        per_file.len() - 1
                    });
                per_file[i].1 += 1;
                if per_file[i].1 > DUPLICATES_SHOWN {
                    continue;
                }
            }
            _ => {}
        }
        out.push(place(d, message, &file, source.as_deref()));
    }
    for (other, n) in per_file {
        if n > DUPLICATES_SHOWN {
            out.push(Diagnostic::file(
                &file,
                format!(
                    "{} more names of this file are already defined in {}",
                    n - DUPLICATES_SHOWN,
                    other.display()
                ),
            ));
        }
    }
    out
}

/// Duplicate names reported one by one per pair of files; the rest are counted.
const DUPLICATES_SHOWN: usize = 3;

/// Where the other definition of a duplicated name is.
enum Other {
    /// Not a duplicate, or its other file is not known by path.
    Unknown,
    /// In this same file, loaded under another name.
    SameFile,
    File(PathBuf),
}

/// The name in prost-reflect's "name 'p.M' is already defined …" / "… is defined twice".
fn duplicate_name(message: &str) -> Option<&str> {
    let (name, rest) = message.strip_prefix("name '")?.split_once("' is ")?;
    (rest.starts_with("already defined") || rest.starts_with("defined twice")).then_some(name)
}

/// One problem of a protox error (`d`, its text rewritten as `message`) in `file`, at its primary
/// label when there is one; the other labels are named in the message by their place.
fn place(
    d: &dyn miette::Diagnostic,
    mut message: String,
    file: &Path,
    source: Option<&str>,
) -> Diagnostic {
    let help = match d.help() {
        Some(help) => Some(format!(" (help: {help})")),
        None if LANGUAGE_FEATURES
            .iter()
            .any(|f| message.contains(&format!("'{f}' not found"))) =>
        {
            Some(
                " (protodrop does not bundle the language feature files, which need a newer \
                 descriptor.proto than it compiles with: load this schema as a descriptor set, \
                 `protoc --include_imports -o x.binpb …` or `buf build -o x.binpb`, in the protos \
                 folder or with --descriptor-set)"
                    .to_string(),
            )
        }
        None if message.starts_with("import '") && message.ends_with("' not found") => {
            Some(format!(
            " (help: give the folder it is under with -I; a file not meant to be served can be \
             left out with --exclude or a {IGNORE_FILE} file)"
        ))
        }
        None => None,
    };
    let labels: Vec<_> = d.labels().map(|l| l.collect()).unwrap_or_default();
    let (Some(source), Some(primary)) = (
        source,
        labels
            .iter()
            .position(|l| l.primary())
            .or(labels.first().map(|_| 0)),
    ) else {
        message.extend(help);
        return Diagnostic::file(file, message);
    };
    for (i, label) in labels.iter().enumerate() {
        match label.label() {
            // A label at the problem itself mostly says "found here".
            Some(text) if i == primary => {
                if !text.ends_with(" here") && !message.contains(text) {
                    message.push_str(&format!(" ({text})"));
                }
            }
            Some(text) => {
                let (line, column, _) = crate::diagnostic::locate(source, label.offset());
                message.push_str(&format!("; {text}: {}:{line}:{column}", file.display()));
            }
            None => {}
        }
    }
    message.extend(help);
    let at = &labels[primary];
    let span = at.offset()..at.offset() + at.len();
    Diagnostic::at(file, source, span, message)
}

/// prost-reflect names the other definition of a duplicate name by its import name and line
/// ("… is already defined in file 'a.proto' at 3:9", see vendor/prost-reflect/PROTODROP.md): name it
/// by path, and when that is this very file, say that it was loaded under two names.
fn name_first_definition(
    message: String,
    file: Option<(&str, &Path)>,
    path: &dyn Fn(&str) -> Option<PathBuf>,
) -> (String, Other) {
    const MARK: &str = " is already defined in file '";
    let Some((head, rest)) = message.split_once(MARK) else {
        return (message, Other::Unknown);
    };
    let Some((other, at)) = rest.split_once('\'') else {
        return (message, Other::Unknown);
    };
    let Some(other_path) = path(other) else {
        return (message, Other::Unknown);
    };
    let same_file = file.is_some_and(|(name, this)| {
        match (
            std::fs::canonicalize(this),
            std::fs::canonicalize(&other_path),
        ) {
            (Ok(this), Ok(other_path)) => name != other && this == other_path,
            _ => false,
        }
    });
    match file {
        Some((name, _)) if same_file => (
            format!(
                "{head} is already defined: this file is loaded under two names, '{other}' and \
                 '{name}' (it is reachable from two include roots; import it by one name)"
            ),
            Other::SameFile,
        ),
        _ => (
            format!(
                "{head} is already defined at {}{}",
                other_path.display(),
                at.strip_prefix(" at ")
                    .map(|l| format!(":{l}"))
                    .unwrap_or_default()
            ),
            Other::File(other_path),
        ),
    }
}

/// For unit tests: `files` (name, text) compiled into a pool, with protox's well-known types.
#[cfg(test)]
pub(crate) fn compile_texts(files: &[(&str, &str)]) -> prost_reflect::DescriptorPool {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
    compiler
        .open_files(files.iter().map(|(name, _)| name))
        .unwrap();
    compiler.descriptor_pool()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's load grows in step with its options, not with their square: each option's source
    /// locations used to be moved by a pass over all of the file's locations (googleapis spent a
    /// third of its load there). Eight times the options must cost well under 64 times the time.
    #[test]
    fn a_files_load_grows_in_step_with_its_options() {
        fn text(n: usize) -> String {
            let mut text = String::from("syntax = \"proto3\";\npackage p;\n");
            for i in 0..n {
                text += &format!(
                    "message M{i} {{\n  option deprecated = true;\n  string a = 1 [deprecated = true];\n}}\n"
                );
            }
            text
        }
        let load = |n: usize| {
            let text = text(n);
            (0..3)
                .map(|_| {
                    let start = std::time::Instant::now();
                    compile_texts(&[("big.proto", &text)]);
                    start.elapsed()
                })
                .min()
                .unwrap()
        };
        load(100);
        let (small, large) = (load(500), load(4000));
        let ratio = large.as_secs_f64() / small.as_secs_f64();
        assert!(
            ratio < 24.0,
            "500 messages loaded in {small:?}, 4,000 in {large:?}: {ratio:.1} times"
        );
    }

    /// A message's build grows in step with its fields, not with their square: its index of field
    /// names (and of json names) was kept sorted by inserting each field in place, so a field named
    /// before all those declared earlier moved every one of them. The same fields are built
    /// declared in the order of their names (each goes at the end: no move) and in the reverse
    /// order (each goes first: it moves all the others), which must take about the same time.
    ///
    /// Not sizes against each other, as `a_files_load_grows_in_step_with_its_options` does: in a
    /// debug build the moves are fast (`memmove` is optimized) and the rest of a field's build
    /// slow, so the square only shows past tens of thousands of fields, where a larger build's
    /// caches and tables make it slower per field anyway (sixteen times the fields took 18 to
    /// 20 times the time here, and 32 to 51 times with the insertions). Two orders of one size
    /// share all of that. The file is given as a descriptor, so that parsing it (the most of a
    /// debug build's time) does not hide the rest.
    #[test]
    fn a_big_message_builds_as_fast_with_its_fields_in_any_order() {
        use prost_types::{field_descriptor_proto::Type, DescriptorProto, FieldDescriptorProto};
        const N: usize = 80_000;
        // Past 19,000 (reserved for protobuf itself).
        fn number(i: usize) -> i32 {
            (if i + 1 < 19_000 { i + 1 } else { i + 1001 }) as i32
        }
        fn name(i: usize, reversed: bool) -> String {
            format!("f{:07}", if reversed { N - i } else { i + 1 })
        }
        let file = |reversed: bool| prost_types::FileDescriptorProto {
            name: Some("big.proto".into()),
            package: Some("p".into()),
            // proto2: proto3's check of camel-case names (linear) would be a sixth of the build.
            syntax: Some("proto2".into()),
            message_type: vec![DescriptorProto {
                name: Some("M".into()),
                field: (0..N)
                    .map(|i| FieldDescriptorProto {
                        name: Some(name(i, reversed)),
                        number: Some(number(i)),
                        r#type: Some(Type::String as i32),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        // The time of one build (the file made beforehand).
        let build = |reversed: bool, file: &prost_types::FileDescriptorProto| {
            let file = file.clone();
            let start = std::time::Instant::now();
            let mut pool = prost_reflect::DescriptorPool::new();
            pool.add_file_descriptor_proto(file).unwrap();
            let elapsed = start.elapsed();
            let message = pool.get_message_by_name("p.M").unwrap();
            for i in [0, N / 2, N - 1] {
                let field = message.get_field_by_json_name(&name(i, reversed)).unwrap();
                assert_eq!(field.number() as i32, number(i));
            }
            elapsed
        };
        let (in_order, reversed) = (file(false), file(true));
        // The orders take turns, so that a busy machine slows both alike; the fastest is kept.
        let (mut forward, mut backward) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..3 {
            forward = forward.min(build(false, &in_order));
            backward = backward.min(build(true, &reversed));
        }
        let ratio = backward.as_secs_f64() / forward.as_secs_f64();
        // 0.9 to 1.05 here (with the insertions in place: 2.0).
        assert!(
            ratio < 1.45,
            "{N} fields built in {forward:?} in their names' order, in {backward:?} in the \
             reverse order: {ratio:.2} times"
        );
    }

    /// Every problem prost-reflect reports for `text`, in its order: the message and each label
    /// (its text and the line:column it points at).
    fn problems(text: &str) -> Vec<String> {
        let file = protox::file::File::from_source("dup.proto", text).unwrap();
        let error = prost_reflect::DescriptorPool::new()
            .add_file_descriptor_proto(file.file_descriptor_proto().clone())
            .unwrap_err()
            .with_source_code(text);
        let at = |offset: usize| {
            let line = text[..offset].matches('\n').count() + 1;
            let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{line}:{column}")
        };
        let render = |problem: &dyn miette::Diagnostic| {
            let labels =
                problem.labels().into_iter().flatten().map(|label| {
                    format!(" [{} {}]", label.label().unwrap_or(""), at(label.offset()))
                });
            problem.to_string() + &labels.collect::<String>()[..]
        };
        std::iter::once(render(&error))
            .chain(error.related().into_iter().flatten().map(render))
            .collect()
    }

    /// A name (or json name) defined again in a message, or a value name in an enum, is reported
    /// at each definition after the first, against the one before it, among the other problems
    /// in the order the fields and values come: what prost-reflect reported when its name
    /// indices were filled one field at a time (the expected lists are that build's output).
    #[test]
    fn duplicate_names_in_a_message_or_an_enum_are_reported_in_order() {
        let text = "syntax = \"proto2\";\npackage p;\n\
                    message M {\n  optional string a = 1;\n  optional Nope b = 2;\n  \
                    optional string a = 3;\n  optional string foo_bar = 4;\n  \
                    optional string fooBar = 4;\n  optional int32 a = 5;\n  \
                    optional string x = 6 [json_name = \"j\"];\n  \
                    optional string y = 7 [json_name = \"j\"];\n  \
                    message N { optional string c = 1; optional string c = 2; }\n  \
                    enum E { V = 0; W = 1; V = 1; V = 2; }\n}\n\
                    enum F { Z = 0; Y = 0; Z = 1; }\n\
                    message O { optional Nope d = 1; optional string d = 2; }\n";
        let expected = [
            "name 'p.M.a' is defined twice [first defined here 4:19] [defined again here 6:19]",
            "name 'p.M.a' is defined twice [first defined here 4:19] [defined again here 9:18]",
            "name 'p.M.N.c' is defined twice [first defined here 12:31] [defined again here 12:54]",
            "name 'p.M.V' is defined twice [first defined here 13:12] [defined again here 13:26]",
            "name 'p.M.V' is defined twice [first defined here 13:12] [defined again here 13:33]",
            "name 'p.O.d' is defined twice [first defined here 16:27] [defined again here 16:50]",
            "name 'p.Z' is defined twice [first defined here 15:10] [defined again here 15:24]",
            "name 'Nope' is not defined [found here 5:12]",
            "name 'p.M.a' is defined twice [first defined here 4:19] [defined again here 6:19]",
            "a field with JSON name '' is already defined [first defined here 4:19] [defined again here 6:19]",
            "field number '4' is already used [first defined here 7:29] [defined again here 8:28]",
            "a field with JSON name '' is already defined [first defined here 7:19] [defined again here 8:19]",
            "name 'p.M.a' is defined twice [first defined here 6:19] [defined again here 9:18]",
            "a field with JSON name '' is already defined [first defined here 6:19] [defined again here 9:18]",
            "a field with JSON name 'j' is already defined [first defined here 10:19] [defined again here 11:19]",
            "name 'p.M.N.c' is defined twice [first defined here 12:31] [defined again here 12:54]",
            "a field with JSON name '' is already defined [first defined here 12:31] [defined again here 12:54]",
            "enum number '1' has already been used [first defined here 13:23] [defined again here 13:30]",
            "name 'p.M.V' is defined twice [first defined here 13:12] [defined again here 13:26]",
            "name 'p.M.V' is defined twice [first defined here 13:26] [defined again here 13:33]",
            "name 'Nope' is not defined [found here 16:22]",
            "name 'p.O.d' is defined twice [first defined here 16:27] [defined again here 16:50]",
            "a field with JSON name '' is already defined [first defined here 16:27] [defined again here 16:50]",
            "enum number '0' has already been used [first defined here 15:14] [defined again here 15:21]",
            "name 'p.Z' is defined twice [first defined here 15:10] [defined again here 15:24]",
        ];
        assert_eq!(problems(text), expected);
    }

    /// A chain of `n` files, each importing the one before it and using its message; `google.api.http`
    /// on the first so the custom option's survival is compared too. A broken file is imported by the
    /// next one only (the chain goes on past both), so the compiler asks for it twice.
    fn tree(n: usize, broken: &[(usize, &str)]) -> tempfile::TempDir {
        let is_broken = |i: usize| broken.iter().any(|(b, _)| *b == i);
        let prev = |i: usize| match i {
            i if i >= 2 && is_broken(i - 2) => i - 3,
            i => i - 1,
        };
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            let text = match broken.iter().find(|(b, _)| *b == i) {
                Some((_, text)) => text.to_string(),
                None if i == 0 => "syntax = \"proto3\";\npackage p;\nimport \"google/api/annotations.proto\";\n\
                     message M0 { string a = 1; }\nservice S {\n  rpc Get (M0) returns (M0) {\n    \
                     option (google.api.http) = { get: \"/m\" };\n  }\n}\n"
                    .to_string(),
                None => format!(
                    "syntax = \"proto3\";\npackage p;\nimport \"f{p:03}.proto\";\n\nmessage M{i} {{\n  M{p} prev = 1;\n}}\n",
                    p = prev(i)
                ),
            };
            std::fs::write(dir.path().join(format!("f{i:03}.proto")), text).unwrap();
        }
        dir
    }

    fn loaded(dir: &Path, helpers: usize) -> Result<Protos, Diagnostics> {
        load_with_helpers(dir, &[], &[], &[], |_| helpers, None)
    }

    #[test]
    fn parsing_ahead_builds_the_same_pool() {
        let dir = tree(150, &[]);
        let alone = loaded(dir.path(), 0).unwrap();
        for helpers in [1, 2, 3] {
            let ahead = loaded(dir.path(), helpers).unwrap();
            assert_eq!(ahead.files, alone.files);
            // The encoded pool carries source info and the `google.api.http` option.
            assert_eq!(ahead.pool.encode_to_vec(), alone.pool.encode_to_vec());
        }
        let get = alone
            .pool
            .get_service_by_name("p.S")
            .unwrap()
            .methods()
            .next()
            .unwrap();
        let http = alone.pool.get_extension_by_name("google.api.http").unwrap();
        assert!(
            get.options().has_extension(&http),
            "the custom option survives"
        );
    }

    #[test]
    fn problems_are_the_same_whoever_parses() {
        let syntax = "syntax = \"proto3\";\npackage p;\n\nmessage M40 {\n  int32 a = ;\n}\n";
        let missing =
            "syntax = \"proto3\";\npackage p;\nimport \"nowhere.proto\";\nmessage M90 {}\n";
        let duplicate = "syntax = \"proto3\";\npackage p;\n\nmessage M3 {}\n";
        let dir = tree(120, &[(40, syntax), (90, missing), (110, duplicate)]);
        let alone = loaded(dir.path(), 0).unwrap_err().to_string();
        for helpers in [1, 2, 3] {
            for _ in 0..3 {
                let ahead = loaded(dir.path(), helpers).unwrap_err().to_string();
                assert_eq!(ahead, alone, "with {helpers} helpers");
            }
        }
        let at = |file: &str, line: usize| {
            let want = format!("{}:{line}:", dir.path().join(file).display());
            assert!(
                alone.lines().any(|l| l.starts_with(&want)),
                "expected {want}… in:\n{alone}"
            );
        };
        at("f040.proto", 5); // the syntax error
        at("f090.proto", 3); // the missing import
        at("f110.proto", 4); // the second definition of p.M3
    }
}

/// Issue 17 item 3: names resolve as protoc resolves them — only the file's own scopes, its imports
/// and their public imports are searched — whatever order the files are loaded in. Each tree is
/// loaded twice, with the file that should stay out of scope named to sort first and then last
/// (files are compiled in path order, and a file compiled earlier is in the pool).
#[cfg(test)]
mod scoping_tests {
    use super::*;

    /// `files` with `{out}` in names and texts replaced by `0_out` then `z_out`: the loads.
    fn both_orders(files: &[(&str, &str)]) -> Vec<(String, Result<Protos, Diagnostics>)> {
        ["0_out", "z_out"]
            .iter()
            .map(|out| {
                let dir = tempfile::tempdir().unwrap();
                for (name, text) in files {
                    std::fs::write(
                        dir.path().join(name.replace("{out}", out)),
                        text.replace("{out}", out),
                    )
                    .unwrap();
                }
                (
                    out.to_string(),
                    load_with_helpers(dir.path(), &[], &[], &[], |_| 0, None),
                )
            })
            .collect()
    }

    /// The full name of the type of field `field` of message `message`.
    fn field_type(protos: &Protos, message: &str, field: &str) -> String {
        let message = protos.pool.get_message_by_name(message).unwrap();
        let field = message.get_field_by_name(field).unwrap();
        field.kind().as_message().unwrap().full_name().to_string()
    }

    const AB: &str = "syntax = \"proto3\";\npackage a.b;\nmessage M { string ab = 1; }\n";
    const B: &str = "syntax = \"proto3\";\npackage b;\nmessage M { string b = 1; }\n";

    /// protoc picks `b.M`: package `a.b` is declared only by a file `user.proto` does not import.
    #[test]
    fn a_partly_qualified_name_skips_a_package_of_a_file_not_imported() {
        let user = "syntax = \"proto3\";\npackage a.x;\nimport \"m_b.proto\";\n\
                    message U { b.M m = 1; }\n";
        for (order, loaded) in both_orders(&[
            ("{out}.proto", AB),
            ("m_b.proto", B),
            ("m_user.proto", user),
        ]) {
            let protos = loaded.unwrap_or_else(|e| panic!("{order}: {e}"));
            assert_eq!(field_type(&protos, "a.x.U", "m"), "b.M", "{order}");
        }
    }

    /// The reverse: `user.proto` imports the file of package `a.b`, so `a.b.M` it is, as protoc.
    #[test]
    fn a_partly_qualified_name_takes_the_inner_package_when_imported() {
        let user = "syntax = \"proto3\";\npackage a.x;\nimport \"m_ab.proto\";\n\
                    message U { b.M m = 1; }\n";
        for (order, loaded) in both_orders(&[
            ("m_ab.proto", AB),
            ("{out}.proto", B),
            ("m_user.proto", user),
        ]) {
            let protos = loaded.unwrap_or_else(|e| panic!("{order}: {e}"));
            assert_eq!(field_type(&protos, "a.x.U", "m"), "a.b.M", "{order}");
        }
    }

    /// protoc rejects `b.M` when an imported file declares a package nested in `a.b` (so `a.b` is
    /// in scope) that has no `M`, even though `b.M` exists: the same error in both orders, at the use.
    #[test]
    fn an_imported_nested_package_shadows_as_in_protoc() {
        let abc = "syntax = \"proto3\";\npackage a.b.c;\nmessage Other {}\n";
        let user = "syntax = \"proto3\";\npackage a.x;\nimport \"m_b.proto\";\n\
                    import \"{out}.proto\";\nmessage U { b.M m = 1; }\n";
        let mut errors = Vec::new();
        for (order, loaded) in both_orders(&[
            ("{out}.proto", abc),
            ("m_b.proto", B),
            ("m_user.proto", user),
        ]) {
            let err = loaded.map(|_| ()).unwrap_err();
            assert_eq!(err.0.len(), 1, "{order}: {err}");
            let d = &err.0[0];
            assert!(d.file.ends_with("m_user.proto"), "{order}: {err}");
            assert_eq!((d.line, d.column), (5, 13), "{order}: {err}");
            assert!(
                d.message
                    .contains("'b.M' resolves to 'a.b.M', which is not defined"),
                "{order}: {err}"
            );
            errors.push(d.message.clone());
        }
        assert_eq!(errors[0], errors[1]);
    }

    /// `import public` is followed to the end of the chain, as protoc does.
    #[test]
    fn a_chain_of_public_imports_is_in_scope() {
        let protos = both_orders(&[
            // (no file to keep out of scope: the same tree twice)
            (
                "d.proto",
                "syntax = \"proto3\";\npackage d;\nmessage D {}\n",
            ),
            (
                "c.proto",
                "syntax = \"proto3\";\npackage c;\nimport public \"d.proto\";\n",
            ),
            (
                "b.proto",
                "syntax = \"proto3\";\npackage b;\nimport public \"c.proto\";\n",
            ),
            (
                "u.proto",
                "syntax = \"proto3\";\npackage u;\nimport \"b.proto\";\nmessage U { d.D m = 1; }\n",
            ),
        ]);
        let (_, loaded) = &protos[0];
        let protos = loaded.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(field_type(protos, "u.U", "m"), "d.D");
    }
}

#[cfg(test)]
mod nesting_tests {
    use super::*;

    /// A `google.api.http` option whose `additional_bindings` nest `levels` deep, and messages
    /// declared 30 deep (protox's own limit for those is 31).
    fn deep_file(levels: usize) -> String {
        let mut binding = String::from("get: \"/x\"");
        for _ in 0..levels {
            binding = format!("get: \"/x\" additional_bindings {{ {binding} }}");
        }
        let mut message = String::from("string a = 1;");
        for i in 0..30 {
            message = format!("message N{i} {{ {message} }}");
        }
        format!(
            "syntax = \"proto3\";\npackage t;\nimport \"google/api/annotations.proto\";\n\
             message M {{ {message} }}\nservice S {{\n  rpc Get(M) returns (M) {{\n    \
             option (google.api.http) = {{ {binding} }};\n  }}\n}}\n"
        )
    }

    /// Measures the stack a file at the limit takes: it must load on a thread with a quarter of
    /// `BUILD_STACK` (the margin against what an optimised or a future build takes).
    #[test]
    fn a_file_at_the_nesting_limit_loads_with_a_quarter_of_the_build_stack() {
        let dir = tempfile::tempdir().unwrap();
        // service + rpc + the option's own braces: 3 levels around the bindings.
        std::fs::write(
            dir.path().join("t.proto"),
            deep_file(nesting::MAX_NESTING - 3),
        )
        .unwrap();
        let path = dir.path().to_path_buf();
        let loaded = std::thread::Builder::new()
            .stack_size(BUILD_STACK / 4)
            .spawn(move || load_with_helpers(&path, &[], &[], &[], |_| 0, None).map(|p| p.files))
            .unwrap()
            .join()
            .expect("no panic, no overflow");
        assert_eq!(loaded.unwrap(), vec!["t.proto".to_string()]);

        std::fs::write(dir.path().join("t.proto"), deep_file(5_000)).unwrap();
        let err = load_with_helpers(dir.path(), &[], &[], &[], |_| 0, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.proto:7:"), "{err}");
        assert!(err.contains("nested more than 64 levels"), "{err}");
    }
}

/// Issue 17 item 10: a reload compiles only what changed and what imports it (see `incremental`),
/// and gives what a cold load of the same files gives: the same pool, or the same problems.
#[cfg(test)]
mod incremental_tests {
    use super::*;
    use std::fmt::Write as _;
    use std::time::{Duration, SystemTime};

    /// Writes `text` to `rel`, dated in the past (a fresh file is "racily" recent, see
    /// `stamp::Stamp`), each write at another time. The route table's reload tests write so too.
    pub(super) fn write(dir: &Path, rel: &str, text: &str) {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let when = SystemTime::now() - Duration::from_secs(3600) + Duration::from_millis(n);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    /// File `i` of a 150-file tree: in folder `d{i % 7}`, package `p{i % 7}`, importing up to three
    /// earlier files and using their messages (partly qualified names), with an enum, a custom
    /// field option, extensions of a proto2 message and, every tenth file, a service with an HTTP
    /// route.
    fn file(i: usize, extra: &str) -> (String, String) {
        let mut imports = vec![];
        let mut fields = String::new();
        if i > 0 {
            for (k, j) in [i - 1, i * 7 / 11, i / 3].into_iter().enumerate() {
                if imports.contains(&j) || j == i {
                    continue;
                }
                imports.push(j);
                let _ = writeln!(
                    fields,
                    "  p{}.M{j} m{k} = {} [(p0.tag) = \"t{j}\"];",
                    j % 7,
                    k + 10
                );
            }
        }
        let mut text = format!("syntax = \"proto3\";\npackage p{};\n", i % 7);
        for j in &imports {
            let _ = writeln!(text, "import \"d{}/f{j:03}.proto\";", j % 7);
        }
        if i > 0 && !imports.contains(&0) {
            // The custom option's file, imported directly (protoc's scoping).
            text.push_str("import \"d0/f000.proto\";\n");
        }
        if i > 0 && i.is_multiple_of(10) {
            text.push_str("import \"google/api/annotations.proto\";\n");
        }
        if i == 0 {
            text.push_str(
                "import \"google/protobuf/descriptor.proto\";\nimport \"google/api/annotations.proto\";\n\
                 import \"base.proto\";\nextend google.protobuf.FieldOptions { string tag = 50001; }\n",
            );
        }
        let _ = write!(
            text,
            "message M{i} {{\n  string a = 1;\n  E{i} e = 2;\n{fields}{extra}  message N {{ int32 x = 1; }}\n}}\n\
             enum E{i} {{ E{i}_ZERO = 0; E{i}_ONE = 1; }}\n"
        );
        if i.is_multiple_of(10) {
            let _ = write!(
                text,
                "service S{i} {{\n  rpc Get (M{i}) returns (M{i}.N) {{\n    \
                 option (google.api.http) = {{ get: \"/v1/s{i}\" }};\n  }}\n}}\n"
            );
        }
        (format!("d{}/f{i:03}.proto", i % 7), text)
    }

    /// A proto2 message others extend, imported by file 0.
    const BASE: &str =
        "syntax = \"proto2\";\npackage base;\nmessage Ext { extensions 100 to 999; }\n";

    fn extension(i: usize) -> String {
        format!("extend base.Ext {{ optional int32 x{i} = {}; }}\n", 100 + i)
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.proto", BASE);
        // Compiled last, until a file imports it.
        write(
            dir.path(),
            "zlone.proto",
            "syntax = \"proto3\";\npackage lone;\nmessage L {}\n",
        );
        for i in 0..150 {
            let (rel, mut text) = file(i, "");
            if i % 5 == 1 {
                text.push_str("import \"base.proto\";\n");
                text.push_str(&extension(i));
            }
            write(dir.path(), &rel, &text);
        }
        dir
    }

    /// Everything about a pool's definitions that is not in its encoding: indices, kinds, lookups.
    fn shape(pool: &DescriptorPool) -> String {
        let mut out = String::new();
        for f in pool.files() {
            let deps: Vec<_> = f.dependencies().map(|d| d.name().to_string()).collect();
            let _ = writeln!(out, "file {} {deps:?} {:?}", f.name(), f.package_name());
        }
        for m in pool.all_messages() {
            let _ = writeln!(
                out,
                "message {} parent={:?} file={} ext={:?}",
                m.full_name(),
                m.parent_message().map(|p| p.full_name().to_string()),
                m.parent_file().name(),
                m.extensions()
                    .map(|x| x.full_name().to_string())
                    .collect::<Vec<_>>()
            );
            assert_eq!(pool.get_message_by_name(m.full_name()).as_ref(), Some(&m));
            for field in m.fields() {
                let _ = writeln!(
                    out,
                    "  {} {} {:?} {} {:?} packed={} presence={} oneof={:?}",
                    field.name(),
                    field.number(),
                    field.kind(),
                    field.json_name(),
                    field.cardinality(),
                    field.is_packed(),
                    field.supports_presence(),
                    field.containing_oneof().map(|o| o.name().to_string())
                );
                assert_eq!(m.get_field_by_name(field.name()).as_ref(), Some(&field));
            }
        }
        for e in pool.all_enums() {
            let values: Vec<_> = e
                .values()
                .map(|v| (v.name().to_string(), v.number()))
                .collect();
            let _ = writeln!(
                out,
                "enum {} {values:?} file={}",
                e.full_name(),
                e.parent_file().name()
            );
            assert_eq!(pool.get_enum_by_name(e.full_name()).as_ref(), Some(&e));
        }
        for x in pool.all_extensions() {
            let _ = writeln!(
                out,
                "extension {} of {} {:?} file={}",
                x.full_name(),
                x.containing_message().full_name(),
                x.kind(),
                x.parent_file().name()
            );
            assert_eq!(pool.get_extension_by_name(x.full_name()).as_ref(), Some(&x));
        }
        for s in pool.services() {
            for m in s.methods() {
                let _ = writeln!(
                    out,
                    "method {} {} -> {} options={:?}",
                    m.full_name(),
                    m.input().full_name(),
                    m.output().full_name(),
                    m.options()
                );
            }
            assert_eq!(pool.get_service_by_name(s.full_name()).as_ref(), Some(&s));
        }
        out
    }

    /// Loads `dir` as a reload would (after the loads before it) and cold; both must agree. True
    /// when the reload was incremental.
    fn reload_matches_cold(dir: &Path) -> bool {
        incremental::USED.with(|u| u.set(false));
        let reloaded = load_with_helpers(dir, &[], &[], &[], |_| 1, None);
        let used = incremental::USED.with(|u| u.get());
        incremental::BYPASS.with(|b| b.set(true));
        let cold = load_with_helpers(dir, &[], &[], &[], |_| 1, None);
        incremental::BYPASS.with(|b| b.set(false));
        match (reloaded, cold) {
            (Ok(reloaded), Ok(cold)) => {
                assert_eq!(reloaded.files, cold.files);
                assert!(
                    reloaded.pool.encode_to_vec() == cold.pool.encode_to_vec(),
                    "encoded pools differ"
                );
                assert_eq!(shape(&reloaded.pool), shape(&cold.pool));
            }
            (Err(reloaded), Err(cold)) => assert_eq!(reloaded.to_string(), cold.to_string()),
            (reloaded, cold) => panic!(
                "reload: {:?}\ncold: {:?}",
                reloaded.map(|p| p.files.len()),
                cold.map(|p| p.files.len())
            ),
        }
        used
    }

    /// An edit of a file nothing imports: the reload shares the other files' definitions with the
    /// pool it keeps them from (still served until the swap) rather than copying them, and makes
    /// no `prost_types` copy of them (`file_descriptor_proto()`, a second copy of each file with
    /// its source info decoded, which the pools after it kept).
    #[test]
    fn a_leaf_reload_allocates_little_beside_the_pool_it_keeps_from() {
        let dir = tree();
        let d = dir.path();
        // On this thread alone (`|_| 0`: no helper parses ahead), a cold load's pool is counted.
        let before = alloc_meter::net_allocated();
        let cold = load_with_helpers(d, &[], &[], &[], |_| 0, None).unwrap();
        let pool_bytes = alloc_meter::net_allocated() - before;
        let (leaf, text) = file(149, "  string added = 99;\n");
        write(d, &leaf, &text);
        let before = alloc_meter::net_allocated();
        let reloaded = load_with_helpers(d, &[], &[], &[], |_| 0, None).unwrap();
        let reload_bytes = alloc_meter::net_allocated() - before;
        assert!(reloaded.reloaded.is_some(), "incremental");
        // Copying them made it 1.4 × the pool; sharing, a quarter (the new pool's tables).
        assert!(
            reload_bytes < pool_bytes / 2,
            "a leaf reload kept {reload_bytes} bytes beside a pool of {pool_bytes}"
        );
        drop((cold, reloaded));
    }

    #[test]
    fn a_reload_gives_what_a_cold_load_gives() {
        let dir = tree();
        let d = dir.path();
        if let Err(e) = load_with_helpers(d, &[], &[], &[], |_| 1, None) {
            panic!("the tree loads: {e}");
        }
        incremental::forget(d);
        assert!(!reload_matches_cold(d), "the first load is cold");
        assert!(reload_matches_cold(d), "nothing changed");

        // A comment and a field in a file nothing imports.
        let (leaf, text) = file(149, "  // new\n  string added = 99;\n");
        write(d, &leaf, &text);
        assert!(reload_matches_cold(d), "a leaf edit");

        // A field in the file nearly every other imports (through others), a new import in another.
        let (hub, text) = file(0, "  int64 added = 98;\n");
        write(d, &hub, &text);
        let (rel, mut text) = file(120, "");
        text = text.replacen("package p1;\n", "package p1;\nimport \"zlone.proto\";\n", 1);
        text = text.replacen("  message N", "  lone.L later = 97;\n  message N", 1);
        write(d, &rel, &text);
        assert!(
            reload_matches_cold(d),
            "an edit of a file imported by many, a new import"
        );

        // Broken, then fixed: the problems of a cold load, then an incremental reload again.
        let (rel, good) = file(5, "");
        write(d, &rel, &good.replace("string a = 1;", "string a = ;"));
        assert!(!reload_matches_cold(d), "a broken file");
        write(d, &rel, &good.replace("M4 m0", "Missing m0"));
        assert!(!reload_matches_cold(d), "a file that does not compile");
        write(d, &rel, &good);
        assert!(reload_matches_cold(d), "the file fixed");

        // Two files defining one name: the order decides which one is reported.
        write(
            d,
            "z.proto",
            "syntax = \"proto3\";\npackage p3;\nmessage M3 {}\n",
        );
        assert!(!reload_matches_cold(d), "a duplicate name");
        std::fs::remove_file(d.join("z.proto")).unwrap();
        // The files of the last good load again.
        assert!(reload_matches_cold(d), "the duplicate removed");

        // A message becomes an enum: its users resolve the name to the other kind.
        let (rel, text) = file(50, "");
        let swapped = text
            .replace("message M50 {", "message Old50 {")
            .replace("enum E50 {", "enum M50 { M50_Z = 0; }\nenum E50 {");
        write(d, &rel, &swapped);
        assert!(!reload_matches_cold(d), "its users no longer compile");
        write(d, &rel, &text);
        assert!(reload_matches_cold(d));

        // A file added, a file deleted.
        write(d, "d1/new.proto", "syntax = \"proto3\";\npackage p1;\nimport \"d1/f001.proto\";\nmessage New { M1 m = 1; }\n");
        assert!(!reload_matches_cold(d), "a file added");
        std::fs::remove_file(d.join("d1/new.proto")).unwrap();
        assert!(!reload_matches_cold(d), "a file deleted");
        let (leaf, text) = file(148, "  bool more = 96;\n");
        write(d, &leaf, &text);
        assert!(reload_matches_cold(d));
    }
}
