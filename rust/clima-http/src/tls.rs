//! TLS for an HTTP listener, from PEM files (a cert-manager or Kubernetes TLS
//! Secret mounted as files), with optional client certificates (mutual TLS).
//! ALPN offers HTTP/2 and HTTP/1.1, so gRPC and browsers share the port.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
pub use tokio_rustls::TlsAcceptor;

/// The PEM files of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain the server presents.
    pub cert: PathBuf,
    /// Private key of `cert`.
    pub key: PathBuf,
    /// CA that must have signed every client's certificate; none: clients need none.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files do not make a server configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no valid PEM.
    #[error("reading {path:?}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate and key.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA does not make a certificate verifier.
    #[error("client CA: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

impl TlsFiles {
    /// The acceptor for these files.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots.add(cert)?;
                }
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| pem_error(&self.key, source))?;
        let mut config = builder.with_single_cert(certificates(&self.cert)?, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path).and_then(Iterator::collect).map_err(|source| pem_error(path, source))
}

fn pem_error(path: &Path, source: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem { path: path.to_owned(), source }
}
