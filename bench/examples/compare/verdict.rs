//! The verdict: each performance target of the project's issues, checked
//! against this run's medians, with a ✓ or a ✗, so that a run shows at a
//! glance where the crate stands. A target whose scenario or peer did not
//! run in this run is left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::scenarios::Scenario;
use crate::table::{median, num};

/// What ours is measured against.
enum Against {
    /// The same scenario, served by this peer.
    Peer(&'static str),
    /// Ours, in this other scenario (the same load without something).
    Own(&'static str),
    /// A fixed number.
    Value,
}

/// One target: in `scenario`, `metric` of ours over that of `against` (or
/// the value itself, for `Against::Value`) must be at least `bound`
/// (`at_least`) or at most it.
struct Target {
    scenario: &'static str,
    metric: &'static str,
    get: fn(&Value) -> f64,
    against: Against,
    at_least: bool,
    bound: f64,
}

fn rps(v: &Value) -> f64 {
    num(v, "throughput_rps")
}
fn p99(v: &Value) -> f64 {
    num(v, "p99_us")
}
fn cpu(v: &Value) -> f64 {
    num(&v["server"], "cpu_us_per_request")
}
fn cs(v: &Value) -> f64 {
    num(&v["server"], "cs_per_req")
}

/// The echo scenarios where ours must be ahead of tokio and actix-server:
/// throughput, CPU per request and p99 (issue "Ahead, not level").
const AHEAD: [&str; 3] = ["small", "many", "idle"];

fn targets() -> Vec<Target> {
    let target = |scenario, metric, get, against, at_least, bound| Target {
        scenario,
        metric,
        get,
        against,
        at_least,
        bound,
    };
    let mut all = Vec::new();
    for scenario in AHEAD {
        all.push(target(
            scenario,
            "throughput",
            rps as fn(&Value) -> f64,
            Against::Peer("tokio"),
            true,
            1.0,
        ));
        all.push(target(
            scenario,
            "throughput",
            rps,
            Against::Peer("actix"),
            true,
            1.0,
        ));
        all.push(target(
            scenario,
            "CPU µs/req",
            cpu,
            Against::Peer("tokio"),
            false,
            1.0,
        ));
        all.push(target(
            scenario,
            "p99",
            p99,
            Against::Peer("tokio"),
            false,
            1.0,
        ));
        all.push(target(
            scenario,
            "cs/req",
            cs,
            Against::Peer("tokio"),
            false,
            f64::INFINITY,
        ));
    }
    all.extend([
        target("many", "cs/req", cs, Against::Value, false, 0.10),
        target(
            "blocking",
            "throughput",
            rps,
            Against::Peer("tokio-blocking"),
            true,
            1.1,
        ),
        target(
            "blocking",
            "p99",
            p99,
            Against::Own("blocking0"),
            false,
            1.0,
        ),
        // Issue "Connections you can talk to".
        target(
            "fanout",
            "delivered/s",
            rps,
            Against::Peer("redis-server"),
            true,
            1.0,
        ),
        target(
            "fanout",
            "delivered/s",
            rps,
            Against::Peer("tokio"),
            true,
            1.0,
        ),
        target(
            "fanout",
            "p99",
            p99,
            Against::Peer("redis-server"),
            false,
            1.0,
        ),
        target(
            "fanout",
            "lost",
            |v| num(&v["fanout"], "lost"),
            Against::Value,
            false,
            0.0,
        ),
        target(
            "slow-readers",
            "throughput",
            rps,
            Against::Own("slow-readers0"),
            true,
            0.9,
        ),
    ]);
    all
}

/// The verdict table, for the rounds in `results` ((scenario, server) →
/// reports); the figures are ours (the `ours` server) over the other side.
pub fn verdict(
    scenarios: &[&Scenario],
    servers: &[String],
    results: &BTreeMap<(usize, usize), Vec<Value>>,
) -> String {
    let scenario_at = |name: &str| scenarios.iter().position(|s| s.name == name);
    let server_at = |name: &str| servers.iter().position(|s| s == name);
    let Some(ours) = server_at("ours") else {
        return String::new();
    };
    let mut rows = String::new();
    let (mut met, mut missed) = (0, 0);
    for t in targets() {
        let Some(mine) = scenario_at(t.scenario).and_then(|si| results.get(&(si, ours))) else {
            continue;
        };
        let theirs = match t.against {
            Against::Peer(peer) => {
                server_at(peer).and_then(|vi| results.get(&(scenario_at(t.scenario)?, vi)))
            }
            Against::Own(other) => scenario_at(other).and_then(|si| results.get(&(si, ours))),
            Against::Value => Some(mine),
        };
        let Some(theirs) = theirs else {
            continue;
        };
        let (figure, side) = match t.against {
            Against::Value => (median(mine, t.get), "—".to_string()),
            Against::Peer(peer) => (
                median(mine, t.get) / median(theirs, t.get),
                peer.to_string(),
            ),
            Against::Own(other) => (
                median(mine, t.get) / median(theirs, t.get),
                format!("ours in {other}"),
            ),
        };
        let unit = if matches!(t.against, Against::Value) {
            ""
        } else {
            "×"
        };
        let (mark, target) = if t.bound.is_infinite() {
            // Shown, not judged.
            (" ", "—".to_string())
        } else {
            let ok = if t.at_least {
                figure >= t.bound
            } else {
                figure <= t.bound
            };
            if ok {
                met += 1;
            } else {
                missed += 1;
            }
            let sign = if t.at_least { "≥" } else { "≤" };
            (
                if ok { "✓" } else { "✗" },
                format!("{sign} {}{unit}", t.bound),
            )
        };
        let _ = writeln!(
            rows,
            "| {} | {} | {side} | {figure:.2}{unit} | {target} | {mark} |",
            t.scenario, t.metric
        );
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Verdict: the issues' targets, ours (medians): {met} met, {missed} missed\n"
    );
    let _ = writeln!(
        out,
        "| scenario | metric | against | ours / theirs | target | |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---|---|");
    out.push_str(&rows);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::SCENARIOS;
    use serde_json::json;

    fn report(rps: f64, p99: f64, cpu: f64, cs: f64) -> Value {
        json!({"throughput_rps": rps, "p99_us": p99,
               "server": {"cpu_us_per_request": cpu, "cs_per_req": cs}})
    }

    #[test]
    fn a_target_met_and_one_missed_are_marked() {
        let small = SCENARIOS.iter().find(|s| s.name == "small").unwrap();
        let servers = vec!["tokio".to_string(), "ours".to_string()];
        let mut results = BTreeMap::new();
        results.insert((0, 0), vec![report(100.0, 50.0, 10.0, 0.1)]);
        // Faster, but more CPU per request and a longer p99.
        results.insert((0, 1), vec![report(110.0, 60.0, 11.0, 0.2)]);
        let out = verdict(&[small], &servers, &results);
        assert!(
            out.contains("| small | throughput | tokio | 1.10× | ≥ 1× | ✓ |"),
            "{out}"
        );
        assert!(
            out.contains("| small | CPU µs/req | tokio | 1.10× | ≤ 1× | ✗ |"),
            "{out}"
        );
        assert!(
            out.contains("| small | p99 | tokio | 1.20× | ≤ 1× | ✗ |"),
            "{out}"
        );
        // actix did not run: its target is left out.
        assert!(!out.contains("actix"), "{out}");
        assert!(out.contains("1 met, 2 missed"), "{out}");
    }
}
