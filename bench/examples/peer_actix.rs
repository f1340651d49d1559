//! A peer for comparisons: an echo server on `actix-server`, a worker (a
//! single-threaded runtime on its own thread) per CPU, a task per
//! connection.
//!
//! With `--sleep-ms N`, a request whose first byte is `!` sleeps N ms with
//! `std::thread::sleep` inside the task before its echo, like
//! `echo --sleep-ms`: it blocks the worker and every connection on it.
//!
//! ```text
//! cargo run --release -p pool-manager-bench --example peer_actix -- --addr 127.0.0.1:7003
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_server::Server;
use actix_service::fn_service;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// actix-server echo server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7003")]
    addr: SocketAddr,
    /// Bytes read at most per read.
    #[arg(long, default_value_t = 4096)]
    buffer_size: usize,
    /// Workers; 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// A request whose first byte is `!` sleeps this many milliseconds
    /// (blocking the worker) before its echo; 0 = never.
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    match actix_rt::System::new().block_on(serve(args, workers)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer_actix: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args, workers: usize) -> std::io::Result<()> {
    let size = args.buffer_size;
    let sleep = (args.sleep_ms > 0).then(|| Duration::from_millis(args.sleep_ms));
    let server = Server::build()
        // Before `bind`, which listens.
        .backlog(1024)
        .workers(workers)
        // SIGTERM stops it; connections left after a second are dropped.
        .shutdown_timeout(1)
        .bind("echo", args.addr, move || {
            fn_service(move |stream: TcpStream| echo(stream, size, sleep))
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.addr)))?
        .run();
    println!("peer_actix: listening on {}", args.addr);
    server.await
}

async fn echo(
    mut stream: TcpStream,
    size: usize,
    sleep: Option<Duration>,
) -> Result<(), std::convert::Infallible> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0; size];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                if let (Some(sleep), b'!') = (sleep, buf[0]) {
                    // Blocks this worker and every connection on it.
                    std::thread::sleep(sleep);
                }
                if stream.write_all(&buf[..n]).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
