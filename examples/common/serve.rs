//! What the example servers (`echo`, `resp`, `http`) share: the pool's
//! command-line flags, and serving until SIGINT or SIGTERM, then a drain
//! and a stop report. `deploy.rs` holds what production adds: the PROXY
//! protocol, inherited sockets, systemd notifications, handovers.
//!
//! Each example includes this file with `#[path = …] mod serve;`, so every
//! flag means the same in all of them.

#[path = "deploy.rs"]
mod deploy;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use pool_manager::{Config, Manager, MinReadRate, Server, Stats, StopReport};
use signal_hook::consts::SIGINT;
#[cfg(unix)]
use signal_hook::consts::SIGTERM;
#[cfg(unix)]
use signal_hook::iterator::Signals;

pub use deploy::DeployArgs;

/// Prints a line on stdout and ignores a failure: a closed stdout (a
/// supervisor that stopped reading) must not stop a server, and
/// `println!` panics there.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The running pool's statistics, once [`serve`] has started it: for a
/// handler that reports them (the `http` example's `GET /stats`).
pub static STATS: OnceLock<Box<dyn Fn() -> Stats + Send + Sync>> = OnceLock::new();

/// Publishes the pool's metrics now, once [`serve`] has started it (with
/// the `metrics` feature): for a handler that serves them (the `http`
/// example's `GET /metrics`).
#[cfg(feature = "metrics")]
pub static PUBLISH: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// Set once a stop is asked for (SIGTERM, or a successor took over): for a
/// readiness check (the `http` example's `GET /ready`).
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// The pool's flags; each defaults to the crate's default unless its help
/// says otherwise.
#[derive(clap::Args, Debug, Clone)]
pub struct PoolArgs {
    /// Workers kept even when idle.
    #[arg(long, default_value_t = Config::default().min_workers)]
    pub min_workers: usize,
    /// Most workers, i.e. handlers running at once.
    #[arg(long, default_value_t = Config::default().max_workers)]
    pub max_workers: usize,
    /// Bytes read at most per read.
    #[arg(long, default_value_t = Config::default().buffer_size)]
    pub buffer_size: usize,
    /// Inactivity timeout in milliseconds; 0 = none. [default: the
    /// example's own, see its documentation]
    #[arg(long)]
    pub read_deadline_ms: Option<u64>,
    /// Deadline of one write in milliseconds; 0 = none.
    #[arg(long, default_value_t = 3000)]
    pub write_deadline_ms: u64,
    /// Idle workers above the minimum retire after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub worker_idle_ms: u64,
    /// Streams that may wait for a worker when all are busy.
    #[arg(long, default_value_t = 0)]
    pub queue: usize,
    /// Longest a stream waits in the queue, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub queue_timeout_ms: u64,
    /// Print a line of stats this often, in milliseconds; 0 = never.
    #[arg(long, default_value_t = 0)]
    pub stats_every_ms: u64,
    /// Most connections open at once; at the limit new clients wait in the
    /// backlog. 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Most connections open at once from one IP address; 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub max_per_ip: usize,
    /// Length of the listening socket's backlog.
    #[arg(long, default_value_t = Config::default().backlog)]
    pub backlog: u32,
    /// Set SO_REUSEPORT, so that several processes can share the port.
    #[arg(long)]
    pub reuseport: bool,
    /// Use a plain accept loop and `Manager::put` instead of the built-in
    /// acceptor.
    #[arg(long)]
    pub own_accept_loop: bool,
    /// Dedicated mode: a worker keeps its connection until it closes (a
    /// thread per open connection). Without it, polled mode (the default on
    /// Linux): connections wait in the workers' shared poller.
    #[arg(long)]
    pub dedicated: bool,
    /// Polled mode: how long a worker waits for a client's next bytes
    /// before handing the connection back to the poller, in milliseconds;
    /// 0 = at once.
    #[arg(long, default_value_t = 0)]
    pub park_after_ms: u64,
    /// Polled mode: workers waiting for ready connections at once.
    #[arg(long, default_value_t = Config::default().pollers)]
    pub pollers: usize,
    /// Polled mode: a turn longer than this, in microseconds, while
    /// connections wait, hands its worker's place to another worker.
    #[arg(long, default_value_t = 1000)]
    pub grow_after_us: u64,
    /// Close a connection that sends nothing within this many milliseconds
    /// of being accepted; 0 = no such deadline.
    #[arg(long, default_value_t = 0)]
    pub first_byte_deadline_ms: u64,
    /// Least bytes per second while a request is incomplete; 0 = no minimum.
    #[arg(long, default_value_t = 0)]
    pub min_read_rate: u64,
    /// The window over which --min-read-rate is judged, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub min_read_rate_window_ms: u64,
    /// Close any connection this many milliseconds after it was accepted;
    /// 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub max_lifetime_ms: u64,
    /// Serve TLS with this PEM certificate chain (leaf first); needs
    /// --tls-key, and the crate's `tls` feature (`--features tls`).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Longest a TLS handshake may take, in milliseconds; 0 = no limit.
    #[arg(long, default_value_t = 10_000)]
    pub tls_handshake_ms: u64,
    #[command(flatten)]
    pub deploy: DeployArgs,
}

/// `Some(ms)` unless `ms` is 0.
pub fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl PoolArgs {
    /// The configuration these flags ask for; `read_deadline_ms` defaults to
    /// `default_read_deadline_ms`, and refused clients get `busy_reply`.
    pub fn config(&self, default_read_deadline_ms: u64, busy_reply: &[u8]) -> Config {
        self.tls()
            .with_min_workers(self.min_workers)
            .with_max_workers(self.max_workers)
            .with_buffer_size(self.buffer_size)
            .with_read_deadline(millis(
                self.read_deadline_ms.unwrap_or(default_read_deadline_ms),
            ))
            .with_write_deadline(millis(self.write_deadline_ms))
            // Zero is refused by validation, with a clear message.
            .with_worker_idle_timeout(Duration::from_millis(self.worker_idle_ms))
            .with_queue_capacity(self.queue)
            .with_queue_timeout(Duration::from_millis(self.queue_timeout_ms))
            .with_busy_reply(busy_reply.to_vec())
            .with_max_connections((self.max_connections > 0).then_some(self.max_connections))
            .with_max_connections_per_ip((self.max_per_ip > 0).then_some(self.max_per_ip))
            .with_backlog(self.backlog)
            .with_reuse_port(self.reuseport)
            .with_park_after((!self.dedicated).then(|| Duration::from_millis(self.park_after_ms)))
            .with_pollers(self.pollers)
            .with_grow_after(Duration::from_micros(self.grow_after_us))
            .with_first_byte_deadline(millis(self.first_byte_deadline_ms))
            .with_min_read_rate((self.min_read_rate > 0).then(|| {
                MinReadRate::new(
                    self.min_read_rate,
                    Duration::from_millis(self.min_read_rate_window_ms),
                )
            }))
            .with_max_connection_lifetime(millis(self.max_lifetime_ms))
            .with_proxy_protocol(self.deploy.proxy_protocol())
    }

    /// The TLS part of the configuration. A certificate that cannot be
    /// loaded, or TLS asked of a build without it, ends the process with
    /// a message and exit code 2, as a bad flag does.
    fn tls(&self) -> Config {
        let Some((cert, key)) = self.tls_cert.as_ref().zip(self.tls_key.as_ref()) else {
            return Config::default();
        };
        #[cfg(feature = "tls")]
        {
            match pool_manager::TlsConfig::from_pem_files(cert, key) {
                Ok(tls) => Config::default()
                    .with_tls(Some(tls))
                    .with_tls_handshake_deadline(millis(self.tls_handshake_ms)),
                Err(e) => {
                    eprintln!("error: --tls-cert/--tls-key: {}", chain(&e));
                    std::process::exit(2);
                }
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (cert, key, self.tls_handshake_ms);
            eprintln!("error: --tls-cert needs the `tls` feature: cargo run --features tls …");
            std::process::exit(2);
        }
    }
}

/// Raises the open-files limit to the hard limit: each connection is a
/// descriptor. (Unix: Windows sets no such limit on sockets.)
pub fn raise_nofile_limit() {
    #[cfg(unix)]
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        log::warn!("cannot raise the open-files limit: {e}");
    }
}

/// What ends serving.
enum Event {
    #[cfg_attr(not(unix), allow(dead_code, reason = "no signals are forwarded there"))]
    Signal(i32),
    /// A successor serves the listening sockets now.
    HandedOver,
}

/// Serves `manager` on `addr` until SIGINT or SIGTERM (or a successor takes
/// over), then drains it and prints the report; the process's exit code.
/// `name` starts every line the example prints (`NAME: listening on
/// [ADDR]` first, which tests read).
pub fn serve(name: &str, manager: Manager, addr: &str, args: &PoolArgs) -> ExitCode {
    let (tx, events) = crossbeam_channel::unbounded();
    if let Err(e) = forward_signals(&tx) {
        eprintln!("{name}: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    let result = if args.own_accept_loop {
        own_accept_loop(name, manager, addr, args, &events)
    } else {
        built_in_acceptor(name, manager, addr, args, tx, &events)
    };
    match result {
        Ok((report, stats)) => {
            say!(
                "{name}: stopped in {:.2?}: {} drained, {} forced, {} queued closed; {} connections in all",
                report.elapsed,
                report.drained,
                report.forced,
                report.queued,
                stats.connections
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes (`source()`), each once: "a: b: c".
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// SIGINT and SIGTERM, as events on `tx`.
#[cfg(unix)]
fn forward_signals(tx: &Sender<Event>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let _ = tx.send(Event::Signal(signal));
        }
    });
    Ok(())
}

/// Windows: Ctrl-C ends the process as it does by default (no drain, no
/// report); signal-hook's iterator is Unix only.
#[cfg(not(unix))]
fn forward_signals(_tx: &Sender<Event>) -> std::io::Result<()> {
    Ok(())
}

type BoxError = Box<dyn std::error::Error>;

/// Serves with the crate's acceptor, on sockets inherited or bound here,
/// until SIGINT, SIGTERM or a handover; then `Server::shutdown`.
fn built_in_acceptor(
    name: &str,
    manager: Manager,
    addr: &str,
    args: &PoolArgs,
    tx: Sender<Event>,
    events: &Receiver<Event>,
) -> Result<(StopReport, Stats), BoxError> {
    let tls = tls_on(&manager);
    let deploy = &args.deploy;
    let mut inherited = deploy::inherited(deploy.handover.as_deref())
        .map_err(|e| format!("cannot take the listening sockets: {e}"))?;
    let (server, from) = match inherited.as_mut() {
        Some(inherited) => {
            let listeners = std::mem::take(&mut inherited.listeners);
            (Server::from_listeners(manager, listeners)?, inherited.from)
        }
        None => (
            Server::bind(manager, addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?,
            "",
        ),
    };
    let server = Arc::new(server);
    server.start()?;
    // The handover path is bound before the "listening" line, so that a
    // process that says it listens can already be asked to hand over (a
    // successor started then waits in the path's backlog), and answered
    // only once this process is ready and has told its own predecessor:
    // one handover at a time, in order.
    let offer = match &deploy.handover {
        Some(path) => {
            Some(deploy::offer(path).map_err(|e| format!("--handover {}: {e}", path.display()))?)
        }
        None => None,
    };
    say!("{name}: listening on {:?}{tls}{from}", server.local_addrs());
    let stats = Arc::clone(&server);
    publish_stats(args.stats_every_ms, move || stats.manager().stats());
    #[cfg(feature = "metrics")]
    {
        let metrics = Arc::clone(&server);
        let _ = PUBLISH.set(Box::new(move || metrics.manager().publish_metrics()));
    }
    let took_over = match inherited.as_mut() {
        Some(inherited) => {
            inherited.ready()?;
            from.contains("handed")
        }
        None => false,
    };
    deploy::notify_ready(took_over);
    if let Some(offer) = offer {
        // Our predecessor was told to go: a failure here must not stop
        // this process too. It serves on, without a handover path.
        if let Err(e) = offer.serve(Arc::clone(&server), move || {
            let _ = tx.send(Event::HandedOver);
        }) {
            eprintln!("{name}: cannot answer --handover ({e}): serving on without it");
        }
    }
    match events.recv() {
        Ok(Event::HandedOver) => say!("{name}: a successor took over, draining"),
        Ok(Event::Signal(signal)) => {
            say!("{name}: {}, stopping", signal_name(signal));
            DRAINING.store(true, Relaxed);
            if let Some(grace) = millis(deploy.accept_grace_ms) {
                say!("{name}: accepting for {} ms more", grace.as_millis());
                // A second signal cuts it short.
                let _ = events.recv_timeout(grace);
            }
        }
        Err(_) => {}
    }
    DRAINING.store(true, Relaxed);
    deploy::notify_stopping();
    let report = server.shutdown(Duration::from_millis(deploy.drain_timeout_ms))?;
    Ok((report, server.manager().stats()))
}

/// Serves with a plain accept loop and `put` until SIGINT or SIGTERM.
fn own_accept_loop(
    name: &str,
    manager: Manager,
    addr: &str,
    args: &PoolArgs,
    events: &Receiver<Event>,
) -> Result<(StopReport, Stats), BoxError> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let manager = Arc::new(manager);
    manager.start()?;
    say!(
        "{name}: listening on [{}] (own accept loop){}",
        listener.local_addr()?,
        tls_on(&manager)
    );
    deploy::notify_ready(false);
    let stats = Arc::clone(&manager);
    publish_stats(args.stats_every_ms, move || stats.stats());
    #[cfg(feature = "metrics")]
    {
        let metrics = Arc::clone(&manager);
        let _ = PUBLISH.set(Box::new(move || metrics.publish_metrics()));
    }
    // Refused clients get the busy reply in plaintext: not over TLS.
    let busy_reply = if tls_on(&manager).is_empty() {
        manager.config().busy_reply
    } else {
        Vec::new()
    };
    let pool = Arc::clone(&manager);
    // The loop ends with the process: after a stop, `put` hands every
    // stream back and it is answered like a refused one.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of
                    // spinning.
                    log::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match pool.put(stream) {
                Ok(()) => {}
                // Not a balancer: closed without a word.
                Err(pool_manager::PutError::Untrusted(_)) => {}
                Err(refused) => {
                    let mut stream = refused.into_inner();
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                    let _ = stream.write_all(&busy_reply);
                }
            }
        }
    });
    if let Ok(Event::Signal(signal)) = events.recv() {
        say!("{name}: {}, stopping", signal_name(signal));
    }
    DRAINING.store(true, Relaxed);
    deploy::notify_stopping();
    let report = manager.stop_timeout(Duration::from_millis(args.deploy.drain_timeout_ms))?;
    Ok((report, manager.stats()))
}

fn signal_name(signal: i32) -> &'static str {
    if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}

/// `" (TLS)"` if the manager serves TLS, else empty.
fn tls_on(manager: &Manager) -> &'static str {
    #[cfg(feature = "tls")]
    if manager.config().tls.is_some() {
        return " (TLS)";
    }
    let _ = manager;
    ""
}

/// Makes `stats` the pool's [`STATS`], and prints them every `ms`.
fn publish_stats(ms: u64, stats: impl Fn() -> Stats + Clone + Send + Sync + 'static) {
    let _ = STATS.set(Box::new(stats.clone()));
    print_stats_every(ms, stats);
}

fn print_stats_every(ms: u64, stats: impl Fn() -> Stats + Send + 'static) {
    let Some(every) = millis(ms) else { return };
    std::thread::spawn(move || {
        for _ in crossbeam_channel::tick(every) {
            let s = stats();
            say!(
                "workers {} (busy {}, idle {}) queued {} parked {} | conns {} | in {} B out {} B | rejected {} | closed {} (eof {}, reset {}, deadline {}, slow {}, error {}, panic {}, handshake {}, proxy header {}, evicted {}) | buffered {} B | tls handshakes {} | proxy headers {} local {} | poller handoffs {} overflowed {}",
                s.workers,
                s.busy,
                s.idle,
                s.queued,
                s.parked,
                s.connections,
                s.bytes_in,
                s.bytes_out,
                s.rejected.total(),
                s.closed.total(),
                s.closed.eof,
                s.closed.reset,
                s.closed.read_deadline + s.closed.write_deadline,
                s.closed.first_byte_deadline + s.closed.slow_read + s.closed.lifetime,
                s.closed.error,
                s.closed.panic,
                s.closed.handshake,
                s.closed.proxy_header,
                s.closed.evicted,
                s.buffered_bytes,
                s.tls.handshakes,
                s.proxy.headers,
                s.proxy.local,
                s.poller_handoffs,
                s.overflowed,
            );
        }
    });
}
