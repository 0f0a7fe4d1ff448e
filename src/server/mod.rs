//! Puts the router on a socket: hyper's HTTP/2 (and HTTP/1.1, for browsers and curl) connections,
//! every request through the CORS layer ([`cors`]) to the one [`router`], which picks its protocol;
//! in plain TCP, or in TLS ([`tls`]). Graceful shutdown: stop accepting, let calls finish, cut the
//! rest at the end of the grace period.
//!
//! hyper is driven here directly rather than through tonic's `Server`: that one routes by service
//! name (so a catch-all had to go through an axum router) and wraps every request in layers we do
//! not use — connection info, a boxed clone of the whole stack, its own `grpc-timeout` timer (ours is
//! in the protocol, where it can answer DEADLINE_EXCEEDED as gRPC says) — which cost more per unary
//! call than our own code does.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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
use tokio_util::sync::CancellationToken;

use crate::protocol::{ResponseFuture, ServiceSettings};
use crate::state::Registry;

pub(crate) mod cors;
mod preface;
pub(crate) mod router;
mod streams;
mod tls;

use cors::{CorsPolicy, WithCors};
use preface::PrefaceDeadline;
use router::Router;
use streams::StreamExecutor;
use tls::tls_incoming;
pub(crate) use tls::{TlsFiles, TlsSettings};

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
pub(crate) struct ConnectionSettings {
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
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The least `--max-send-buffer`: one default HTTP/2 stream window.
pub(crate) const MIN_SEND_BUFFER: usize = 64 * 1024;

/// Pause after a failed `accept` (too many open files, say), so that an error that repeats does not
/// spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(20);

/// How the server stops: `signal` completes to stop accepting, and `cut`, cancelled when the grace
/// period is over, ends the calls still running (with UNAVAILABLE, so their connections can close).
pub(crate) struct Shutdown<F> {
    pub signal: F,
    pub cut: &'static CancellationToken,
}

/// Serves until `shutdown.signal` completes; then stops accepting (the listening socket is closed)
/// and lets the connections finish the calls they have in flight, or end them at `shutdown.cut`.
/// With `tls`, every connection is a TLS one (a plaintext client fails its first read).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsSettings>,
    registry: Arc<Registry>,
    settings: ServiceSettings,
    connection: ConnectionSettings,
    cors: CorsPolicy,
    shutdown: Shutdown<impl Future<Output = ()> + Send>,
) {
    let service = Http {
        stack: Arc::new(WithCors::new(
            cors,
            Router::new(registry, settings, shutdown.cut),
        )),
        peer: None,
    };
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
    IO: AsyncRead + AsyncWrite + Remote + Unpin + Send + 'static,
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
        let service = Http {
            peer: io.remote(),
            ..service.clone()
        };
        let connection = http
            .serve_connection(
                TokioIo::new(PrefaceDeadline::new(io, settings.handshake_timeout)),
                service,
            )
            .into_owned();
        let connection = connections.watch(connection);
        let metrics = crate::metrics::global();
        let open = metrics.enabled().then(|| metrics.connection_opened());
        tokio::spawn(async move {
            // Counted open (metrics) until the connection's task ends.
            let _open = open;
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

/// The service hyper calls for every request of a connection: CORS, then the router. The stack is
/// shared by every connection, not cloned per request.
#[derive(Clone)]
struct Http {
    stack: Arc<WithCors>,
    /// The client's address, for the call log and the journal.
    peer: Option<SocketAddr>,
}

impl hyper::service::Service<http::Request<Incoming>> for Http {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        // The one box of a request body: every protocol reads this type.
        self.stack
            .answer(request.map(tonic::body::Body::new), self.peer)
    }
}

/// A connection's remote address.
pub(crate) trait Remote {
    fn remote(&self) -> Option<SocketAddr>;
}

impl Remote for TcpStream {
    fn remote(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
}

impl Remote for tokio_rustls::server::TlsStream<TcpStream> {
    fn remote(&self) -> Option<SocketAddr> {
        self.get_ref().0.peer_addr().ok()
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
