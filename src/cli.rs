//! Command-line flags, defined once here: they drive parsing, environment variables and `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::script::ScriptLimits;
use crate::server::TlsFiles;
use crate::state::Sources;

/// Serve any folder of .proto files over gRPC, answering from handler files — no code generation.
#[derive(Parser, Debug)]
#[command(
    name = "protodrop",
    version,
    args_conflicts_with_subcommands = true,
    term_width = 100
)]
#[command(
    after_help = "Without a command, `protodrop` runs `serve`.\nLogs go to stderr; filter them with RUST_LOG (default info,protodrop::call=warn; RUST_LOG=info adds a line per call)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How log lines are written to stderr: `text` for people, `json` (one object a line) for
    /// machines. With RUST_LOG=info every call is logged as it ends (target `protodrop::call`).
    #[arg(long, global = true, env = "PROTODROP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the protos with the handlers, reloading both when they change (the default).
    Serve(ServeArgs),
    /// Load protos and handlers, print every problem, and exit non-zero if there is any.
    Check(CheckArgs),
    /// List the calls a running server journaled (unless started with --no-journal): a line per
    /// call, or its admin API's JSON with --json. `calls clear` empties the journal.
    Calls(CallsArgs),
    /// Count and list the journaled calls a filter matches (TOML or JSON, as the admin API's Verify
    /// takes); with --expect N, exit 1 unless exactly N match.
    Verify(VerifyArgs),
    /// Add, list, delete or reset the runtime rules of a running server.
    Rules(RulesArgs),
}

/// The listen address `serve` takes by default, and so the server the client commands call.
macro_rules! default_listen {
    () => {
        "127.0.0.1:50051"
    };
}

/// Which running server the client commands (`calls`, `verify`, `rules`) talk to.
#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    /// The server's URL: where its admin API is (the main port, or --admin-listen's). http://, or
    /// https:// with --cacert.
    #[arg(long, global = true, env = "PROTODROP_SERVER", default_value = concat!("http://", default_listen!()), value_name = "URL")]
    pub server: String,

    /// PEM file with the CA certificate(s) that signed an https:// server's certificate (its
    /// --tls-cert).
    #[arg(long, global = true, env = "PROTODROP_CACERT", value_name = "PEM")]
    pub cacert: Option<PathBuf>,

    /// PEM file with a client certificate (its chain, leaf first), for a server started with
    /// --tls-client-ca (mutual TLS). Needs --client-key.
    #[arg(
        long,
        global = true,
        env = "PROTODROP_CLIENT_CERT",
        requires = "client_key",
        value_name = "PEM"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM file with the private key of --client-cert. Needs --client-cert.
    #[arg(
        long,
        global = true,
        env = "PROTODROP_CLIENT_KEY",
        requires = "client_cert",
        value_name = "PEM"
    )]
    pub client_key: Option<PathBuf>,
}

/// `calls`: list the journal, or `calls clear`.
#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CallsArgs {
    #[command(subcommand)]
    pub action: Option<CallsAction>,
    /// Only calls of this method (`pkg.Service/Method`).
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,
    /// Only the newest N calls.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Print the admin API's answer (ListCalls JSON: every frame of every call) instead of a line
    /// per call.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CallsAction {
    /// Empty the journal (between tests).
    Clear,
}

/// `verify FILTER`.
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// A filter file, `-` for stdin: `method = "pkg.Service/Method"`, `when.request.FIELD = …`,
    /// `when.metadata.KEY = …`, `status = "OK"`, written as a rule's `when` (TOML), or the same as a
    /// JSON object (a .json file, or text starting with `{`).
    #[arg(value_name = "FILTER_FILE")]
    pub filter: PathBuf,
    /// Exit 1 (after printing) unless exactly N calls match: what a shell test asserts.
    #[arg(long, value_name = "N")]
    pub expect: Option<u64>,
    /// Print the admin API's answer (Verify JSON, the matching calls in full) instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `rules …`.
#[derive(Args, Debug, Clone)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub action: RulesAction,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum RulesAction {
    /// Add the rules of a file (`-` for stdin), written as in a handler file (TOML, or the same as
    /// JSON); all or none: a bad file changes nothing and its problems name file:line:column.
    /// Prints each new rule's id.
    Add {
        /// The rules' file, `-` for stdin: `[[rule]]` tables with `method = …` (TOML), or the same
        /// structure as a JSON object (a .json file, or text starting with `{`).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print the admin API's answer (AddRules JSON).
        #[arg(long)]
        json: bool,
    },
    /// List every rule served (runtime ones and the handler files'), per method in the order tried:
    /// id (`-` for a file's), method, origin.
    List {
        /// Only rules of this method (`pkg.Service/Method`).
        #[arg(long, value_name = "METHOD")]
        method: Option<String>,
        /// Print the admin API's answer (ListRules JSON, each rule's text included).
        #[arg(long)]
        json: bool,
    },
    /// Delete one runtime rule by its id (`r1`).
    Delete {
        /// The id `rules add` printed (`r1`).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Delete every runtime rule: the handler files' rules alone answer again.
    Reset,
}

impl Cli {
    /// The command to run, `serve` when none was named.
    pub fn command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

/// `check`: what is loaded, and what to print besides problems.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sources: SourceArgs,

    /// Print a starter rule for every method without a handler, as a handler file (TOML) to stdout:
    /// `protodrop check --starter-rules > handlers/starter.toml` makes every method answer.
    #[arg(long)]
    pub starter_rules: bool,
}

/// What is loaded: the two folders, include roots, and script limits.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Folder of .proto files, read recursively.
    #[arg(
        long,
        env = "PROTODROP_PROTOS",
        default_value = "protos",
        value_name = "DIR"
    )]
    pub protos: PathBuf,

    /// Folder of handler files (*.toml, *.rhai), read recursively.
    #[arg(
        long,
        env = "PROTODROP_HANDLERS",
        default_value = "handlers",
        value_name = "DIR"
    )]
    pub handlers: PathBuf,

    /// Extra include root for imports (repeatable; the environment variable takes a ':'-separated list).
    #[arg(
        short = 'I',
        long = "proto-path",
        env = "PROTODROP_PROTO_PATH",
        value_delimiter = ':',
        value_name = "DIR"
    )]
    pub proto_path: Vec<PathBuf>,

    /// Protos not to compile unless imported: a gitignore pattern relative to --protos, e.g.
    /// `tests/` or `**/testdata` (repeatable; the environment variable takes a ','-separated list).
    /// A `.protodropignore` file in the protos folder lists more, one per line.
    #[arg(
        long,
        env = "PROTODROP_EXCLUDE",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub exclude: Vec<String>,
    /// A FileDescriptorSet file to load with the protos (`buf build -o FILE.binpb`, `protoc
    /// --include_imports -o FILE.binpb`): the way in for a schema protodrop cannot compile itself.
    /// `*.binpb` and `*.pb` files in the protos folder are loaded without it. Repeatable; the
    /// environment variable takes a ':'-separated list.
    #[arg(
        long = "descriptor-set",
        env = "PROTODROP_DESCRIPTOR_SET",
        value_delimiter = ':',
        value_name = "FILE"
    )]
    pub descriptor_set: Vec<PathBuf>,

    /// Do not serve gRPC server reflection (grpc.reflection.v1 and v1alpha).
    #[arg(long, env = "PROTODROP_NO_REFLECTION")]
    pub no_reflection: bool,

    /// Most Rhai operations one script call may run before it is stopped with RESOURCE_EXHAUSTED.
    #[arg(long, help_heading = "Script limits", env = "PROTODROP_SCRIPT_MAX_OPERATIONS", default_value_t = ScriptLimits::default().max_operations, value_name = "N")]
    pub script_max_operations: u64,

    /// Deepest function-call nesting a script may reach.
    #[arg(long, help_heading = "Script limits", env = "PROTODROP_SCRIPT_MAX_CALL_DEPTH", default_value_t = ScriptLimits::default().max_call_depth, value_name = "N")]
    pub script_max_call_depth: usize,

    /// Longest string a script may build, in bytes (suffixes KiB, MiB allowed).
    #[arg(long, help_heading = "Script limits", env = "PROTODROP_SCRIPT_MAX_STRING_SIZE", default_value_t = ScriptLimits::default().max_string_size, value_parser = parse_size, value_name = "BYTES")]
    pub script_max_string_size: usize,

    /// Largest array a script may build, in elements.
    #[arg(long, help_heading = "Script limits", env = "PROTODROP_SCRIPT_MAX_ARRAY_SIZE", default_value_t = ScriptLimits::default().max_array_size, value_name = "N")]
    pub script_max_array_size: usize,

    /// Largest map a script may build, in entries.
    #[arg(long, help_heading = "Script limits", env = "PROTODROP_SCRIPT_MAX_MAP_SIZE", default_value_t = ScriptLimits::default().max_map_size, value_name = "N")]
    pub script_max_map_size: usize,

    /// Most memory one script call may hold (its values, the request shown to it), in bytes
    /// (suffixes KiB, MiB allowed); past it the call ends with RESOURCE_EXHAUSTED. 0 = no limit.
    #[arg(long, help_heading = "Script limits", env = "PROTODROP_SCRIPT_MAX_MEMORY", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub script_max_memory: usize,

    /// Longest one script call may run (wall clock) before it ends with DEADLINE_EXCEEDED; 0 = no limit.
    #[arg(long, help_heading = "Script limits", env = "PROTODROP_SCRIPT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub script_timeout: std::time::Duration,
}

impl SourceArgs {
    pub(crate) fn sources(&self) -> Sources {
        Sources {
            protos: self.protos.clone(),
            handlers: self.handlers.clone(),
            include_roots: self.proto_path.clone(),
            exclude: self.exclude.clone(),
            descriptor_sets: self.descriptor_set.clone(),
            reflection: !self.no_reflection,
            reads: Default::default(),
            natives: Vec::new(),
            script_limits: ScriptLimits {
                max_operations: self.script_max_operations,
                max_call_depth: self.script_max_call_depth,
                max_string_size: self.script_max_string_size,
                max_array_size: self.script_max_array_size,
                max_map_size: self.script_max_map_size,
                max_memory: self.script_max_memory,
                max_duration: self.script_timeout,
            },
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub sources: SourceArgs,

    /// Address to listen on. Loopback by default: a mock server should not be reachable from the network
    /// unless you say so (e.g. 0.0.0.0:50051). Port 0 picks a free port; the address is printed on stdout.
    #[arg(
        long,
        env = "PROTODROP_LISTEN",
        default_value = default_listen!(),
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Largest message accepted or sent, in bytes (suffixes KiB, MiB allowed); larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "PROTODROP_MAX_MESSAGE_SIZE", default_value = "4MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_message_size: usize,

    /// Most memory one request may take once decoded, estimated from its bytes before decoding
    /// (suffixes KiB, MiB allowed): a small message can decode to many times its size (millions of
    /// empty entries); larger ones get RESOURCE_EXHAUSTED. 0 = no limit.
    #[arg(long, env = "PROTODROP_MAX_REQUEST_MEMORY", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_request_memory: usize,

    /// Threads serving calls [default: one per core this process may use]. With 1 (the default on one
    /// core), a single-threaded scheduler serves everything, which on one core answers more calls per
    /// second than a multi-threaded one. Scripts that wait (next(), sleep()) run on threads of their own.
    #[arg(long, env = "PROTODROP_THREADS", value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,

    /// Do not watch the folders for changes.
    #[arg(long, env = "PROTODROP_NO_WATCH")]
    pub no_watch: bool,

    /// Do not count calls, and do not serve Prometheus metrics on `GET /metrics` (the main port).
    #[arg(long, env = "PROTODROP_NO_METRICS")]
    pub no_metrics: bool,

    /// Keep no journal of the calls (the admin API's ListCalls and Verify then answer
    /// FAILED_PRECONDITION): for the last bit of throughput, as recording every frame costs a
    /// unary call about 5 % and a stream of small messages 10–12 %.
    #[arg(long, help_heading = "Journal", env = "PROTODROP_NO_JOURNAL")]
    pub no_journal: bool,

    /// The journal is on by default; accepted, and ignored, so that commands written for the
    /// versions where it was off still run.
    #[arg(long, hide = true, env = "PROTODROP_JOURNAL")]
    pub journal: bool,

    /// Most calls the journal keeps; the oldest are dropped first (and counted).
    #[arg(
        long,
        help_heading = "Journal",
        env = "PROTODROP_JOURNAL_MAX_CALLS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub journal_max_calls: usize,

    /// Most bytes of messages and metadata the journal keeps (suffixes KiB, MiB allowed); the oldest
    /// calls are dropped first, and one call's frames past it are counted, not kept.
    #[arg(long, help_heading = "Journal", env = "PROTODROP_JOURNAL_MAX_BYTES", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub journal_max_bytes: usize,

    /// On SIGTERM/SIGINT, how long calls in flight may take to finish; those still running then end
    /// with UNAVAILABLE "server shutting down" (exit 0).
    #[arg(long, env = "PROTODROP_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_grace: std::time::Duration,

    /// Largest request header list (names, values and 32 bytes per header, as HTTP/2 counts it); a
    /// call with more gets RESOURCE_EXHAUSTED. HTTP/2 itself refuses (HTTP 431) past 4 times this.
    #[arg(long, env = "PROTODROP_MAX_HEADER_SIZE", default_value = "16KiB", value_parser = parse_header_size, value_name = "SIZE")]
    pub max_header_size: u32,

    /// Most bytes of response headers, trailers or an error message that handlers (templates,
    /// scripts) may build for one call (suffixes KiB, MiB allowed); a call past it ends with
    /// RESOURCE_EXHAUSTED instead of sending them. Some clients refuse more (grpc-java: 8 KiB).
    #[arg(long, env = "PROTODROP_MAX_REPLY_METADATA_SIZE", default_value = "16KiB", value_parser = parse_reply_metadata_size, value_name = "SIZE")]
    pub max_reply_metadata_size: usize,

    /// Most reply bytes one connection buffers for sending, all its calls together (suffixes KiB,
    /// MiB allowed; at least 64KiB): replies a client does not read wait in their handlers beyond
    /// it. HTTP/1.1 connections buffer at least 4 times --max-header-size (their request head).
    #[arg(long, help_heading = "Connections", env = "PROTODROP_MAX_SEND_BUFFER", default_value = "1MiB", value_parser = parse_send_buffer, value_name = "SIZE")]
    pub max_send_buffer: usize,

    /// Longest a new connection may take to finish its TLS handshake, and then to send its first 24
    /// bytes (the HTTP/2 preface); also the longest an HTTP/1.1 connection may take to send a request
    /// head, idle keep-alive time included.
    #[arg(long, help_heading = "Connections", env = "PROTODROP_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub handshake_timeout: std::time::Duration,

    /// An HTTP/2 connection from which nothing has arrived for this long is sent a PING.
    #[arg(long, help_heading = "Connections", env = "PROTODROP_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub keepalive_interval: std::time::Duration,

    /// An HTTP/2 connection that does not answer a PING within this time is closed (a silent
    /// connection goes after --keepalive-interval plus this; one that answers stays, calls or not).
    #[arg(long, help_heading = "Connections", env = "PROTODROP_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub keepalive_timeout: std::time::Duration,

    /// Origin whose web pages may call the server (CORS, for gRPC-Web, Connect and HTTP/JSON from a
    /// browser), e.g. http://localhost:3000; repeatable (the environment variable takes a ','-separated
    /// list). The default, *, lets a page from any origin call: right for a development mock, not for a
    /// server others can reach. `none` turns CORS off.
    #[arg(long, env = "PROTODROP_CORS_ORIGIN", value_delimiter = ',', default_value = "*", value_parser = crate::server::cors::parse_origin, value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,

    /// Origin whose web pages may call the admin API (rules, calls), e.g. http://localhost:3000;
    /// repeatable (the environment variable takes a ','-separated list), `*` for any. By default
    /// none: a page's request to an admin path (one with an `Origin` header) is answered
    /// PERMISSION_DENIED, so a page open in your browser cannot change what the mock answers.
    /// Clients that are not browsers send no `Origin` and are not affected. The origin must also
    /// pass --cors-origin.
    #[arg(long, help_heading = "Admin API", env = "PROTODROP_ADMIN_CORS_ORIGIN", value_delimiter = ',', value_parser = crate::server::cors::parse_origin, value_name = "ORIGIN")]
    pub admin_cors_origin: Vec<String>,

    /// Serve the admin API (protodrop.admin.v1.Admin: rules, calls, verification) only on this
    /// address, a listener of its own, instead of on the main port beside the protos' services (where
    /// it is reachable by whoever reaches that port). A bare port means 127.0.0.1:PORT; port 0 picks a
    /// free port, printed on stdout as `admin listening on ADDR` after the main listen line.
    #[arg(long, help_heading = "Admin API", env = "PROTODROP_ADMIN_LISTEN", value_parser = parse_admin_listen, conflicts_with = "no_admin", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Do not serve the admin API at all: its paths are unknown, reflection does not list it.
    #[arg(long, help_heading = "Admin API", env = "PROTODROP_NO_ADMIN")]
    pub no_admin: bool,

    /// Most runtime rules (added through the admin API) kept at once; a submission that would pass
    /// it is refused whole with RESOURCE_EXHAUSTED. Each change rebuilds what it touches from them.
    #[arg(
        long,
        help_heading = "Admin API",
        env = "PROTODROP_MAX_RUNTIME_RULES",
        default_value_t = crate::state::DEFAULT_MAX_RUNTIME_RULES,
        value_name = "N"
    )]
    pub max_runtime_rules: usize,

    /// PEM file with the server's certificate (its chain, leaf first): serve TLS on the port, for every
    /// protocol (gRPC, gRPC-Web, Connect, HTTP/JSON). Needs --tls-key. Read once at start-up.
    #[arg(
        long,
        help_heading = "TLS",
        env = "PROTODROP_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 RSA or SEC1 EC). Needs --tls-cert.
    #[arg(
        long,
        help_heading = "TLS",
        env = "PROTODROP_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM file with the CA certificate(s) that sign client certificates: makes a client certificate
    /// signed by one of them mandatory (mutual TLS). Needs --tls-cert and --tls-key.
    #[arg(
        long,
        help_heading = "TLS",
        env = "PROTODROP_TLS_CLIENT_CA",
        requires = "tls_cert",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServeArgs {
    /// The TLS files, when TLS is on (clap has checked that certificate and key come together).
    pub(crate) fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }
}

/// `--admin-listen`: an address, or a bare port on loopback (the admin API is not for the network
/// unless you say so).
fn parse_admin_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.trim().parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.trim()
        .parse()
        .map_err(|e| format!("'{s}' is not an address such as 127.0.0.1:9090, or a port: {e}"))
}

/// A connection timeout: a duration above zero (zero would close every connection at once).
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// A size (as [`parse_size`]) that HTTP/2's 32-bit setting can carry four times over, and at least
/// large enough for a call's own headers.
fn parse_header_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    match u32::try_from(n) {
        Ok(n) if (1024..=u32::MAX / 4).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' must be between 1KiB and 1GiB")),
    }
}

/// A send buffer (as [`parse_size`]): at least one default HTTP/2 stream window (64 KiB), so that
/// the connection-wide budget of vendor/h2 holds a full window's reply at least; at most 1 GiB,
/// so that h2's 32-bit windows can express it.
fn parse_send_buffer(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if (crate::server::MIN_SEND_BUFFER..=1 << 30).contains(&n) {
        Ok(n)
    } else {
        Err(format!("'{s}' must be between 64KiB and 1GiB"))
    }
}

/// A reply metadata budget (as [`parse_size`]): at least 1 KiB (a few headers and a status
/// message), at most 64 MiB.
fn parse_reply_metadata_size(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if (1 << 10..=64 << 20).contains(&n) {
        Ok(n)
    } else {
        Err(format!("'{s}' must be between 1KiB and 64MiB"))
    }
}

/// `4194304`, `4096KiB`, `4MiB`, `4M`, `1GiB`.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 4194304 or 4MiB"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("'{s}' is too large"))
}
