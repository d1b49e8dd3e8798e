//! TLS with rustls: certificate chain and key (PEM: RSA, ECDSA, Ed25519),
//! optional client certificates verified against `tls.client_ca`, TLS 1.2
//! and 1.3, ALPN `h2` and `http/1.1`, session resumption with tickets
//! shared by every worker ([`tickets`]).

pub mod quic;
pub mod sessions;
mod tickets;

pub use tickets::rotate as rotate_ticket_keys;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuth, TlsConfig};

/// A ready rustls server configuration, shared by every worker of a
/// generation. Two are equal only if they are the same loaded object.
#[derive(Clone)]
pub struct TlsMaterial(pub Arc<ServerConfig>);

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial(..)")
    }
}

impl PartialEq for TlsMaterial {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {}: {source}", path.display())]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} contains no PEM certificate", path.display())]
    NoCert { path: PathBuf },
    #[error("cannot read a private key from {}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the key in {} does not fit the certificate or is not supported: {source}", path.display())]
    KeyMismatch {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot read CA certificates from {}: {source}", path.display())]
    Ca {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: {detail}", path.display())]
    BadCa { path: PathBuf, detail: String },
    #[error("TLS set-up failed: {0}")]
    Setup(rustls::Error),
    #[error("cannot set up the shared session-ticket keys: {0}")]
    Tickets(std::io::Error),
    #[error("cannot set up the shared TLS session table of 0-RTT: {0}")]
    Sessions(std::io::Error),
}

impl TlsError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Cert { .. } | TlsError::NoCert { .. } | TlsError::Setup(_) => "tls.cert",
            TlsError::Key { .. } | TlsError::KeyMismatch { .. } => "tls.key",
            TlsError::Ca { .. } | TlsError::BadCa { .. } => "tls.client_ca",
            TlsError::Tickets(_) => "tls.session_tickets",
            TlsError::Sessions(_) => "tls.early_data",
        }
    }
}

impl TlsMaterial {
    /// `None` when no certificate is configured.
    pub fn load(cfg: &TlsConfig, http2: bool) -> Result<Option<TlsMaterial>, TlsError> {
        let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
            return Ok(None);
        };
        let certs = read_certs(cert)?;
        let key_der = read_pem(key)
            .and_then(|pem| PrivateKeyDer::from_pem_slice(&pem))
            .map_err(|source| TlsError::Key {
                path: key.clone(),
                source,
            })?;
        let provider = Arc::new(crypto_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?;
        let builder = match (&cfg.client_ca, cfg.client_auth) {
            (Some(ca), auth) if auth != ClientAuth::None => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_ca(ca)? {
                    roots.add(c).map_err(|e| TlsError::BadCa {
                        path: ca.clone(),
                        detail: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| TlsError::BadCa {
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(certs, key_der)
                .map_err(|source| TlsError::KeyMismatch {
                    path: key.clone(),
                    source,
                })?;
        // Resumption is by tickets only: a per-worker session-ID cache
        // would resume only on the worker that happened to issue the ID.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        if cfg.session_tickets {
            config.ticketer = Arc::new(
                tickets::SharedTicketer::new(cfg.session_ticket_lifetime)
                    .map_err(TlsError::Tickets)?,
            );
        } else {
            config.send_tls13_tickets = 0;
        }
        if cfg.early_data {
            // Mapped here, in the master before it forks, for HTTP/3's
            // configuration to take from in every worker.
            sessions::shared_table().map_err(TlsError::Sessions)?;
        }
        // Our order, not the client's: AES-128-GCM with SHA-256 before
        // AES-256-GCM with SHA-384, because the key schedule's many HMACs
        // run on SHA-NI for SHA-256 and in software for SHA-384 (a resumed
        // handshake costs 15% less CPU). ChaCha20 stays for clients
        // without AES.
        config.ignore_client_order = true;
        // No 0-RTT over TCP: early data can be replayed (HTTP/3 takes it
        // with `tls.early_data`, see `quic::server_config`).
        config.max_early_data_size = 0;
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Some(TlsMaterial(Arc::new(config))))
    }
}

/// The crypto provider rsvisor is built with (see Cargo.toml's features),
/// with AES-128-GCM-SHA256 suites ahead of AES-256-GCM-SHA384 ones.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "tls-ring")]
    let mut provider = rustls::crypto::ring::default_provider();
    #[cfg(not(feature = "tls-ring"))]
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as C;
        matches!(
            s.suite(),
            C::TLS13_AES_256_GCM_SHA384
                | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    provider
}

#[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc-rs")))]
compile_error!(
    "rsvisor needs a TLS crypto provider: enable `tls-aws-lc-rs` (default) or `tls-ring`"
);

/// A PEM file, read as `config::file` allows (regular, size-capped).
fn read_pem(path: &Path) -> Result<Vec<u8>, rustls_pki_types::pem::Error> {
    crate::config::file::read_capped(path, crate::config::file::MAX_PEM_BYTES)
        .map_err(rustls_pki_types::pem::Error::Io)
}

/// All PEM certificates in `path`, at least one.
fn read_pem_certs(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, rustls_pki_types::pem::Error> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(rustls_pki_types::pem::Error::NoItemsFound);
    }
    Ok(certs)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_pem_certs(path).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoCert {
            path: path.to_path_buf(),
        },
        source => TlsError::Cert {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_pem_certs(path).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::BadCa {
            path: path.to_path_buf(),
            detail: "contains no PEM certificate".into(),
        },
        source => TlsError::Ca {
            path: path.to_path_buf(),
            source,
        },
    })
}
