//! TLS and mutual TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`) on the real binary: certificates
//! made here with rcgen (a CA, a server certificate for 127.0.0.1 and localhost, client certificates
//! from that CA and from another one), called with tonic's TLS client and, for HTTP/1.1 over TLS, a
//! hand-written request through tokio-rustls. Start-up errors name the file at fault.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use prost_reflect::DescriptorPool;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const HANDLER: &str = "[[rule]]\nmethod = \"t.Svc/Echo\"\nreply = \"{{request}}\"\n";

/// A certificate and its private key, both PEM.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

/// A CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn server(&self) -> Pair {
        self.sign(
            "protodrop test server",
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, name: &str) -> Pair {
        self.sign(name, vec![], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(&self, name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Pair {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Server options that write the files under `tls/` in the server's temp folder (its working
/// directory) and pass them by relative path.
fn tls_options(server: &Pair, client_ca: Option<&str>) -> Options {
    let mut options = Options::default()
        .file("tls/server.pem", &server.cert)
        .file("tls/server.key", &server.key)
        .arg("--tls-cert")
        .arg("tls/server.pem")
        .arg("--tls-key")
        .arg("tls/server.key");
    if let Some(ca) = client_ca {
        options = options
            .file("tls/client-ca.pem", ca)
            .arg("--tls-client-ca")
            .arg("tls/client-ca.pem");
    }
    options
}

fn start(options: Options) -> Server {
    Server::start_with(&t_proto(), &[("t.toml", HANDLER)], options)
}

fn pool(s: &Server) -> DescriptorPool {
    compile_protos(&s.protos_dir(), &[]).unwrap()
}

/// `t.Svc/Echo` over a channel to `uri`, TLS configured by `tls`: the echoed request, or the error
/// (from connecting, the handshake, or the call) as text. Never hangs.
async fn echo(
    uri: String,
    tls: Option<ClientTlsConfig>,
    pool: &DescriptorPool,
) -> Result<Json, String> {
    let call = async {
        let mut endpoint = Channel::from_shared(uri).map_err(|e| e.to_string())?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("{e:?}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let client = Client::with_channel(channel, pool.clone());
        let out = client
            .unary("t.Svc/Echo", json!({ "name": "over tls" }))
            .await;
        if out.code() == tonic::Code::Ok {
            Ok(out.single().clone())
        } else {
            Err(format!("call: {:?} {}", out.code(), out.message()))
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

fn https(s: &Server) -> String {
    format!("https://localhost:{}", s.addr.port())
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost")
}

fn with_identity(config: ClientTlsConfig, pair: &Pair) -> ClientTlsConfig {
    config.identity(Identity::from_pem(&pair.cert, &pair.key))
}

/// TLS on: a client that trusts the CA gets its answer (the harness also read the usual
/// `listening on ADDR` line, unchanged with TLS); a plaintext client gets nothing.
#[tokio::test]
async fn tls_serves_a_tls_client_and_refuses_a_plaintext_one() {
    let ca = Ca::new("test CA");
    let s = start(tls_options(&ca.server(), None));
    let pool = pool(&s);

    let answer = echo(https(&s), Some(trusting(&ca)), &pool).await;
    assert_eq!(
        answer,
        Ok(json!({ "name": "over tls" })),
        "log:\n{}",
        s.logs()
    );
    // The certificate names 127.0.0.1 too.
    let by_ip = trusting(&ca).domain_name("127.0.0.1");
    let answer = echo(format!("https://{}", s.addr), Some(by_ip), &pool).await;
    assert_eq!(answer, Ok(json!({ "name": "over tls" })));

    let plain = echo(format!("http://{}", s.addr), None, &pool).await;
    assert!(plain.is_err(), "a plaintext client was answered: {plain:?}");
    s.wait_for_log(0, "TLS handshake failed", Duration::from_secs(5))
        .await;
    assert!(s.logs().contains("TLS on"), "{}", s.logs());
}

/// Handshakes run side by side: a client that connects and never says anything does not hold up
/// the next one. And SIGTERM stops a TLS server cleanly (exit 0), as it does a plaintext one.
#[tokio::test]
async fn a_silent_connection_does_not_block_others_and_sigterm_stops_the_server() {
    let ca = Ca::new("test CA");
    let mut s = start(tls_options(&ca.server(), None));
    let _silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let answer = echo(https(&s), Some(trusting(&ca)), &pool(&s)).await;
    assert_eq!(answer, Ok(json!({ "name": "over tls" })));
    let status = s.signal_and_wait("TERM", Duration::from_secs(5)).await;
    let status =
        status.unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", s.logs()));
    assert!(
        status.success(),
        "exits 0, got {status}; log:\n{}",
        s.logs()
    );
}

/// A client that does not trust the server's CA refuses the server (the usual TLS check, here to
/// show the server really presents the certificate it was given).
#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let ca = Ca::new("test CA");
    let s = start(tls_options(&ca.server(), None));
    let other = Ca::new("other CA");
    let answer = echo(https(&s), Some(trusting(&other)), &pool(&s)).await;
    assert!(answer.is_err(), "{answer:?}");
}

/// `--tls-client-ca`: a client certificate from that CA is required; none, or one from another CA,
/// is refused at the handshake.
#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let ca = Ca::new("test CA");
    let s = start(tls_options(&ca.server(), Some(&ca.pem())));
    let pool = pool(&s);

    let good = with_identity(trusting(&ca), &ca.client("good client"));
    assert_eq!(
        echo(https(&s), Some(good), &pool).await,
        Ok(json!({ "name": "over tls" })),
        "log:\n{}",
        s.logs()
    );

    let anonymous = echo(https(&s), Some(trusting(&ca)), &pool).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was answered"
    );
    let log = s
        .wait_for_log(0, "TLS handshake failed", Duration::from_secs(5))
        .await;
    assert!(
        log.contains("certificate"),
        "the log says a certificate was missing: {log}"
    );

    let other = Ca::new("other CA");
    let stranger = with_identity(trusting(&ca), &other.client("stranger"));
    let since = s.logs().len();
    let refused = echo(https(&s), Some(stranger), &pool).await;
    assert!(
        refused.is_err(),
        "a client certificate from another CA was accepted"
    );
    s.wait_for_log(since, "TLS handshake failed", Duration::from_secs(5))
        .await;
    assert!(
        s.logs().contains("client_certificates=\"required\""),
        "{}",
        s.logs()
    );
}

/// The TLS flags from PROTODROP_TLS_* variables, mTLS included.
#[tokio::test]
async fn environment_variables_turn_tls_on() {
    let ca = Ca::new("test CA");
    let server = ca.server();
    let options = Options::default()
        .file("tls/server.pem", &server.cert)
        .file("tls/server.key", &server.key)
        .file("tls/ca.pem", ca.pem())
        .env("PROTODROP_TLS_CERT", "tls/server.pem")
        .env("PROTODROP_TLS_KEY", "tls/server.key")
        .env("PROTODROP_TLS_CLIENT_CA", "tls/ca.pem");
    let s = start(options);
    let pool = pool(&s);
    let good = with_identity(trusting(&ca), &ca.client("good client"));
    assert_eq!(
        echo(https(&s), Some(good), &pool).await,
        Ok(json!({ "name": "over tls" }))
    );
    assert!(echo(https(&s), Some(trusting(&ca)), &pool).await.is_err());
}

/// HTTP/1.1 inside TLS: a client that offers only `http/1.1` in ALPN (curl --http1.1, Python's
/// http.client, …) is served, here a Connect call. tonic's own TLS acceptor offers only `h2` and
/// would fail this handshake.
#[tokio::test]
async fn http1_over_tls_is_served() {
    let ca = Ca::new("test CA");
    let s = start(tls_options(&ca.server(), None));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            ca.issuer.der().to_vec(),
        ))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let body = r#"{"name":"h1"}"#;
        let request = format!(
            "POST /t.Svc/Echo HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        // A peer that closes without close_notify is an error to rustls; what was read still counts.
        let _ = tls.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .expect("HTTP/1.1 exchange timed out");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"name":"h1"}"#), "{response}");
}

/// A client that finishes its TLS handshake and then sends nothing (not even the HTTP/2 preface) is
/// closed after `--handshake-timeout`; so is one that starts the handshake and stops.
#[tokio::test]
async fn a_client_silent_after_the_tls_handshake_is_closed() {
    let ca = Ca::new("test CA");
    let s = start(
        tls_options(&ca.server(), None)
            .arg("--handshake-timeout")
            .arg("500ms"),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            ca.issuer.der().to_vec(),
        ))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        // Reads end at close (an error too: no close_notify).
        while let Ok(n) = tls.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a silent TLS connection open for 5 s; log:\n{}",
        s.logs()
    );

    // Half a handshake: a TLS record header announcing more than is sent.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a half-done TLS handshake open for 5 s; log:\n{}",
        s.logs()
    );
}

/// Runs `protodrop serve` with `args` in a folder holding good protos and handlers plus `files`;
/// returns (exit code, stderr).
fn serve_fails(files: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    write_files(&dir.path().join("protos"), &t_proto());
    write_files(&dir.path().join("handlers"), &[("t.toml", HANDLER)]);
    write_files(dir.path(), files);
    let mut all = vec![
        "serve",
        "--protos",
        "protos",
        "--handlers",
        "handlers",
        "--listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = protodrop(&all, Some(dir.path()), &[]);
    assert!(!stdout.contains("listening on"), "it served: {stdout}");
    (code, stderr)
}

#[test]
fn a_missing_certificate_file_is_named_at_start_up() {
    let ca = Ca::new("test CA");
    let server = ca.server();
    let (code, stderr) = serve_fails(
        &[("server.key", &server.key)],
        &[
            "--tls-cert",
            "nowhere/server.pem",
            "--tls-key",
            "server.key",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("nowhere/server.pem"),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_key_file_is_named_at_start_up() {
    let ca = Ca::new("test CA");
    let server = ca.server();
    let (code, stderr) = serve_fails(
        &[("server.pem", &server.cert)],
        &["--tls-cert", "server.pem", "--tls-key", "missing.key"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--tls-key") && stderr.contains("missing.key"),
        "{stderr}"
    );
}

#[test]
fn files_that_are_not_pem_are_named_at_start_up() {
    let ca = Ca::new("test CA");
    let server = ca.server();
    let garbage = "this is not a certificate\n";
    let (code, stderr) = serve_fails(
        &[("bad.pem", garbage), ("server.key", &server.key)],
        &["--tls-cert", "bad.pem", "--tls-key", "server.key"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("bad.pem") && stderr.contains("no certificate"),
        "{stderr}"
    );

    let (code, stderr) = serve_fails(
        &[("server.pem", &server.cert), ("bad.key", garbage)],
        &["--tls-cert", "server.pem", "--tls-key", "bad.key"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("bad.key") && stderr.contains("no private key"),
        "{stderr}"
    );

    // A certificate given as the key: PEM, but no key in it.
    let (code, stderr) = serve_fails(
        &[("server.pem", &server.cert)],
        &["--tls-cert", "server.pem", "--tls-key", "server.pem"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no private key"), "{stderr}");

    let (code, stderr) = serve_fails(
        &[
            ("server.pem", &server.cert),
            ("server.key", &server.key),
            ("ca.pem", garbage),
        ],
        &[
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-ca",
            "ca.pem",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--tls-client-ca") && stderr.contains("ca.pem"),
        "{stderr}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused_at_start_up() {
    let ca = Ca::new("test CA");
    let (one, two) = (ca.server(), ca.server());
    let (code, stderr) = serve_fails(
        &[("one.pem", &one.cert), ("two.key", &two.key)],
        &["--tls-cert", "one.pem", "--tls-key", "two.key"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("two.key")
            && stderr.contains("one.pem")
            && stderr.contains("not the private key"),
        "{stderr}"
    );
}

/// Certificate and key come together, and mTLS needs both: clap says so (exit 2) before anything runs.
#[test]
fn tls_flags_that_need_each_other_are_checked() {
    let (code, _, stderr) = protodrop(&["serve", "--tls-cert", "a.pem"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, _, stderr) = protodrop(&["serve", "--tls-key", "a.key"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let (code, _, stderr) = protodrop(&["--tls-client-ca", "ca.pem"], None, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("--tls-key"),
        "{stderr}"
    );
}
