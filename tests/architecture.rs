//! The direction of travel ARCHITECTURE.md draws, held against the code: every top-level module of
//! `src/` sits on a layer, and a module may name (`crate::x`) only modules on layers below its own.
//! An import that runs back up — the kind that once tied eleven files into one circle — fails here
//! with the file and line that made it.

use std::path::{Path, PathBuf};

/// Bottom to top. A module may use those on lower layers; modules on one layer do not use each
/// other.
const LAYERS: &[&[&str]] = &[
    &["codes"],
    &["budget", "limits", "diagnostic", "metrics"],
    &["protos"],
    &["codec"],
    &["script"],
    &["rules"],
    &["engine"],
    &["observe"],
    &["builtin"],
    &["state"],
    &["admin"],
    &["protocol"],
    &["server"],
    // The client commands' HTTP client of the admin API: it knows `admin`'s paths, not the server.
    &["remote"],
    &["cli"],
    &["run"],
    // Crate-level tests and the fuzzing entry points reach into every layer.
    &["tests", "fuzzing"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The modules a line of code names as `crate::name` or inside `crate::{a, b::c}`.
fn named_modules(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(group.split(',').map(|item| {
                let item = item.trim();
                item[..item.find("::").unwrap_or(item.len())].to_string()
            }));
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_string());
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

#[test]
fn modules_only_use_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_str().unwrap().to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer(&module).unwrap_or_else(|| {
            panic!("src/{module} is on no layer: add it to LAYERS (and to ARCHITECTURE.md)")
        });
        seen.push(module.clone());
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (number, line) in text.lines().enumerate() {
                // Comments may point anywhere (docs link upwards to explain); code may not.
                let code = line.split("//").next().unwrap_or("");
                for used in named_modules(code) {
                    if used == module {
                        continue;
                    }
                    match layer(&used) {
                        Some(l) if l < own => {}
                        _ => wrong.push(format!(
                            "{}:{}: {module} uses crate::{used}: {}",
                            file.strip_prefix(&src).unwrap().display(),
                            number + 1,
                            line.trim()
                        )),
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not run downwards (see ARCHITECTURE.md):\n{}",
        wrong.join("\n")
    );
    for module in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            seen.iter().any(|s| s == module),
            "LAYERS names {module}, which src/ no longer has"
        );
    }
}

#[test]
fn named_modules_reads_every_form_of_a_crate_path() {
    assert_eq!(
        named_modules("use crate::engine::{self, Method};"),
        ["engine"]
    );
    assert_eq!(
        named_modules("use crate::{server, state::reload};"),
        ["server", "state"]
    );
    assert_eq!(
        named_modules("let x = crate::limits::too_large(a, crate::codec::X);"),
        ["limits", "codec"]
    );
    assert!(named_modules("use super::wire;").is_empty());
}
