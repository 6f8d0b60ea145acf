//! Optional TLS for the API: PEM files loaded once at start ([`TlsFiles::load`]) and a
//! listener that hands axum finished TLS connections ([`TlsListener`]), so HTTPS is
//! served by the same `gaia_serve::serve` with the same graceful shutdown as plain HTTP.
//!
//! rustls with the ring provider; HTTP/2 and HTTP/1.1 offered through ALPN.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Handshakes in progress at once; more connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished connections waiting for axum to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("TLS private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS certificate {cert} with key {key}: {message}")]
    Config { cert: PathBuf, key: PathBuf, message: String },
}

/// A loaded TLS configuration; see [`crate::AppState::with_tls`].
#[derive(Clone)]
pub struct TlsConfig(TlsAcceptor);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig(..)")
    }
}

impl TlsFiles {
    /// Reads and checks both files: each error names the file at fault.
    pub fn load(&self) -> Result<TlsConfig, TlsError> {
        let cert_error = |message: String| TlsError::Cert { path: self.cert.clone(), message };
        let key_error = |message: String| TlsError::Key { path: self.key.clone(), message };
        let cert_pem = std::fs::read(&self.cert).map_err(|e| cert_error(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(cert_error("no CERTIFICATE in the PEM file".into()));
        }
        let key_pem = std::fs::read(&self.key).map_err(|e| key_error(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| key_error(format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
        let config_error =
            |message: String| TlsError::Config { cert: self.cert.clone(), key: self.key.clone(), message };
        let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| config_error(e.to_string()))?;
        // HTTP/1.1 only: gaia_serve bounds its header reads (see there).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig(TlsAcceptor::from(Arc::new(config))))
    }
}

/// A TCP listener whose connections come out TLS-terminated. Handshakes run in tasks of
/// their own (at most [`MAX_HANDSHAKES`], each at most [`HANDSHAKE_TIMEOUT`]), so a slow
/// client delays nobody; dropping the listener stops accepting and ends them.
pub(crate) struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, tls: TlsConfig) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let task = tokio::spawn(accept_loop(listener, tls.0, tx));
        Ok(Self { accepted, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    // Dropped with this task: in-flight handshakes end with it.
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = tx.closed() => return,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, addr) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        handshakes.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, addr)).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop is gone only once this listener is being dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
