//! What the operating system sees: named threads, as many as the stats say,
//! none left after stop, and an idle pool that does not spin.
//!
//! One test in its own binary, so that no other test's threads are counted.

// Example processes, real tools, signals or `/proc`: Unix only.
#![cfg(unix)]

mod util;

use std::fs;
use std::time::Duration;

use pool_manager::Config;
use util::*;

/// This process's threads whose name starts with `prefix`: (name, CPU ticks).
fn threads(prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let Ok(name) = fs::read_to_string(path.join("comm")) else {
            continue; // the thread just exited
        };
        let name = name.trim().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the ")" that closes the name: utime and stime are
        // the 12th and 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        out.push((name, ticks));
    }
    out
}

#[test]
fn os_threads_match_the_stats_and_an_idle_pool_does_not_spin() {
    let gate = Gate::default();
    let manager = gated_manager(
        Config::default()
            .with_min_workers(2)
            .with_max_workers(6)
            .with_worker_idle_timeout(Duration::from_millis(200)),
        &gate,
    );
    // A new thread names itself once it runs: wait for the names to show.
    wait_for("2 named workers and the manager thread", || {
        threads("pool-worker-").len() == 2 && threads("pool-manager").len() == 1
    });

    let lo = Loopback::new();
    let clients = lo.hold(&manager, &gate, 6);
    // Every handler runs on its own, named, worker thread.
    assert_eq!(threads("pool-worker-").len(), 6);
    gate.open();
    drop(clients);
    wait_stats(&manager, "reaping to min", |s| s.workers == 2);
    wait_for("retired threads to be joined", || {
        threads("pool-worker-").len() == 2
    });

    // Idle: no thread of the pool should use CPU. A spinning thread would
    // use ~100 ticks a second; sleeping ones use none.
    let before: u64 = threads("pool-").iter().map(|t| t.1).sum();
    std::thread::sleep(Duration::from_secs(1));
    let after: u64 = threads("pool-").iter().map(|t| t.1).sum();
    assert!(
        after - before <= 2,
        "idle pool used {} ticks in 1 s",
        after - before
    );

    manager.stop().unwrap();
    // `stop` joined them; the kernel wakes a joiner before it removes the
    // exited task from /proc, so allow it a moment.
    wait_for("every pool thread gone after stop", || {
        threads("pool-").is_empty()
    });
}
