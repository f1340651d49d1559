//! The pub/sub load tool (`bench/examples/pubsub_load`), as `benches/compare.sh`
//! runs it: every message counted, in a closed loop and on a schedule.

// The library's test helpers, shared.
#[path = "../../tests/util/mod.rs"]
mod util;

use std::process::{Command, Stdio};

use util::example_bin;
use util::process::Example;

/// Runs `pubsub_load fanout` (the load tool of `benches/compare.sh`)
/// against the tokio pub/sub peer for half a second and parses its line.
/// (The `resp` example's pub/sub is tested in `tests/pubsub_example.rs`.)
fn fanout(extra: &[&str]) -> serde_json::Value {
    let server = Example::start("peer_tokio_pubsub", &[]);
    let out = Command::new(example_bin("pubsub_load"))
        .args(["--addr", &server.addr.to_string()])
        .args(["--duration-ms", "500", "--warmup-ms", "100"])
        .args(["fanout", "--subscribers", "20"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "pubsub_load failed: {out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn number(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn the_fanout_load_counts_every_message_in_a_closed_loop_and_on_a_schedule() {
    for rate in ["0", "100"] {
        let v = fanout(&["--rate", rate]);
        let f = &v["fanout"];
        assert_eq!(number(f, "subscribed"), 20.0, "{v}");
        assert_eq!(number(f, "rate").to_string(), rate, "{v}");
        // Each publish is answered with its receivers: all 20.
        assert_eq!(number(f, "expected"), 20.0 * number(f, "published"), "{v}");
        assert_eq!(number(f, "received"), number(f, "expected"), "{v}");
        assert_eq!(number(f, "lost"), 0.0, "{v}");
        assert!(number(&v, "requests") > 0.0, "{v}");
        let per_s = number(f, "publishes_per_s");
        if rate == "100" {
            // On schedule: never faster than asked (a slow machine may
            // send late, never early), and not starved either.
            assert!((30.0..=110.0).contains(&per_s), "{per_s} publishes/s: {v}");
            // The window's deliveries are its publishes to 20 subscribers.
            assert!(number(&v, "requests") <= 20.0 * 110.0 * 0.5, "{v}");
        } else {
            // A closed loop on loopback runs past the schedule's rate.
            assert!(per_s > 110.0, "{per_s} publishes/s: {v}");
        }
    }
}
