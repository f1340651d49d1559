//! A load generator for echo servers: closed loop over N connections (or a
//! new connection per request), K idle connections held open, every request
//! bounded by a timeout. It prints one JSON line: throughput, latency
//! percentiles, errors by kind, and — given the server's pid — the server's
//! peak RSS, thread count, CPU time and context switches over the measured
//! window.
//!
//! With `--sleep-every N`, every N-th request of the run (counted over all
//! connections) starts with `!`, which `echo --sleep-ms`, `peer_tokio
//! --sleep-ms` and `peer_actix --sleep-ms` answer only after a sleep in the
//! handler: a blocking handler. The usual fields (`requests`,
//! `throughput_rps`, the percentiles) then count the other, plain requests
//! only; `sleepy_requests` and `sleepy_p99_us` the marked ones. A plain
//! request never starts with `!`.
//!
//! Context switches are summed over the server's threads
//! (`/proc/PID/task/*/status`) at the start and the end of the window; a
//! thread that exits within the window takes its switches with it (such as
//! a thread-per-connection server's with a new connection per request).
//!
//! ```text
//! cargo run --release -p pool-manager-bench --example load -- --addr 127.0.0.1:7000 --connections 50 --size 64
//! ```
//!
//! Every failure is counted, never fatal: a refused connect, a timeout, a
//! reset, an early close, or a reply that is not the echo of the request
//! (such as a busy reply). Traffic goes only where `--addr` points; use a
//! loopback address.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

#[path = "common/failures.rs"]
mod failures;
#[path = "common/load_tool.rs"]
mod load_tool;
#[path = "common/procfs.rs"]
mod procfs;

use failures::{ErrorCounts, Errors, Failure};
use load_tool::{Measured, new_histogram};
use procfs::{Sampler, ServerUsage};

/// Closed-loop echo load generator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The echo server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Active connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Bytes per request (echoed back whole).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    size: u32,
    /// Measured time, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    duration_ms: u64,
    /// Load before measuring, in milliseconds.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Idle connections opened first and held open for the whole run.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Open a new connection for every request (and close it after).
    #[arg(long)]
    connect_per_request: bool,
    /// Bound on one request: connect, write and read back, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's pid, to report its RSS, threads, CPU time and context
    /// switches (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Every N-th request starts with `!` (a sleeping request for servers
    /// run with `--sleep-ms`); 0 = none.
    #[arg(long, default_value_t = 0)]
    sleep_every: u64,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Speak TLS (tokio-rustls), trusting the certificate in this PEM file,
    /// issued for `localhost`. Idle connections complete their handshake.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Report {
    label: String,
    addr: SocketAddr,
    connections: usize,
    size: u32,
    connect_per_request: bool,
    idle_requested: usize,
    idle_opened: usize,
    idle_still_open: usize,
    #[serde(flatten)]
    measured: Measured,
    sleep_every: u64,
    /// Requests that started with `!`, measured apart from the others.
    sleepy_requests: u64,
    sleepy_p99_us: u64,
    errors: Errors,
    server: Option<ServerUsage>,
}

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A TLS client trusting only the certificate in `ca`.
fn connector(ca: &std::path::Path) -> Result<TlsConnector, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects to `addr`, with a TLS handshake if `tls`.
async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> Option<Box<dyn Io>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Some(Box::new(stream)),
        Some(tls) => {
            let name = ServerName::try_from("localhost").ok()?;
            Some(Box::new(tls.connect(name, stream).await.ok()?))
        }
    }
}

/// What the clients share.
struct Shared {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    size: usize,
    timeout: Duration,
    per_request: bool,
    /// Every this many requests one starts with `!`; 0 = none.
    sleep_every: u64,
    /// Requests begun, over all clients (only with `sleep_every`).
    begun: AtomicU64,
    /// Latencies are recorded from this instant on.
    measure_from: Instant,
    stop: AtomicBool,
    errors: ErrorCounts,
}

fn main() -> ExitCode {
    let args = Args::parse();
    load_tool::main("load", args.threads, run(&args))
}

async fn run(args: &Args) -> Result<Report, String> {
    let request_timeout = Duration::from_millis(args.timeout_ms);
    let tls = args.tls_ca.as_deref().map(connector).transpose()?;
    let idle = open_idle(args.addr, args.idle, request_timeout, tls.as_ref()).await;
    let idle_opened = idle.len();

    let started = Instant::now();
    let warmup = Duration::from_millis(args.warmup_ms);
    let duration = Duration::from_millis(args.duration_ms);
    let shared = Arc::new(Shared {
        addr: args.addr,
        tls,
        size: args.size as usize,
        timeout: request_timeout,
        per_request: args.connect_per_request,
        sleep_every: args.sleep_every,
        begun: AtomicU64::new(0),
        measure_from: started + warmup,
        stop: AtomicBool::new(false),
        errors: ErrorCounts::default(),
    });
    let clients: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(client(Arc::clone(&shared), i)))
        .collect();

    tokio::time::sleep(warmup).await;
    let sampler = args.server_pid.map(|pid| Sampler::start(pid, false));
    let before = match args.server_pid {
        Some(pid) => Some(procfs::mark(pid).await),
        None => None,
    };
    let measured = Instant::now();
    tokio::time::sleep(duration).await;
    let elapsed = measured.elapsed();
    let after = match args.server_pid {
        Some(pid) => Some(procfs::mark(pid).await),
        None => None,
    };
    shared.stop.store(true, Relaxed);

    let mut latencies = new_histogram();
    let mut sleepy = new_histogram();
    for client in clients {
        // Each client ends within one request timeout of `stop`.
        if let Ok((plain, marked)) = client.await {
            let _ = latencies.add(&plain);
            let _ = sleepy.add(&marked);
        }
    }
    let mut idle_still_open = 0;
    for mut stream in idle {
        idle_still_open += usize::from(still_open(&mut stream).await);
    }
    let served = (latencies.len() + sleepy.len()).max(1) as f64;
    let server = match (args.server_pid, sampler, before, after) {
        (Some(pid), Some(sampler), Some(before), Some(after)) => {
            let sampled = sampler.finish().await;
            Some(procfs::usage(pid, &before, &after, sampled, served))
        }
        _ => None,
    };
    Ok(Report {
        label: args.label.clone(),
        addr: args.addr,
        connections: args.connections,
        size: args.size,
        connect_per_request: args.connect_per_request,
        idle_requested: args.idle,
        idle_opened,
        idle_still_open,
        measured: Measured::of(&latencies, elapsed),
        sleep_every: args.sleep_every,
        sleepy_requests: sleepy.len(),
        sleepy_p99_us: sleepy.value_at_quantile(0.99),
        errors: shared.errors.report(),
        server,
    })
}

/// Opens `count` connections, at most 200 connects in flight, each bounded
/// by `limit`; returns those that opened.
async fn open_idle(
    addr: SocketAddr,
    count: usize,
    limit: Duration,
    tls: Option<&TlsConnector>,
) -> Vec<Box<dyn Io>> {
    let gate = Arc::new(Semaphore::new(200));
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let gate = Arc::clone(&gate);
            let tls = tls.cloned();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                timeout(limit, connect(addr, tls.as_ref())).await.ok()?
            })
        })
        .collect();
    let mut open = Vec::with_capacity(count);
    for task in tasks {
        if let Ok(Some(stream)) = task.await {
            open.push(stream);
        }
    }
    if open.len() < count {
        eprintln!("load: opened {} of {count} idle connections", open.len());
    }
    open
}

/// Whether the server still holds `stream` open: no end of file or error
/// ready to read (a TLS server's session tickets are ready: open). One
/// poll, no wait: a zero timeout polls its future once.
async fn still_open(stream: &mut Box<dyn Io>) -> bool {
    let mut byte = [0u8; 1];
    match timeout(Duration::ZERO, stream.read(&mut byte)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

/// One closed-loop client: a request in flight at a time until `stop`.
/// Returns the latencies of the plain requests and of the sleepy ones.
async fn client(shared: Arc<Shared>, id: usize) -> (Histogram<u64>, Histogram<u64>) {
    let mut latencies = new_histogram();
    let mut sleepy_latencies = new_histogram();
    let mut request = vec![0u8; shared.size];
    let mut reply = vec![0u8; shared.size];
    let mut stream: Option<Box<dyn Io>> = None;
    let mut seq = id;
    while !shared.stop.load(Relaxed) {
        seq = seq.wrapping_add(1);
        request.fill((seq % 251) as u8);
        let every = shared.sleep_every;
        let sleepy = every > 0 && shared.begun.fetch_add(1, Relaxed) % every == every - 1;
        if sleepy {
            request[0] = b'!';
        } else if request[0] == b'!' {
            request[0] = b'?';
        }
        let began = Instant::now();
        let result = timeout(
            shared.timeout,
            exchange(&shared, &mut stream, &request, &mut reply),
        )
        .await
        .unwrap_or(Err(Failure::Timeout));
        match result {
            Ok(()) => {
                if began >= shared.measure_from {
                    let histogram = if sleepy {
                        &mut sleepy_latencies
                    } else {
                        &mut latencies
                    };
                    let _ = histogram.record(began.elapsed().as_micros().max(1) as u64);
                }
                if shared.per_request {
                    stream = None;
                }
            }
            Err(failure) => {
                shared.errors.count(failure);
                stream = None;
                // A server that refuses at once must not turn this into a
                // busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (latencies, sleepy_latencies)
}

async fn exchange(
    shared: &Shared,
    stream: &mut Option<Box<dyn Io>>,
    request: &[u8],
    reply: &mut [u8],
) -> Result<(), Failure> {
    if stream.is_none() {
        *stream = Some(
            connect(shared.addr, shared.tls.as_ref())
                .await
                .ok_or(Failure::Connect)?,
        );
    }
    let Some(s) = stream.as_mut() else {
        return Err(Failure::Connect);
    };
    s.write_all(request).await.map_err(|_| Failure::Io)?;
    match s.read_exact(reply).await {
        Ok(_) if reply == request => Ok(()),
        Ok(_) => Err(Failure::Mismatch),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Failure::Closed),
        Err(_) => Err(Failure::Io),
    }
}
