//! TLS settings of a listener turned into a rustls `ServerConfig` (used by `tls`, `wss` and
//! `quic`), and the identity read from a verified client certificate.
//!
//! Client certificates, with `verify_peer`, are checked by rustls' `WebPkiClientVerifier`
//! against the `ca` bundle; with `crl`, the client's own certificate is also checked against
//! the CRLs (a CA without a CRL in the file is not an error, so one file may cover some CAs of
//! the bundle only).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::ListenerError;
use crate::config::{PeerCertAsUsername, TlsSection};
use crate::connection::CertIdentity;

/// Resumable QUIC sessions kept for 0-RTT (most recent first out).
const QUIC_SESSION_CACHE: usize = 16 * 1024;

/// Builds the rustls server configuration. `alpn` is offered as is; `quic` restricts the
/// versions to TLS 1.3 and allows 0-RTT (as QUIC requires `max_early_data_size` = u32::MAX).
pub fn server_config(name: &str, t: &TlsSection, alpn: &[&[u8]], quic: bool) -> Result<ServerConfig, ListenerError> {
    let tls_err = |message: String| ListenerError::Tls { name: name.to_string(), message };
    let provider = Arc::new(provider(name, t)?);
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if t.versions.iter().any(|v| v == "1.3") || quic {
        versions.push(&rustls::version::TLS13);
    }
    if t.versions.iter().any(|v| v == "1.2") && !quic {
        versions.push(&rustls::version::TLS12);
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_err(format!("the cipher suites do not fit the TLS versions: {e}")))?;
    let builder = if t.verify_peer {
        let ca_path = t.ca.as_deref().ok_or_else(|| tls_err("tls.verify_peer needs tls.ca".into()))?;
        let mut roots = RootCertStore::empty();
        for cert in read_certs(name, ca_path, "CA bundle")? {
            roots.add(cert).map_err(|e| ListenerError::File {
                name: name.into(),
                what: "CA bundle",
                path: ca_path.into(),
                message: e.to_string(),
            })?;
        }
        let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if let Some(crl_path) = &t.crl {
            verifier = verifier
                .with_crls(read_crls(name, crl_path)?)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        if !t.fail_if_no_peer_cert {
            verifier = verifier.allow_unauthenticated();
        }
        let verifier = verifier.build().map_err(|e| tls_err(format!("client certificate verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let chain = read_certs(name, &t.cert, "certificate chain")?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| ListenerError::File {
        name: name.into(),
        what: "private key",
        path: t.key.clone(),
        message: e.to_string(),
    })?;
    let mut cfg = builder.with_single_cert(chain, key).map_err(|e| {
        tls_err(format!("the key {} does not fit the certificate {}: {e}", t.key.display(), t.cert.display()))
    })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if quic {
        // rustls allows early data only with stateful resumption: tickets name sessions kept
        // in this cache (entries, about 100 bytes each).
        cfg.max_early_data_size = u32::MAX;
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(QUIC_SESSION_CACHE);
    } else {
        // Stateless tickets: resumption without a server-side cache.
        cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| tls_err(format!("session tickets: {e}")))?;
    }
    Ok(cfg)
}

/// The ring provider with the configured cipher suites (all of rustls' defaults if none).
fn provider(name: &str, t: &TlsSection) -> Result<CryptoProvider, ListenerError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !t.ciphers.is_empty() {
        let mut chosen = Vec::new();
        for wanted in &t.ciphers {
            let suite = rustls::crypto::ring::ALL_CIPHER_SUITES
                .iter()
                .find(|s| s.suite().as_str() == Some(wanted.as_str()))
                .ok_or_else(|| ListenerError::Tls {
                    name: name.into(),
                    message: format!(
                        "cipher suite {wanted:?} is unknown; known: {}",
                        rustls::crypto::ring::ALL_CIPHER_SUITES
                            .iter()
                            .filter_map(|s| s.suite().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?;
            chosen.push(*suite);
        }
        provider.cipher_suites = chosen;
    }
    Ok(provider)
}

fn read_certs(name: &str, path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ListenerError> {
    let file_err = |message: String| ListenerError::File { name: name.into(), what, path: path.into(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_crls(name: &str, path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ListenerError> {
    let file_err = |message: String| ListenerError::File { name: name.into(), what: "CRL", path: path.into(), message };
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if crls.is_empty() {
        return Err(file_err("no PEM X509 CRL in it".into()));
    }
    Ok(crls)
}

/// The CN and SANs of a verified client certificate chain (leaf first); `None` if there is
/// no certificate or the leaf cannot be parsed (it was verified, so the latter is unexpected).
pub fn identity(chain: Option<&[CertificateDer<'_>]>) -> Option<CertIdentity> {
    let leaf = chain?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let common_name = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_string);
    let mut subject_alt_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(s)
                | x509_parser::extensions::GeneralName::RFC822Name(s)
                | x509_parser::extensions::GeneralName::URI(s) => subject_alt_names.push(s.to_string()),
                _ => {}
            }
        }
    }
    Some(CertIdentity { common_name, subject_alt_names })
}

/// The username `peer_cert_as_username` takes from an identity.
pub fn cert_username(id: Option<&CertIdentity>, mode: PeerCertAsUsername) -> Option<String> {
    let id = id?;
    match mode {
        PeerCertAsUsername::Cn => id.common_name.clone(),
        PeerCertAsUsername::San => id.subject_alt_names.first().cloned(),
        PeerCertAsUsername::None => None,
    }
}
