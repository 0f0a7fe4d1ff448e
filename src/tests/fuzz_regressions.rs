//! The fuzz targets' entry points (see `fuzz/README.md`), and inputs the fuzzers found, replayed
//! through the crate's loader so that a fixed crash stays fixed without a nightly toolchain (moved
//! from tests/fuzz_regressions.rs: the loader is internal).

use std::path::{Path, PathBuf};

use crate::rules::{load, load_source};
use crate::script::{ScriptEngine, ScriptLimits};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `handler_file` checks one file's text with `load_source`: it must agree with `load` over a folder.
#[test]
fn load_source_checks_a_file_as_load_does() {
    let pool = crate::protos::load(&root().join("protos"), &[])
        .unwrap_or_else(|d| panic!("{d}"))
        .pool;
    let engine = ScriptEngine::new(ScriptLimits::default());
    let folder = load(&root().join("handlers"), &pool, &engine).unwrap_or_else(|d| panic!("{d}"));
    let mut rules = 0;
    for path in &folder.files {
        let text = std::fs::read_to_string(path).unwrap();
        let one = load_source(path, &text, &pool, &engine).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(one.files, vec![path.clone()]);
        rules += one.rule_count();
    }
    assert_eq!(rules, folder.rule_count());

    let broken = Path::new("somewhere/broken.toml");
    let problems = load_source(broken, "[[rule]]\nmethod = 7\n", &pool, &engine).unwrap_err();
    assert_eq!(problems.0.len(), 1, "{problems}");
    assert_eq!(problems.0[0].file, broken);
    assert_eq!(
        (problems.0[0].line, problems.0[0].column),
        (2, 10),
        "{problems}"
    );
}

/// `script = "/dev/zero"` hung the loader (it read the device to the end); only regular files are
/// scripts now.
#[test]
fn a_script_that_is_not_a_regular_file_is_refused() {
    let pool = crate::protos::load(&root().join("protos"), &[])
        .expect("seed protos")
        .pool;
    let engine = ScriptEngine::new(ScriptLimits::default());
    let text = "[[rule]]\nmethod = \"hello.Hello/GetFeature\"\nscript = \"/dev/zero\"\n";
    let problems = load_source(&root().join("handlers/zero.toml"), text, &pool, &engine)
        .expect_err("a device is not a script");
    let shown = problems.to_string();
    assert!(
        shown.contains("/dev/zero") && shown.contains("not a regular file"),
        "{shown}"
    );
    assert!(shown.contains("zero.toml:3:"), "{shown}");
}
