//! How the tokio peers (`peer_tokio`, `peer_tokio_pubsub`) start: the
//! open-files limit raised, tokio's multi-thread runtime built, the server
//! run on it until it fails.

use std::process::ExitCode;

/// Runs `serve` on a multi-thread runtime of `threads` workers (0 = one
/// per core, tokio's default); a failure to start or to serve is printed
/// after `name` and ends with a failure.
pub fn run(
    name: &str,
    threads: usize,
    serve: impl Future<Output = std::io::Result<()>>,
) -> ExitCode {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
