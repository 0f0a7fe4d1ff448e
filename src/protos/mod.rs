//! The protos folder → one descriptor pool, compiled in-process by protox.
//!
//! Imports resolve, in order, against the folder itself, the descriptor sets (`*.binpb`, `*.pb` in the
//! folder, then `--descriptor-set` files; see [`sets`]), the extra `-I` roots, the `google/api` and
//! `google/rpc` files bundled in this binary, and protox's bundled well-known types.
//!
//! Editions (`edition = "2023"`) are parsed by a patched protox-parse and their features resolved by a
//! patched prost-reflect (see their `vendor/*/PROTODROP.md`).

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use miette::Diagnostic as _;
use prost_reflect::DescriptorPool;
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use walkdir::WalkDir;

use crate::diagnostic::{Diagnostic, Diagnostics};

mod ahead;
pub mod nesting;
pub mod sets;
use ahead::ParseAhead;
use nesting::CheckedInclude;

/// Stack of the threads that load protos and handlers (and parse ahead). The parsers recurse once per
/// nesting level of a file, bounded by `protos::nesting::MAX_NESTING` (and TOML's and Rhai's own
/// limits); a file at that bound needs under 2 MiB in a debug build, and an overflow would abort the
/// process, so the margin is wide (Rhai's compiler recurses on this thread too). Only the pages
/// used are touched.
pub const BUILD_STACK: usize = 64 << 20;

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

/// The compiled protos.
#[derive(Clone, Debug)]
pub struct Protos {
    pub pool: DescriptorPool,
    /// The user's files (relative names, as imports spell them), sorted.
    pub files: Vec<String>,
}

/// Compiles every `*.proto` under `root` (recursively), with the files of every descriptor set under
/// `root`. Every file is tried, so one load reports the problems of every broken file, not only the
/// first.
pub fn load(root: &Path, include_roots: &[PathBuf]) -> Result<Protos, Diagnostics> {
    load_with_sets(root, include_roots, &[])
}

/// [`load`], with the files of `descriptor_sets` too (`--descriptor-set`).
pub fn load_with_sets(
    root: &Path,
    include_roots: &[PathBuf],
    descriptor_sets: &[PathBuf],
) -> Result<Protos, Diagnostics> {
    load_with_helpers(root, include_roots, descriptor_sets, ParseAhead::helpers)
}

/// `load` with `helpers(file count)` threads parsing ahead of the compiler (tests pin the count).
fn load_with_helpers(
    root: &Path,
    include_roots: &[PathBuf],
    descriptor_sets: &[PathBuf],
    helpers: impl FnOnce(usize) -> usize,
) -> Result<Protos, Diagnostics> {
    let mut problems = Diagnostics::default();
    if !root.is_dir() {
        problems.push(Diagnostic::file(root, "protos folder not found"));
        return Err(problems);
    }
    let (files, mut set_paths) = find_protos(root, &mut problems);
    set_paths.extend(descriptor_sets.iter().cloned());
    let sets = sets::Sets::read(&set_paths, &mut problems);
    let sources: std::collections::HashSet<&str> = files.iter().map(String::as_str).collect();
    let shadowed: Vec<&str> = sets.names().filter(|n| sources.contains(n)).collect();
    if let Some(first) = shadowed.first() {
        tracing::warn!(
            "{} file(s) of the descriptor sets are also .proto files in {} ({first}{}): the .proto \
             files are compiled, the sets' copies ignored",
            shadowed.len(),
            root.display(),
            if shadowed.len() > 1 { ", …" } else { "" }
        );
    }
    let ahead = ParseAhead::new(root, &files);

    let mut resolver = ChainFileResolver::new();
    // First, so the folder's files come parsed; anything else falls through to the folder itself.
    resolver.add(ahead.clone());
    resolver.add(CheckedInclude(root.to_path_buf()));
    if !sets.is_empty() {
        resolver.add(sets.resolver());
    }
    for dir in include_roots {
        resolver.add(CheckedInclude(dir.clone()));
    }
    resolver.add(BundledResolver);
    resolver.add(GoogleFileResolver::new());

    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
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
                Ok(Some(err)) => problems.push(to_diagnostic(&err, root, include_roots, &sets)),
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
    check_method_options(&pool, root, include_roots)?;
    Ok(Protos { pool, files })
}

/// Decodes every method's options once, as transcoding will: prost-reflect panics on options it
/// cannot decode (nested past prost's recursion limit through a dotted option name, which the
/// nesting check does not count). Such a method is reported at its option's line.
fn check_method_options(
    pool: &DescriptorPool,
    root: &Path,
    include_roots: &[PathBuf],
) -> Result<(), Diagnostics> {
    let mut problems = Diagnostics::default();
    for method in pool
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
    {
        if method.method_descriptor_proto().options.is_none() {
            continue;
        }
        let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| drop(method.options()))) else {
            continue;
        };
        let file = method.parent_file();
        let message = format!(
            "the options of {} cannot be read (nested too deeply?): {}",
            method.full_name(),
            crate::diagnostic::panic_message(&panic)
        );
        let path = std::iter::once(root)
            .chain(include_roots.iter().map(PathBuf::as_path))
            .map(|dir| dir.join(file.name()))
            .find(|p| p.is_file())
            .unwrap_or_else(|| root.join(file.name()));
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
        let source = std::fs::read_to_string(&path).ok();
        problems.push(match span.as_deref() {
            Some([line, column, ..]) => Diagnostic::at_line(
                path,
                source.as_deref(),
                *line as usize + 1,
                *column as usize + 1,
                message,
            ),
            _ => Diagnostic::file(path, message),
        });
    }
    problems.into_result()
}

/// Relative names of every `*.proto` under `root`, sorted, and the paths of its descriptor sets.
fn find_protos(root: &Path, problems: &mut Diagnostics) -> (Vec<String>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut sets = Vec::new();
    for entry in WalkDir::new(root).follow_links(true).sort_by_file_name() {
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
    let on_disk = std::iter::once(root)
        .chain(include_roots.iter().map(PathBuf::as_path))
        .any(|dir| dir.join(name).is_file());
    if on_disk {
        None
    } else {
        sets.set_of(name)
    }
}

/// A protox error (a miette diagnostic) as file:line:column with the offending line.
fn to_diagnostic(
    err: &protox::Error,
    root: &Path,
    include_roots: &[PathBuf],
    sets: &sets::Sets,
) -> Diagnostic {
    if let Some(d) = nesting::diagnostic_of(err) {
        return d.clone();
    }
    let mut message = err.to_string();
    if LANGUAGE_FEATURES
        .iter()
        .any(|f| message.contains(&format!("'{f}' not found")))
    {
        message.push_str(
            " (protodrop does not bundle the language feature files, which need a newer \
             descriptor.proto than it compiles with: load this schema as a descriptor set, \
             `protoc --include_imports -o x.binpb …` or `buf build -o x.binpb`, in the protos folder \
             or with --descriptor-set)",
        );
    }
    if let Some(help) = err.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    // A file of a descriptor set has no source to point into: the set is named instead.
    if let Some(set) = err
        .file()
        .and_then(|name| set_only(name, root, include_roots, sets))
    {
        let name = err.file().unwrap_or_default();
        if message.contains("not found") {
            message.push_str(
                " (a set written without its imports? protoc needs --include_imports; buf build \
                 includes them unless --exclude-imports)",
            );
        }
        return Diagnostic::file(set, format!("{name} (in this descriptor set): {message}"));
    }
    let file_name = err.file().map(str::to_string);
    let path = |name: &str| -> PathBuf {
        std::iter::once(root)
            .chain(include_roots.iter().map(PathBuf::as_path))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| root.join(name))
    };
    let labels: Vec<_> = err.labels().map(|l| l.collect()).unwrap_or_default();
    let Some(first) = labels.first() else {
        return match file_name {
            Some(name) => Diagnostic::file(path(&name), message),
            None => Diagnostic::file(root, message),
        };
    };
    // Secondary labels (e.g. "first defined here" in another file) are named in the message.
    for label in labels.iter().skip(1) {
        if let Some(text) = label.label() {
            message.push_str(&format!("; {text}"));
        }
    }
    if let Some(text) = first.label() {
        if !message.contains(text) {
            message.push_str(&format!(" ({text})"));
        }
    }
    let Some(name) = file_name else {
        return Diagnostic::file(root, message);
    };
    let file = path(&name);
    match std::fs::read_to_string(&file) {
        Ok(source) => Diagnostic::at(
            file,
            &source,
            first.offset()..first.offset() + first.len(),
            message,
        ),
        Err(_) => Diagnostic::file(file, message),
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
        load_with_helpers(dir, &[], &[], |_| helpers)
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
            .spawn(move || load_with_helpers(&path, &[], &[], |_| 0).map(|p| p.files))
            .unwrap()
            .join()
            .expect("no panic, no overflow");
        assert_eq!(loaded.unwrap(), vec!["t.proto".to_string()]);

        std::fs::write(dir.path().join("t.proto"), deep_file(5_000)).unwrap();
        let err = load_with_helpers(dir.path(), &[], &[], |_| 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.proto:7:"), "{err}");
        assert!(err.contains("nested more than 64 levels"), "{err}");
    }
}
