//! The NetworkPolicy truth-table lab (issue 13) run as the CI runs it: `scripts/netpol-matrix.sh
//! --json` over every case of `tests/netpol/` (3 nodes, the real `vpcnetd
//! --network-policy=true` on each, one fake API server, 9 pods, TCP/UDP 80/81 between every
//! pair, and each node to its own pods, always allowed) must find no difference; and over
//! `tests/netpol-selftest/`, whose expectations are deliberately wrong in a few cells (the
//! matrix one each way; a recreated pod's first packets; a held connection), it must exit 1
//! naming exactly those — the harness can fail. The same cases once more in the dual-stack lab
//! with every probe over IPv6 (`--ipv6`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the script with `--json` over `cases`; (exit code, parsed report, stderr).
fn run(cases: &str) -> (Option<i32>, Value, String) {
    run_with(&[], cases)
}

/// [`run`] with extra flags (`--ipv6`).
fn run_with(flags: &[&str], cases: &str) -> (Option<i32>, Value, String) {
    let bin_dir = vpcnet_tests::bin("netpol-matrix")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    // The probe servers' binary too (bin() panics with how to build it when missing).
    vpcnet_tests::bin("netpol-probe");
    let out = Command::new(repo().join("scripts/netpol-matrix.sh"))
        .arg("--json")
        .args(flags)
        .arg(repo().join(cases))
        .env("VPCNET_BIN_DIR", &bin_dir)
        .output()
        .expect("running scripts/netpol-matrix.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (out.status.code(), report, stderr)
}

type Diff = (String, String, String, String, String);

/// (port, from, to, expected, observed) of one difference.
fn diff(d: &Value) -> Diff {
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    (s("port"), s("from"), s("to"), s("expected"), s("observed"))
}

/// Every difference of `case` (or of one of its steps).
fn differences(case: &Value) -> Vec<Diff> {
    case["differences"]
        .as_array()
        .map(|v| v.iter().map(diff).collect())
        .unwrap_or_default()
}

#[test]
fn every_case_of_tests_netpol_matches_its_truth_table() {
    every_case_matches(&[], "ipv4");
}

#[test]
fn every_case_of_tests_netpol_matches_over_ipv6() {
    every_case_matches(&["--ipv6"], "ipv6");
}

fn every_case_matches(flags: &[&str], family: &str) {
    let (code, report, stderr) = run_with(flags, "tests/netpol");
    assert_eq!(report["family"], family, "{report:#}");
    let cases = report["cases"].as_array().expect("cases");
    let files = std::fs::read_dir(repo().join("tests/netpol"))
        .expect("tests/netpol")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    assert!(files >= 14, "the issue's cases are all there: {files}");
    assert_eq!(cases.len(), files, "every case ran: {report:#}");
    let bad: Vec<String> = cases
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| {
            format!(
                "{}: error {:?}, differences {:?}",
                c["name"],
                c["error"],
                differences(c)
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "cases that differ:\n{}\n{stderr}",
        bad.join("\n")
    );
    assert_eq!(code, Some(0), "{report:#}\n{stderr}");
    assert_eq!(report["ok"], true);
    // Every cell was probed: 9 x 9 pairs on 4 ports per case, and some of them denied (a lab
    // whose probes all time out, or all pass, would not match the deny-all cases).
    for c in cases {
        let obs = &c["observed"];
        let cells: usize = ["tcp/80", "tcp/81", "udp/80", "udp/81"]
            .iter()
            .map(|p| {
                obs[p].as_object().map_or(0, |rows| {
                    rows.values()
                        .map(|r| r.as_object().map_or(0, |r| r.len()))
                        .sum()
                })
            })
            .sum();
        assert_eq!(cells, 9 * 9 * 4, "{}: {obs:#}", c["name"]);
        // Node to pod is always allowed: each node probed its own 3 pods on the 4 ports.
        let n2p: Vec<&Value> = c["nodeToPod"]
            .as_object()
            .map(|ports| {
                ports
                    .values()
                    .filter_map(Value::as_object)
                    .flat_map(|rows| rows.values().filter_map(Value::as_object))
                    .flat_map(|r| r.values())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(n2p.len(), 3 * 3 * 4, "{}: {:#}", c["name"], c["nodeToPod"]);
        assert!(
            n2p.iter().all(|v| *v == "allow"),
            "{}: {:#}",
            c["name"],
            c["nodeToPod"]
        );
    }
    let deny_all = cases
        .iter()
        .find(|c| c["name"] == "deny-all-ingress")
        .expect("deny-all-ingress ran");
    assert_eq!(deny_all["observed"]["tcp/80"]["y/a"]["x/b"], "deny");
    assert_eq!(deny_all["observed"]["tcp/80"]["x/b"]["y/a"], "allow");
    assert_eq!(deny_all["observed"]["udp/81"]["x/a"]["x/a"], "allow");
}

#[test]
fn wrong_expectations_make_the_harness_fail_naming_the_cells() {
    let (code, report, stderr) = run("tests/netpol-selftest");
    assert_eq!(code, Some(1), "{report:#}\n{stderr}");
    assert_eq!(report["ok"], false);
    let case = |name: &str| -> &Value {
        report["cases"]
            .as_array()
            .and_then(|v| v.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no case {name}: {report:#}"))
    };
    let cell = |p: &str, f: &str, t: &str, e: &str, o: &str| {
        (p.into(), f.into(), t.into(), e.into(), o.into())
    };

    // The matrix: one wrong cell each way.
    let wrong = case("wrong-expectation");
    assert_eq!(wrong["error"], Value::Null, "{wrong:#}");
    assert_eq!(wrong["ok"], false);
    let mut d = differences(wrong);
    d.sort();
    assert_eq!(
        d,
        vec![
            cell("tcp/80", "y/a", "x/b", "allow", "deny"),
            cell("udp/81", "z/a", "y/c", "deny", "allow"),
        ],
        "{wrong:#}"
    );
    // Both cells were probed twice (a difference is confirmed before it is reported).
    assert_eq!(wrong["reprobed"], 2, "{wrong:#}");

    // steps: a recreated pod's first packets, the settled matrix, a held connection.
    let steps = case("wrong-steps");
    assert_eq!(steps["error"], Value::Null, "{steps:#}");
    assert!(differences(steps).is_empty(), "{steps:#}");
    let step = &steps["steps"][0];
    let mut d: Vec<(String, Diff)> = step["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|x| (x["kind"].as_str().unwrap_or_default().to_string(), diff(x)))
        .collect();
    d.sort();
    assert_eq!(
        d,
        vec![
            (
                "first packets".to_string(),
                cell("tcp/81", "z/c", "x/b", "deny", "allow")
            ),
            (
                "held connection".to_string(),
                cell("tcp/80", "y/a", "x/b", "allow", "deny")
            ),
            (
                "matrix".to_string(),
                cell("tcp/81", "z/c", "x/b", "deny", "allow")
            ),
        ],
        "{step:#}"
    );
    assert_eq!(step["held"]["y/a -> x/b tcp/80"], "deny", "{step:#}");
}
