//! TLS termination: the PEM certificate and key, the rustls server
//! configuration (ring provider, ALPN `h2` and `http/1.1`), and the reload
//! that swaps in a renewed pair without touching open connections.
//!
//! Every handshake asks [`CertSlot`] for the current pair, so a reload only
//! changes what the next handshake presents; connections already
//! established keep the session they negotiated. A reload that fails (file
//! missing, bad PEM, key not matching the certificate) keeps the old pair.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::TlsFiles;

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS certificate file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read TLS private key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS private key {key} cannot be used with certificate {cert}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS server configuration")]
    Config(#[source] rustls::Error),
}

/// TLS for the main listener: accepts handshakes, reloads its pair.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    slot: Arc<CertSlot>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Loads the pair named by `files`; any problem with it is an error.
    pub fn new(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = load_pair(files, &provider)?;
        let slot = Arc::new(CertSlot(RwLock::new(Arc::new(pair))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            files: files.clone(),
            provider,
            slot,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server side of a handshake (the caller bounds its time).
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// Re-reads the certificate and key files; later handshakes present the
    /// new pair. On error the current pair stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.files, &self.provider)?;
        self.slot.replace(pair);
        Ok(())
    }

    /// [`Tls::reload`], with the outcome logged (for SIGHUP).
    pub fn reload_and_log(&self) {
        let cert = self.files.cert.display();
        match self.reload() {
            Ok(()) => info!(cert = %cert, "TLS certificate reloaded"),
            Err(err) => warn!(
                cert = %cert,
                error = %error_chain(&err),
                "TLS certificate not reloaded; keeping the current one"
            ),
        }
    }

    /// The leaf certificate presented to new connections.
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        self.slot.get().cert[0].clone()
    }
}

/// The pair every handshake presents. A read lock per handshake costs an
/// `Arc` clone; the write lock is taken only by a reload, so contention
/// never matters and no extra crate (arc-swap) is needed.
#[derive(Debug)]
struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    fn get(&self) -> Arc<CertifiedKey> {
        // A panic while holding the lock cannot leave a half-written Arc.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, pair: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Reads and checks a certificate chain and its key.
pub fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// Checks a pair without serving it (for `--check`).
pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
    load_pair(files, &rustls::crypto::ring::default_provider()).map(drop)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
