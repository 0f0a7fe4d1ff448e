//! A raw HTTP/2 gRPC client (the `h2` crate) for tests that must control the bytes: gRPC frames built
//! by hand, resets, streams left unread. [`Conn::call`] sends a request and reads the whole answer;
//! [`Conn::open`] leaves the stream open for the test to drive.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request, StatusCode};
use tokio::net::TcpStream;

/// Longest a raw call may take before the test fails instead of hanging.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(15);

/// One gRPC message frame: compressed flag, big-endian length, body.
pub fn frame(compressed: bool, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(body.len() as u32);
    b.put_slice(body);
    b.freeze()
}

/// The messages of a gRPC response body (panics on a malformed one).
pub fn messages(mut body: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a truncated frame header in the answer");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(body.len() >= 5 + len, "a truncated frame in the answer");
        out.push(Bytes::copy_from_slice(&body[5..5 + len]));
        body = &body[5 + len..];
    }
    out
}

/// A protobuf string field (wire type 2) as bytes: enough to write `t.Req { name }` by hand.
pub fn string_field(number: u32, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 10);
    varint(&mut out, u64::from(number << 3 | 2));
    varint(&mut out, text.len() as u64);
    out.extend_from_slice(text);
    out
}

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// What came back: HTTP status, headers, body bytes, trailers.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// `grpc-status`, from the trailers or, for a trailers-only answer, the headers.
    pub fn grpc_status(&self) -> Option<i32> {
        self.grpc("grpc-status")
            .map(|s| s.parse().expect("grpc-status is a number"))
    }

    /// `grpc-message`, percent-decoded.
    pub fn grpc_message(&self) -> String {
        let raw = self.grpc("grpc-message").unwrap_or_default();
        percent_encoding::percent_decode_str(&raw)
            .decode_utf8_lossy()
            .into_owned()
    }

    fn grpc(&self, key: &str) -> Option<String> {
        let value = self
            .trailers
            .as_ref()
            .and_then(|t| t.get(key))
            .or_else(|| self.headers.get(key))?;
        Some(value.to_str().expect("ascii").to_string())
    }

    /// The response messages.
    pub fn messages(&self) -> Vec<Bytes> {
        messages(&self.body)
    }

    /// Panics unless the answer is HTTP 200 with this `grpc-status`; returns the message.
    #[track_caller]
    pub fn expect_status(&self, code: tonic::Code) -> String {
        assert_eq!(self.status, StatusCode::OK, "HTTP status: {self:?}");
        assert_eq!(
            self.grpc_status(),
            Some(code as i32),
            "expected grpc-status {code:?} ({}), got {:?} {:?}",
            code as i32,
            self.grpc_status().map(tonic::Code::from),
            self.grpc_message()
        );
        self.grpc_message()
    }
}

/// One HTTP/2 connection.
#[derive(Clone)]
pub struct Conn {
    pub addr: SocketAddr,
    send: SendRequest<Bytes>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        Self::connect_with(addr, h2::client::Builder::new()).await
    }

    pub async fn connect_with(addr: SocketAddr, builder: h2::client::Builder) -> Conn {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).unwrap();
        let (send, connection) = builder.handshake(tcp).await.expect("HTTP/2 handshake");
        // Drives the connection; ends with the test's runtime, or when the server closes it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Conn { addr, send }
    }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS, as this client applies it.
    pub fn max_concurrent_send_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// A POST to `path` with `content-type: application/grpc` and `te: trailers`, plus `headers`
    /// (a `content-type` among them replaces the default; an empty value removes it).
    pub fn request(&self, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.addr))
            .body(())
            .unwrap();
        let h = req.headers_mut();
        h.insert("content-type", "application/grpc".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        for (k, v) in headers {
            let name: http::HeaderName = k.parse().unwrap();
            if v.is_empty() {
                h.remove(&name);
            } else {
                h.insert(name, v.parse().unwrap());
            }
        }
        req
    }

    /// Opens a stream: the request's headers are sent, the body is the caller's to send.
    pub async fn open(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (h2::client::ResponseFuture, SendStream<Bytes>) {
        let req = self.request(path, headers);
        let mut send = tokio::time::timeout(RAW_TIMEOUT, self.send.clone().ready())
            .await
            .expect("connection ready in time")
            .expect("connection usable");
        send.send_request(req, false).expect("send request")
    }

    /// [`Conn::call`] with another HTTP method than POST.
    pub async fn call_as_method(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Answer {
        let mut req = self.request(path, headers);
        *req.method_mut() = method.parse().expect("an HTTP method");
        let mut send = tokio::time::timeout(RAW_TIMEOUT, self.send.clone().ready())
            .await
            .expect("connection ready in time")
            .expect("connection usable");
        let (response, mut stream) = send.send_request(req, false).expect("send request");
        let _ = stream.send_data(body, true);
        read_answer(response).await
    }

    /// Sends `body` (in one DATA frame, ending the stream) and reads the whole answer.
    pub async fn call(&mut self, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        self.call_chunks(path, headers, vec![body]).await
    }

    /// Sends each chunk as its own DATA frame, the last one ending the stream.
    pub async fn call_chunks(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        chunks: Vec<Bytes>,
    ) -> Answer {
        let (response, mut stream) = self.open(path, headers).await;
        let n = chunks.len();
        if n == 0 {
            stream.send_data(Bytes::new(), true).expect("send");
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            // A refused stream is fine: the answer (read below) says why.
            let _ = stream.send_data(chunk, i + 1 == n);
        }
        read_answer(response).await
    }
}

/// Reads headers, the whole body (releasing flow control as it goes) and trailers.
pub async fn read_answer(response: h2::client::ResponseFuture) -> Answer {
    tokio::time::timeout(RAW_TIMEOUT, async {
        let response = response.await.expect("response headers");
        let (parts, body) = response.into_parts();
        let (body, trailers) = read_body(body).await;
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
            trailers,
        }
    })
    .await
    .expect("the answer came in time")
}

pub async fn read_body(mut body: RecvStream) -> (Bytes, Option<HeaderMap>) {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers");
    (buf.freeze(), trailers)
}
