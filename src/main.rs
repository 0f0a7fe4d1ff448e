//! The `protodrop` binary: parses flags, sets up logging, and runs the command (see `protodrop::run`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use protodrop::cli::{Cli, Command};
use protodrop::run;

/// mimalloc, not glibc's malloc: compiling a large proto tree is mostly small allocations (the
/// bench's 1,000-file tree on one core starts in about three quarters of the time; serving is no
/// slower). Built without transparent huge pages (`no_thp`): with them, start-up was a little
/// faster still but the idle server held twice the memory (27 MB against 14 MB).
///
/// Metered: each thread keeps its net allocated bytes, which is how one script call's memory is
/// bounded (`--script-max-memory`, see `script`).
#[global_allocator]
static ALLOCATOR: alloc_meter::Metered<mimalloc::MiMalloc> =
    alloc_meter::Metered(mimalloc::MiMalloc);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flush_at_exit = run::logging(cli.log_format);
    let result = match cli.command() {
        Command::Serve(args) => run::serve(args),
        Command::Check(args) => run::check(&args),
        Command::Calls(args) => run::calls(&args),
        Command::Verify(args) => run::verify(&args),
        Command::Rules(args) => run::rules(&args),
    };
    // The last log lines before the error, if any.
    drop(flush_at_exit);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
