//! The TLS server configuration of SIP over TLS (RFC 3261 §26.3.1, RFC 5630): a
//! certificate chain and its private key from PEM files, rustls with the `ring` provider.
//!
//! Why separate: loading and checking the files is the only fallible, file-touching part
//! of TLS, and `confer serve` must refuse to start with a clear message when they are
//! wrong rather than fail on the first handshake. Clients are not asked for certificates
//! (SIP peers authenticate with digest; mutual TLS is a later option).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS acceptor for the certificate chain at `cert` and the key at `key` (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the SIP TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the SIP TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the SIP TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the SIP TLS certificate and key do not make a server configuration")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
