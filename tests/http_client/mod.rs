//! A plain HTTP/1.1 client for the Connect and transcoding tests (hyper-util's), plus Connect's
//! 5-byte envelopes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value as Json;

/// Longest one HTTP exchange may take before the test fails instead of hanging.
const TIMEOUT: Duration = Duration::from_secs(15);

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as newline-delimited JSON.
    #[track_caller]
    pub fn lines(&self) -> Vec<Json> {
        self.text()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<not text>").to_string())
    }

    /// Panics with the body unless the status is `want`.
    #[track_caller]
    pub fn expect(&self, want: u16) -> &Self {
        assert_eq!(
            self.status,
            want,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }
}

/// One request: `method` `path` with `headers` and `body`.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let exchange = async {
        let response = client.request(request).await.expect("HTTP request");
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("response body");
        let trailers = collected.trailers().cloned();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: collected.to_bytes().to_vec(),
            trailers,
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} took longer than {TIMEOUT:?}"))
}

/// `POST path` with a JSON body.
pub async fn post_json(addr: SocketAddr, path: &str, body: &str) -> Reply {
    send(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, &[], Bytes::new()).await
}

/// One Connect envelope.
pub fn envelope(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Splits a body into its envelopes, (flags, message); panics on a truncated one.
#[track_caller]
pub fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "truncated envelope header: {body:?}");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "truncated envelope");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}
