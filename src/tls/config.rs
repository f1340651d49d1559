//! [`TlsConfig`]: the rustls server configuration a manager serves TLS with.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;

/// The TLS configuration of a manager: rustls's [`ServerConfig`], shared.
///
/// Set it as [`Config::tls`](crate::Config::tls). Build the `ServerConfig`
/// yourself for full control (ALPN, client authentication, session
/// resumption, key logging, SNI with several certificates), or load one
/// certificate chain and key from PEM files with
/// [`from_pem_files`](Self::from_pem_files). Rotating the certificate is a
/// [`set_config`](crate::Manager::set_config) with a new `TlsConfig`: new
/// handshakes use it, established connections keep theirs.
///
/// ```no_run
/// use std::sync::Arc;
/// use pool_manager::{Config, TlsConfig};
///
/// // From PEM files:
/// let config = Config::default().with_tls(Some(TlsConfig::from_pem_files("cert.pem", "key.pem")?));
///
/// // From a rustls configuration of your own, here with ALPN:
/// use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
/// let chain = CertificateDer::pem_file_iter("cert.pem")?.collect::<Result<Vec<_>, _>>()?;
/// let key = PrivateKeyDer::from_pem_file("key.pem")?;
/// let mut server = rustls::ServerConfig::builder()
///     .with_no_client_auth()
///     .with_single_cert(chain, key)?;
/// server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
/// let tls = TlsConfig::new(Arc::new(server));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct TlsConfig(Arc<ServerConfig>);

impl TlsConfig {
    /// Serves TLS with `config`.
    ///
    /// Also draws from the configuration's random generator once, so that
    /// the crypto provider's one-time set-up (aws-lc seeds its generator
    /// once per process, which takes milliseconds) happens here, not in the
    /// first handshakes: there every worker but one would wait for it, and
    /// the pool would take them for blocked and start more.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        let _ = config.crypto_provider().secure_random.fill(&mut [0u8; 16]);
        TlsConfig(config)
    }

    /// Loads a certificate chain (leaf first) and its private key (PKCS#8,
    /// PKCS#1 or SEC1) from PEM files, for a server without client
    /// authentication, with rustls's default protocol versions, cipher
    /// suites and crypto provider.
    ///
    /// # Errors
    ///
    /// [`TlsError::Read`] if a file cannot be read, [`TlsError::Pem`] if it
    /// is not PEM, [`TlsError::NoCertificates`] / [`TlsError::NoKey`] if it
    /// holds none, [`TlsError::KeyMismatch`] if the key is not the
    /// certificate's, [`TlsError::Rustls`] if rustls refuses them otherwise
    /// (an unsupported key type, say).
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| e.at(cert_path, key_path))
    }

    /// As [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    ///
    /// # Errors
    ///
    /// As [`from_pem_files`](Self::from_pem_files), without
    /// [`TlsError::Read`]; the errors name no file.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, pem::Error>>()
            .map_err(|e| TlsError::Pem {
                path: None,
                what: "certificate",
                source: e,
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificates { path: None });
        }
        let key = match PrivateKeyDer::from_pem_slice(key) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey { path: None }),
            Err(e) => {
                return Err(TlsError::Pem {
                    path: None,
                    what: "private key",
                    source: e,
                });
            }
        };
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    TlsError::KeyMismatch { cert: None }
                }
                e => TlsError::Rustls(e),
            })?;
        Ok(TlsConfig::new(Arc::new(config)))
    }

    /// The rustls configuration.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.0
    }
}

impl From<Arc<ServerConfig>> for TlsConfig {
    fn from(config: Arc<ServerConfig>) -> Self {
        TlsConfig::new(config)
    }
}

impl From<ServerConfig> for TlsConfig {
    fn from(config: ServerConfig) -> Self {
        TlsConfig::new(Arc::new(config))
    }
}

/// Two `TlsConfig`s are equal when they share one `ServerConfig`.
impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TlsConfig {}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn_protocols", &self.0.alpn_protocols)
            .finish_non_exhaustive()
    }
}
