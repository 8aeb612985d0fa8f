//! TLS for client connections (rustls, ring). Builds the server's acceptor from the PEM files
//! named by `tls_cert` and `tls_key`, and a connector for the Rust client that trusts given
//! roots. The handshake itself happens in each session, on the session's own thread.

use std::io::BufReader;
use std::sync::Arc;

use thiserror::Error;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no {what}")]
    Missing { path: String, what: &'static str },
    #[error("bad TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("bad server name {0:?}")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_string(),
        source,
    })
}

/// The server side: certificate chain and private key from PEM files.
pub fn acceptor(cert_path: &str, key_path: &str) -> Result<TlsAcceptor, TlsError> {
    let chain = rustls_pemfile::certs(&mut BufReader::new(&read(cert_path)?[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: cert_path.to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::Missing {
            path: cert_path.to_string(),
            what: "certificate",
        });
    }
    let key = rustls_pemfile::private_key(&mut BufReader::new(&read(key_path)?[..]))
        .map_err(|source| TlsError::Read {
            path: key_path.to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::Missing {
            path: key_path.to_string(),
            what: "private key",
        })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side: trusts the certificates in `roots_pem` (PEM, one or more).
pub fn connector(roots_pem: &[u8]) -> Result<TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(roots_pem)) {
        let cert = cert.map_err(|source| TlsError::Read {
            path: "<roots>".to_string(),
            source,
        })?;
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A server name for the handshake, as the client expects it in the certificate.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}
