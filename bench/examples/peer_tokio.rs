//! A peer for comparisons: an echo server on tokio's multi-thread runtime,
//! a task per connection.
//!
//! With `--sleep-ms N`, a request whose first byte is `!` sleeps N ms before
//! its echo, like `echo --sleep-ms`: by default with `std::thread::sleep`
//! inside the task (blocking the runtime's worker thread, as code written
//! without knowing better does), with `--spawn-blocking` on tokio's blocking
//! pool (`spawn_blocking`, awaited).
//!
//! ```text
//! cargo run --release -p pool-manager-bench --example peer_tokio -- --addr 127.0.0.1:7002
//! cargo run --release -p pool-manager-bench --example peer_tokio -- --sleep-ms 10 --spawn-blocking
//! ```

#[path = "common/tokio_peer.rs"]
mod tokio_peer;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Tokio echo server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7002")]
    addr: SocketAddr,
    /// Bytes read at most per read.
    #[arg(long, default_value_t = 4096)]
    buffer_size: usize,
    /// Runtime worker threads; 0 = one per core (tokio's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// A request whose first byte is `!` sleeps this many milliseconds
    /// before its echo; 0 = never.
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
    /// Sleep on tokio's blocking pool (`spawn_blocking`) instead of inside
    /// the task.
    #[arg(long)]
    spawn_blocking: bool,
    /// Serve TLS (tokio-rustls, rustls's defaults) with this PEM
    /// certificate chain; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// What a connection's task needs to know.
#[derive(Clone, Copy)]
struct Echo {
    buffer_size: usize,
    /// For requests that start with `!`.
    sleep: Option<Duration>,
    spawn_blocking: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tokio_peer::run("peer_tokio", args.threads, serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    // tokio's `bind` listens with a backlog of 1024, like the others.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.addr).await?;
    println!("peer_tokio: listening on {}", args.addr);
    let how = Echo {
        buffer_size: args.buffer_size,
        sleep: (args.sleep_ms > 0).then(|| Duration::from_millis(args.sleep_ms)),
        spawn_blocking: args.spawn_blocking,
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                match &tls {
                    None => {
                        tokio::spawn(echo(stream, how));
                    }
                    Some(tls) => {
                        let accept = tls.accept(stream);
                        tokio::spawn(async move {
                            if let Ok(stream) = accept.await {
                                echo(stream, how).await;
                            }
                        });
                    }
                }
            }
            Err(e) => {
                eprintln!("peer_tokio: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A TLS acceptor with rustls's defaults, as the crate's `TlsConfig::from_pem_files`.
fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> std::io::Result<TlsAcceptor> {
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(std::io::Error::other)?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(std::io::Error::other)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, how: Echo) {
    let mut buf = vec![0; how.buffer_size];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let (Some(sleep), b'!') = (how.sleep, buf[0]) {
                    if how.spawn_blocking {
                        let _ =
                            tokio::task::spawn_blocking(move || std::thread::sleep(sleep)).await;
                    } else {
                        // Blocks this worker thread and every task queued on it.
                        std::thread::sleep(sleep);
                    }
                }
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
