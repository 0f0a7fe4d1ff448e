//! The `protodrop` binary: parses flags and wires the library's parts together.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use protodrop::cli::{Cli, Command, ServeArgs, SourceArgs};
use protodrop::registry::{Registry, State};
use protodrop::service::ServiceSettings;
use protodrop::{reload, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command() {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: &SourceArgs) -> anyhow::Result<ExitCode> {
    match State::build(&args.sources()) {
        Ok(state) => {
            println!(
                "ok: {} services, {} methods, {} rules in {} handler files",
                state.service_count(),
                state.methods.len(),
                state.rule_count,
                state.handler_files
            );
            let unanswered: Vec<&str> = state
                .methods
                .values()
                .filter(|m| m.rules.is_none())
                .map(|m| m.name.as_str())
                .collect();
            if !unanswered.is_empty() {
                println!(
                    "methods without a handler (they answer UNIMPLEMENTED): {}",
                    unanswered.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{} problem(s) found", problems.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let sources = args.sources.sources();
    let state = match State::build(&sources) {
        Ok(state) => state,
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!(
                "not serving: {} problem(s) in the protos or handlers",
                problems.0.len()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    tracing::info!(
        services = state.service_count(),
        methods = state.methods.len(),
        rules = state.rule_count,
        "loaded"
    );
    let registry = Arc::new(Registry::new(state));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line to learn the port when listening on port 0.
        println!("listening on {addr}");
        let _watcher = if args.no_watch {
            None
        } else {
            Some(
                reload::watch(sources, registry.clone())
                    .context("watching the protos and handlers folders")?,
            )
        };
        let settings = ServiceSettings {
            max_message_size: args.max_message_size,
        };
        server::serve(listener, registry, settings, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
