//! Test harness: a real `protodrop` process per test, serving files written into a fresh temp folder,
//! and a dynamic gRPC client built from the same protos (compiled with protox), speaking JSON.
//!
//! * [`Server::start`] writes `protos/` and `handlers/`, spawns the binary on `127.0.0.1:0`, reads the
//!   `listening on …` line and keeps stderr in a buffer ([`Server::logs`]). The child is killed on drop,
//!   panics included.
//! * [`Server::client`] compiles the server's current protos and connects; its calls
//!   ([`Client::unary`], [`Client::server_stream`], [`Client::client_stream`], [`Client::bidi`],
//!   [`Client::session`]) take and give JSON and report headers, trailers and the final status.
//! * [`eventually`] polls until a condition holds (reload tests); [`check`] runs `protodrop check`.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use serde_json::Value as Json;
use tempfile::TempDir;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue, MetadataMap,
};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

#[allow(unused_imports)]
pub use serde_json::json;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_protodrop");
/// How long a server may take to print its listen line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest any single call may take before the test fails instead of hanging.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a `protodrop check` (or any short command) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The proto most tests use: `t.Svc` with every RPC shape. Handler file for it: `t.toml`.
pub const T_PROTO: &str = r#"syntax = "proto3";
package t;

import "google/protobuf/empty.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
  GREEN = 2;
}

message Inner {
  int32 id = 1;
  string label = 2;
}

message Req {
  string name = 1;
  int32 num = 2;
  int64 big = 3;
  bool flag = 4;
  Color color = 5;
  repeated string tags = 6;
  Inner inner = 7;
  repeated Inner items = 8;
  double ratio = 9;
}

message Resp {
  string text = 1;
  int32 num = 2;
  int64 big = 3;
  Color color = 4;
  repeated string list = 5;
  Inner inner = 6;
  repeated Inner items = 7;
  repeated int64 ids = 8;
  double ratio = 9;
  bool flag = 10;
  uint64 count = 11;
}

service Svc {
  rpc Unary(Req) returns (Resp);
  rpc Echo(Req) returns (Req);
  rpc ServerStream(Req) returns (stream Resp);
  rpc ClientStream(stream Req) returns (Resp);
  rpc Bidi(stream Req) returns (stream Resp);
  rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty);
}
"#;

/// `[("t.proto", T_PROTO)]`
pub fn t_proto() -> [(&'static str, &'static str); 1] {
    [("t.proto", T_PROTO)]
}

/// One `[[rule]]` for `method`: its `lines` (conditions and answer, one TOML key a line) and a blank
/// line after it, so that rules joined together read as a handler file.
pub fn rule(method: &str, lines: &str) -> String {
    format!("[[rule]]\nmethod = \"{method}\"\n{lines}\n\n")
}

/// A handler file: a [`rule`] for each `(method, lines)`, in order.
pub fn rules(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(method, lines)| rule(method, lines))
        .collect()
}

/// A server on [`T_PROTO`] whose only handler file, `t.toml`, is `rules`.
pub fn start_t(rules: &str) -> Server {
    Server::start(&t_proto(), &[("t.toml", rules)])
}

/// [`start_t`], and a client connected to it.
pub async fn serve_t(rules: &str) -> (Server, Client) {
    let server = start_t(rules);
    let client = server.client().await;
    (server, client)
}

/// Writes `(relative path, text)` pairs under `root`, creating folders.
pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        write_file(&root.join(name), text);
    }
}

fn write_file(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Every `PROTODROP_*` variable of the test's own environment, so that none leaks into the child.
fn inherited_protodrop_vars() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("PROTODROP_"))
        .collect()
}

/// A command for the binary with a clean, deterministic environment.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for k in inherited_protodrop_vars() {
        cmd.env_remove(k);
    }
    cmd.env("RUST_LOG", "info")
        .env("COLUMNS", "100")
        .env_remove("NO_COLOR");
    cmd
}

/// How to start a server beyond the defaults.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra command-line arguments (after `serve …`).
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Give the folders and the listen address through `PROTODROP_*` variables and run the binary with
    /// no arguments at all (the default command is `serve`).
    pub via_env: bool,
    /// Extra files written under the temp folder's root before starting, e.g. an include root.
    pub files: Vec<(String, String)>,
    /// Include roots, relative to the temp folder, also used by the test client to compile the protos.
    pub include: Vec<String>,
    /// Binary files (e.g. `protos/x.binpb`, a descriptor set) written under the temp folder's root.
    pub binaries: Vec<(String, Vec<u8>)>,
}

impl Options {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn file(mut self, path: impl Into<String>, text: impl Into<String>) -> Self {
        self.files.push((path.into(), text.into()));
        self
    }
    pub fn binary(mut self, path: impl Into<String>, bytes: Vec<u8>) -> Self {
        self.binaries.push((path.into(), bytes));
        self
    }
}

/// A running `protodrop serve`, killed on drop.
pub struct Server {
    dir: TempDir,
    child: Option<Child>,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    include: Vec<PathBuf>,
}

impl Server {
    /// Starts a server on these protos and handlers (paths relative to `protos/` and `handlers/`).
    pub fn start(protos: &[(&str, &str)], handlers: &[(&str, &str)]) -> Server {
        Self::start_with(protos, handlers, Options::default())
    }

    pub fn start_with(
        protos: &[(&str, &str)],
        handlers: &[(&str, &str)],
        options: Options,
    ) -> Server {
        match Self::try_start(protos, handlers, options) {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Server::start`], but a server that does not come up is an `Err` with its exit status and
    /// stderr, not a panic.
    pub fn try_start(
        protos: &[(&str, &str)],
        handlers: &[(&str, &str)],
        options: Options,
    ) -> Result<Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("protodrop-test-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("protos")).unwrap();
        std::fs::create_dir_all(dir.path().join("handlers")).unwrap();
        write_files(&dir.path().join("protos"), protos);
        write_files(&dir.path().join("handlers"), handlers);
        for (path, text) in &options.files {
            write_file(&dir.path().join(path), text);
        }
        for (path, bytes) in &options.binaries {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let protos_dir = dir.path().join("protos");
        let handlers_dir = dir.path().join("handlers");

        let mut cmd = command();
        cmd.current_dir(dir.path());
        if options.via_env {
            cmd.env("PROTODROP_PROTOS", &protos_dir)
                .env("PROTODROP_HANDLERS", &handlers_dir)
                .env("PROTODROP_LISTEN", "127.0.0.1:0");
        } else {
            cmd.arg("serve")
                .arg("--protos")
                .arg(&protos_dir)
                .arg("--handlers")
                .arg(&handlers_dir)
                .arg("--listen")
                .arg("127.0.0.1:0");
        }
        for inc in &options.include {
            cmd.arg("-I").arg(dir.path().join(inc));
        }
        cmd.args(&options.args);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn {BIN}: {e}"))?;

        let logs = Arc::new(Mutex::new(String::new()));
        let stdout_buf = Arc::new(Mutex::new(String::new()));
        let stderr_thread = {
            let mut stderr = child.stderr.take().unwrap();
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match stderr.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => logs
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&chunk[..n])),
                    }
                }
            })
        };
        let (line_tx, line_rx) = std_mpsc::channel::<String>();
        {
            let stdout = child.stdout.take().unwrap();
            let buf = stdout_buf.clone();
            std::thread::spawn(move || {
                let mut first = Some(line_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match first.take() {
                        Some(tx) => {
                            let _ = tx.send(line);
                        }
                        None => {
                            let mut b = buf.lock().unwrap();
                            b.push_str(&line);
                            b.push('\n');
                        }
                    }
                }
            });
        }

        let fail = |child: &mut Child, what: String| -> String {
            // Let a dying process finish writing its stderr before quoting it.
            let deadline = Instant::now() + Duration::from_secs(2);
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    _ if Instant::now() > deadline => break None,
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            std::thread::sleep(Duration::from_millis(50));
            let status = status.map_or("still running (killed)".to_string(), |s| s.to_string());
            format!(
                "protodrop serve did not start: {what}; exit: {status}\n--- stderr ---\n{}",
                logs.lock().unwrap()
            )
        };
        let line = match line_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                return Err(fail(
                    &mut child,
                    format!("no listen line within {STARTUP_TIMEOUT:?}"),
                ))
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                let _ = stderr_thread.join();
                return Err(fail(
                    &mut child,
                    "stdout closed before the listen line".into(),
                ));
            }
        };
        let Some(addr) = line
            .strip_prefix("listening on ")
            .and_then(|a| SocketAddr::from_str(a).ok())
        else {
            return Err(fail(
                &mut child,
                format!("first stdout line is not `listening on ADDR`: {line:?}"),
            ));
        };
        if !addr.ip().is_loopback() || addr.port() == 0 {
            return Err(fail(
                &mut child,
                format!("listen line names an unexpected address: {line:?}"),
            ));
        }
        let include = options.include.iter().map(|i| dir.path().join(i)).collect();
        Ok(Server {
            dir,
            child: Some(child),
            addr,
            logs,
            stdout: stdout_buf,
            include,
        })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn protos_dir(&self) -> PathBuf {
        self.dir.path().join("protos")
    }
    pub fn handlers_dir(&self) -> PathBuf {
        self.dir.path().join("handlers")
    }

    /// Everything the server wrote on stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Stdout after the listen line.
    pub fn stdout_rest(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until the logs hold `needle` (after `since` bytes of log), or panics with the logs.
    pub async fn wait_for_log(&self, since: usize, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if logs.get(since..).is_some_and(|l| l.contains(needle)) {
                return logs[since..].to_string();
            }
            if start.elapsed() > timeout {
                panic!(
                    "the server's log did not mention {needle:?} within {timeout:?}; log:\n{logs}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn write_handler(&self, name: &str, text: &str) {
        write_file(&self.handlers_dir().join(name), text);
    }
    pub fn write_proto(&self, name: &str, text: &str) {
        write_file(&self.protos_dir().join(name), text);
    }
    /// Removes a file given relative to the temp root, e.g. `handlers/t.toml`.
    pub fn remove(&self, rel: &str) {
        let p = self.dir.path().join(rel);
        std::fs::remove_file(&p).unwrap_or_else(|e| panic!("removing {}: {e}", p.display()));
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (e.g. "TERM", "INT") and waits up to `timeout` for the process to exit. Async, so
    /// that the test's own client connections keep being driven (a graceful shutdown waits for them).
    pub async fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> Option<ExitStatus> {
        let pid = self.pid();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} {pid} failed");
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client for the server's current protos (compiled now, so call again after changing them).
    pub async fn client(&self) -> Client {
        let pool =
            compile_protos(&self.protos_dir(), &self.include).unwrap_or_else(|e| panic!("{e}"));
        Client::connect(self.addr, pool).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every `*.proto` under `dir`, as relative names with `/`, sorted.
pub fn proto_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "proto") {
                let rel = p.strip_prefix(root).unwrap();
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Compiles every proto under `dir` (well-known types included; extra include roots after it).
pub fn compile_protos(dir: &Path, include: &[PathBuf]) -> Result<DescriptorPool, String> {
    let mut roots = vec![dir.to_path_buf()];
    roots.extend(include.iter().cloned());
    let mut compiler = protox::Compiler::new(roots).map_err(|e| format!("protox: {e}"))?;
    compiler.include_imports(true);
    compiler
        .open_files(proto_files(dir))
        .map_err(|e| format!("test client cannot compile {}: {e:?}", dir.display()))?;
    Ok(compiler.descriptor_pool())
}

/// `google.rpc.Status` and the standard error details, compiled from the repository's bundled copies.
pub fn rpc_pool() -> DescriptorPool {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protos/include");
    let mut compiler = protox::Compiler::new([include]).expect("protox");
    compiler.include_imports(true);
    compiler
        .open_files(["google/rpc/status.proto", "google/rpc/error_details.proto"])
        .expect("compiling google/rpc protos");
    compiler.descriptor_pool()
}

/// The `grpc-status-details-bin` of a status decoded as `google.rpc.Status`, as JSON (details with `@type`).
pub fn status_details(status: &Status) -> Json {
    let pool = rpc_pool();
    let desc = pool.get_message_by_name("google.rpc.Status").unwrap();
    assert!(
        !status.details().is_empty(),
        "status has no details: {status:?}"
    );
    let msg =
        DynamicMessage::decode(desc, status.details()).expect("details are a google.rpc.Status");
    serde_json::to_value(&msg).unwrap()
}

/// What came back from one call.
#[derive(Debug)]
pub struct Outcome {
    /// Response messages as canonical proto3 JSON (int64 as strings, defaults omitted).
    pub messages: Vec<Json>,
    pub raw: Vec<DynamicMessage>,
    /// When each message arrived, since the call started.
    pub arrivals: Vec<Duration>,
    /// Response headers (empty for a trailers-only error response).
    pub headers: MetadataMap,
    /// Trailers; for an error, the status' metadata.
    pub trailers: MetadataMap,
    /// `Code::Ok` when the call succeeded.
    pub status: Status,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn code(&self) -> Code {
        self.status.code()
    }
    pub fn message(&self) -> &str {
        self.status.message()
    }
    /// Panics unless the call ended OK.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code(),
            Code::Ok,
            "call failed: {:?} {:?} (messages so far: {:?})",
            self.code(),
            self.message(),
            self.messages
        );
        self
    }
    /// The one message of a successful unary call.
    #[track_caller]
    pub fn single(&self) -> &Json {
        self.ok();
        assert_eq!(
            self.messages.len(),
            1,
            "expected exactly one message, got {:?}",
            self.messages
        );
        &self.messages[0]
    }
    /// Panics unless the call failed with `code`; returns the status message.
    #[track_caller]
    pub fn err(&self, code: Code) -> &str {
        assert_eq!(
            self.code(),
            code,
            "expected {code:?}, got {:?} {:?} with messages {:?}",
            self.code(),
            self.message(),
            self.messages
        );
        self.message()
    }
    /// Panics unless the header `key` is `want`.
    #[track_caller]
    pub fn expect_header(&self, key: &str, want: &str) {
        let got = self.header(key);
        assert_eq!(got.as_deref(), Some(want), "headers: {:?}", self.headers);
    }
    /// Panics unless the trailer `key` is `want`.
    #[track_caller]
    pub fn expect_trailer(&self, key: &str, want: &str) {
        let got = self.trailer(key);
        assert_eq!(got.as_deref(), Some(want), "trailers: {:?}", self.trailers);
    }
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .get(key)
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_string())
    }
    pub fn trailer(&self, key: &str) -> Option<String> {
        self.trailers
            .get(key)
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_string())
    }
}

/// A dynamic gRPC client for one server and one descriptor pool.
#[derive(Clone)]
pub struct Client {
    pub pool: DescriptorPool,
    channel: Channel,
    gzip: bool,
}

type Metadata<'a> = &'a [(&'a str, &'a str)];

impl Client {
    pub async fn connect(addr: SocketAddr, pool: DescriptorPool) -> Client {
        let channel = tokio::time::timeout(
            CALL_TIMEOUT,
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect(),
        )
        .await
        .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e:?}"));
        Client {
            pool,
            channel,
            gzip: false,
        }
    }

    /// A client on a channel the test set up itself (e.g. over TLS, see tests/tls.rs).
    pub fn with_channel(channel: Channel, pool: DescriptorPool) -> Client {
        Client {
            pool,
            channel,
            gzip: false,
        }
    }

    /// Sends requests gzip-compressed and accepts gzip responses.
    pub fn gzip(mut self) -> Self {
        self.gzip = true;
        self
    }

    /// `pkg.Svc/Method` in the pool.
    #[track_caller]
    pub fn method(&self, name: &str) -> MethodDescriptor {
        let (svc, m) = name
            .trim_start_matches('/')
            .rsplit_once('/')
            .expect("pkg.Svc/Method");
        let service = self
            .pool
            .get_service_by_name(svc)
            .unwrap_or_else(|| panic!("test client: no service {svc}"));
        let found = service.methods().find(|x| x.name() == m);
        found.unwrap_or_else(|| panic!("test client: no method {m} in {svc}"))
    }

    /// A message of `desc` from JSON (proto or JSON field names).
    #[track_caller]
    pub fn message(&self, desc: &MessageDescriptor, json: Json) -> DynamicMessage {
        DynamicMessage::deserialize(desc.clone(), json.clone()).unwrap_or_else(|e| {
            panic!(
                "test request {json} is not a valid {}: {e}",
                desc.full_name()
            )
        })
    }

    pub async fn unary(&self, method: &str, request: Json) -> Outcome {
        self.unary_md(method, request, &[]).await
    }

    pub async fn unary_md(&self, method: &str, request: Json, metadata: Metadata<'_>) -> Outcome {
        let m = self.method(method);
        let req = self.message(&m.input(), request);
        self.call_path(&format!("/{method}"), m.output(), vec![req], metadata)
            .await
    }

    pub async fn server_stream(&self, method: &str, request: Json) -> Outcome {
        self.unary_md(method, request, &[]).await
    }

    pub async fn client_stream(&self, method: &str, requests: Vec<Json>) -> Outcome {
        self.client_stream_md(method, requests, &[]).await
    }

    pub async fn client_stream_md(
        &self,
        method: &str,
        requests: Vec<Json>,
        metadata: Metadata<'_>,
    ) -> Outcome {
        let m = self.method(method);
        let reqs = requests
            .into_iter()
            .map(|r| self.message(&m.input(), r))
            .collect();
        self.call_path(&format!("/{method}"), m.output(), reqs, metadata)
            .await
    }

    /// A bidi call whose requests are all sent up front (use [`Client::session`] for turn-taking).
    pub async fn bidi(&self, method: &str, requests: Vec<Json>) -> Outcome {
        self.client_stream_md(method, requests, &[]).await
    }

    /// Any path, any request messages; replies decoded as `output`. Every shape goes over the same
    /// streaming call, which keeps headers and trailers apart.
    pub async fn call_path(
        &self,
        path: &str,
        output: MessageDescriptor,
        requests: Vec<DynamicMessage>,
        metadata: Metadata<'_>,
    ) -> Outcome {
        self.call_stream(path, output, futures::stream::iter(requests), metadata)
            .await
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if self.gzip {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        grpc
    }

    pub async fn call_stream(
        &self,
        path: &str,
        output: MessageDescriptor,
        requests: impl Stream<Item = DynamicMessage> + Send + 'static,
        metadata: Metadata<'_>,
    ) -> Outcome {
        let started = Instant::now();
        let mut grpc = self.grpc();
        let mut request = Request::new(requests);
        add_metadata(request.metadata_mut(), metadata);
        let path_text = path.to_string();
        let path = http::uri::PathAndQuery::from_str(path).expect("path");
        let call = async move {
            grpc.ready().await.expect("channel ready");
            let mut out = Outcome {
                messages: vec![],
                raw: vec![],
                arrivals: vec![],
                headers: MetadataMap::new(),
                trailers: MetadataMap::new(),
                status: Status::new(Code::Ok, ""),
                elapsed: Duration::ZERO,
            };
            let mut stream = match grpc
                .streaming(request, path, DynamicCodec::new(output))
                .await
            {
                Ok(response) => {
                    out.headers = response.metadata().clone();
                    response.into_inner()
                }
                Err(status) => {
                    out.trailers = status.metadata().clone();
                    out.status = status;
                    return out;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        out.arrivals.push(started.elapsed());
                        out.messages.push(to_json(&m));
                        out.raw.push(m);
                    }
                    Ok(None) => {
                        match stream.trailers().await {
                            Ok(Some(t)) => out.trailers = t,
                            Ok(None) => {}
                            Err(status) => {
                                out.trailers = status.metadata().clone();
                                out.status = status;
                            }
                        }
                        break;
                    }
                    Err(status) => {
                        out.trailers = status.metadata().clone();
                        out.status = status;
                        break;
                    }
                }
            }
            out
        };
        let mut out = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| panic!("call {path_text} did not finish within {CALL_TIMEOUT:?}"));
        out.elapsed = started.elapsed();
        out
    }

    /// Opens a bidi (or client) stream for turn-taking: send, receive, send again.
    pub fn session(&self, method: &str) -> Session {
        self.session_md(method, &[])
    }

    pub fn session_md(&self, method: &str, metadata: Metadata<'_>) -> Session {
        let m = self.method(method);
        let (tx, rx) = mpsc::unbounded::<DynamicMessage>();
        let (events_tx, events_rx) = mpsc::unbounded::<Event>();
        let mut grpc = self.grpc();
        let mut request = Request::new(rx);
        add_metadata(request.metadata_mut(), metadata);
        let path = http::uri::PathAndQuery::from_str(&format!("/{method}")).unwrap();
        let output = m.output();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let send = |e: Event| {
                let _ = events_tx.unbounded_send(e);
            };
            if let Err(e) = grpc.ready().await {
                send(Event::End(
                    MetadataMap::new(),
                    Status::unavailable(e.to_string()),
                ));
                return;
            }
            let mut stream = match grpc
                .streaming(request, path, DynamicCodec::new(output))
                .await
            {
                Ok(response) => {
                    send(Event::Headers(response.metadata().clone()));
                    response.into_inner()
                }
                Err(status) => {
                    send(Event::End(status.metadata().clone(), status));
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(m)) => send(Event::Message(m, started.elapsed())),
                    Ok(None) => {
                        match stream.trailers().await {
                            Ok(t) => {
                                send(Event::End(t.unwrap_or_default(), Status::new(Code::Ok, "")))
                            }
                            Err(status) => send(Event::End(status.metadata().clone(), status)),
                        }
                        return;
                    }
                    Err(status) => {
                        send(Event::End(status.metadata().clone(), status));
                        return;
                    }
                }
            }
        });
        Session {
            input: m.input(),
            tx: Some(tx),
            events: events_rx,
            task,
            headers: None,
            end: None,
        }
    }
}

fn add_metadata(map: &mut MetadataMap, metadata: Metadata<'_>) {
    for (k, v) in metadata {
        if k.ends_with("-bin") {
            map.append_bin(
                BinaryMetadataKey::from_str(k).unwrap(),
                BinaryMetadataValue::from_bytes(v.as_bytes()),
            );
        } else {
            map.append(
                AsciiMetadataKey::from_str(k).unwrap(),
                AsciiMetadataValue::from_str(v).unwrap(),
            );
        }
    }
}

pub fn to_json(m: &DynamicMessage) -> Json {
    serde_json::to_value(m).expect("message to JSON")
}

enum Event {
    Headers(MetadataMap),
    Message(DynamicMessage, Duration),
    End(MetadataMap, Status),
}

/// An open streaming call: send messages one by one and read replies as they come.
pub struct Session {
    input: MessageDescriptor,
    tx: Option<mpsc::UnboundedSender<DynamicMessage>>,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
    pub headers: Option<MetadataMap>,
    /// Trailers and status, once the call has ended.
    pub end: Option<(MetadataMap, Status)>,
}

impl Session {
    #[track_caller]
    pub fn send(&mut self, request: Json) {
        let msg = DynamicMessage::deserialize(self.input.clone(), request.clone())
            .unwrap_or_else(|e| panic!("{request} is not a valid {}: {e}", self.input.full_name()));
        self.tx
            .as_ref()
            .expect("send after close")
            .unbounded_send(msg)
            .expect("call ended: cannot send");
    }

    /// Half-closes: the client has finished sending.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The next reply within `timeout`: `Ok(Some(json))`, `Ok(None)` when the call ended (see `end`), or
    /// `Err` when nothing came in time.
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Option<Json>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.end.is_some() {
                return Ok(None);
            }
            let event = match tokio::time::timeout_at(deadline, self.events.next()).await {
                Err(_) => return Err(format!("no reply within {timeout:?}")),
                Ok(None) => {
                    self.end = Some((
                        MetadataMap::new(),
                        Status::internal("client task ended without a status"),
                    ));
                    return Ok(None);
                }
                Ok(Some(e)) => e,
            };
            match event {
                Event::Headers(h) => self.headers = Some(h),
                Event::Message(m, _) => return Ok(Some(to_json(&m))),
                Event::End(trailers, status) => {
                    self.end = Some((trailers, status));
                    return Ok(None);
                }
            }
        }
    }

    /// The next reply; panics if none comes within 5 s or the call ended.
    pub async fn recv(&mut self) -> Json {
        match self.recv_within(Duration::from_secs(5)).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!(
                "call ended instead of replying: {:?}",
                self.end.as_ref().map(|(_, s)| s)
            ),
            Err(e) => panic!("{e}"),
        }
    }

    /// Closes the sending side and reads to the end: remaining messages, trailers, status.
    pub async fn finish(mut self) -> (Vec<Json>, MetadataMap, Status) {
        self.close();
        let mut rest = Vec::new();
        loop {
            match self.recv_within(CALL_TIMEOUT).await {
                Ok(Some(m)) => rest.push(m),
                Ok(None) => break,
                Err(e) => panic!("finishing the call: {e}"),
            }
        }
        let (trailers, status) = self.end.take().unwrap();
        (rest, trailers, status)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `text` field of a unary call's reply (`{}` sent), or the status it failed with.
pub async fn reply_text(client: &Client, method: &str) -> Result<String, String> {
    let out = client.unary(method, json!({})).await;
    if out.code() != Code::Ok {
        return Err(format!("{:?}: {}", out.code(), out.message()));
    }
    Ok(out
        .messages
        .first()
        .and_then(|m| m["text"].as_str())
        .unwrap_or_default()
        .to_string())
}

/// Polls `method` until its reply's text is `want` (a reload served), for up to `limit`; returns
/// how long that took. A failure shows the end of the server's log.
pub async fn wait_for_reply_text(
    server: &Server,
    client: &Client,
    method: &str,
    want: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    eventually(limit, || async {
        match reply_text(client, method).await {
            Ok(t) if t == want => Ok(()),
            other => Err(format!("{other:?}; log:\n{}", log_tail(&server.logs()))),
        }
    })
    .await;
    start.elapsed()
}

/// Options for a server whose peak RSS is what it holds: with `MIMALLOC_PURGE_DELAY=0` the
/// allocator gives memory back as it is freed. By its default mimalloc keeps freed memory resident
/// a few milliseconds, and with calls of megabytes that moved a peak by tens of MiB from run to run
/// (`tests/amplification.rs`).
pub fn held() -> Options {
    Options::default().env("MIMALLOC_PURGE_DELAY", "0")
}

/// Resets a process's peak RSS (`VmHWM`) to its RSS now, which it returns, in KiB.
pub fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
    proc_status_kib(pid, "VmHWM")
}

/// `VmRSS` (or another `/proc/PID/status` field) of a process, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB")
}

/// The end of a log, whose lines may be megabytes long.
pub fn log_tail(log: &str) -> String {
    let chars: Vec<char> = log.chars().collect();
    chars[chars.len().saturating_sub(4_000)..].iter().collect()
}

/// Polls `f` until it gives `Ok`, every 20 ms, and panics with its last `Err` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() > timeout {
                    panic!("condition not met within {timeout:?}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a command to completion with a timeout; returns (exit code, stdout, stderr). A signal death is -1.
pub fn run(mut cmd: Command) -> (i32, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {cmd:?} did not finish within {COMMAND_TIMEOUT:?}; stderr so far unavailable");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        out_t.join().unwrap(),
        err_t.join().unwrap(),
    )
}

/// Runs the binary with `args` in `dir` (or the current folder).
pub fn protodrop(args: &[&str], dir: Option<&Path>, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = command();
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd)
}

/// `protodrop check --protos protos --handlers handlers` on these files, run inside their temp folder so
/// problems are reported as `protos/x.proto:…` and `handlers/x.toml:…`. Returns (exit code, stdout, stderr).
pub fn check(protos: &[(&str, &str)], handlers: &[(&str, &str)]) -> (i32, String, String) {
    check_with(protos, handlers, &[])
}

pub fn check_with(
    protos: &[(&str, &str)],
    handlers: &[(&str, &str)],
    args: &[&str],
) -> (i32, String, String) {
    let dir = tempfile::Builder::new()
        .prefix("protodrop-check-")
        .tempdir()
        .expect("temp dir");
    std::fs::create_dir_all(dir.path().join("protos")).unwrap();
    std::fs::create_dir_all(dir.path().join("handlers")).unwrap();
    write_files(&dir.path().join("protos"), protos);
    write_files(&dir.path().join("handlers"), handlers);
    let mut all = vec!["check", "--protos", "protos", "--handlers", "handlers"];
    all.extend_from_slice(args);
    protodrop(&all, Some(dir.path()), &[])
}

/// 1-based line of the first line of `text` containing `needle` (to keep expected locations honest).
#[track_caller]
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
        + 1
}

/// The client's codec: requests written as `DynamicMessage`s, replies read as messages of the
/// method's output type (plain prost-reflect: the server under test is the binary, not the library).
#[derive(Clone, Debug)]
pub struct DynamicCodec(MessageDescriptor);

impl DynamicCodec {
    pub fn new(decode_as: MessageDescriptor) -> Self {
        Self(decode_as)
    }
}

impl tonic::codec::Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicCodec;
    type Decoder = DynamicCodec;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.clone()
    }
}

impl tonic::codec::Encoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(
        &mut self,
        item: DynamicMessage,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<DynamicMessage>, Status> {
        // An empty buffer is a valid message (every field default), never `Ok(None)`.
        let bytes = bytes::Buf::copy_to_bytes(src, bytes::Buf::remaining(src));
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| {
                Status::internal(format!("reply is not a valid {}: {e}", self.0.full_name()))
            })
    }
}

/// The admin API's proto as a client compiles it from the repository (the server bundles the same
/// file).
pub fn admin_pool() -> DescriptorPool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compiler =
        protox::Compiler::new([root.join("src/admin"), root.join("src/protos/include")]).unwrap();
    compiler.include_imports(true);
    compiler.open_files(["admin.proto"]).unwrap();
    compiler.descriptor_pool()
}
