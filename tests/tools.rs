//! Tools nobody here wrote, run against a real server: the Pact verifier (pact-python's
//! `Verifier`) on the consumer pact in `tests/pact/`, and Schemathesis on
//! `contract/openapi.yaml`. They run under `$KARMA_PYTHON` (default `python3`), with the
//! packages of `tests/requirements.txt` (`.ci/run` installs them in a venv). A missing tool
//! fails the test, saying how to install it: it is never skipped.

mod common;

use common::*;

/// Tenant `karma` with Karma's Basic auth (karma:s3cret), a campaign and a loyalty program,
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

/// Run `$KARMA_PYTHON args…` off the runtime (the server keeps serving meanwhile); the
/// exit status and everything it printed.
async fn run_python(args: Vec<String>, envs: Vec<(&'static str, String)>) -> (bool, String) {
    let py = python();
    let shown = format!("{py} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&py)
            .args(&args)
            .envs(envs)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
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
    assert!(out.contains("a reactivate after commit"), "{out}");
    // states are idempotent and make fresh transaction ids: a second run passes too
    let (ok, out) = run_python(args, envs).await;
    assert!(ok, "second pact verification failed:\n{out}");
}
