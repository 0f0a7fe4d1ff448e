//! The commands as the binary runs them — `serve` and `check`, and the client commands of a running
//! server's admin API (`calls`, `verify`, `rules`, see `remote`): everything between parsed flags
//! and an exit code (the binary itself only parses flags and sets up logging).

use std::future::Future;
use std::io::Write as _;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::cli::{
    CallsAction, CallsArgs, CheckArgs, LogFormat, RemoteArgs, RulesAction, RulesArgs, ServeArgs,
    VerifyArgs,
};
use crate::observe::journal::{Caps, Journal};
use crate::observe::Observer;
use crate::protocol::ServiceSettings;
use crate::remote;
use crate::rules;
use crate::server;
use crate::server::cors::CorsPolicy;
use crate::state::reload;
use crate::state::{Method, Registry, Sources, State};

/// Sets up the process's logs on stderr in `format`, filtered by `RUST_LOG` (default
/// [`DEFAULT_LOG`]: the per-call INFO lines only when asked for, as they cost a call more than the
/// benchmark budget allows; a call no rule answered, or whose script failed, is logged at WARN
/// either way). Call lines are formatted by `observe` and written in batches by a thread of their
/// own (see `observe::stderr`: through tracing and with a write per line, a call's line would cost
/// more than its answer). Dropping the guard writes what is left.
pub fn logging(format: LogFormat) -> impl Drop {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let (stderr, flush) = crate::observe::stderr::Stderr::start();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(stderr.clone());
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    crate::observe::install_call_log(stderr, format == LogFormat::Json);
    flush
}

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG: &str = "info,protodrop::call=warn";

/// Most methods without a handler that `check` names; past it, a count and how to see them all.
const UNANSWERED_SHOWN: usize = 20;

/// `protodrop check`: load protos and handlers, print a summary or every problem. Skipped HTTP
/// routes are printed as warnings, which do not fail the check. With `--starter-rules`, stdout is
/// a handler file with a starter rule for every method without one (the summary goes to stderr).
pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let state = match State::build(&args.sources.sources()) {
        Ok(state) => state,
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{} problem(s) found", problems.0.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in state.routes.skipped.iter().chain(&state.builtin_copies) {
        eprintln!("warning: {warning}");
    }
    if !state.routes.skipped.is_empty() {
        eprintln!(
            "{} HTTP route(s) skipped (their methods still answer gRPC, gRPC-Web and Connect)",
            state.routes.skipped.len()
        );
    }
    let summary = format!(
        "ok: {} services, {} methods, {} rules in {} handler files",
        state.service_count(),
        state.methods.len(),
        state.rule_count,
        state.handler_files
    );
    let mut unanswered: Vec<&Method> = state
        .methods
        .values()
        .filter(|m| m.rules.is_none())
        .map(|m| &**m)
        .collect();
    unanswered.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if args.starter_rules {
        eprintln!("{summary}");
        let mut out = std::io::stdout().lock();
        for method in &unanswered {
            writeln!(out, "{}", rules::starter::rule(&method.desc))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("{summary}");
    if !unanswered.is_empty() {
        println!(
            "{} method(s) without a handler (they answer UNIMPLEMENTED):",
            unanswered.len()
        );
        for method in unanswered.iter().take(UNANSWERED_SHOWN) {
            println!("  {}", method.name);
        }
        if unanswered.len() > UNANSWERED_SHOWN {
            println!(
                "  … and {} more; `protodrop check --starter-rules` prints a rule for each",
                unanswered.len() - UNANSWERED_SHOWN
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `protodrop calls`: the journal of the server at `--server`, or `calls clear`.
pub fn calls(args: &CallsArgs) -> anyhow::Result<ExitCode> {
    let target = target(&args.remote);
    match args.action {
        Some(CallsAction::Clear) => remote::clear_calls(&target)?,
        None => remote::calls(&target, args.method.as_deref(), args.limit, args.json)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `protodrop verify`: exits 1 when `--expect` is not the count.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let as_expected = remote::verify(&target(&args.remote), &args.filter, args.expect, args.json)?;
    Ok(match as_expected {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// `protodrop rules add|list|delete|reset`.
pub fn rules(args: &RulesArgs) -> anyhow::Result<ExitCode> {
    let target = target(&args.remote);
    match &args.action {
        RulesAction::Add { file, json } => remote::add_rules(&target, file, *json)?,
        RulesAction::List { method, json } => {
            remote::list_rules(&target, method.as_deref(), *json)?
        }
        RulesAction::Delete { id } => remote::delete_rule(&target, id)?,
        RulesAction::Reset => remote::reset_rules(&target)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn target(args: &RemoteArgs) -> remote::Target {
    remote::Target {
        url: args.server.clone(),
        cacert: args.cacert.clone(),
        client_identity: args.client_cert.clone().zip(args.client_key.clone()),
    }
}

/// Scripts that may run at once (tokio's blocking pool; a streaming script also uses one helper
/// thread). Threads are only made when needed and their stacks are reserved, not touched.
pub(crate) const MAX_SCRIPT_THREADS: usize = 4096;

/// Longest the connections may take, once the grace period is over and the calls still running
/// have been ended, to send those calls' statuses and close.
const CUT_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// `protodrop serve`: runs until SIGINT/SIGTERM (then exits 0 after the grace period at most).
/// Problems in the protos or handlers are printed and give a failure exit code; an `Err` is anything
/// else that keeps the server from starting (a bad flag value, a TLS file, a busy address).
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut sources = args.sources.sources();
    let journal = (!args.no_journal).then(|| {
        Journal::new(Caps {
            max_calls: args.journal_max_calls,
            max_bytes: args.journal_max_bytes,
        })
    });
    // Leaked (one per process), as the shutdown cut is: every call borrows it.
    let observer: &'static Observer = Box::leak(Box::new(Observer::new(journal)));
    // The admin API: beside the protos' services on the main port, unless it has a listener of its
    // own (then served from a state of its own, below) or is off.
    let admin = (!args.no_admin).then(Admin::new);
    if let (Some(admin), None) = (&admin, args.admin_listen) {
        sources.natives.push(admin.service().clone());
    }
    crate::metrics::global().set_enabled(!args.no_metrics);
    let cors = CorsPolicy::from_flags(&args.cors_origin, &args.admin_cors_origin)
        .map_err(anyhow::Error::msg)?;
    // Read the TLS files before anything slower, so a wrong path fails at once.
    let tls = args
        .tls_files()
        .map(|files| server::TlsSettings::load(&files))
        .transpose()?;
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
        methods = state.methods.values().filter(|m| !m.is_native()).count(),
        rules = state.rule_count,
        "loaded"
    );
    state.log_warnings();
    let registry = Arc::new(Registry::new(state).with_max_runtime_rules(args.max_runtime_rules));
    if let Some(journal) = observer.journal() {
        registry.settle_on_reload(journal);
    }
    let admin_registry = admin.as_ref().and_then(|admin| {
        admin.attach(&registry, observer.journal());
        args.admin_listen?;
        let state = State::native_only(admin.service(), !args.sources.no_reflection);
        Some(Arc::new(Registry::new(state)))
    });
    // What compiling a large tree freed (parsed files, the compiler's scratch) stays with the
    // allocator until something allocates again; give it back now, before serving.
    alloc_meter::release_free_memory();
    // Rhai recurses on the native stack: a deep script must not overflow a thread (that would abort
    // the server, not fail the call). ~128 KiB per allowed call level covers debug builds.
    let stack = (args.sources.script_max_call_depth * (128 << 10)).max(8 << 20);
    let threads = args.threads.unwrap_or_else(default_threads);
    let mut builder = if threads.get() == 1 {
        // Not a one-worker multi-threaded runtime: that one runs the task just woken before any
        // other (its LIFO slot), so a connection flushes after each call's answer, one write per
        // call. The current-thread scheduler runs woken tasks in turn: the answers to the calls a
        // connection read together leave in one write (h2load -m 8 on one core: a fifth of the
        // writes, about 1.5× the calls per second).
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads.get());
        builder
    };
    let runtime = builder
        .enable_all()
        .thread_stack_size(stack)
        // Every running script holds a blocking-pool thread (a streaming one waits in `next()`):
        // tokio's default of 512 would make the 513th open script session wait for another to end.
        .max_blocking_threads(MAX_SCRIPT_THREADS)
        .build()
        .context("starting the async runtime")?;
    // The current-thread scheduler runs its tasks (inline scripts among them) on the thread that
    // calls `block_on`: that must be one with the stack size above, not the main thread.
    let serving = std::thread::Builder::new()
        .name("protodrop-serve".into())
        .stack_size(stack)
        .spawn(move || {
            let registries = Registries {
                main: registry,
                admin: admin_registry,
                observer,
            };
            serve_on(runtime, threads, args, sources, tls, cors, registries)
        })
        .context("starting the serving thread")?;
    serving
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Threads serving calls when `--threads` is not given: one per core this process may use
/// (affinity and cgroup quota included), so a one-core container or `taskset -c 0` gets the
/// current-thread scheduler.
fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// What the listeners serve: the main one the protos (and the admin API, unless it has a listener
/// of its own, `admin`); and where their calls are recorded.
struct Registries {
    main: Arc<Registry>,
    admin: Option<Arc<Registry>>,
    observer: &'static Observer,
}

/// The server's life on `runtime`: bind, watch, serve until a signal and the grace period.
fn serve_on(
    runtime: tokio::runtime::Runtime,
    threads: NonZeroUsize,
    args: ServeArgs,
    sources: Sources,
    tls: Option<server::TlsSettings>,
    cors: CorsPolicy,
    registries: Registries,
) -> anyhow::Result<ExitCode> {
    let Registries {
        main: registry,
        admin: admin_registry,
        observer,
    } = registries;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let admin_listener = match (args.admin_listen, admin_registry) {
            (Some(admin_addr), Some(admin_registry)) => {
                let listener = tokio::net::TcpListener::bind(admin_addr)
                    .await
                    .with_context(|| format!("binding {admin_addr} (--admin-listen)"))?;
                Some((listener, admin_registry))
            }
            _ => None,
        };
        let shutdown = shutdown_signal()?;
        // Watch before announcing the address, so an edit made right after the line is seen.
        let _watcher = if args.no_watch {
            None
        } else {
            Some(
                reload::watch(sources, registry.clone())
                    .context("watching the protos and handlers folders")?,
            )
        };
        // Tests and scripts read this line to learn the port when listening on port 0. It stays the
        // same with TLS on (parsers expect exactly `listening on ADDR`); the log says the scheme.
        println!("listening on {addr}");
        match &admin_listener {
            Some((listener, _)) => {
                let admin_addr = listener.local_addr()?;
                println!("admin listening on {admin_addr}");
                tracing::info!(%admin_addr, "admin API on a listener of its own");
            }
            None if args.no_admin => tracing::info!("admin API off"),
            None => tracing::info!(%addr, "admin API on the main port"),
        }
        tracing::info!(threads, "serving");
        if let Some(tls) = &tls {
            let clients = if tls.verifies_clients() { "required" } else { "not asked" };
            tracing::info!(scheme = "https", client_certificates = clients, "TLS on");
        }
        let settings = ServiceSettings {
            max_message_size: args.max_message_size,
            max_header_list_size: args.max_header_size as usize,
            observer,
            peer: None,
        };
        let connection = server::ConnectionSettings {
            handshake_timeout: args.handshake_timeout,
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
            max_header_size: args.max_header_size,
            max_send_buffer: args.max_send_buffer,
        };
        crate::budget::set_max_metadata_size(args.max_reply_metadata_size);
        crate::codec::decoded::set_max_request_memory(args.max_request_memory);
        tracing::info!(cors = %cors, "gRPC-Web on");
        // On a signal the server stops accepting and lets calls in flight finish, for at most the
        // grace period; then they are cut, each ending with UNAVAILABLE, and the process exits 0
        // all the same.
        let (signalled_tx, signalled) = tokio::sync::oneshot::channel::<()>();
        // The admin API's own listener stops with the main one.
        let stopped = CancellationToken::new();
        let shutdown = {
            let stopped = stopped.clone();
            async move {
                shutdown.await;
                tracing::info!(grace = %humantime::format_duration(args.shutdown_grace), "shutting down");
                let _ = signalled_tx.send(());
                stopped.cancel();
            }
        };
        // Leaked (one per process): every call borrows it, with no reference count to update.
        let cut: &'static CancellationToken = Box::leak(Box::new(CancellationToken::new()));
        let admin_serving = admin_listener.map(|(listener, registry)| {
            server::serve(
                listener,
                tls.clone(),
                registry,
                settings,
                connection,
                cors.clone(),
                server::Shutdown {
                    signal: stopped.cancelled_owned(),
                    cut,
                },
            )
        });
        let main_serving = server::serve(
            listener,
            tls,
            registry,
            settings,
            connection,
            cors,
            server::Shutdown {
                signal: shutdown,
                cut,
            },
        );
        let serving = async move {
            let admin_serving = async move {
                if let Some(admin_serving) = admin_serving {
                    admin_serving.await;
                }
            };
            tokio::join!(main_serving, admin_serving);
        };
        let mut serving = std::pin::pin!(serving);
        let grace_over = async {
            if signalled.await.is_ok() {
                tokio::time::sleep(args.shutdown_grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = &mut serving => {}
            () = grace_over => {
                tracing::warn!("grace period over: calls still in flight end with UNAVAILABLE");
                cut.cancel();
                // Their statuses must reach the clients: the connections, already told to go
                // away, close once their calls have ended.
                if tokio::time::timeout(CUT_FLUSH, serving).await.is_err() {
                    tracing::warn!("connections still open after the calls were cut: closed");
                }
            }
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    // A blocking task (a script) that ignores cancellation must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Completes on SIGINT or SIGTERM. The handlers are installed now, not at the first poll, so a
/// signal that arrives right after start-up still shuts down cleanly.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
