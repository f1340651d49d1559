//! An echo server on the pool.
//!
//! By default the crate's own acceptor ([`Server`](pool_manager::Server))
//! accepts; with `--own-accept-loop` a plain `std` accept loop hands every
//! stream to the pool with `put` and answers refused ones itself. SIGINT or
//! SIGTERM stops it gracefully: it drains, prints the stop report and exits
//! 0. The read deadline defaults to the crate's, 3 s.
//!
//! ```text
//! cargo run --release --example echo -- --max-workers 8 --stats-every-ms 1000
//! ```

#[path = "common/serve.rs"]
mod serve;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use pool_manager::{Conn, Manager};
use serve::{PoolArgs, millis};

/// Echo server on a pool-manager worker pool.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: String,
    /// Written to a client the pool cannot take, before closing it.
    #[arg(long, default_value = "ERROR_SERVER_BUSY")]
    busy_reply: String,
    /// A request whose first byte is `!` sleeps this many milliseconds in
    /// the handler before its echo: a blocking handler, for benchmarks.
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
    /// Echo whole lines only (keeping a partial line for the next read), so
    /// that --min-read-rate applies to a line sent slowly.
    #[arg(long)]
    lines: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    serve::raise_nofile_limit();
    let busy_reply = format!("{}\n", args.busy_reply);
    let config = args.pool.config(3000, busy_reply.as_bytes());
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
    serve::serve("echo", manager, &args.addr, &args.pool)
}
