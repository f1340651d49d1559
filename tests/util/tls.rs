//! TLS helpers: two self-signed certificates for `localhost` (fixtures in
//! `tests/fixtures/tls/`, made once by `openssl req -x509` with a P-256
//! key, valid until 2126; see its README), a rustls client that trusts one
//! of them, and clients with timeouts.
#![cfg(feature = "tls")]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use pool_manager::TlsConfig;
use pool_manager::rustls::pki_types::{CertificateDer, ServerName};
use pool_manager::rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::client;

/// A self-signed certificate for `localhost`, with its key, as PEM.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// The first certificate (`a`).
    pub fn new() -> Self {
        Self::fixture(
            include_str!("../fixtures/tls/a.cert.pem"),
            include_str!("../fixtures/tls/a.key.pem"),
        )
    }

    /// The second (`b`): another key, which a client of the first does not
    /// trust.
    pub fn other() -> Self {
        Self::fixture(
            include_str!("../fixtures/tls/b.cert.pem"),
            include_str!("../fixtures/tls/b.key.pem"),
        )
    }

    fn fixture(cert_pem: &str, key_pem: &str) -> Self {
        use pool_manager::rustls::pki_types::pem::PemObject;
        TestCert {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            der: CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("a PEM certificate"),
        }
    }

    /// The server side.
    pub fn server(&self) -> TlsConfig {
        TlsConfig::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).expect("tls config")
    }

    /// A client configuration that trusts this certificate only.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_with_alpn(Vec::new())
    }

    pub fn client_with_alpn(&self, alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("add root");
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        Arc::new(config)
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS client of `addr` for `localhost` (the handshake happens on its
/// first read or write), with the plain client's timeouts.
pub fn tls_client(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).expect("client connection");
    StreamOwned::new(conn, client(addr))
}

/// Completes the handshake of `client` now.
pub fn handshake(client: &mut TlsStream) -> io::Result<()> {
    while client.conn.is_handshaking() {
        client.conn.complete_io(&mut client.sock)?;
    }
    Ok(())
}

/// Writes `msg`, reads exactly `expect.len()` bytes back.
pub fn tls_roundtrip(client: &mut TlsStream, msg: &[u8], expect: &[u8]) {
    client.write_all(msg).expect("tls write");
    client.flush().expect("tls flush");
    let mut buf = vec![0; expect.len()];
    client.read_exact(&mut buf).expect("tls read");
    assert_eq!(buf, expect);
}

/// A certificate and its key written to PEM files, for the examples'
/// `--tls-cert` and `--tls-key`; removed on drop.
pub struct CertFiles {
    dir: std::path::PathBuf,
    pub cert: String,
    pub key: String,
}

impl TestCert {
    pub fn files(&self) -> CertFiles {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pool-manager-cert-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        CertFiles {
            cert: cert.to_string_lossy().into_owned(),
            key: key.to_string_lossy().into_owned(),
            dir,
        }
    }
}

impl CertFiles {
    /// The examples' flags for these files.
    pub fn flags(&self) -> [&str; 4] {
        ["--tls-cert", &self.cert, "--tls-key", &self.key]
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
