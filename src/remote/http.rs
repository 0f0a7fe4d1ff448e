//! One HTTP/1.1 request to the server's admin routes and its JSON answer, over a plain socket or
//! TLS (`https://`, the CA given by `--cacert`). A connection per request: a command sends one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types};

use super::Target;

/// Longest a connection may take to open (a firewall that drops packets would hang otherwise).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one request may take, answer included: a whole journal at its default caps arrives well
/// within it; a server that stopped answering does not hang a test suite.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
pub(crate) enum Verb {
    Get,
    Post,
    Delete,
}

/// The server a command talks to.
pub(crate) struct Server {
    /// `--server` as given, for messages.
    url: String,
    /// `host:port` to connect to, and the `Host` header.
    authority: String,
    host: String,
    port: u16,
    /// A path the URL had (`http://proxy/mock`), put before every route.
    base: String,
    tls: Option<(tokio_rustls::TlsConnector, pki_types::ServerName<'static>)>,
}

/// An answer of the server, 2xx: JSON, parsed only as a command needs it (`--json` prints it as
/// received).
pub(crate) struct Answer {
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> anyhow::Result<Json> {
        self.parse()
    }

    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body)
            .context("the server's answer is not the admin API's JSON")
    }
}

/// The server refused the request (a status other than OK), with its own message.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}{hint}")]
pub(crate) struct Refused {
    /// The gRPC code's name (`INVALID_ARGUMENT`).
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// What the user may do about it, if the code says.
    pub(crate) hint: String,
}

impl Server {
    pub(crate) fn new(target: &Target) -> anyhow::Result<Server> {
        let url = target.url.trim();
        let with_scheme = match url.contains("://") {
            true => url.to_string(),
            false => format!("http://{url}"),
        };
        let uri: Uri = with_scheme
            .parse()
            .with_context(|| format!("--server {url}: not a URL such as http://127.0.0.1:50051"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("--server {url}: the scheme must be http:// or https://"),
        };
        let Some(authority) = uri.authority() else {
            bail!("--server {url}: no host");
        };
        let host = authority.host().trim_matches(['[', ']']).to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let base = uri.path().trim_end_matches('/').to_string();
        let tls = match (https, &target.cacert) {
            (false, None) => None,
            (false, Some(_)) => bail!("--cacert is for an https:// server; --server is {url}"),
            (true, None) => bail!(
                "--server {url}: https needs --cacert PEM (the CA that signed the server's certificate)"
            ),
            (true, Some(cacert)) => Some(tls(cacert, target.client_identity.as_ref(), &host)?),
        };
        if !https && target.client_identity.is_some() {
            bail!("--client-cert is for an https:// server; --server is {url}");
        }
        Ok(Server {
            url: url.to_string(),
            authority: authority.as_str().to_string(),
            host,
            port,
            base,
            tls,
        })
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(Verb::Get, path, None)
    }

    /// `verb path` with `body` as JSON; the answer's JSON, or [`Refused`] with the server's message.
    pub(crate) fn send(
        &self,
        verb: Verb,
        path: &str,
        body: Option<&Json>,
    ) -> anyhow::Result<Answer> {
        let method = match verb {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Delete => Method::DELETE,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("protodrop/", env!("CARGO_PKG_VERSION")),
            );
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body)?)
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let exchange = async {
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{} did not answer within {}s",
                        self.url,
                        REQUEST_TIMEOUT.as_secs()
                    )
                })?
        };
        let (status, body) = runtime.block_on(exchange)?;
        let is_json = |body: &[u8]| body.first() == Some(&b'{');
        if status.is_success() && is_json(&body) {
            return Ok(Answer { body });
        }
        match serde_json::from_slice::<Json>(&body) {
            Ok(value) if !status.is_success() => Err(refused(&value, status).into()),
            _ => bail!(
                "{} answered HTTP {status} with a body that is not the admin API's JSON (is it protodrop?): {}",
                self.url,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ),
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)> {
        let unreachable = || {
            format!(
                "cannot reach protodrop at {} (is `protodrop serve` running there? set --server or PROTODROP_SERVER)",
                self.url
            )
        };
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
            .and_then(|r| r)
            .with_context(unreachable)?;
        let _ = stream.set_nodelay(true);
        // Connected: what fails now is the exchange (a TLS alert, a connection closed early).
        let failed = || format!("the request to {} failed", self.url);
        match &self.tls {
            None => one_request(stream, request).await.with_context(failed),
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .with_context(|| format!("TLS with {} failed", self.url))?;
                one_request(stream, request).await.with_context(failed)
            }
        }
    }
}

/// Sends `request` on a new HTTP/1.1 connection over `io` and reads the whole answer.
async fn one_request<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Bytes)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    connection.abort();
    Ok((status, body))
}

/// The server's `google.rpc.Status` JSON as an error, with a hint for the codes a user can act on.
fn refused(value: &Json, status: StatusCode) -> Refused {
    let code = value["code"].as_u64().unwrap_or(2) as usize;
    let code = crate::codes::NAMES.get(code).copied().unwrap_or("UNKNOWN");
    let message = value["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}: {value}"));
    let hint = match code {
        // The route itself is unknown (not a rule id): no admin API on this port.
        "NOT_FOUND" | "UNIMPLEMENTED" if message.contains(crate::admin::ROUTE_PREFIX) => {
            "\n(does this server serve the admin API here? not with --no-admin; with --admin-listen, point --server at that address)"
        }
        _ => "",
    };
    Refused {
        code,
        message,
        hint: hint.to_string(),
    }
}

/// A TLS client trusting the CAs of `cacert`, for `host`, presenting `identity` (certificate and
/// key files) if given.
fn tls(
    cacert: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
    host: &str,
) -> anyhow::Result<(tokio_rustls::TlsConnector, pki_types::ServerName<'static>)> {
    use pki_types::pem::PemObject as _;
    let pem = std::fs::read(cacert).with_context(|| format!("--cacert {}", cacert.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("--cacert {}: not PEM", cacert.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("--cacert {}", cacert.display()))?;
    }
    if roots.is_empty() {
        bail!("--cacert {}: no certificate in it", cacert.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let read = |flag: &str, path: &Path| {
                std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
            };
            let chain = pki_types::CertificateDer::pem_slice_iter(&read("--client-cert", cert)?)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--client-cert {}: not PEM", cert.display()))?;
            if chain.is_empty() {
                bail!("--client-cert {}: no certificate in it", cert.display());
            }
            let key = pki_types::PrivateKeyDer::from_pem_slice(&read("--client-key", key)?)
                .with_context(|| format!("--client-key {}: no private key in it", key.display()))?;
            config
                .with_client_auth_cert(chain, key)
                .context("--client-cert and --client-key do not make a client identity")?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = pki_types::ServerName::try_from(host.to_string())
        .with_context(|| format!("'{host}' is not a host name TLS can check"))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}
