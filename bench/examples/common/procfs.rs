//! What a server process uses, read from Linux's `/proc/PID`: peak RSS,
//! threads, CPU time and context switches, for the load tools' reports.
//! Elsewhere every reading is absent and the report says so (zeros, NaN).

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// The server's usage over a measured window.
#[derive(Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub peak_rss_kib: u64,
    /// Most threads of the process at once, sampled every 50 ms.
    pub max_threads: u64,
    /// Most threads named `pool-worker-*` (this crate's workers) at once;
    /// 0 for other servers, or when not counted.
    pub max_pool_workers: u64,
    pub cpu_s: f64,
    /// Per unit of work (a request, a delivered message).
    pub cpu_us_per_request: f64,
    /// Voluntary context switches of all the server's threads in the window.
    pub voluntary_cs: u64,
    /// Involuntary (preempted) context switches in the window.
    pub involuntary_cs: u64,
    /// Both kinds, per unit of work.
    pub cs_per_req: f64,
    pub vol_cs_per_req: f64,
    pub invol_cs_per_req: f64,
}

/// CPU time and context switches at one instant.
pub struct Mark {
    cpu_s: Option<f64>,
    cs: Option<(u64, u64)>,
}

/// Reads the [`Mark`] of `pid` (off the runtime's threads: a server with
/// thousands of threads has as many files to read).
pub async fn mark(pid: u32) -> Mark {
    tokio::task::spawn_blocking(move || Mark {
        cpu_s: cpu_seconds(pid),
        cs: context_switches(pid),
    })
    .await
    .unwrap_or(Mark {
        cpu_s: None,
        cs: None,
    })
}

/// The usage between two marks, `work` units of work done in between.
pub fn usage(pid: u32, before: &Mark, after: &Mark, sampled: Sampled, work: f64) -> ServerUsage {
    let cpu_s = match (before.cpu_s, after.cpu_s) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let (voluntary_cs, involuntary_cs) = match (before.cs, after.cs) {
        (Some(a), Some(b)) => (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)),
        _ => (0, 0),
    };
    let work = work.max(1.0);
    ServerUsage {
        pid,
        peak_rss_kib: status_field(pid, "VmHWM:").unwrap_or(0),
        max_threads: sampled.threads,
        max_pool_workers: sampled.pool_workers,
        cpu_s,
        cpu_us_per_request: cpu_s * 1e6 / work,
        voluntary_cs,
        involuntary_cs,
        cs_per_req: (voluntary_cs + involuntary_cs) as f64 / work,
        vol_cs_per_req: voluntary_cs as f64 / work,
        invol_cs_per_req: involuntary_cs as f64 / work,
    }
}

/// The most threads seen by a [`Sampler`].
#[derive(Clone, Copy, Default)]
pub struct Sampled {
    pub threads: u64,
    pub pool_workers: u64,
}

/// Samples the server's thread count every 50 ms until finished.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Sampled>,
}

impl Sampler {
    /// Starts sampling `pid`; with `by_name`, also counts the threads
    /// named `pool-worker-*` (a read per thread: not for servers with
    /// thousands of threads).
    pub fn start(pid: u32, by_name: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut max = Sampled::default();
            while !stopped.load(Relaxed) {
                max.threads = max.threads.max(status_field(pid, "Threads:").unwrap_or(0));
                if by_name {
                    max.pool_workers = max.pool_workers.max(pool_workers(pid));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        });
        Sampler { stop, task }
    }

    /// The most seen since [`start`](Self::start).
    pub async fn finish(self) -> Sampled {
        self.stop.store(true, Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Threads of `pid` named `pool-worker-*`.
fn pool_workers(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with("pool-worker"))
        })
        .count() as u64
}

/// A numeric field of `/proc/PID/status`.
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_of(&status, field)
}

/// A numeric field of a `status` file's text.
fn field_of(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Voluntary and involuntary context switches, summed over the threads of
/// a process (`/proc/PID/task/*/status`). A thread that exits takes its
/// switches with it.
fn context_switches(pid: u32) -> Option<(u64, u64)> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut voluntary, mut involuntary) = (0, 0);
    for task in tasks.flatten() {
        // A thread that exited since the listing has no status left.
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        voluntary += field_of(&status, "voluntary_ctxt_switches:").unwrap_or(0);
        involuntary += field_of(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    Some((voluntary, involuntary))
}

/// User + system CPU time of a process, from `/proc/PID/stat` (in clock
/// ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}
