//! The tables `compare` prints: medians of every metric, ratios ours /
//! peer, and what each pair of related scenarios shows together.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::OURS;
use crate::scenarios::Scenario;

pub fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The median of a metric over the rounds.
pub fn median(reports: &[Value], metric: impl Fn(&Value) -> f64) -> f64 {
    let mut values: Vec<f64> = reports.iter().map(metric).filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The metrics of the table: name, how to get it, how to print it.
type Metric = (&'static str, fn(&Value) -> f64, fn(f64) -> String);

const METRICS: [Metric; 9] = [
    ("req/s", |v| num(v, "throughput_rps"), |x| format!("{x:.0}")),
    ("p50 µs", |v| num(v, "p50_us"), |x| format!("{x:.0}")),
    ("p99 µs", |v| num(v, "p99_us"), |x| format!("{x:.0}")),
    ("p99.9 µs", |v| num(v, "p999_us"), |x| format!("{x:.0}")),
    (
        "errors",
        |v| num(&v["errors"], "total"),
        |x| format!("{x:.0}"),
    ),
    (
        "idle kept",
        |v| num(v, "idle_still_open"),
        |x| format!("{x:.0}"),
    ),
    (
        "peak RSS MiB",
        |v| num(&v["server"], "peak_rss_kib") / 1024.0,
        |x| format!("{x:.1}"),
    ),
    (
        "threads",
        |v| num(&v["server"], "max_threads"),
        |x| format!("{x:.0}"),
    ),
    (
        "CPU µs/req",
        |v| num(&v["server"], "cpu_us_per_request"),
        |x| format!("{x:.1}"),
    ),
];

/// Context switches per request of the server, all and of each kind.
const CS: fn(&Value) -> f64 = |v| num(&v["server"], "cs_per_req");
const VOL_CS: fn(&Value) -> f64 = |v| num(&v["server"], "vol_cs_per_req");
const INVOL_CS: fn(&Value) -> f64 = |v| num(&v["server"], "invol_cs_per_req");

/// Medians of context switches per request: `all (voluntary+involuntary)`.
fn cs_cell(reports: &[Value]) -> String {
    format!(
        "{:.2} ({:.2}+{:.2})",
        median(reports, CS),
        median(reports, VOL_CS),
        median(reports, INVOL_CS)
    )
}

pub fn table(
    scenarios: &[&Scenario],
    servers: &[String],
    results: &BTreeMap<(usize, usize), Vec<Value>>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## Medians\n");
    let header: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
    let _ = writeln!(
        out,
        "| scenario | server | {} | cs/req (vol+invol) |",
        header.join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}", "---:|".repeat(METRICS.len() + 1));
    for (si, scenario) in scenarios.iter().enumerate() {
        for (vi, server) in servers.iter().enumerate() {
            let Some(reports) = results.get(&(si, vi)) else {
                continue;
            };
            let mut cells: Vec<String> = METRICS
                .iter()
                .map(|(_, get, show)| show(median(reports, get)))
                .collect();
            cells.push(cs_cell(reports));
            let _ = writeln!(
                out,
                "| {} | {server} | {} |",
                scenario.name,
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(out, "\n## Ratios ours / peer (medians)\n");
    let _ = writeln!(
        out,
        "| scenario | ours | peer | throughput | p99 latency | CPU per request | cs/req ours / peer |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|");
    for (si, scenario) in scenarios.iter().enumerate() {
        for (oi, ours) in servers.iter().enumerate() {
            let Some(mine) = results
                .get(&(si, oi))
                .filter(|_| OURS.contains(&ours.as_str()))
            else {
                continue;
            };
            for (vi, peer) in servers.iter().enumerate() {
                let Some(theirs) = results.get(&(si, vi)).filter(|_| vi != oi) else {
                    continue;
                };
                let ratio = |get: fn(&Value) -> f64| median(mine, get) / median(theirs, get);
                let _ = writeln!(
                    out,
                    "| {} | {ours} | {peer} | {:.2}× | {:.2}× | {:.2}× | {:.2} / {:.2} |",
                    scenario.name,
                    ratio(METRICS[0].1),
                    ratio(METRICS[2].1),
                    ratio(METRICS[8].1),
                    median(mine, CS),
                    median(theirs, CS),
                );
            }
        }
    }
    // What 10,000 idle connections cost each server's active clients: the
    // same 50 active connections with and without them.
    let small = scenarios.iter().position(|s| s.name == "small");
    let idle = scenarios.iter().position(|s| s.name == "idle");
    if let (Some(small), Some(idle)) = (small, idle) {
        let _ = writeln!(
            out,
            "\n## Throughput of 50 active connections with 10,000 idle ones / without (idle ÷ small)\n"
        );
        let _ = writeln!(out, "| server | ratio |");
        let _ = writeln!(out, "|---|---:|");
        for (vi, server) in servers.iter().enumerate() {
            if let (Some(with), Some(without)) =
                (results.get(&(idle, vi)), results.get(&(small, vi)))
            {
                let rps = METRICS[0].1;
                let ratio = median(with, rps) / median(without, rps);
                let _ = writeln!(out, "| {server} | {ratio:.2}× |");
            }
        }
    }
    // What 1 % of requests sleeping in the handler costs the others: the
    // plain requests' p99 with them and without (target: at most 2×).
    let blocking = scenarios.iter().position(|s| s.name == "blocking");
    let blocking0 = scenarios.iter().position(|s| s.name == "blocking0");
    if let (Some(blocking), Some(blocking0)) = (blocking, blocking0) {
        let _ = writeln!(
            out,
            "\n## p99 of plain requests with 1 % sleepers / without (blocking ÷ blocking0)\n"
        );
        let _ = writeln!(
            out,
            "| server | p99 µs blocking0 | p99 µs blocking | p99 ratio | sleepers' p99 µs | req/s ratio |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for (vi, server) in servers.iter().enumerate() {
            if let (Some(with), Some(without)) =
                (results.get(&(blocking, vi)), results.get(&(blocking0, vi)))
            {
                let (rps, p99) = (METRICS[0].1, METRICS[2].1);
                let _ = writeln!(
                    out,
                    "| {server} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.2}× |",
                    median(without, p99),
                    median(with, p99),
                    median(with, p99) / median(without, p99),
                    median(with, |v| num(v, "sleepy_p99_us")),
                    median(with, rps) / median(without, rps),
                );
            }
        }
    }
    // Memory per idle connection: peak RSS with the idle connections, less
    // without them, over their number.
    for (with, without, what) in [
        ("tls-idle", "tls", "idle TLS connection"),
        ("idle", "small", "idle plaintext connection"),
    ] {
        let with = scenarios.iter().position(|s| s.name == with);
        let without = scenarios.iter().position(|s| s.name == without);
        let (Some(with), Some(without)) = (with, without) else {
            continue;
        };
        let _ = writeln!(out, "\n## Memory per {what} (peak RSS difference)\n");
        let _ = writeln!(out, "| server | KiB per connection |");
        let _ = writeln!(out, "|---|---:|");
        let idle = scenarios[with].idle as f64;
        let rss = |v: &Value| num(&v["server"], "peak_rss_kib");
        for (vi, server) in servers.iter().enumerate() {
            if let (Some(a), Some(b)) = (results.get(&(with, vi)), results.get(&(without, vi))) {
                let per = (median(a, rss) - median(b, rss)) / idle;
                let _ = writeln!(out, "| {server} | {per:.1} |");
            }
        }
    }
    pubsub_tables(&mut out, scenarios, servers, results);
    let _ = writeln!(out, "\nScenarios:");
    for scenario in scenarios {
        let _ = writeln!(out, "- {}: {}", scenario.name, scenario.what);
    }
    out
}

/// The pub/sub scenarios' own figures: fan-out deliveries and losses; the
/// full-speed clients' throughput with slow readers and without, and the
/// downloads that completed.
fn pubsub_tables(
    out: &mut String,
    scenarios: &[&Scenario],
    servers: &[String],
    results: &BTreeMap<(usize, usize), Vec<Value>>,
) {
    let at = |name: &str| scenarios.iter().position(|s| s.name == name);
    let fanouts = [
        ("fanout", "Fan-out, closed loop"),
        ("fanout-200", "Fan-out at 200 publishes/s"),
    ];
    for (fanout, title) in fanouts.iter().filter_map(|(n, t)| Some((at(n)?, t))) {
        let _ = writeln!(out, "\n## {title} (medians)\n");
        let _ = writeln!(
            out,
            "| server | delivered/s | publishes/s | p50 ms | p99 ms | lost (max) | CPU µs/message | threads |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (vi, server) in servers.iter().enumerate() {
            let Some(r) = results.get(&(fanout, vi)) else {
                continue;
            };
            let lost = r
                .iter()
                .map(|v| num(&v["fanout"], "lost"))
                .fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "| {server} | {:.0} | {:.0} | {:.1} | {:.1} | {lost:.0} | {:.2} | {:.0} |",
                median(r, |v| num(v, "throughput_rps")),
                median(r, |v| num(&v["fanout"], "publishes_per_s")),
                median(r, |v| num(v, "p50_us")) / 1000.0,
                median(r, |v| num(v, "p99_us")) / 1000.0,
                median(r, |v| num(&v["server"], "cpu_us_per_request")),
                median(r, |v| num(&v["server"], "max_threads")),
            );
        }
    }
    if let (Some(slow), Some(alone)) = (at("slow-readers"), at("slow-readers0")) {
        let _ = writeln!(
            out,
            "\n## Full-speed clients with 64 slow readers / without (medians)\n"
        );
        let _ = writeln!(
            out,
            "| server | req/s without | req/s with | ratio | p99 µs with | downloads completed (min of rounds) | pool workers (max) | threads (max) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (vi, server) in servers.iter().enumerate() {
            let (Some(with), Some(without)) = (results.get(&(slow, vi)), results.get(&(alone, vi)))
            else {
                continue;
            };
            let rps = |v: &Value| num(v, "throughput_rps");
            let completed = with
                .iter()
                .map(|v| num(&v["slow"], "completed"))
                .fold(f64::INFINITY, f64::min);
            let most = |key: &str| {
                with.iter()
                    .map(|v| num(&v["server"], key))
                    .fold(0.0, f64::max)
            };
            let _ = writeln!(
                out,
                "| {server} | {:.0} | {:.0} | {:.2}× | {:.0} | {completed:.0} of {} | {:.0} | {:.0} |",
                median(without, rps),
                median(with, rps),
                median(with, rps) / median(without, rps),
                median(with, |v| num(v, "p99_us")),
                scenarios[slow].idle,
                most("max_pool_workers"),
                most("max_threads"),
            );
        }
    }
}
