//! The sysmon's looks, as the operating system counts them: the manager
//! thread's context switches. One test in its own binary, so that the one
//! manager thread is this test's.

// `/proc/self/task`: Linux only.
#![cfg(any(target_os = "linux", target_os = "android"))]

mod util;

use std::fs;
use std::time::{Duration, Instant};

use pool_manager::Config;
use util::*;

/// The context switches (voluntary and not) of this process's one
/// `pool-manager` thread.
fn manager_thread_switches() -> u64 {
    let mut found = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let Ok(name) = fs::read_to_string(path.join("comm")) else {
            continue; // the thread just exited
        };
        if name.trim() != "pool-manager" {
            continue;
        }
        let status = fs::read_to_string(path.join("status")).unwrap();
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum();
        found.push(switches);
    }
    assert_eq!(found.len(), 1, "one manager thread");
    found[0]
}

/// Round trips on one connection for `time`; how many.
fn load(client: &mut std::net::TcpStream, time: Duration) -> usize {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < time {
        roundtrip(client, b"ping", b"ping");
        n += 1;
    }
    n
}

/// While turns go by and none is long, the sysmon backs off: from one look
/// every `grow_after` (1 ms) to one every 8 ms after 12 looks (4 at each
/// of 1, 2 and 4 ms). Each look is a wake-up of the manager thread. One
/// poller, so that none is ever missing (that would bring the looks
/// back). Round trips slower than a look apart stop the looks and restart
/// them at the next turn, at most two wake-ups each, at the backed-off
/// interval (idle does not reset it). A poller preempted for 8 ms inside
/// a turn reads as a long turn and costs some ten more.
#[test]
fn without_long_turns_the_sysmon_looks_less_often() {
    let config = Config::default()
        .with_max_workers(4)
        .with_pollers(1)
        .with_grow_after(Duration::from_millis(1));
    let manager = echo_manager(config);
    let lo = Loopback::new();
    let mut client = lo.put(&manager);
    // Past the back-off's first 28 ms.
    load(&mut client, Duration::from_millis(150));
    let before = manager_thread_switches();
    let start = Instant::now();
    let requests = load(&mut client, Duration::from_millis(500));
    let took = start.elapsed();
    let switches = manager_thread_switches() - before;
    // At one look a millisecond, some 500; backed off, some 60 (and a few
    // for the reaper and the stats). Some: the sysmon does look.
    let ms = u64::try_from(took.as_millis()).unwrap();
    assert!(
        (10..ms / 3).contains(&switches),
        "{switches} switches of the manager thread in {took:?} ({requests} requests)"
    );
    assert_eq!(manager.stats().poller_handoffs, 0);
}
