//! TLS for Redis clients (rustls), and the certificates of a test cluster.
//!
//! Flags follow Redis's names: `--tls-cert-file`, `--tls-key-file`,
//! `--tls-ca-cert-file`, `--tls-auth-clients`. The same files give the raft
//! port mutual TLS (longship's `NodeHostConfig::mutual_tls`), so every
//! node's certificate must be valid as a server and as a client, for the
//! host names or IP addresses of its Redis and raft addresses.
//! [`write_certs`] makes such a set for a test cluster.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where a node's TLS files are (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain.
    pub cert_file: std::path::PathBuf,
    /// This node's private key.
    pub key_file: std::path::PathBuf,
    /// The CA that signs every node (and, with `auth_clients`, every client).
    pub ca_file: std::path::PathBuf,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// The TLS acceptor of a node's Redis port. With `auth_clients` a client
/// must present a certificate signed by the CA (Redis's default,
/// `tls-auth-clients yes`); without, any client may connect (and should
/// then be asked for a password).
pub fn acceptor(files: &TlsFiles, auth_clients: bool) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if auth_clients {
        let mut roots = RootCertStore::empty();
        for c in certs(&files.ca_file)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", files.ca_file.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Writes the certificates of a test cluster into `dir`: `ca.crt` and
/// `ca.key`, `node<i>.crt` / `node<i>.key` for nodes 1..=`nodes` (server and
/// client use, valid for `names`: host names or IP addresses), and
/// `client.crt` / `client.key` for Redis clients. Returns the files written.
pub fn write_certs(dir: &Path, nodes: u64, names: &[String]) -> Result<Vec<String>, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
        Ok(())
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "longship-kv test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    write("ca.crt", ca_cert.pem())?;
    write("ca.key", ca_key.serialize_pem())?;
    let mut leaf = |file: &str, cn: String| -> Result<(), String> {
        let mut p = CertificateParams::new(names.to_vec()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
        write(&format!("{file}.crt"), cert.pem())?;
        write(&format!("{file}.key"), key.serialize_pem())
    };
    for i in 1..=nodes {
        leaf(&format!("node{i}"), format!("longship-kv node {i}"))?;
    }
    leaf("client", "longship-kv client".into())?;
    Ok(written)
}
