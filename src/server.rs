//! Puts the service on a socket: hyper's HTTP/2 (and HTTP/1.1, for browsers and curl) connections,
//! every request to the gRPC-Web and CORS layer and then to the one dynamic service; in plain TCP, or
//! in TLS (`--tls-cert`, `--tls-key`, and `--tls-client-ca` for mutual TLS).
//!
//! hyper is driven here directly rather than through tonic's `Server`: that one routes by service
//! name (so a catch-all had to go through an axum router) and wraps every request in layers we do
//! not use — connection info, a boxed clone of the whole stack, its own `grpc-timeout` timer (ours is
//! in the service, where it can answer DEADLINE_EXCEEDED as gRPC says) — which cost more per unary
//! call than our own code does.
//!
//! TLS is done with tokio-rustls rather than with tonic's `ServerTlsConfig`: tonic's acceptor
//! offers ALPN `h2` only, and rustls refuses a client whose ALPN list lacks it, so every client that
//! offers `http/1.1` alone (`curl --http1.1`, Python's `http.client`, many HTTP/1.1-only libraries
//! calling Connect, HTTP/JSON or gRPC-Web) would fail its handshake. Ours offers `h2` then `http/1.1`.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject as _};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::front::web::{CorsOrigins, Web};
use crate::service::{DynamicService, ResponseFuture, ServiceSettings};
use crate::state::Registry;

mod preface;
mod streams;
use preface::PrefaceDeadline;
use streams::StreamExecutor;

/// How long a connection may stay silent, and how large its request headers may be:
/// `--handshake-timeout`, `--keepalive-interval`, `--keepalive-timeout`, `--max-header-size`,
/// `--max-send-buffer`.
///
/// A silent socket is closed after at most the handshake timeout (no TLS handshake, no preface, no
/// HTTP/1.1 request head) or the keep-alive interval plus timeout (an HTTP/2 peer that stopped
/// answering PINGs, whatever it left half sent: a HEADERS block, a request body). A connection
/// whose peer answers PINGs stays open however long it has no call, as with grpc-go's default
/// (infinite MaxConnectionIdle): it costs a socket and a few KiB, and clients keep channels open on
/// purpose.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSettings {
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Our limit, which the service checks (to answer RESOURCE_EXHAUSTED); h2's own is 4 times it.
    pub max_header_size: u32,
    /// Reply bytes a connection buffers for sending at most, all its streams together (plus, for
    /// HTTP/2 chunks over a sixteenth of it, up to 16 of them; see vendor/h2/PROTODROP.md), and for
    /// HTTP/1.1 at least 4 times `max_header_size` (`--max-send-buffer`).
    pub max_send_buffer: usize,
}

/// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The least `--max-send-buffer`: one default HTTP/2 stream window.
pub const MIN_SEND_BUFFER: usize = 64 * 1024;

/// Pause after a failed `accept` (too many open files, say), so that an error that repeats does not
/// spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

/// How the server stops: `signal` completes to stop accepting, and `cut`, cancelled when the grace
/// period is over, ends the calls still running (with UNAVAILABLE, so their connections can close).
pub struct Shutdown<F> {
    pub signal: F,
    pub cut: &'static CancellationToken,
}

/// Serves until `shutdown.signal` completes; then stops accepting (the listening socket is closed)
/// and lets the connections finish the calls they have in flight, or end them at `shutdown.cut`.
/// With `tls`, every connection is a TLS one (a plaintext client fails its first read).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsSettings>,
    registry: Arc<Registry>,
    settings: ServiceSettings,
    connection: ConnectionSettings,
    cors: CorsOrigins,
    shutdown: Shutdown<impl Future<Output = ()> + Send>,
) {
    let service = Http(Arc::new(Web::new(
        cors,
        DynamicService::new(registry, settings, shutdown.cut),
    )));
    let shutdown = shutdown.signal;
    let connections = GracefulShutdown::new();
    match tls {
        None => {
            let incoming = tcp_incoming(listener);
            accept(incoming, service, connection, &connections, shutdown).await;
        }
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, connection.handshake_timeout);
            accept(incoming, service, connection, &connections, shutdown).await;
        }
    }
    connections.shutdown().await;
}

/// Serves each connection of `incoming` in its own task until `shutdown`; `incoming` (and with it
/// the listening socket) is dropped on return.
async fn accept<IO>(
    incoming: impl Stream<Item = IO>,
    service: Http,
    settings: ConnectionSettings,
    connections: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = http_settings(&settings);
    let (mut incoming, mut shutdown) = (pin!(incoming), pin!(shutdown));
    loop {
        let io = tokio::select! {
            () = &mut shutdown => return,
            io = incoming.next() => match io {
                Some(io) => io,
                None => return,
            },
        };
        let connection = http
            .serve_connection(
                TokioIo::new(PrefaceDeadline::new(io, settings.handshake_timeout)),
                service.clone(),
            )
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = streams::Connection::new(pin!(connection)).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// HTTP/1.1 and HTTP/2, told apart by the HTTP/2 preface.
fn http_settings(settings: &ConnectionSettings) -> auto::Builder<StreamExecutor> {
    let mut http = auto::Builder::new(StreamExecutor);
    http.http2()
        .timer(TokioTimer::new())
        // Every open stream holds buffers, so one client must not be able to open an unbounded
        // number of them.
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Reply bytes an HTTP/2 connection may buffer for sending, all its streams together
        // (vendor/h2 makes h2's per-stream limit a per-connection one): whatever window a client
        // advertises, replies it does not read wait in the handlers, not in memory.
        .max_send_buf_size(settings.max_send_buffer)
        // No `date` on HTTP/2: gRPC has no use for it (grpc-go and grpc-java send none), and a
        // value that changes every second costs a clock read and a fresh HPACK literal per answer.
        // HTTP/1.1 answers (curl, browsers) keep it.
        .auto_date_header(false);
    connection_limits(&mut http, settings);
    // A reply's bytes wait in this buffer while the client does not read (hyper's default, ~400
    // KiB and up to 16 chunks, made each unread HTTP/1.1 connection hold ~600 KB): the same limit
    // as an HTTP/2 connection's. It also bounds the request head, so it grows with a raised
    // `--max-header-size` as h2's limit does; hyper's own least is 8 KiB, below MIN_SEND_BUFFER.
    let head = (settings.max_header_size as usize).saturating_mul(4);
    http.http1()
        .max_buf_size(settings.max_send_buffer.max(head));
    http
}

/// What closes silent connections (besides [`PrefaceDeadline`]), and h2's header limit.
fn connection_limits(http: &mut auto::Builder<StreamExecutor>, settings: &ConnectionSettings) {
    http.http2()
        // A PING after an interval with nothing received; no answer within the timeout closes the
        // connection. Pings go out with calls open or not: a peer silent mid-frame is caught too.
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        // Above ours, so that a request over ours reaches the service and gets RESOURCE_EXHAUSTED
        // rather than h2's bare HTTP 431; h2's still bounds what one header block may hold.
        .max_header_list_size(settings.max_header_size.saturating_mul(4));
    // hyper enforces its HTTP/1 header read timeout only when it has a timer; it runs from the
    // moment a head is awaited, so it also closes idle keep-alive connections.
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.handshake_timeout);
}

/// The service hyper calls for every request: gRPC-Web and CORS, then the dynamic service. Shared,
/// not cloned per request.
#[derive(Clone)]
struct Http(Arc<Web>);

impl hyper::service::Service<http::Request<Incoming>> for Http {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        self.0.answer(request.map(tonic::body::Body::new))
    }
}

/// Connections accepted from `listener`, with Nagle off (gRPC's small frames must leave at once).
fn tcp_incoming(listener: TcpListener) -> impl Stream<Item = TcpStream> {
    async_stream::stream! {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    yield tcp;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }
}

/// TLS connections from `listener`. Handshakes run side by side, each in its own task, so a slow or
/// silent client does not hold up the others; a failed one is logged and dropped. Dropping the
/// stream closes the listener and aborts handshakes in progress.
fn tls_incoming(
    listener: TcpListener,
    tls: TlsSettings,
    handshake_timeout: Duration,
) -> impl Stream<Item = TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(tls.config);
    async_stream::stream! {
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let acceptor = acceptor.clone();
                        handshakes.spawn(async move {
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => Some(stream),
                                // Info, not debug: "why was my client refused?" is the question
                                // this answers (no certificate, unknown CA, plaintext client …).
                                Ok(Err(e)) => {
                                    let hint = handshake_hint(&e);
                                    tracing::info!(%peer, error = %e, hint, "TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::info!(%peer, timeout = ?handshake_timeout, "TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                },
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                    if let Ok(Some(stream)) = done {
                        yield stream;
                    }
                }
            }
        }
    }
}

/// What a failed handshake most likely means, for the log; `None` when the error says it well enough.
fn handshake_hint(e: &std::io::Error) -> Option<&'static str> {
    let e = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match e {
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            "the client does not speak TLS: call https://, or drop grpcurl's -plaintext"
        }
        rustls::Error::NoCertificatesPresented => {
            "the client sent no certificate, and --tls-client-ca requires one"
        }
        rustls::Error::InvalidCertificate(_) => {
            "the client's certificate is not valid or not signed by a CA of --tls-client-ca"
        }
        rustls::Error::AlertReceived(_) => {
            "the client gave up: does it trust the CA of --tls-cert, and is the name it dialled in the certificate?"
        }
        _ => return None,
    })
}

/// The files named by `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates for client certificates: set, a client must present one they signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used. Every message names the file (and flag) at fault; the cause,
/// when there is one, is the error's `source` (printed after it by `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} file {}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} file {} is not valid PEM", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("{flag} file {} holds no certificate (expected PEM blocks -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("--tls-key file {} holds no private key (expected a PEM block -----BEGIN PRIVATE KEY----- (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY)", path.display())]
    NoKey { path: PathBuf },
    #[error("--tls-key file {} is not the private key of the certificate in --tls-cert file {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("--tls-cert file {} with --tls-key file {} cannot be used", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("--tls-client-ca file {}: not a usable CA certificate: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

/// A server TLS configuration, loaded and checked: ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3,
/// client certificates required when a client CA was given.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ServerConfig>,
    verifies_clients: bool,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("verifies_clients", &self.verifies_clients)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads and checks the files. Certificates are not reloaded: restart to change them.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        // The provider is named, not taken from the process default: that default panics when a
        // build enables two providers (a dependency may bring aws-lc-rs).
        let provider = Arc::new(ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("--tls-client-ca", path)? {
                    roots.add(cert).map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let chain = read_certs("--tls-cert", &files.cert)?;
        let key = read_key(&files.key)?;
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                }
            }
            source => TlsError::Identity {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            },
        })?;
        // h2 first: gRPC needs it, and rustls picks the first of ours the client offers.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            verifies_clients: files.client_ca.is_some(),
        })
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn verifies_clients(&self) -> bool {
        self.verifies_clients
    }
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            flag,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            flag: "--tls-key",
            path: path.to_path_buf(),
            source,
        },
    })
}
