//! How the load tools (`load`, `pubsub_load`) run: the open-files limit
//! raised, tokio's multi-thread runtime built, the measurement run on it,
//! and its report printed as one JSON line; their latency histograms and
//! what a report says of them.

use std::process::ExitCode;
use std::time::Duration;

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

/// The measured window in a report (flattened into it: these keys stand
/// in the report's JSON line itself).
#[derive(Serialize)]
pub struct Measured {
    pub duration_s: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Measured {
    /// The requests whose latencies are in `latencies`, over `elapsed`.
    pub fn of(latencies: &Histogram<u64>, elapsed: Duration) -> Self {
        let requests = latencies.len();
        Measured {
            duration_s: elapsed.as_secs_f64(),
            requests,
            throughput_rps: requests as f64 / elapsed.as_secs_f64(),
            p50_us: latencies.value_at_quantile(0.50),
            p99_us: latencies.value_at_quantile(0.99),
            p999_us: latencies.value_at_quantile(0.999),
            max_us: latencies.max(),
        }
    }
}
