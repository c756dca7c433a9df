//! Running `karma-provider simulate` (the real binary) against a test server.

use serde_json::Value;

use super::{config_with, Harness, ADMIN_TOKEN, KEY};

/// The test config with provider states on (simulate sets its world up through them).
pub fn states_config() -> String {
    config_with("").replace(
        "token_env = \"ADMIN_TOKEN\"",
        "token_env = \"ADMIN_TOKEN\"\nprovider_states = true",
    )
}

/// Run `simulate` with a generated stream against `target` (base of tenant acme); the
/// exit code, the JSON report, the JUnit text and stdout.
pub async fn simulate(h: &Harness, target: &str, extra: &[&str]) -> (i32, Value, String, String) {
    simulate_with(h, target, "20,50", extra).await
}

/// [`simulate`] with Karma's retry schedule `retry_ms` (waits in ms, comma-separated).
pub async fn simulate_with(
    h: &Harness,
    target: &str,
    retry_ms: &str,
    extra: &[&str],
) -> (i32, Value, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (json_path, junit_path) = (dir.path().join("r.json"), dir.path().join("j.xml"));
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"));
    c.args(["simulate", "--target", &format!("{target}/v1/acme")])
        .args(["--auth", &format!("header:X-Provider-Key:{KEY}")])
        .args([
            "--state-url",
            &format!("{}/admin/v1/tenants/acme/provider-states", h.base()),
        ])
        .args([
            "--state-header",
            &format!("Authorization:Bearer {ADMIN_TOKEN}"),
        ])
        .args(["--retry-ms", retry_ms])
        .arg("--json")
        .arg(&json_path)
        .arg("--junit")
        .arg(&junit_path)
        .args(extra);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "exit {code}: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let junit = std::fs::read_to_string(&junit_path).unwrap();
    (code, report, junit, stdout)
}
