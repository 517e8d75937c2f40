//! Real programs, installed from Debian and PyPI by tests/programs/install.sh (the test
//! command runs it first), driven into CLOSE_WAIT by tests/programs/scenarios.py, each in
//! a private network namespace with `ss -tanpie` as ground truth: a pre-fork server
//! (gunicorn), a fork-per-connection server (socat), event loops whose workers stop
//! accepting (uvicorn, nginx out of descriptors), a connection pool against a short
//! keep-alive (requests against nginx), hanging and slow requests in one server
//! (gunicorn gthread), and small programs of our own for SO_REUSEPORT, SCM_RIGHTS, exec in
//! place and many groups.
//!
//! The driver runs every scenario once, five namespaces at a time, and writes a report
//! per scenario; each test here reads its scenario's report and asserts: one verdict per
//! program in each exporter run (a plain `snapshot`, one sample, a watch) with the cause
//! the construction makes true, the exact metric values, and that the alerts the rules
//! fire on the daemon's scrapes are those of the verdicts. Nothing skips: a missing
//! program or a scenario that could not be built fails its test with the driver's output.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use support::{Exposition, TempDir};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");
/// Scenarios run at the same time (each mostly waits for its sockets to age).
const JOBS: &str = "5";
const SCENARIOS: [&str; 10] = [
    "prefork",
    "fork_per_connection",
    "event_loop",
    "event_loop_fd_limit",
    "pool_keepalive",
    "hang_and_slow",
    "reuseport",
    "scm_rights",
    "exec_in_place",
    "many_groups",
];

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/scenarios.py")
}

/// The driver's run of every scenario: each scenario's report (or why there is none)
/// and what the driver printed.
struct Suite {
    reports: HashMap<&'static str, Result<String, String>>,
    output: String,
}

/// Runs the driver once for all tests. Its output folder (reports, each program's logs,
/// the exporter's config) is a temp folder removed once the reports are read, whatever
/// the run did; the scenario logs it prints are in the output. For the other logs, run
/// scenarios.py by hand with `--out`.
fn suite() -> &'static Suite {
    static SUITE: OnceLock<Suite> = OnceLock::new();
    SUITE.get_or_init(|| {
        let out = TempDir::new("programs");
        let run = Command::new("python3")
            .arg(driver())
            .args(["run", "--jobs", JOBS, "--exporter", EXPORTER, "--out"])
            .arg(out.path())
            .arg("all")
            .output();
        let output = match run {
            Ok(o) => format!(
                "{}{}\n(exit {:?})",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                o.status.code()
            ),
            Err(e) => format!("cannot run python3 {}: {e}", driver().display()),
        };
        eprintln!("{output}");
        let reports = SCENARIOS
            .iter()
            .map(|name| {
                let path = out.path().join(format!("{name}.json"));
                (
                    *name,
                    std::fs::read_to_string(path).map_err(|e| e.to_string()),
                )
            })
            .collect();
        Suite { reports, output }
    })
}

/// The report of scenario `name`; panics with the driver's output when there is none.
fn report(name: &str) -> Value {
    let suite = suite();
    let text = match suite.reports.get(name) {
        Some(Ok(text)) => text,
        Some(Err(e)) => panic!(
            "no report for {name} ({e}): the scenario could not be built or its \
             prerequisites are missing (tests/programs/install.sh). Driver output:\n{}",
            suite.output
        ),
        None => panic!("{name} is not in SCENARIOS"),
    };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}.json: {e}"))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The single diagnosis row of `run` for the expectation's group: one verdict per program,
/// however many of its processes hold the sockets.
fn row<'a>(report: &Value, run: &'a Value, expect: &Value) -> &'a Value {
    let names: Vec<String> = text(&expect["process"])
        .split('|')
        .map(str::to_string)
        .collect();
    let rows: Vec<&Value> = run["diagnosis"]
        .as_array()
        .expect("diagnosis rows")
        .iter()
        .filter(|d| {
            d["direction"] == expect["direction"]
                && text(&d["port"]) == text(&expect["port"])
                && names.contains(&text(&d["process"]))
        })
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "{} [{}]: want one row for {} {} {}; summary:\n{}",
        report["name"],
        run["label"],
        expect["direction"],
        expect["port"],
        expect["process"],
        summary(report)
    );
    rows[0]
}

fn summary(report: &Value) -> String {
    report["summary"]
        .as_array()
        .map(|lines| lines.iter().map(text).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Every exporter run with a diagnosis agrees with every expectation.
fn check_verdicts(report: &Value) {
    let runs = report["exporter"].as_array().expect("exporter runs");
    for expect in report["expect"].as_array().expect("expectations") {
        for label in ["one_sample", "plain", "watch"] {
            let run = runs
                .iter()
                .find(|r| r["label"] == label)
                .unwrap_or_else(|| panic!("{}: no {label} run", report["name"]));
            let d = row(report, run, expect);
            let want = match &expect[label] {
                Value::String(cause) => cause.clone(),
                _ => text(&expect["cause"]),
            };
            let context = format!("{} [{label}]: {}", report["name"], d["verdict"]);
            assert_eq!(text(&d["cause"]), want, "{context}");
            if label == "watch" {
                assert_eq!(d["also"], expect["also"], "{context}");
                if !expect["closes_in_watch"].is_null() {
                    assert_eq!(d["closes_seen"], expect["closes_in_watch"], "{context}");
                }
            }
            if label == "one_sample" {
                for key in ["close_wait", "unaccepted", "stuck", "pid_count"] {
                    if !expect[key].is_null() {
                        assert_eq!(d[key], expect[key], "{key}: {context}");
                    }
                }
            }
        }
    }
}

/// The exposition the scenario's exact values are read from: the one-sample
/// `snapshot --format prometheus`, or the daemon's scrape.
fn exposition(report: &Value) -> Exposition {
    let scrape = text(&report["daemon_scrape"]);
    if !scrape.is_empty() {
        return Exposition::parse(&scrape);
    }
    let run = report["exporter"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["label"] == "metrics"))
        .unwrap_or_else(|| panic!("{}: no metrics run", report["name"]));
    let lines: Vec<String> = run["metrics"]
        .as_array()
        .expect("lines")
        .iter()
        .map(text)
        .collect();
    Exposition::parse(&lines.join("\n"))
}

fn check_metrics(report: &Value) {
    let m = exposition(report);
    for expected in report["metrics"].as_array().expect("metric expectations") {
        let name = text(&expected["name"]);
        let labels: Vec<(String, String)> = expected["labels"]
            .as_object()
            .expect("labels")
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            m.try_get(&name, &pairs),
            expected["value"].as_f64(),
            "{}: {name}{pairs:?}; summary:\n{}",
            report["name"],
            summary(report)
        );
    }
}

/// The rules, replayed on the daemon's scrapes, fire exactly the alerts of the verdicts.
fn check_alerts(report: &Value) {
    let alerts = &report["alerts"];
    assert_eq!(
        alerts["ok"],
        true,
        "{}: alerts disagree with the verdicts; expected firing {}; promtool:\n{}",
        report["name"],
        alerts["expected_firing"],
        text(&alerts["promtool"])
    );
}

fn scenario(name: &str, alerts: bool) {
    let report = report(name);
    check_verdicts(&report);
    check_metrics(&report);
    if alerts {
        check_alerts(&report);
    }
}

#[test]
fn prefork_server_one_verdict_for_the_program() {
    scenario("prefork", true);
}

#[test]
fn fork_per_connection_closes_late_and_young_is_no_leak() {
    scenario("fork_per_connection", true);
}

#[test]
fn event_loop_blocked_workers_backlog_and_leak() {
    scenario("event_loop", true);
}

#[test]
fn event_loop_out_of_descriptors_is_an_accept_backlog() {
    scenario("event_loop_fd_limit", true);
}

#[test]
fn connection_pool_against_short_keepalive_never_closes() {
    scenario("pool_keepalive", true);
}

#[test]
fn hanging_requests_win_over_slow_ones_beside_them() {
    scenario("hang_and_slow", true);
}

#[test]
fn reuseport_backlog_belongs_to_the_listener_whose_queue_holds_it() {
    scenario("reuseport", true);
}

#[test]
fn a_socket_handed_over_scm_rights_follows_its_new_holder() {
    scenario("scm_rights", false);
}

#[test]
fn a_process_that_execs_in_place_is_named_after_its_new_program() {
    scenario("exec_in_place", false);
}

/// 30 processes on 50 ports and max_groups = 20: at most 20 series per metric family and
/// state (histogram buckets counted once per group), and the totals of `ss`.
#[test]
fn max_groups_bounds_every_family_and_keeps_the_totals() {
    let report = report("many_groups");
    check_metrics(&report);
    let m = exposition(&report);
    for name in m.names() {
        let mut per_state: std::collections::BTreeMap<String, std::collections::BTreeSet<_>> =
            Default::default();
        for (labels, _) in m.series(name) {
            let state = labels
                .iter()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let group: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            per_state.entry(state).or_default().insert(group);
        }
        for (state, groups) in per_state {
            assert!(
                groups.len() <= 20,
                "{name} state {state:?}: {} series over max_groups 20",
                groups.len()
            );
        }
    }
    let truth: f64 = report["truth"]
        .as_object()
        .expect("truth")
        .values()
        .map(|g| g["close_wait"].as_f64().expect("count"))
        .sum();
    assert_eq!(truth, 1500.0, "ss: 1,500 CLOSE_WAIT");
    let close_wait = [("state", "close_wait")];
    assert_eq!(m.sum("tcpstate_connections", &close_wait), truth);
    assert_eq!(
        m.series("tcpstate_connections")
            .iter()
            .filter(|(l, _)| l.iter().any(|(k, v)| k == "state" && v == "close_wait"))
            .count(),
        20,
        "folded down to the bound, not below"
    );
    assert_eq!(
        m.get(
            "tcpstate_connections",
            &[
                ("state", "close_wait"),
                ("direction", "outbound"),
                ("port", "other"),
                ("process", "other"),
            ]
        ),
        truth - 19.0,
        "one bucket for the rest, across processes"
    );
    assert!(m.get("tcpstate_groups_folded", &[]) >= 1481.0);
}

/// Every scenario of the driver has its test here.
#[test]
fn every_scenario_is_tested() {
    let out = Command::new("python3")
        .arg(driver())
        .arg("list")
        .output()
        .expect("python3");
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(listed, SCENARIOS, "scenarios.py list");
}
