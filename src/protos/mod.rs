//! The protos folder → one descriptor pool, compiled in-process by protox.
//!
//! Imports resolve, in order, against the folder itself, the extra `-I` roots, the `google/api` and
//! `google/rpc` files bundled in this binary, and protox's bundled well-known types.

use std::path::{Path, PathBuf};

use miette::Diagnostic as _;
use prost_reflect::DescriptorPool;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};
use walkdir::WalkDir;

use crate::diagnostic::{Diagnostic, Diagnostics};

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

/// Compiles every `*.proto` under `root` (recursively). Every file is tried, so one load reports the
/// problems of every broken file, not only the first.
pub fn load(root: &Path, include_roots: &[PathBuf]) -> Result<Protos, Diagnostics> {
    let mut problems = Diagnostics::default();
    if !root.is_dir() {
        problems.push(Diagnostic::file(root, "protos folder not found"));
        return Err(problems);
    }
    let files = find_protos(root, &mut problems);

    let mut resolver = ChainFileResolver::new();
    resolver.add(IncludeFileResolver::new(root.to_path_buf()));
    for dir in include_roots {
        resolver.add(IncludeFileResolver::new(dir.clone()));
    }
    resolver.add(BundledResolver);
    resolver.add(GoogleFileResolver::new());

    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    for name in ALWAYS_LOADED
        .iter()
        .copied()
        .map(str::to_string)
        .chain(files.iter().cloned())
    {
        if let Err(err) = compiler.open_file(&name) {
            problems.push(to_diagnostic(&err, root, include_roots));
        }
    }
    problems.into_result()?;
    // The pool straight from the compiler keeps custom options such as `google.api.http`
    // (rebuilding it from `file_descriptor_set()` loses them).
    Ok(Protos {
        pool: compiler.descriptor_pool(),
        files,
    })
}

/// Relative names of every `*.proto` under `root`, sorted.
fn find_protos(root: &Path, problems: &mut Diagnostics) -> Vec<String> {
    let mut files = Vec::new();
    for entry in WalkDir::new(root).follow_links(true).sort_by_file_name() {
        match entry {
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
    files
}

/// A protox error (a miette diagnostic) as file:line:column with the offending line.
fn to_diagnostic(err: &protox::Error, root: &Path, include_roots: &[PathBuf]) -> Diagnostic {
    let mut message = err.to_string();
    if let Some(help) = err.help() {
        message.push_str(&format!(" (help: {help})"));
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
