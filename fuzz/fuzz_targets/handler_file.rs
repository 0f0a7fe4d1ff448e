//! (b) The handler-file parser and validator: the input is one handler TOML file, checked against the
//! seed protos (`../protos`) by `protodrop::fuzzing::rules::load_source`, the code path the server runs on
//! every file of its handlers folder (TOML, rules, templates, conditions, regexes, Rhai compilation).
//!
//! The file is named `handler-scripts/fuzz.toml`, so `script = "echo.rhai"` (and the other files of
//! `fuzz/handler-scripts/`) resolve and compile too.
//!
//! Properties: nothing panics; a rejected file has at least one problem, each pinned to this file with
//! a line and column inside it, and each renders (`file:line:column: message` and the caret line).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost_reflect::DescriptorPool;

use protodrop::fuzzing::script::{ScriptEngine, ScriptLimits};

struct Fixture {
    pool: DescriptorPool,
    engine: ScriptEngine,
    path: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let protos = protodrop::fuzzing::protos::load(&fuzz.join("../protos"), &[])
            .unwrap_or_else(|d| panic!("seed protos: {d}"));
        Fixture {
            pool: protos.pool,
            engine: ScriptEngine::new(ScriptLimits::default()),
            path: fuzz.join("handler-scripts/fuzz.toml"),
        }
    })
}

/// A `script = "…"` file is read from disk: keep the fuzzer off files that never end or are huge
/// (`/dev/zero`, `/dev/stdin`, `/proc/kcore`), also when TOML escapes (`\u`, `\x`) spell them. Such a path is an
/// operator's choice in a real handlers folder, not input from a caller.
fn names_special_files(text: &str) -> bool {
    ["/dev", "/proc", "/sys", "\\u", "\\U", "\\x"]
        .iter()
        .any(|s| text.contains(s))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_special_files(text) {
        return;
    }
    let fx = fixture();
    match protodrop::fuzzing::rules::load_source(&fx.path, text, &fx.pool, &fx.engine) {
        Ok(handlers) => {
            assert_eq!(handlers.files, vec![fx.path.clone()]);
            for (name, rules) in &handlers.methods {
                assert!(!rules.rules.is_empty(), "{name} kept with no rule");
            }
        }
        Err(problems) => {
            assert!(!problems.0.is_empty(), "rejected without a problem");
            let lines = text.split('\n').count();
            for problem in &problems.0 {
                let rendered = problem.to_string();
                assert!(!rendered.is_empty());
                // A script file's problem names that file; every other names this one.
                if problem.file == fx.path && problem.line > 0 {
                    assert!(
                        problem.line <= lines,
                        "line {} of a {lines}-line file: {rendered}",
                        problem.line
                    );
                    assert!(problem.column > 0, "column 0: {rendered}");
                }
            }
        }
    }
});
