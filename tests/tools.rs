//! Tools nobody here wrote, run against a real server: the Pact verifier (pact-python's
//! `Verifier`) on the consumer pact in `tests/pact/`, and Schemathesis on
//! `contract/openapi.yaml`. They run under `$KARMA_PYTHON` (default `python3`), with the
//! packages of `tests/requirements.txt` (`.ci/run` installs them in a venv). A missing tool
//! fails the test, saying how to install it: it is never skipped.

mod common;

use common::*;

/// Tenant `karma` with Karma's Basic auth (karma:s3cret), a campaign, a loyalty program
/// and an unsigned webhook receiver (so generated envelopes reach the envelope checks),
/// provider states on.
const TOOLS_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
header_read_timeout = "5s"
body_read_timeout = "5s"
[storage]
path = "@DATA@"
cache_capacity_mb = 16
[admin]
token_env = "ADMIN_TOKEN"
provider_states = true
[[tenants]]
id = "karma"
auth = { mode = "basic", username = "karma", password_env = "BASIC_PASS" }
hold_ttl = "2h"
[[tenants.campaigns]]
id = "save5"
codes = ["SAVE5"]
discount = { amount_cents = 500 }
[tenants.webhooks]
verify = { scheme = "none" }
[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
tiers = [ { id = "bronze", name = "Bronze", min_lifetime = 0 },
          { id = "silver", name = "Silver", min_lifetime = 500, multiplier_percent = 150 } ]
[[tenants.loyalty.rewards]]
id = "coffee"
title = "Free coffee"
description = "Any hot drink"
points_cost = 100
category = "drink"
stock = 5
code_pattern = "CF-######"
"#;

fn python() -> String {
    std::env::var("KARMA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Run `$KARMA_PYTHON args…` in the crate's directory.
async fn run_python(args: Vec<String>, envs: Vec<(&'static str, String)>) -> (bool, String) {
    run_python_in(args, envs, std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).await
}

/// Run `$KARMA_PYTHON args…` in `dir`, off the runtime (the server keeps serving
/// meanwhile); the exit status and everything it printed.
async fn run_python_in(
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    dir: &std::path::Path,
) -> (bool, String) {
    let py = python();
    let dir = dir.to_owned();
    let shown = format!("{py} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&py)
            .args(&args)
            .envs(envs)
            .current_dir(&dir)
            .output()
    })
    .await
    .expect("the runner thread")
    .unwrap_or_else(|e| {
        panic!("cannot run {shown}: {e}; set KARMA_PYTHON to a Python with tests/requirements.txt installed (.ci/run does)")
    });
    let text = format!(
        "$ {shown}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn the_pact_verifier_passes_the_consumer_pact() {
    let h = Harness::start(TOOLS_CONFIG).await;
    let args = vec!["tests/pact/verify.py".into(), h.base()];
    let envs = vec![("KP_ADMIN_TOKEN", ADMIN_TOKEN.to_string())];
    let (ok, out) = run_python(args.clone(), envs.clone()).await;
    assert!(
        ok,
        "pact verification failed (pip install -r tests/requirements.txt):\n{out}"
    );
    for interaction in ["a reactivate after commit", "a lookup by memberId"] {
        assert!(out.contains(interaction), "{out}");
    }
    // states are idempotent and make fresh transaction ids: a second run passes too
    let (ok, out) = run_python(args, envs).await;
    assert!(ok, "second pact verification failed:\n{out}");
}

/// Schemathesis settings: the `{tenant}` path parameter is the configured tenant.
const SCHEMATHESIS_TOML: &str = "[parameters]\n\"path.tenant\" = \"karma\"\n";

#[tokio::test]
async fn schemathesis_finds_no_failure_in_the_spec() {
    let h = Harness::start(TOOLS_CONFIG).await;
    // Its own working directory: Schemathesis keeps a crash cache there, and a cache of
    // earlier runs would make this run depend on them.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, SCHEMATHESIS_TOML).unwrap();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/contract/openapi.yaml");
    let args: Vec<String> = [
        "-m",
        "schemathesis.cli",
        "--config-file",
        config.to_str().unwrap(),
        "run",
        spec,
        "--url",
        &h.base(),
        "--auth",
        "karma:s3cret",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "100",
        // deterministic: the same cases on every run (it implies no example database)
        "--generation-deterministic",
        "--workers",
        "1",
        "--no-color",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, out) = run_python_in(args, vec![], dir.path()).await;
    assert!(
        ok,
        "schemathesis failed (pip install -r tests/requirements.txt):\n{out}"
    );
    assert!(out.contains("No issues found"), "{out}");
}
