//! A peer for comparisons: an echo server with one OS thread per
//! connection, the way a plain `std` server is written.
//!
//! ```text
//! cargo run --release -p pool-manager-bench --example peer_threads -- --addr 127.0.0.1:7001
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use socket2::{Domain, Socket, Type};

/// Thread-per-connection echo server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    addr: SocketAddr,
    /// Bytes read at most per read.
    #[arg(long, default_value_t = 4096)]
    buffer_size: usize,
    /// A request whose first byte is `!` sleeps this many milliseconds
    /// before its echo (the `blocking` benchmark scenario).
    #[arg(long, default_value_t = 0)]
    sleep_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The same limits as the other servers compared: many descriptors, a
    // backlog of 1024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = match listen(args.addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("peer_threads: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    println!("peer_threads: listening on {}", args.addr);
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let (size, sleep) = (args.buffer_size, Duration::from_millis(args.sleep_ms));
                let spawned = std::thread::Builder::new().spawn(move || serve(stream, size, sleep));
                if let Err(e) = spawned {
                    eprintln!("peer_threads: cannot spawn: {e}");
                }
            }
            Err(e) => {
                eprintln!("peer_threads: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    ExitCode::SUCCESS
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn serve(mut stream: TcpStream, size: usize, sleep: Duration) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0; size];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !sleep.is_zero() && buf[0] == b'!' {
                    std::thread::sleep(sleep);
                }
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
