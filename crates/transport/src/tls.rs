//! Mutual TLS for the TCP transport (rustls): every host presents a
//! certificate signed by the deployment's CA and accepts only peers that do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where the PEM files of a host's TLS identity are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA certificate(s) that sign every host of the deployment.
    pub ca_file: PathBuf,
    /// This host's certificate chain.
    pub cert_file: PathBuf,
    /// This host's private key.
    pub key_file: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("TLS file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Server and client configurations built from [`TlsPaths`].
#[derive(Clone)]
pub(crate) struct TlsContext {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

impl TlsContext {
    pub(crate) fn load(p: &TlsPaths) -> Result<TlsContext, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in certs(&p.ca_file)? {
            roots.add(c).map_err(|e| file_err(&p.ca_file, e))?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&p.cert_file)?;
        let key =
            PrivateKeyDer::from_pem_file(&p.key_file).map_err(|e| file_err(&p.key_file, e))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(TlsContext {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// The TLS server name of a `host:port` address.
pub(crate) fn server_name(address: &str) -> Option<ServerName<'static>> {
    let host = match address.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    ServerName::try_from(host.to_string()).ok()
}
