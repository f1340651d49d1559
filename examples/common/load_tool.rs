//! How the load tools (`load`, `pubsub_load`) run: the open-files limit
//! raised, tokio's multi-thread runtime built, the measurement run on it,
//! and its report printed as one JSON line; and their latency histograms.

use std::process::ExitCode;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Runs `measure` on a multi-thread runtime of `threads` workers (at least
/// one) and prints the report it gives as one JSON line; a failure is
/// printed after `name` and ends with a failure.
pub fn main<R: Serialize>(
    name: &str,
    threads: usize,
    measure: impl Future<Output = Result<R, String>>,
) -> ExitCode {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("{name}: cannot raise the open-files limit: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(measure);
    match report.and_then(|r| serde_json::to_string(&r).map_err(|e| e.to_string())) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Latencies in microseconds, up to a minute, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}
