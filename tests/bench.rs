//! The bench's plumbing (its figures come from release runs, BENCHMARKS.md): a short run of
//! every flow against the debug binary's own service and yardstick, after preparing a
//! large state in small (50 members through the admin API, 100 bulk codes offline). Each
//! scenario must complete requests against both targets with 0 errors, be named in the
//! printed table, and the peak RSS must be read from the service the bench started.

use serde_json::Value;

const EVERY_FLOW: [&str; 11] = [
    "check-commit",
    "check-reactivate",
    "award",
    "award-hot",
    "enroll",
    "redeem",
    "reads",
    "account",
    "rewards",
    "lookup",
    "webhook",
];

#[test]
fn every_flow_runs_against_both_targets_with_no_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("bench.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(["bench", "--scenarios", &EVERY_FLOW.join(",")])
        .args(["--duration", "300ms", "--connections", "2"])
        .args(["--members", "50", "--bulk-codes", "100"])
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("json written")).expect("json");

    assert_eq!(doc["bulkImport"]["codes"], 100, "{stdout}");
    assert_eq!(doc["membersImport"]["members"], 50, "{stdout}");
    assert!(stdout.contains("bulk import: 100 codes"), "{stdout}");
    assert!(stdout.contains("members import: 50 members"), "{stdout}");
    assert!(doc["memory"]["servicePeakRssKib"].as_u64().unwrap_or(0) > 0);
    assert!(stdout.contains("peak RSS: service "), "{stdout}");

    let results = doc["results"].as_array().expect("results");
    for sc in EVERY_FLOW {
        for target in ["yardstick", "service"] {
            let r = results
                .iter()
                .find(|r| r["scenario"] == sc && r["target"] == target && r["mode"] == "closed")
                .unwrap_or_else(|| panic!("no closed run of {sc} on {target}: {stdout}"));
            assert!(
                r["requests"].as_u64().unwrap_or(0) > 0,
                "{sc} {target}: {r}"
            );
            assert_eq!(r["errors"], 0, "{sc} {target}: {r}");
            assert!(
                r["peak_rss_kib"].as_u64().unwrap_or(0) > 0,
                "{sc} {target}: {r}"
            );
        }
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(sc) && l.contains("service")),
            "{sc} not in the table: {stdout}"
        );
    }
    // The webhook's open-loop run at the fixed arrival rate (100/s × 0.3 s).
    let open = results
        .iter()
        .find(|r| {
            r["scenario"] == "webhook" && r["target"] == "service" && r["mode"] == "open@100/s"
        })
        .expect("open-loop webhook run");
    assert_eq!(
        (open["requests"].as_u64(), &open["errors"]),
        (Some(30), &Value::from(0))
    );
}
