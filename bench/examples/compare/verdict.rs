//! The verdict: each performance target of the project's issues, checked
//! against this run's medians (lost messages: the worst round), with a ✓ or a ✗, so that a run shows at a
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
/// (`at_least`) or at most it. Each side is the median of its rounds, or
/// the worst round for a count that must hold in every round (`worst`).
struct Target {
    scenario: &'static str,
    metric: &'static str,
    get: fn(&Value) -> f64,
    against: Against,
    at_least: bool,
    bound: f64,
    worst: bool,
}

impl Target {
    /// `reports`' figure for this target: their median, or their worst
    /// (largest, for an "at most" bound; smallest otherwise), unknown
    /// (NaN) if a round lacks the figure.
    fn of(&self, reports: &[Value]) -> f64 {
        if !self.worst {
            return median(reports, self.get);
        }
        let values: Vec<f64> = reports.iter().map(self.get).collect();
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return f64::NAN;
        }
        let worst = if self.at_least { f64::min } else { f64::max };
        values.into_iter().reduce(worst).unwrap_or(f64::NAN)
    }
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
        worst: false,
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
        // Zero in every round, not in the median one.
        Target {
            worst: true,
            ..target(
                "fanout",
                "lost",
                |v| num(&v["fanout"], "lost"),
                Against::Value,
                false,
                0.0,
            )
        },
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
    let (mut met, mut missed, mut unjudged) = (0, 0, 0);
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
            Against::Value => (t.of(mine), "—".to_string()),
            Against::Peer(peer) => (t.of(mine) / t.of(theirs), peer.to_string()),
            Against::Own(other) => (t.of(mine) / t.of(theirs), format!("ours in {other}")),
        };
        let unit = if matches!(t.against, Against::Value) {
            ""
        } else {
            "×"
        };
        let sign = if t.at_least { "≥" } else { "≤" };
        let (mark, target) = if t.bound.is_infinite() {
            // Shown, not judged.
            (" ", "—".to_string())
        } else if !figure.is_finite() {
            // A side without the figure (a tool that did not report it,
            // a zero to divide by): not judged either way, and said so.
            unjudged += 1;
            ("?", format!("{sign} {}{unit}", t.bound))
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
    let unjudged = if unjudged > 0 {
        format!(", {unjudged} not judged (?: a figure missing)")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "\n## Verdict: the issues' targets, ours (medians; lost: the worst round): {met} met, {missed} missed{unjudged}\n"
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

    fn scenario(name: &str) -> &'static Scenario {
        SCENARIOS.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn targets_are_judged_on_medians_and_marked() {
        let scenarios = [scenario("small"), scenario("many")];
        let servers: Vec<String> = ["tokio", "actix", "ours"].map(String::from).into();
        let mut results = BTreeMap::new();
        // small: three rounds each; ours has an outlier round (1000 rps)
        // that the median ignores.
        results.insert(
            (0, 0),
            vec![
                report(100.0, 50.0, 10.0, 0.1),
                report(90.0, 55.0, 10.0, 0.1),
                report(95.0, 52.0, 10.0, 0.1),
            ],
        );
        results.insert(
            (0, 2),
            vec![
                report(1000.0, 40.0, 11.0, 0.2),
                report(99.0, 40.0, 11.0, 0.2),
                report(104.5, 40.0, 11.0, 0.2),
            ],
        );
        // many: ours with many switches per request, tokio alone.
        results.insert((1, 0), vec![report(100.0, 50.0, 10.0, 0.01)]);
        results.insert((1, 2), vec![report(100.0, 50.0, 10.0, 0.25)]);
        let out = verdict(&scenarios, &servers, &results);
        assert!(
            out.contains("| small | throughput | tokio | 1.10× | ≥ 1× | ✓ |"),
            "{out}"
        );
        assert!(
            out.contains("| small | CPU µs/req | tokio | 1.10× | ≤ 1× | ✗ |"),
            "{out}"
        );
        // An "at most" target met: 40 / 52.
        assert!(
            out.contains("| small | p99 | tokio | 0.77× | ≤ 1× | ✓ |"),
            "{out}"
        );
        // Shown, not judged.
        assert!(
            out.contains("| small | cs/req | tokio | 2.00× | — |   |"),
            "{out}"
        );
        // A fixed bound.
        assert!(
            out.contains("| many | cs/req | — | 0.25 | ≤ 0.1 | ✗ |"),
            "{out}"
        );
        // actix is listed but did not run: its targets are left out.
        assert!(!out.contains("actix"), "{out}");
        assert!(out.contains("5 met, 2 missed\n"), "{out}");
    }

    #[test]
    fn own_scenarios_worst_rounds_and_missing_figures() {
        let scenarios = [
            scenario("blocking"),
            scenario("blocking0"),
            scenario("fanout"),
        ];
        let servers: Vec<String> = ["ours", "redis-server"].map(String::from).into();
        let mut results = BTreeMap::new();
        // blocking against ours without sleepers: p99 2×.
        results.insert((0, 0), vec![report(50.0, 200.0, 10.0, 0.1)]);
        results.insert((1, 0), vec![report(100.0, 100.0, 10.0, 0.1)]);
        // fanout: one round of three lost messages: the worst round counts.
        let fanout = |lost: f64, p99: f64| json!({"throughput_rps": 1000.0, "p99_us": p99, "fanout": {"lost": lost}});
        results.insert(
            (2, 0),
            vec![fanout(0.0, 10.0), fanout(3.0, 10.0), fanout(0.0, 10.0)],
        );
        // redis-server's p99 missing: not judged.
        results.insert((2, 1), vec![json!({"throughput_rps": 900.0})]);
        let out = verdict(&scenarios, &servers, &results);
        assert!(
            out.contains("| blocking | p99 | ours in blocking0 | 2.00× | ≤ 1× | ✗ |"),
            "{out}"
        );
        assert!(
            out.contains("| fanout | lost | — | 3.00 | ≤ 0 | ✗ |"),
            "{out}"
        );
        assert!(
            out.contains("| fanout | delivered/s | redis-server | 1.11× | ≥ 1× | ✓ |"),
            "{out}"
        );
        assert!(
            out.contains("| fanout | p99 | redis-server | NaN× | ≤ 1× | ? |"),
            "{out}"
        );
        assert!(out.contains("1 met, 2 missed, 1 not judged"), "{out}");
    }

    #[test]
    fn the_worst_round_is_unknown_if_a_round_lacks_the_figure() {
        let lost = targets().into_iter().find(|t| t.metric == "lost").unwrap();
        let round = |lost: Option<f64>| match lost {
            Some(lost) => json!({"fanout": {"lost": lost}}),
            None => json!({}),
        };
        assert_eq!(lost.of(&[round(Some(0.0)), round(Some(2.0))]), 2.0);
        assert!(lost.of(&[round(Some(0.0)), round(None)]).is_nan());
        assert!(lost.of(&[]).is_nan());
        // An "at least" target's worst round is its smallest.
        let at_least = Target {
            at_least: true,
            ..lost
        };
        assert_eq!(at_least.of(&[round(Some(3.0)), round(Some(1.0))]), 1.0);
    }

    #[test]
    fn nothing_to_judge_prints_nothing() {
        let servers: Vec<String> = ["tokio"].map(String::from).into();
        let mut results = BTreeMap::new();
        results.insert((0, 0), vec![report(100.0, 50.0, 10.0, 0.1)]);
        assert_eq!(verdict(&[scenario("small")], &servers, &results), "");
    }
}
