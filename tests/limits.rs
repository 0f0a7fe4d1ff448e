//! What one client can take from the server (issue 16, items 3 and 6): memory for replies it never
//! reads, whatever flow-control window it advertises, over HTTP/2 and over HTTP/1.1 gRPC-Web; and
//! CPU for frames that make the server work but carry no request. Each test drives the real server
//! process with a raw client and checks that another client is served meanwhile. The servers run
//! without the journal (`--no-journal`): it keeps a copy of every frame sent, up to its own byte cap
//! (`tests/amplification.rs` holds it to that), which would hide what the connections hold.

mod common;
mod http_client;
mod raw;

use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use raw::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::Code;

/// `t.Svc/ServerStream` answers 100,000 messages, each with 16 copies of the request's name: a client
/// that sends a 2 KiB name asks for 3 GB.
fn serve() -> Server {
    serve_repeating(100_000)
}

fn serve_repeating(repeat: u32) -> Server {
    serve_repeating_with(repeat, Options::default())
}

/// The handlers of [`serve_repeating`], served with `options`, without the journal.
fn serve_repeating_with(repeat: u32, options: Options) -> Server {
    let options = options.arg("--no-journal");
    Server::start_with(&t_proto(), &[("t.toml", &repeating(repeat))], options)
}

/// The handlers of [`serve_repeating`].
fn repeating(repeat: u32) -> String {
    rules(&[
        ("t.Svc/Unary", r#"reply.text = "hi {{request.name}}""#),
        (
            "t.Svc/ServerStream",
            &format!(
                "stream.repeat = {repeat}\nstream.message = {{ list = [{}] }}",
                ["\"{{request.name}}\""; 16].join(", ")
            ),
        ),
    ])
}

/// `t.Req { name }` in a gRPC frame.
fn req(name: &str) -> Bytes {
    frame(false, &string_field(1, name.as_bytes()))
}

/// A normal unary call on a fresh connection succeeds within a second.
async fn assert_another_client_is_served(addr: std::net::SocketAddr) {
    let started = Instant::now();
    let mut conn = Conn::connect(addr).await;
    let answer = conn.call("/t.Svc/Unary", &[], req("ok")).await;
    answer.expect_status(Code::Ok);
    assert_eq!(answer.messages().len(), 1, "{answer:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "another client waited {took:?}"
    );
}

/// Polls `VmRSS` until two readings 300 ms apart differ by less than 1 % (at most `limit`).
async fn settled_rss(pid: u32, limit: Duration) -> u64 {
    let started = Instant::now();
    let mut last = proc_status_kib(pid, "VmRSS");
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = proc_status_kib(pid, "VmRSS");
        if now.abs_diff(last) * 100 < last || started.elapsed() > limit {
            return now;
        }
        last = now;
    }
}

/// A socket whose reads stop when told: the h2 client still sends, but reads nothing more, so the
/// server's replies pile up behind a full TCP window as they would for a client that never reads.
struct Deaf {
    tcp: TcpStream,
    deaf: Arc<AtomicBool>,
}

impl AsyncRead for Deaf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.deaf.load(Ordering::Relaxed) {
            // Never woken: the test ends with the connection still unread.
            return Poll::Pending;
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Deaf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// HTTP/2's largest window, 2^31-1.
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Opens `streams` server streams on a new connection whose client advertises `window` (or h2's
/// default 65,535) for every stream and for the connection, and then reads nothing more. What it
/// returns holds the connection open.
async fn unread_streams(
    addr: std::net::SocketAddr,
    window: Option<u32>,
    streams: usize,
) -> impl Drop {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let deaf = Arc::new(AtomicBool::new(false));
    let io = Deaf {
        tcp,
        deaf: deaf.clone(),
    };
    let mut builder = h2::client::Builder::new();
    if let Some(window) = window {
        builder
            .initial_window_size(window)
            .initial_connection_window_size(window);
    }
    let (send, connection) = builder.handshake::<_, Bytes>(io).await.unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    // A round trip first, so that the server has applied our SETTINGS before the streams start.
    let probe = Request::post(format!("http://{addr}/t.Svc/Unary"));
    let (response, mut body) = send.send_request(grpc(probe), false).unwrap();
    body.send_data(req("probe"), true).unwrap();
    read_answer(response).await.expect_status(Code::Ok);
    deaf.store(true, Ordering::Relaxed);

    let name = "x".repeat(2 * 1024);
    let mut held = Vec::new();
    for _ in 0..streams {
        send = send.ready().await.unwrap();
        let request = Request::post(format!("http://{addr}/t.Svc/ServerStream"));
        let (response, mut body) = send.send_request(grpc(request), false).unwrap();
        body.send_data(req(&name), true).unwrap();
        held.push((response, body));
    }
    AbortOnDrop(connection, held)
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<()>, T);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Unread server streams on a connection whose client advertised HTTP/2's largest window for every
/// stream and for the connection cost no more than on one with the default window, plus the
/// per-connection cap on buffered replies (1 MiB). Without that cap hyper's h2 buffered up to
/// `max_send_buf_size` (400 KiB) per stream, ~120 MB for these 300 streams.
#[tokio::test]
async fn a_huge_window_never_read_costs_no_more_than_the_default_one() {
    const STREAMS: usize = 300;
    let s = serve();
    let start = proc_status_kib(s.pid(), "VmRSS");
    let _default = unread_streams(s.addr, None, STREAMS).await;
    let with_default = settled_rss(s.pid(), Duration::from_secs(30)).await;
    let _huge = unread_streams(s.addr, Some(MAX_WINDOW), STREAMS).await;
    let with_huge = settled_rss(s.pid(), Duration::from_secs(30)).await;
    let default_cost = with_default.saturating_sub(start);
    let huge_cost = with_huge.saturating_sub(with_default);
    eprintln!(
        "RSS {start} KiB; {STREAMS} unread streams: +{default_cost} KiB with the default window, \
         +{huge_cost} KiB with a 2^31-1 window"
    );
    // The cap, plus slack for the allocator.
    assert!(
        huge_cost < default_cost + 3 * 1024,
        "a huge window cost {huge_cost} KiB, the default one {default_cost} KiB"
    );
    assert_another_client_is_served(s.addr).await;

    // Closed, the connections' memory goes back to the allocator, which keeps the pages (RSS
    // stays about where it was) and reuses them: the same attack again takes no more.
    drop((_default, _huge));
    let closed = settled_rss(s.pid(), Duration::from_secs(5)).await;
    let _again = unread_streams(s.addr, Some(MAX_WINDOW), STREAMS).await;
    let again = settled_rss(s.pid(), Duration::from_secs(30)).await;
    eprintln!(
        "RSS {closed} KiB once both connections closed, {again} KiB with the huge-window one again"
    );
    // Slack for the allocator's fragmentation: 3 MiB was exceeded by a few hundred KiB on a busy
    // machine, while an allocator that did not reuse the pages would add the whole +15 MiB again.
    assert!(
        again < with_huge + 8 * 1024,
        "the same attack again: {again} KiB, the first time {with_huge} KiB"
    );
}

/// With the journal on (the default), streams read to the end are kept within its byte cap
/// (`--journal-max-bytes`): a call's frames past the cap are counted, not kept, and older calls are
/// dropped. Four streams of 32 MB each under an 8 MiB cap, each server's peak memory measured
/// against the same calls without a journal, twice:
/// - as the allocator runs by default: the peak rose by about 2.4× the cap (+19 to +21 MiB), the
///   call being recorded and the one before it, which mimalloc keeps resident a while once freed
///   (its purge delay, 10 ms). It rose by 4–6× while a call's frames grew by doubling and were
///   copied into the ring of ended calls when it ended (+34 to +49 MiB), which this bound (4× the
///   cap) fails;
/// - with `MIMALLOC_PURGE_DELAY=0`, what the server holds: the cap (+8.0 to +8.4 MiB), held
///   within 1.5× the cap.
///
/// Without the cap it would keep all 128 MB.
#[tokio::test]
async fn with_the_journal_streams_read_to_the_end_are_kept_within_its_cap() {
    const CAP_MIB: u64 = 8;
    let (without_cost, with_cost, with) = journal_peaks(Options::default(), CAP_MIB, 4, 1).await;
    let (without_held, with_held, _) = journal_peaks(held(), CAP_MIB, 4, 1).await;
    eprintln!(
        "4 streams of 32 MB read: peak +{without_cost} KiB without the journal, +{with_cost} KiB \
         with it (cap {CAP_MIB} MiB); held +{without_held} KiB without, +{with_held} KiB with it"
    );
    assert!(
        with_cost < without_cost + 4 * CAP_MIB * 1024,
        "with the journal the peak grew {with_cost} KiB, without {without_cost} KiB"
    );
    assert!(
        with_held < without_held + CAP_MIB * 1024 * 3 / 2,
        "with the journal the server held {with_held} KiB more, without {without_held} KiB"
    );
    // The last call is journaled, cut at the cap: its frames past it counted.
    let calls = http_client::get(with.addr, "/protodrop/admin/v1/calls?limit=1").await;
    let calls = calls.expect(200).json();
    let dropped = calls["calls"][0]["droppedFrames"].as_str().unwrap_or("0");
    assert!(dropped.parse::<u64>().unwrap() > 500, "{calls}");
}

/// Streams in flight at once are kept within the journal's cap together: a call dropped from the
/// journal while it runs (older calls go first) lets go of its frames and keeps no more. It kept
/// recording up to the cap, for nobody, until it ended: eight streams of 32 MB at once under an
/// 8 MiB cap made the server hold +65 MiB more than without a journal (the cap eight times); now
/// +9.5 to +10.4 MiB, asserted within twice the cap. Measured as held (`MIMALLOC_PURGE_DELAY=0`,
/// see the test above).
#[tokio::test]
async fn with_the_journal_streams_at_once_are_kept_within_its_cap_together() {
    const CAP_MIB: u64 = 8;
    const STREAMS: usize = 8;
    let (without_held, with_held, _) = journal_peaks(held(), CAP_MIB, 1, STREAMS).await;
    eprintln!(
        "{STREAMS} streams of 32 MB at once: held +{without_held} KiB without the journal, \
         +{with_held} KiB with it (cap {CAP_MIB} MiB)"
    );
    assert!(
        with_held < without_held + 2 * CAP_MIB * 1024,
        "with the journal the server held {with_held} KiB more, without {without_held} KiB"
    );
}

/// Server streams of 32 MB (1,000 messages of 32 kB) read from a server without a journal and
/// from one with a journal of `cap_mib`, both started with `options`: `rounds` one after another
/// of `at_once` streams together. How much each server's peak RSS rose (KiB, without then with),
/// and the server with the journal.
async fn journal_peaks(
    options: Options,
    cap_mib: u64,
    rounds: usize,
    at_once: usize,
) -> (u64, u64, Server) {
    let without = serve_repeating_with(1000, options.clone());
    let with = Server::start_with(
        &t_proto(),
        &[("t.toml", &repeating(1000))],
        options.arg(format!("--journal-max-bytes={cap_mib}MiB")),
    );
    let request = serde_json::json!({ "name": "x".repeat(2 * 1024) });
    let mut costs = Vec::new();
    for s in [&without, &with] {
        let before = proc_status_kib(s.pid(), "VmHWM");
        let client = s.client().await;
        for _ in 0..rounds {
            let streams =
                (0..at_once).map(|_| client.server_stream("t.Svc/ServerStream", request.clone()));
            for read in futures::future::join_all(streams).await {
                read.ok();
                assert_eq!(read.messages.len(), 1000);
            }
        }
        costs.push(proc_status_kib(s.pid(), "VmHWM").saturating_sub(before));
    }
    (costs[0], costs[1], with)
}

fn grpc(builder: http::request::Builder) -> http::Request<()> {
    builder
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Unread gRPC-Web server streams over HTTP/1.1, one per connection. hyper's HTTP/1 write buffer
/// took up to 16 chunks or ~400 KB (its `max_buf_size`) per connection; it is `--max-send-buffer`
/// now (1 MiB, as for an HTTP/2 connection), which these 32 kB messages do not reach before
/// hyper's 16 chunks.
#[tokio::test]
async fn unread_grpc_web_connections_hold_a_bounded_amount_each() {
    const CONNECTIONS: usize = 24;
    let s = serve();
    let before = proc_status_kib(s.pid(), "VmRSS");
    let held = unread_grpc_web(s.addr, CONNECTIONS, 2 * 1024);
    let during = settled_rss(s.pid(), Duration::from_secs(30)).await;
    let grown = during.saturating_sub(before);
    let per_connection = grown / CONNECTIONS as u64;
    eprintln!(
        "RSS {before} KiB before, {during} KiB with {CONNECTIONS} unread connections ({per_connection} KiB each)"
    );
    assert!(
        per_connection < 1024,
        "{per_connection} KiB per unread gRPC-Web connection"
    );
    assert_another_client_is_served(s.addr).await;
    drop(held);
}

/// The cap holds back, never loses: with the largest window, streams read to the end on one
/// connection get every message, many times the cap in all, and the connection serves on.
#[tokio::test]
async fn capped_streams_read_to_the_end_get_everything() {
    const STREAMS: usize = 32;
    const REPEAT: usize = 200;
    let s = serve_repeating(REPEAT as u32);
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(MAX_WINDOW)
        .initial_connection_window_size(MAX_WINDOW);
    let conn = Conn::connect_with(s.addr, builder).await;
    let name = "y".repeat(2 * 1024);
    let calls = (0..STREAMS).map(|_| {
        let mut conn = conn.clone();
        let body = req(&name);
        async move { conn.call("/t.Svc/ServerStream", &[], body).await }
    });
    let mut total = 0;
    for answer in futures::future::join_all(calls).await {
        answer.expect_status(Code::Ok);
        assert_eq!(answer.messages().len(), REPEAT);
        total += answer.body.len();
    }
    assert!(total > 100 << 20, "only {total} bytes");
    let mut conn = conn;
    conn.call("/t.Svc/Unary", &[], req("after"))
        .await
        .expect_status(Code::Ok);
}

/// One HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends the client preface and then `frame` over and over; reads what the server sends until a
/// GOAWAY and returns its error code (`None`: the connection ended without one, or 5 s passed).
fn flood(addr: std::net::SocketAddr, frame: &[u8]) -> Option<u32> {
    use std::io::Read as _;
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut writer = tcp.try_clone().unwrap();
    let mut batch = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    batch.extend(h2_frame(4, 0, 0, &[]));
    let burst: Vec<u8> = frame.repeat(1000);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let flooder = std::thread::spawn(move || {
        if writer.write_all(&batch).is_err() {
            return;
        }
        // 200,000 frames at most: the server is flooded for as long as it lets this connection.
        for _ in 0..4 {
            if stopped.load(Ordering::Relaxed) || writer.write_all(&burst).is_err() {
                return;
            }
        }
    });
    let mut goaway = None;
    let mut head = [0u8; 9];
    while tcp.read_exact(&mut head).is_ok() {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        if tcp.read_exact(&mut payload).is_err() {
            break;
        }
        if head[3] == 7 && len >= 8 {
            goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(tcp);
    flooder.join().unwrap();
    goaway
}

/// A connection that sends nothing but WINDOW_UPDATE, PRIORITY, PING, SETTINGS or frames of an
/// unknown type is sent GOAWAY ENHANCE_YOUR_CALM (0xb) and closed, while a client on another
/// connection is served. Without a limit the server worked through every frame (four such
/// connections cut other clients' throughput by 96–98 %).
#[tokio::test]
async fn a_control_frame_flood_gets_goaway_enhance_your_calm_and_others_are_served() {
    let s = serve();
    let floods = [
        ("WINDOW_UPDATE", h2_frame(8, 0, 0, &1u32.to_be_bytes())),
        ("PRIORITY", h2_frame(2, 0, 1, &[0, 0, 0, 0, 16])),
        ("PING", h2_frame(6, 0, 0, &[0; 8])),
        ("SETTINGS", h2_frame(4, 0, 0, &[])),
        ("unknown type 0xfa", h2_frame(0xfa, 0, 0, &[0; 8])),
    ];
    for (what, frame) in floods {
        let addr = s.addr;
        let flooding = tokio::task::spawn_blocking(move || flood(addr, &frame));
        assert_another_client_is_served(s.addr).await;
        let goaway = flooding.await.unwrap();
        assert_eq!(
            goaway,
            Some(0xb),
            "{what} flood: GOAWAY ENHANCE_YOUR_CALM expected"
        );
    }
    assert_another_client_is_served(s.addr).await;
}

/// A server like [`serve`] with `--max-send-buffer=size`.
fn serve_with_send_buffer(size: &str) -> Server {
    serve_repeating_with(
        100_000,
        Options::default().arg(format!("--max-send-buffer={size}")),
    )
}

/// `--max-send-buffer` is the cap: 100 unread streams on a connection with the largest window hold
/// about what it says, 64 KiB or 16 MiB.
#[tokio::test]
async fn max_send_buffer_sets_what_an_unread_connection_holds() {
    const STREAMS: usize = 100;
    let mut cost = Vec::new();
    for size in ["64KiB", "16MiB"] {
        let s = serve_with_send_buffer(size);
        let start = proc_status_kib(s.pid(), "VmRSS");
        let _held = unread_streams(s.addr, Some(MAX_WINDOW), STREAMS).await;
        let held = settled_rss(s.pid(), Duration::from_secs(30)).await;
        assert_another_client_is_served(s.addr).await;
        cost.push(held.saturating_sub(start));
    }
    let (low, high) = (cost[0], cost[1]);
    eprintln!(
        "{STREAMS} unread streams with a 2^31-1 window: +{low} KiB at 64KiB, +{high} KiB at 16MiB"
    );
    assert!(
        high > low + 12 * 1024 && high < low + 24 * 1024,
        "+{low} KiB with a 64 KiB send buffer, +{high} KiB with 16 MiB"
    );
}

/// The same flag bounds an HTTP/1.1 connection's write buffer: unread gRPC-Web streams of 256 kB
/// messages hold about one message each at 64 KiB, and about 4 MiB each at 4 MiB. (hyper also
/// stops at 16 queued chunks, hence the large messages.)
#[tokio::test]
async fn max_send_buffer_sets_what_an_unread_grpc_web_connection_holds() {
    const CONNECTIONS: usize = 8;
    let mut per_connection = Vec::new();
    for size in ["64KiB", "4MiB"] {
        let s = serve_with_send_buffer(size);
        let before = proc_status_kib(s.pid(), "VmRSS");
        let held = unread_grpc_web(s.addr, CONNECTIONS, 16 * 1024);
        let during = settled_rss(s.pid(), Duration::from_secs(30)).await;
        assert_another_client_is_served(s.addr).await;
        per_connection.push(during.saturating_sub(before) / CONNECTIONS as u64);
        drop(held);
    }
    let (low, high) = (per_connection[0], per_connection[1]);
    eprintln!("per unread gRPC-Web connection: {low} KiB at 64KiB, {high} KiB at 4MiB");
    assert!(
        low < 1536,
        "{low} KiB per connection with a 64 KiB send buffer"
    );
    assert!(
        high > low + 3 * 1024 && high < 6 * 1024,
        "{high} KiB per connection with a 4 MiB send buffer, {low} KiB with 64 KiB"
    );
}

/// `connections` HTTP/1.1 connections, each with a gRPC-Web server stream (of messages with 16
/// copies of a `name_len`-byte name) it never reads.
fn unread_grpc_web(
    addr: std::net::SocketAddr,
    connections: usize,
    name_len: usize,
) -> Vec<std::net::TcpStream> {
    let body = req(&"x".repeat(name_len));
    (0..connections)
        .map(|_| {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            let head = format!(
                "POST /t.Svc/ServerStream HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\n\
                 x-grpc-web: 1\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            tcp.write_all(head.as_bytes()).unwrap();
            tcp.write_all(&body).unwrap();
            tcp
        })
        .collect()
}

/// The connection-wide budget must not let streams a client leaves unread starve the one it reads:
/// 20 server streams of 200 kB messages, never read, on a connection with HTTP/2's default 64 KiB
/// stream windows (and a large connection window, so that HTTP/2 flow control itself leaves room),
/// and then a stream read to the end must complete. Each unread stream has a chunk three times
/// its window in h2, which the budget counted whole: 16 of them took all of it.
#[tokio::test]
async fn streams_left_unread_do_not_starve_one_that_is_read() {
    const UNREAD: usize = 20;
    let s = serve_repeating(5);
    let mut builder = h2::client::Builder::new();
    builder.initial_connection_window_size(MAX_WINDOW);
    let mut conn = Conn::connect_with(s.addr, builder).await;
    // 16 copies of the name make a message of about 200 kB.
    let name = "z".repeat(12_800);
    let mut unread = Vec::new();
    for _ in 0..UNREAD {
        let (response, mut body) = conn.open("/t.Svc/ServerStream", &[]).await;
        body.send_data(req(&name), true).unwrap();
        // Headers are read; the body is not.
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("headers in time")
            .unwrap();
        unread.push(response);
    }
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        conn.call("/t.Svc/ServerStream", &[], req(&name)),
    )
    .await
    .expect("the stream that is read completes while others are left unread");
    answer.expect_status(Code::Ok);
    assert_eq!(answer.messages().len(), 5);
    drop(unread);
}
