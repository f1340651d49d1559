//! An echo server on the pool.
//!
//! By default the crate's own acceptor ([`Server`]) accepts; with
//! `--own-accept-loop` a plain `std` accept loop hands every stream to the
//! pool with `put` and answers refused ones itself. SIGINT or SIGTERM stops
//! it gracefully: it drains, prints the stop report and exits 0.
//!
//! ```text
//! cargo run --release --example echo -- --max-workers 8 --stats-every-ms 1000
//! ```

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use pool_manager::{Config, Conn, Manager, MinReadRate, Server, Stats, StopReport};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long a stop may drain before what is left is closed by force.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Echo server on a pool-manager worker pool.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Workers kept even when idle.
    #[arg(long, default_value_t = Config::default().min_workers)]
    min_workers: usize,
    /// Most workers, i.e. connections served at once.
    #[arg(long, default_value_t = Config::default().max_workers)]
    max_workers: usize,
    /// Bytes read at most per read.
    #[arg(long, default_value_t = Config::default().buffer_size)]
    buffer_size: usize,
    /// Inactivity timeout in milliseconds; 0 = none.
    #[arg(long, default_value_t = 3000)]
    read_deadline_ms: u64,
    /// Deadline of one write in milliseconds; 0 = none.
    #[arg(long, default_value_t = 3000)]
    write_deadline_ms: u64,
    /// Idle workers above the minimum retire after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    worker_idle_ms: u64,
    /// Streams that may wait for a worker when all are busy.
    #[arg(long, default_value_t = 0)]
    queue: usize,
    /// Longest a stream waits in the queue, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    queue_timeout_ms: u64,
    /// Written to a client the pool cannot take, before closing it.
    #[arg(long, default_value = "ERROR_SERVER_BUSY")]
    busy_reply: String,
    /// Print a line of stats this often, in milliseconds; 0 = never.
    #[arg(long, default_value_t = 0)]
    stats_every_ms: u64,
    /// Most connections open at once; at the limit new clients wait in the
    /// backlog. 0 = no limit.
    #[arg(long, default_value_t = 0)]
    max_connections: usize,
    /// Most connections open at once from one IP address; 0 = no limit.
    #[arg(long, default_value_t = 0)]
    max_per_ip: usize,
    /// Length of the listening socket's backlog.
    #[arg(long, default_value_t = Config::default().backlog)]
    backlog: u32,
    /// Set SO_REUSEPORT, so that several processes can share the port.
    #[arg(long)]
    reuseport: bool,
    /// Use a plain accept loop and `Manager::put` instead of the built-in
    /// acceptor.
    #[arg(long)]
    own_accept_loop: bool,
    /// Dedicated mode: a worker keeps its connection until it closes (a
    /// thread per open connection). Without it, polled mode (the default on
    /// Linux): connections wait in the workers' shared poller.
    #[arg(long)]
    dedicated: bool,
    /// Polled mode: how long a worker waits for a client's next bytes
    /// before handing the connection back to the poller, in milliseconds;
    /// 0 = at once.
    #[arg(long, default_value_t = 0)]
    park_after_ms: u64,
    /// Polled mode: workers waiting for ready connections at once.
    #[arg(long, default_value_t = Config::default().pollers)]
    pollers: usize,
    /// Polled mode: a turn longer than this, in microseconds, while
    /// connections wait, hands its worker's place to another worker.
    #[arg(long, default_value_t = 1000)]
    grow_after_us: u64,
    /// A request whose first byte is `!` sleeps this many milliseconds in
    /// the handler before its echo: a blocking handler, for benchmarks.
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
    /// Close a connection that sends nothing within this many milliseconds
    /// of being accepted; 0 = no such deadline.
    #[arg(long, default_value_t = 0)]
    first_byte_deadline_ms: u64,
    /// Least bytes per second while a frame is incomplete (a line without
    /// its newline); 0 = no minimum.
    #[arg(long, default_value_t = 0)]
    min_read_rate: u64,
    /// The window over which --min-read-rate is judged, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    min_read_rate_window_ms: u64,
    /// Close any connection this many milliseconds after it was accepted;
    /// 0 = no limit.
    #[arg(long, default_value_t = 0)]
    max_lifetime_ms: u64,
    /// Echo whole lines only (keeping a partial line for the next read), so
    /// that --min-read-rate applies to a line sent slowly.
    #[arg(long)]
    lines: bool,
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    // Up to the hard limit: each connection is a descriptor.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        log::warn!("cannot raise the open-files limit: {e}");
    }
    let config = Config {
        min_workers: args.min_workers,
        max_workers: args.max_workers,
        buffer_size: args.buffer_size,
        read_deadline: millis(args.read_deadline_ms),
        write_deadline: millis(args.write_deadline_ms),
        // Zero is refused by validation, with a clear message.
        worker_idle_timeout: Duration::from_millis(args.worker_idle_ms),
        queue_capacity: args.queue,
        queue_timeout: Duration::from_millis(args.queue_timeout_ms),
        busy_reply: format!("{}\n", args.busy_reply).into_bytes(),
        max_connections: (args.max_connections > 0).then_some(args.max_connections),
        max_connections_per_ip: (args.max_per_ip > 0).then_some(args.max_per_ip),
        backlog: args.backlog,
        reuse_port: args.reuseport,
        park_after: (!args.dedicated).then(|| Duration::from_millis(args.park_after_ms)),
        pollers: args.pollers,
        grow_after: Duration::from_micros(args.grow_after_us),
        first_byte_deadline: millis(args.first_byte_deadline_ms),
        min_read_rate: (args.min_read_rate > 0).then(|| MinReadRate {
            bytes_per_sec: args.min_read_rate,
            window: Duration::from_millis(args.min_read_rate_window_ms),
        }),
        max_connection_lifetime: millis(args.max_lifetime_ms),
        ..Config::default()
    };
    let lines = args.lines;
    let sleep = millis(args.sleep_ms);
    let manager = match Manager::new(config, move |conn: &mut Conn<'_>, data: &[u8]| {
        if let (Some(sleep), Some(b'!')) = (sleep, data.first()) {
            // A blocking handler: a database call, a lock, a slow disk.
            std::thread::sleep(sleep);
        }
        if !lines {
            return conn.write_all(data);
        }
        // Up to and including the last newline; the rest waits for more.
        let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        conn.keep(data.len() - end);
        conn.write_all(&data[..end])
    }) {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("echo: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("echo: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if args.own_accept_loop {
        own_accept_loop(manager, &args, &mut signals)
    } else {
        built_in_acceptor(manager, &args, &mut signals)
    };
    match result {
        Ok(report) => {
            println!(
                "echo: stopped in {:.2?}: {} drained, {} forced, {} queued closed",
                report.elapsed, report.drained, report.forced, report.queued
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

/// Serves with the crate's acceptor until SIGINT or SIGTERM.
fn built_in_acceptor(
    manager: Manager,
    args: &Args,
    signals: &mut Signals,
) -> Result<StopReport, BoxError> {
    let server = Arc::new(
        Server::bind(manager, args.addr.as_str())
            .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?,
    );
    server.start()?;
    println!("echo: listening on {:?}", server.local_addrs());
    let stats = Arc::clone(&server);
    print_stats_every(args.stats_every_ms, move || stats.manager().stats());
    wait_for_signal(signals);
    Ok(server.stop_timeout(STOP_TIMEOUT)?)
}

/// Serves with a plain accept loop and `put` until SIGINT or SIGTERM.
fn own_accept_loop(
    manager: Manager,
    args: &Args,
    signals: &mut Signals,
) -> Result<StopReport, BoxError> {
    let listener = TcpListener::bind(&args.addr)
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let manager = Arc::new(manager);
    manager.start()?;
    println!(
        "echo: listening on {} (own accept loop)",
        listener.local_addr()?
    );
    let stats = Arc::clone(&manager);
    print_stats_every(args.stats_every_ms, move || stats.stats());
    let busy_reply = manager.config().busy_reply;
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
            if let Err(refused) = pool.put(stream) {
                let mut stream = refused.into_inner();
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = stream.write_all(&busy_reply);
            }
        }
    });
    wait_for_signal(signals);
    Ok(manager.stop_timeout(STOP_TIMEOUT)?)
}

fn wait_for_signal(signals: &mut Signals) {
    if let Some(signal) = signals.forever().next() {
        let name = if signal == SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        println!("echo: {name}, stopping");
    }
}

fn print_stats_every(ms: u64, stats: impl Fn() -> Stats + Send + 'static) {
    let Some(every) = millis(ms) else { return };
    std::thread::spawn(move || {
        for _ in crossbeam_channel::tick(every) {
            let s = stats();
            println!(
                "workers {} (busy {}, idle {}) queued {} parked {} | conns {} | in {} B out {} B | rejected {} | closed {} (eof {}, deadline {}, slow {}, error {}, panic {})",
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
                s.closed.read_deadline + s.closed.write_deadline,
                s.closed.first_byte_deadline + s.closed.slow_read + s.closed.lifetime,
                s.closed.error,
                s.closed.panic,
            );
        }
    });
}
