//! TLS (`--tls-cert`, `--tls-key`, and `--tls-client-ca` for mutual TLS), done with tokio-rustls
//! rather than with tonic's `ServerTlsConfig`: tonic's acceptor offers ALPN `h2` only, and rustls
//! refuses a client whose ALPN list lacks it, so every client that offers `http/1.1` alone (`curl
//! --http1.1`, Python's `http.client`, many HTTP/1.1-only libraries calling Connect, HTTP/JSON or
//! gRPC-Web) would fail its handshake. Ours offers `h2` then `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject as _};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::ACCEPT_RETRY;

/// TLS connections from `listener`. Handshakes run side by side, each in its own task, so a slow or
/// silent client does not hold up the others; a failed one is logged and dropped. Dropping the
/// stream closes the listener and aborts handshakes in progress.
pub(super) fn tls_incoming(
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
pub(crate) struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates for client certificates: set, a client must present one they signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used. Every message names the file (and flag) at fault; the cause,
/// when there is one, is the error's `source` (printed after it by `{:#}`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
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
pub(crate) struct TlsSettings {
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
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
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
    pub(crate) fn verifies_clients(&self) -> bool {
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
