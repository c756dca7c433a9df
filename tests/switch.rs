//! Switching a Karma location to this provider over HTTP: `GET
//! /admin/v1/tenants/{t}/switch-readiness` (live holds and dead letters block, as Karma's
//! 409 does; releasing, expiry and purging clear them), and the `karma-setup` command (the
//! nine URLs, the auth without its secret, Karma's URL rules on literal addresses, and the
//! readiness check through the admin API).

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

const CAMPAIGN: &str = r#"
[[tenants.campaigns]]
id = "ten"
codes = ["TEN-OFF"]
discount = { amount_cents = 1000 }
"#;

fn ready_body(queued: u64) -> Value {
    json!({
        "ok": true,
        "tenant": "acme",
        "ready": true,
        "checkedAt": "2026-06-01T10:00:00Z",
        "holds": {"live": 0, "oldestExpiresAt": null, "lastExpiresAt": null},
        "webhooks": {"deadLetters": 0, "queued": queued},
        "blockers": [],
        "notes": [],
    })
}

async fn readiness(h: &Harness) -> (u16, Value) {
    let r = h.admin("GET", "switch-readiness", None).await;
    (r.status, r.json())
}

async fn hold(h: &Harness) -> String {
    let r = h.call("voucher/check", &check_body("TEN-OFF", 5000)).await;
    assert_eq!(r.status, 200);
    r.json()["providerRef"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn no_holds_no_dead_letters_is_ready() {
    let h = Harness::start(&config_with(CAMPAIGN)).await;
    assert_eq!(readiness(&h).await, (200, ready_body(0)));
    // admin token required, GET only, unknown tenant
    let r = h
        .request(
            "GET",
            "/admin/v1/tenants/acme/switch-readiness",
            &[],
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("UNAUTHORIZED"))
    );
    assert_eq!(h.admin("POST", "switch-readiness", None).await.status, 405);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = h
        .request(
            "GET",
            "/admin/v1/tenants/nope/switch-readiness",
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("UNKNOWN_TENANT"))
    );
}

fn holds_blocked(live: u64, oldest: &str, last: &str) -> Value {
    json!({
        "ok": false,
        "error": "SWITCH_BLOCKED",
        "message": "tenant \"acme\" is not safe to switch now: see blockers for what to do",
        "tenant": "acme",
        "ready": false,
        "checkedAt": null,
        "holds": {"live": live, "oldestExpiresAt": oldest, "lastExpiresAt": last},
        "webhooks": {"deadLetters": 0, "queued": 0},
        "blockers": [{
            "reason": "LIVE_HOLDS",
            "count": live,
            "message": format!("{live} voucher hold(s) in flight; Karma refuses to switch while reservations are in flight"),
            "action": format!("wait until {last} when the last hold expires, or release holds via POST /admin/v1/tenants/acme/holds/{{providerRef}}/release (list them: GET /admin/v1/tenants/acme/holds)"),
        }],
        "notes": [],
    })
}

/// `checkedAt` is the server's clock; the tests compare it on its own.
fn without_checked_at(mut v: Value) -> Value {
    v["checkedAt"] = Value::Null;
    v
}

#[tokio::test]
async fn a_live_hold_blocks_until_released() {
    let h = Harness::start(&config_with(CAMPAIGN)).await;
    let first = hold(&h).await;
    h.clock.advance_ms(30 * 60 * 1000);
    let second = hold(&h).await;
    let (status, body) = readiness(&h).await;
    assert_eq!(body["checkedAt"], json!("2026-06-01T10:30:00Z"));
    assert_eq!(
        (status, without_checked_at(body)),
        (
            409,
            holds_blocked(2, "2026-06-01T12:00:00Z", "2026-06-01T12:30:00Z")
        )
    );
    for r in [&first, &second] {
        let rel = h.admin("POST", &format!("holds/{r}/release"), None).await;
        assert_eq!(rel.status, 200, "{}", String::from_utf8_lossy(&rel.bytes));
    }
    let (status, body) = readiness(&h).await;
    assert_eq!(
        (status, without_checked_at(body)),
        (200, without_checked_at(ready_body(0)))
    );
}

#[tokio::test]
async fn a_live_hold_blocks_until_it_expires() {
    let h = Harness::start(&config_with(CAMPAIGN)).await;
    hold(&h).await;
    let (status, body) = readiness(&h).await;
    assert_eq!(
        (status, without_checked_at(body)),
        (
            409,
            holds_blocked(1, "2026-06-01T12:00:00Z", "2026-06-01T12:00:00Z")
        )
    );
    h.clock.advance_ms(2 * 3600 * 1000);
    let (status, body) = readiness(&h).await;
    assert_eq!(body["checkedAt"], json!("2026-06-01T12:00:00Z"));
    assert_eq!(
        (status, without_checked_at(body)),
        (200, without_checked_at(ready_body(0)))
    );
}

/// One route whose sink is down and gives up at once; backlog counted one record per job.
fn dead_letter_config(sink: &TestSink) -> String {
    let c = config_with(&format!(
        r#"
[tenants.webhooks]
verify = {{ scheme = "hmac-sha256-hex", secrets_env = ["WH_SECRET"] }}
[[tenants.webhooks.routes]]
name = "inv"
events = "inventory.*"
sink = {{ http = "{}", secret_env = "FWD_SECRET", timeout = "2s" }}
max_attempts = 1
"#,
        sink.url()
    ));
    c.replace(
        "cache_capacity_mb = 16",
        "cache_capacity_mb = 16\njob_slice_records = 1",
    )
}

/// Wait (polling, no time limit asserted) until the dispatcher has given up on `n` events.
async fn until_dead(h: &Harness, n: u64) {
    for _ in 0..2000 {
        if h.admin("GET", "webhooks/dead-letters", None).await.json()["count"] == json!(n) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never {n} dead letters");
}

#[tokio::test]
async fn a_dead_letter_blocks_until_purged() {
    let sink = TestSink::start().await;
    sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let h = Harness::start(&dead_letter_config(&sink)).await;
    deliver_signed(&h, "evt_dead").await;
    deliver_signed(&h, "evt_dead_2").await;
    until_dead(&h, 2).await;
    let (status, body) = readiness(&h).await;
    assert_eq!(
        (status, body),
        (
            409,
            json!({
                "ok": false,
                "error": "SWITCH_BLOCKED",
                "message": "tenant \"acme\" is not safe to switch now: see blockers for what to do",
                "tenant": "acme",
                "ready": false,
                "checkedAt": "2026-06-01T10:00:00Z",
                "holds": {"live": 0, "oldestExpiresAt": null, "lastExpiresAt": null},
                "webhooks": {"deadLetters": 2, "queued": 0},
                "blockers": [{
                    "reason": "DEAD_LETTERS",
                    "count": 2,
                    "message": "2 webhook dead letter(s); Karma refuses to switch while a dead-letter queue is non-empty",
                    "action": "replay the dead letters (POST /admin/v1/tenants/acme/webhooks/dead-letters/replay) or purge them (POST /admin/v1/tenants/acme/webhooks/dead-letters/purge); list them: GET /admin/v1/tenants/acme/webhooks/dead-letters",
                }],
                "notes": [],
            })
        )
    );
    let p = h
        .admin("POST", "webhooks/dead-letters/purge", None)
        .await
        .json();
    assert_eq!(p, json!({"ok": true, "purged": 2}));
    assert_eq!(readiness(&h).await, (200, ready_body(0)));
}

#[tokio::test]
async fn queued_deliveries_are_a_note_not_a_blocker() {
    let sink = TestSink::start().await;
    sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let toml = dead_letter_config(&sink).replace(
        "max_attempts = 1",
        "max_attempts = 5\nbackoff = \"1h\"\nbackoff_max = \"1h\"",
    );
    let h = Harness::start(&toml).await;
    deliver_signed(&h, "evt_waiting").await;
    let mut want = ready_body(1);
    want["notes"] = json!([{
        "reason": "QUEUED_DELIVERIES",
        "count": 1,
        "message": "1 webhook delivery(ies) wait for onward delivery; not a blocker, but one that exhausts its attempts becomes a dead letter",
    }]);
    assert_eq!(readiness(&h).await, (200, want));
}

// ---- karma-setup ---------------------------------------------------------------------

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn setup(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_karma-provider"));
    c.arg("karma-setup").args(args).env_remove("KP_ADMIN_TOKEN");
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("karma-provider runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_public_literal_address_passes_with_the_nine_urls() {
    let r = setup(
        &["--tenant", "acme", "--base-url", "https://93.184.216.34/"],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    let urls: Vec<&str> = r
        .stdout
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(call, _)| call.contains('.'))
        .map(|(_, u)| u.trim())
        .filter(|u| u.starts_with("https://"))
        .collect();
    assert_eq!(
        urls,
        [
            "voucher/check",
            "voucher/commit",
            "voucher/reactivate",
            "loyalty/lookup",
            "loyalty/enroll",
            "loyalty/award",
            "loyalty/account",
            "loyalty/rewards",
            "loyalty/redeem"
        ]
        .map(|p| format!("https://93.184.216.34/v1/acme/{p}")),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.starts_with("  ok ") && l.ends_with(" 93.184.216.34"))
            .count(),
        9,
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("All good"), "{}", r.stdout);
    assert_eq!(r.stderr, "");
}

#[test]
fn http_and_local_addresses_are_refused_with_what_to_do() {
    let cases = [
        (
            "http://93.184.216.34",
            "uses http://; Karma accepts https:// only",
        ),
        ("https://localhost", "host localhost is loopback"),
        ("https://127.0.0.1", "127.0.0.1 is loopback (127.0.0.0/8)"),
        ("https://10.0.0.1:8443", "10.0.0.1 is private (RFC 1918)"),
        (
            "https://[::ffff:127.0.0.1]",
            "::ffff:127.0.0.1 is an IPv4-mapped form of a loopback (127.0.0.0/8) address",
        ),
    ];
    for (base, why) in cases {
        let r = setup(&["--tenant", "acme", "--base-url", base], &[]);
        assert_eq!(r.code, Some(1), "{base}: {}{}", r.stdout, r.stderr);
        let problems: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(problems.len(), 9, "{base}: {}", r.stderr);
        for p in problems {
            assert!(p.starts_with("problem: ") && p.contains(why), "{base}: {p}");
        }
        assert!(r.stdout.contains("9 problem(s):"), "{}", r.stdout);
    }
}

#[test]
fn a_base_url_that_already_names_the_tenant_is_one_problem() {
    let r = setup(
        &[
            "--tenant",
            "acme",
            "--base-url",
            "https://93.184.216.34/v1/acme",
        ],
        &[],
    );
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "problem: --base-url https://93.184.216.34/v1/acme already ends with /v1/acme: give the service's public root; the URLs add /v1/acme/…\n"
    );
}

fn config_file(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("k.toml");
    let text = config_with(CAMPAIGN).replace("@DATA@", &dir.join("data").display().to_string());
    std::fs::write(&p, text).unwrap();
    p
}

const SECRETS: [(&str, &str); 3] = [
    ("ADMIN_TOKEN", ADMIN_TOKEN),
    ("ACME_KEY", KEY),
    ("BASIC_PASS", "s3cret"),
];

#[test]
fn auth_lines_name_the_header_or_user_and_the_env_var_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path());
    let cfg = cfg.to_str().unwrap();
    let base = ["--base-url", "https://93.184.216.34", "--config", cfg];
    let r = setup(&[&["--tenant", "acme"][..], &base].concat(), &SECRETS);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains(KEY), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("Auth: custom header; header name: x-provider-key\n  header value: the value in environment variable ACME_KEY (enter it in Karma; not printed here)"),
        "{}",
        r.stdout
    );
    let r = setup(&[&["--tenant", "basic"][..], &base].concat(), &SECRETS);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Auth: HTTP Basic; user: karma\n  password: the value in environment variable BASIC_PASS (enter it in Karma; not printed here)"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("s3cret"), "{}", r.stdout);
    let r = setup(&[&["--tenant", "nope"][..], &base].concat(), &SECRETS);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.starts_with("problem: tenant \"nope\" is not in "),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn readiness_is_checked_through_the_admin_api() {
    let h = Harness::start(&config_with(CAMPAIGN)).await;
    let pref = hold(&h).await;
    // the blocking tasks below need 'static arguments
    let admin: &'static str = Box::leak(h.base().into_boxed_str());
    let args = [
        "--tenant",
        "acme",
        "--base-url",
        "https://93.184.216.34",
        "--admin-url",
        admin,
        "--admin-token-env",
        "MY_TOKEN",
    ];
    let a2 = args;
    let r = tokio::task::spawn_blocking(move || setup(&a2, &[("MY_TOKEN", ADMIN_TOKEN)]))
        .await
        .unwrap();
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("Switch readiness: NOT ready"),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stderr,
        "problem: not safe to switch: 1 voucher hold(s) in flight; Karma refuses to switch while reservations are in flight: wait until 2026-06-01T12:00:00Z when the last hold expires, or release holds via POST /admin/v1/tenants/acme/holds/{providerRef}/release (list them: GET /admin/v1/tenants/acme/holds)\n"
    );
    // no token: one problem saying which variable to set
    let a3 = args;
    let r = tokio::task::spawn_blocking(move || setup(&a3, &[]))
        .await
        .unwrap();
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        "problem: set MY_TOKEN to the admin token to check switch readiness\n"
    );
    assert_eq!(
        h.admin("POST", &format!("holds/{pref}/release"), None)
            .await
            .status,
        200
    );
    let r = tokio::task::spawn_blocking(move || setup(&args, &[("MY_TOKEN", ADMIN_TOKEN)]))
        .await
        .unwrap();
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(
            "Switch readiness: ready (no live holds, no dead letters; 0 queued deliveries)"
        ),
        "{}",
        r.stdout
    );
}
