//! Tests against the real binary. kill -9 under load (shared and single-use codes, loyalty,
//! concurrent webhook deliveries), SIGTERM/SIGINT drains and the shutdown grace. kill -9:
//! start it as a child, drive check → commit from many connections, SIGKILL it at an
//! arbitrary moment, restart on the same data dir, and prove from our own record of
//! acknowledged answers that every acknowledged commit is there exactly once — several
//! rounds in a row. On PostgreSQL (issue 15) the same proof holds for replicas: three
//! processes share one database, the load goes across them, and one at a time is killed
//! while the others serve.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const TOKEN: &str = "crash-admin-token";

fn start(config: &std::path::Path) -> (Child, String) {
    common::spawn_serve(
        config,
        &[
            ("KP_CRASH_TOKEN", TOKEN),
            ("KP_WH_SECRET", "crash-wh-secret"),
            ("KP_FWD_SECRET", "whsec_ZndkLWtleQ=="),
        ],
    )
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn send(
    c: &HttpClient,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, Vec<u8>), String> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(
            body.map(|b| serde_json::to_vec(b).unwrap())
                .unwrap_or_default(),
        )))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), c.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    Ok((status, bytes))
}

#[derive(Clone)]
struct Attempt {
    provider_ref: String,
    tx: String,
    amount: i64,
}

/// Send the commit of `a` (again); `Err` when the process is gone.
async fn commit(c: &HttpClient, base: &str, a: &Attempt) -> Result<(u16, Vec<u8>), String> {
    let body =
        json!({"amountCents": a.amount, "transactionId": a.tx, "providerRef": a.provider_ref});
    send(
        c,
        "POST",
        &format!("{base}/v1/acme/voucher/commit"),
        Some(&body),
    )
    .await
}

/// The hold `a` took, as the admin API shows it.
async fn hold_of(c: &HttpClient, base: &str, a: &Attempt) -> Value {
    let url = format!("{base}/admin/v1/tenants/acme/holds/{}", a.provider_ref);
    let (s, b) = send(c, "GET", &url, None).await.unwrap();
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap()
}

/// An acknowledged commit is on disk after the restarts.
async fn assert_committed(c: &HttpClient, base: &str, a: &Attempt) {
    let h = hold_of(c, base, a).await;
    assert_eq!(
        h["state"],
        json!("committed"),
        "acknowledged commit {} lost",
        a.tx
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[storage]
path = "{}"
[admin]
token_env = "KP_CRASH_TOKEN"
[[tenants]]
id = "acme"
auth = {{ mode = "none" }}
[[tenants.campaigns]]
id = "big"
codes = ["BIG"]
discount = {{ amount_cents = 100 }}
max_uses = 1000000
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();

    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let big = Arc::new(vec!["BIG".to_string()]);
    for round in 0..rounds(4) {
        let (mut child, base) = start(&cfg);
        let deadline =
            Instant::now() + Duration::from_millis(300 + (round * 137 + nanos() % 400) % 700);
        let workers = spawn_load(&base, &big, |w| w, &seq, &seen);
        tokio::time::sleep_until(deadline.into()).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    let answers: std::collections::HashMap<String, Vec<u8>> = seen
        .acked
        .iter()
        .map(|(a, b)| (a.tx.clone(), b.clone()))
        .collect();
    let acked: Vec<Attempt> = seen.acked.into_iter().map(|(a, _)| a).collect();
    let attempted = seen.attempted;

    let (mut child, base) = start(&cfg);
    // A fresh client: the old pool may hold connections to a port the OS has reused.
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    assert!(
        acked.len() > 50,
        "too little load to prove anything: {} acked",
        acked.len()
    );

    // Every acknowledged commit is on disk, committed by its own transaction.
    let mut committed = 0u64;
    for a in &attempted {
        let h = hold_of(&client, &base, a).await;
        if h["state"] == json!("committed") {
            assert_eq!(h["transactionId"], json!(a.tx));
            committed += 1;
        }
    }
    for a in &acked {
        assert_committed(&client, &base, a).await;
    }
    // ...and counted exactly once.
    let (_, b) = send(
        &client,
        "GET",
        &format!("{base}/admin/v1/tenants/acme/campaigns"),
        None,
    )
    .await
    .unwrap();
    let c: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(c["campaigns"][0]["usesConsumed"], json!(committed));
    assert!(committed as usize >= acked.len() && committed as usize <= attempted.len());

    // Retrying every attempted commit now: each answers ok, and the count becomes exactly
    // the number of distinct reservations, never more.
    for a in &attempted {
        let (s, b) = commit(&client, &base, a).await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap()["ok"],
            json!(true),
            "{}",
            String::from_utf8_lossy(&b)
        );
        if let Some(first) = answers.get(&a.tx) {
            assert_eq!(
                &b, first,
                "retried commit {} differs from its acknowledged answer",
                a.tx
            );
        }
    }
    let (_, b) = send(
        &client,
        "GET",
        &format!("{base}/admin/v1/tenants/acme/campaigns"),
        None,
    )
    .await
    .unwrap();
    let c: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(c["campaigns"][0]["usesConsumed"], json!(attempted.len()));
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "crash test ({} kills): {} acked, {} attempted, {} on disk before retries",
        rounds(4),
        acked.len(),
        attempted.len(),
        committed
    );
}

/// How many SIGKILLs a crash test deals: `KP_CRASH_ROUNDS` (BENCHMARKS.md runs 20), or
/// the small default CI uses.
fn rounds(default: u64) -> u64 {
    std::env::var("KP_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_flushes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[admin]\ntoken_env = \"KP_CRASH_TOKEN\"\n[[tenants]]\nid = \"acme\"\nauth = {{ mode = \"none\" }}\n[[tenants.campaigns]]\nid = \"one\"\ncodes = [\"ONE\"]\ndiscount = {{ amount_cents = 100 }}\nmax_uses_per_code = 1\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let check = json!({"code": "ONE", "cart": {"items": [], "totalCents": 1000}});
    let (_, b) = send(
        &client,
        "POST",
        &format!("{base}/v1/acme/voucher/check"),
        Some(&check),
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&b).unwrap();
    let body = json!({"amountCents": 100, "transactionId": format!("res_{:032x}", 1), "providerRef": v["providerRef"]});
    let (_, first) = send(
        &client,
        "POST",
        &format!("{base}/v1/acme/voucher/commit"),
        Some(&body),
    )
    .await
    .unwrap();

    let health = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_karma-provider"))
            .args(["healthcheck", "--url", &format!("{base}{path}")])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(health("/readyz"));
    assert!(!health("/nope"));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (_, again) = send(
        &client,
        "POST",
        &format!("{base}/v1/acme/voucher/commit"),
        Some(&body),
    )
    .await
    .unwrap();
    assert_eq!(again, first);
    let (_, b) = send(
        &client,
        "POST",
        &format!("{base}/v1/acme/voucher/check"),
        Some(&check),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["error"],
        json!("USAGE_LIMIT_REACHED")
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_loyalty_load_keeps_every_acknowledged_award_and_redeem_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[storage]
path = "{}"
[admin]
token_env = "KP_CRASH_TOKEN"
[[tenants]]
id = "acme"
auth = {{ mode = "none" }}
[[tenants.loyalty]]
program_id = 5
earn = {{ points = 1, per_cents = 100 }}
auto_enroll = true
[[tenants.loyalty.rewards]]
id = "one"
title = "One point"
points_cost = 1
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // (user, transactionId, ledger kind) of every acknowledged answer
    type Acked = Vec<(usize, String, &'static str)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
    const USERS: usize = 12;
    for round in 0..rounds(3) {
        let (mut child, base) = start(&cfg);
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let deadline =
            Instant::now() + Duration::from_millis(300 + (round * 211 + nanos() % 300) % 600);
        let mut workers = Vec::new();
        for u in 0..USERS {
            let (c, base, acked, seq) = (client.clone(), base.clone(), acked.clone(), seq.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let n = seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let tx = format!("loy_{n:032x}");
                    let award = json!({"userId": format!("u{u}"), "loyaltyProgramId": 5, "purchaseId": format!("p{n}"), "purchaseAmountCents": 1000, "itemIds": [], "transactionId": tx});
                    match send(&c, "POST", &format!("{base}/v1/acme/loyalty/award"), Some(&award)).await {
                        Ok((200, b)) => {
                            assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["pointsAwarded"], json!(10));
                            acked.lock().unwrap().push((u, tx, "earn"));
                        }
                        _ => return,
                    }
                    let n = seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let tx = format!("loy_{n:032x}");
                    let redeem = json!({"userId": format!("u{u}"), "loyaltyProgramId": 5, "rewardId": "one", "transactionId": tx});
                    match send(&c, "POST", &format!("{base}/v1/acme/loyalty/redeem"), Some(&redeem)).await {
                        Ok((200, b)) => {
                            assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["ok"], json!(true));
                            acked.lock().unwrap().push((u, tx, "redeem"));
                        }
                        _ => return,
                    }
                }
            }));
        }
        tokio::time::sleep_until(deadline.into()).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too little load: {}", acked.len());
    for u in 0..USERS {
        let (s, b) = send(
            &client,
            "GET",
            &format!("{base}/admin/v1/tenants/acme/loyalty/5/users/u{u}"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(s, 200);
        let m: Value = serde_json::from_slice(&b).unwrap();
        let ledger = m["ledger"].as_array().unwrap();
        for (_, tx, kind) in acked.iter().filter(|(w, _, _)| *w == u) {
            let n = ledger
                .iter()
                .filter(|e| e["transactionId"] == json!(tx) && e["kind"] == json!(kind))
                .count();
            assert_eq!(n, 1, "acknowledged {kind} {tx} appears {n} times");
        }
        let earned = ledger.iter().filter(|e| e["kind"] == json!("earn")).count() as i64;
        let redeemed = ledger
            .iter()
            .filter(|e| e["kind"] == json!("redeem"))
            .count() as i64;
        assert_eq!(m["ledgerSum"], json!(earned * 10 - redeemed));
        assert_eq!(m["currentBalance"], m["ledgerSum"]);
    }
    eprintln!(
        "loyalty crash test ({} kills): {} acknowledged awards and redeems, each exactly once",
        rounds(3),
        acked.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The operator CLI (`karma-provider admin …`) against a running binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_reverses_and_imports_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[admin]\ntoken_env = \"KP_CRASH_TOKEN\"\n[[tenants]]\nid = \"acme\"\nauth = {{ mode = \"none\" }}\n[[tenants.loyalty]]\nprogram_id = 5\nearn = {{ points = 1, per_cents = 100 }}\nauto_enroll = true\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let award = json!({"userId": "u1", "loyaltyProgramId": 5, "purchaseId": "p1", "purchaseAmountCents": 5000, "transactionId": format!("loy_{:032x}", 1)});
    send(
        &client,
        "POST",
        &format!("{base}/v1/acme/loyalty/award"),
        Some(&award),
    )
    .await
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_karma-provider"))
            .arg("admin")
            .args(args)
            .args(["--url", &base])
            .env("KP_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let out = cli(&[
        "POST",
        "tenants/acme/loyalty/5/reversals",
        "--data",
        r#"{"id":"r1","purchaseId":"p1","amountCents":1000}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["pointsReversed"].clone(), v["newBalance"].clone()),
        (json!(10), json!(40))
    );
    let csv = dir.path().join("members.csv");
    std::fs::write(&csv, "user_id,balance\nu2,70\nu1,5\n").unwrap();
    let out = cli(&[
        "POST",
        "tenants/acme/loyalty/5/members/import",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["imported"].clone(), v["duplicates"].clone()),
        (json!(1), json!(1))
    );
    let out = cli(&["GET", "tenants/acme/loyalty/5/users/u2"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["currentBalance"],
        json!(70)
    );
    let out = cli(&["GET", "tenants/acme/loyalty/5/users/nobody"]);
    assert_eq!(out.status.code(), Some(1));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_acknowledgement_and_onward_delivery_still_delivers() {
    use common::TestSink;
    use hmac::{Hmac, Mac};
    let sink = TestSink::start().await;
    sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[storage]
path = "{}"
[[tenants]]
id = "acme"
auth = {{ mode = "none" }}
[tenants.webhooks]
verify = {{ scheme = "hmac-sha256-hex", secrets_env = ["KP_WH_SECRET"] }}
[[tenants.webhooks.routes]]
events = "*"
sink = {{ http = "{}", secret_env = "KP_FWD_SECRET" }}
max_attempts = 100
backoff = "20ms"
backoff_max = "20ms"
"#,
            dir.path().join("data").display(),
            sink.url()
        ),
    )
    .unwrap();
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = format!("evt_{i}");
        let body = serde_json::to_vec(&json!({"id": id, "event": "inventory.updated"})).unwrap();
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"crash-wh-secret").unwrap();
        m.update(&body);
        let sig = hex::encode(m.finalize().into_bytes());
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("{base}/v1/acme/webhooks"))
            .header("content-type", "application/json")
            .header("x-karma-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        ids.push(id);
    }
    // acknowledged, but the sink refuses everything: kill the process mid-retry
    sink.wait_until("some failed attempts", |s| s.got.lock().unwrap().len() >= 3)
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    sink.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (mut child, _base) = start(&cfg);
    let delivered = |s: &TestSink| -> Vec<String> {
        s.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.2 == 200)
            .map(|g| g.0["webhook-id"].to_str().unwrap().to_string())
            .collect()
    };
    let in_order = |d: &[String]| {
        let mut once = d.to_vec();
        once.dedup();
        once
    };
    sink.wait_until("all five delivered", |s| in_order(&delivered(s)) == ids)
        .await;
    // In order, each at least once. Only the event in flight at the kill may arrive twice:
    // the sink can answer the killed process's last request after it is back up, and the
    // new process, which never saw that answer, delivers it again.
    let d = delivered(&sink);
    assert_eq!(in_order(&d), ids);
    assert!(d.len() <= ids.len() + 1, "{d:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `karma-provider webhook sign|send`: QA can produce signed deliveries by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_cli_signs_and_sends_valid_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[[tenants]]\nid = \"acme\"\nauth = {{ mode = \"none\" }}\n[tenants.webhooks]\nverify = {{ scheme = \"stripe\", secrets_env = [\"KP_WH_SECRET\"] }}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (mut child, base) = start(&cfg);
    let env_file = dir.path().join("evt.json");
    std::fs::write(
        &env_file,
        r#"{"id":"evt_cli","event":"inventory.created","timestamp":"2026-11-23T10:00:00Z"}"#,
    )
    .unwrap();
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_karma-provider"))
            .arg("webhook")
            .args(args)
            .args(["--tenant", "acme", "--config"])
            .arg(&cfg)
            .arg(&env_file)
            .env("KP_WH_SECRET", "crash-wh-secret")
            .output()
            .unwrap()
    };
    let out = cli(&["sign"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Content-Type: application/json") && text.contains("stripe-signature: t="),
        "{text}"
    );
    let out = cli(&["send", "--url", &base]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"200 {"ok":true}"#
    );
    let out = cli(&["send", "--url", &format!("{base}/v1/acme/webhooks")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"200 {"ok":true,"duplicate":true}"#
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `karma-provider export` from a running binary, `import` into an empty data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_commands() {
    let dir = tempfile::tempdir().unwrap();
    let write_cfg = |name: &str, data: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[admin]\ntoken_env = \"KP_CRASH_TOKEN\"\n[[tenants]]\nid = \"acme\"\nauth = {{ mode = \"none\" }}\n[[tenants.campaigns]]\nid = \"one\"\ncodes = [\"ONE\"]\ndiscount = {{ amount_cents = 100 }}\nmax_uses_per_code = 1\n", dir.path().join(data).display())).unwrap();
        p
    };
    let (a, b) = (write_cfg("a.toml", "a"), write_cfg("b.toml", "b"));
    let (mut child, base) = start(&a);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (_, bytes) = send(
        &client,
        "POST",
        &format!("{base}/v1/acme/voucher/check"),
        Some(&json!({"code": "ONE", "cart": {"items": [], "totalCents": 1000}})),
    )
    .await
    .unwrap();
    let pref = serde_json::from_slice::<Value>(&bytes).unwrap()["providerRef"].clone();
    let dump = dir.path().join("dump.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(["export", "--url", &base, "--out"])
        .arg(&dump)
        .env("KP_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(["import", "--config"])
        .arg(&b)
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("imported "));
    let (mut child, base) = start(&b);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (_, bytes) = send(
        &client,
        "GET",
        &format!("{base}/admin/v1/tenants/acme/holds"),
        None,
    )
    .await
    .unwrap();
    let holds: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(holds["holds"][0]["providerRef"], pref);
    child.kill().unwrap();
    child.wait().unwrap();
    // importing again into the same (now non-empty) dir is refused
    let out = Command::new(env!("CARGO_BIN_EXE_karma-provider"))
        .args(["import", "--config"])
        .arg(&b)
        .arg(&dump)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `karma-provider codes import|generate|export` on a stopped server's data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_commands_on_a_stopped_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[[tenants]]\nid = \"v\"\nauth = {{ mode = \"none\" }}\n[[tenants.campaigns]]\nid = \"bulk\"\ndiscount = {{ amount_cents = 300 }}\nmax_uses_per_code = 1\n[[tenants.campaigns]]\nid = \"shared\"\ncodes = [\"TAKEN\"]\ndiscount = {{ amount_cents = 1 }}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let codes = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_karma-provider"))
            .arg("codes")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "code\nC-1\nC-2,soon\nC-3\n,\n").unwrap();
    let out = codes(&[
        "import",
        "--tenant",
        "v",
        "--campaign",
        "bulk",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3: valid_until") && err.contains("line 5: code"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 0 codes: 2 invalid rows"));

    let good = dir.path().join("good.csv");
    let mut text = String::from("code,valid_until,assigned_user\n");
    for i in 0..120_000 {
        text.push_str(&format!("C-{i}\n"));
    }
    text.push_str("C-5\nTAKEN\nGIFT-1,,guest-9\n");
    std::fs::write(&good, text).unwrap();
    let out = codes(&[
        "import",
        "--tenant",
        "v",
        "--campaign",
        "bulk",
        good.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("imported 120001 codes, 2 duplicates, 0 invalid rows")
            && said.contains("code index 120001 codes"),
        "{said}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("100%"),
        "a progress line"
    );

    let newc = dir.path().join("new.csv");
    let out = codes(&[
        "generate",
        "--tenant",
        "v",
        "--campaign",
        "bulk",
        "--pattern",
        "X-#####-??",
        "--count",
        "2000",
        "--out",
        newc.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: Vec<String> = std::fs::read_to_string(&newc)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(generated.len(), 2000);
    assert_eq!(
        generated
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        2000
    );

    // the server finds them, and the assigned code is only for its guest
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // the offline commands left a code index of every code, current: nothing to rebuild
    let (_, m) = send(&client, "GET", &format!("{base}/metrics"), None)
        .await
        .unwrap();
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("kp_code_index_codes{tenant=\"v\"} 122001\n"),
        "{m}"
    );
    let check = |code: &str, user: Option<&str>| json!({"code": code, "cart": {"items": [], "totalCents": 1000}, "userId": user});
    let (_, b) = send(
        &client,
        "POST",
        &format!("{base}/v1/v/voucher/check"),
        Some(&check("c-119999", None)),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["voucherNr"],
        json!("C-119999")
    );
    let (_, b) = send(
        &client,
        "POST",
        &format!("{base}/v1/v/voucher/check"),
        Some(&check(&generated[0], None)),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["ok"],
        json!(true)
    );
    let (_, b) = send(
        &client,
        "POST",
        &format!("{base}/v1/v/voucher/check"),
        Some(&check("GIFT-1", Some("guest-1"))),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["error"],
        json!("CODE_ASSIGNED_TO_ANOTHER_GUEST")
    );
    // while the server runs, the offline commands refuse the data dir
    let out = codes(&[
        "import",
        "--tenant",
        "v",
        "--campaign",
        "bulk",
        good.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let all = dir.path().join("all.csv");
    let out = codes(&[
        "export",
        "--tenant",
        "v",
        "--campaign",
        "bulk",
        "--out",
        all.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let exported = std::fs::read_to_string(&all).unwrap();
    assert_eq!(exported.lines().count(), 1 + 120_001 + 2000);
    assert!(exported.contains("GIFT-1,,guest-9,available\n"));
}

/// The value of a `/metrics` line `name value`, if present.
async fn metric(client: &HttpClient, base: &str, name: &str) -> Option<u64> {
    let (_, m) = send(client, "GET", &format!("{base}/metrics"), None)
        .await
        .ok()?;
    String::from_utf8(m)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// kill -9 during `codes import`: the code index left behind is older than the store, so
/// the server rebuilds it, and every code the store kept is found; running the import
/// again completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_codes_import_leaves_an_index_that_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[admin]\ntoken_env = \"KP_CRASH_TOKEN\"\n[[tenants]]\nid = \"v\"\nauth = {{ mode = \"none\" }}\n[[tenants.campaigns]]\nid = \"bulk\"\ndiscount = {{ amount_cents = 300 }}\nmax_uses_per_code = 1\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let import = |file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_karma-provider"))
            .args([
                "codes",
                "import",
                "--tenant",
                "v",
                "--campaign",
                "bulk",
                // Four passes for the second file: the kill lands after the first.
                "--batch",
                "100000",
                "--config",
            ])
            .arg(&cfg)
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = dir.path().join("a.csv");
    std::fs::write(
        &first,
        (0..1000).map(|i| format!("A-{i}\n")).collect::<String>(),
    )
    .unwrap();
    assert!(import(&first).wait_with_output().unwrap().status.success());

    const B: usize = 400_000;
    let second = dir.path().join("b.csv");
    std::fs::write(
        &second,
        (0..B).map(|i| format!("B-{i}\n")).collect::<String>(),
    )
    .unwrap();
    let mut child = import(&second);
    // Kill it once the first batch is in (its progress line says "importing").
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("importing [") {
        let n = std::io::Read::read(&mut err, &mut buf).unwrap();
        assert!(
            n > 0,
            "import ended before it was killed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut server, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // What the store kept of the killed import, from the store itself.
    let (status, csv) = send(
        &client,
        "GET",
        &format!("{base}/admin/v1/tenants/v/campaigns/bulk/codes"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let csv = String::from_utf8(csv).unwrap();
    let kept: Vec<&str> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .filter(|c| c.starts_with("B-"))
        .collect();
    assert!(kept.len() < B, "the kill left the import unfinished");
    let total = (1000 + kept.len()) as u64;
    let name = "kp_code_index_codes{tenant=\"v\"}";
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&client, &base, name).await != Some(total) {
        assert!(
            std::time::Instant::now() < until,
            "the index was not rebuilt to {total} codes: {:?}",
            metric(&client, &base, name).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hits = "kp_code_index_lookups_total{result=\"hit\"}";
    let before = metric(&client, &base, hits).await.unwrap_or(0);
    let probes: Vec<&str> = ["A-0", "A-999"]
        .into_iter()
        .chain(kept.first().copied())
        .chain(kept.last().copied())
        .collect();
    for code in &probes {
        let (_, b) = send(
            &client,
            "POST",
            &format!("{base}/v1/v/voucher/check"),
            Some(&json!({"code": code, "cart": {"items": [], "totalCents": 1000}})),
        )
        .await
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap()["voucherNr"],
            json!(code)
        );
    }
    assert_eq!(
        metric(&client, &base, hits).await.unwrap_or(0),
        before + probes.len() as u64,
        "every probe answered from the rebuilt index"
    );
    server.kill().unwrap();
    server.wait().unwrap();

    // The same import again finishes the job.
    let out = import(&second).wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!(
            "imported {} codes, {} duplicates",
            B - kept.len(),
            kept.len()
        )) && said.contains(&format!("code index {} codes", 1000 + B)),
        "{said}"
    );
}

/// The config of a voucher crash test: tenant `acme` without auth and `campaigns` (TOML).
fn voucher_config(
    dir: &std::path::Path,
    extra_server: &str,
    campaigns: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("kp.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{extra_server}\n[storage]\npath = \"{}\"\n[admin]\ntoken_env = \"KP_CRASH_TOKEN\"\n[[tenants]]\nid = \"acme\"\nauth = {{ mode = \"none\" }}\n{campaigns}",
        dir.join("data").display()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// What a load worker saw: acknowledged commits with their exact answer bytes, commits
/// attempted, and every HTTP answer that was neither a 200 nor a clean 503.
#[derive(Default)]
struct Seen {
    acked: Vec<(Attempt, Vec<u8>)>,
    attempted: Vec<Attempt>,
    refusals: std::collections::BTreeMap<String, u64>,
    /// Clean JSON 503s (the service could not decide; the caller retries).
    unavailable: u64,
    unexpected: Vec<String>,
}

/// A 200's JSON; `None` for a clean JSON 503 (the service could not decide: retry), and
/// for anything else, which is recorded as unexpected.
fn judge(s: u16, b: &[u8], seen: &Mutex<Seen>) -> Option<Value> {
    let v: Value = match serde_json::from_slice(b) {
        Ok(v) => v,
        Err(_) => {
            seen.lock()
                .unwrap()
                .unexpected
                .push(format!("{s} not JSON"));
            return None;
        }
    };
    match s {
        200 => Some(v),
        503 if v["ok"] == json!(false) => {
            seen.lock().unwrap().unavailable += 1;
            None
        }
        _ => {
            seen.lock().unwrap().unexpected.push(format!("{s} {v}"));
            None
        }
    }
}

/// Check `code` at `base`: the commit to attempt when a hold was taken (recorded as
/// attempted); `Ok(None)` when the check was refused (counted) or answered 503; `Err`
/// when the process did not answer.
async fn reserve(
    c: &HttpClient,
    base: &str,
    code: &str,
    seq: &std::sync::atomic::AtomicU64,
    seen: &Mutex<Seen>,
) -> Result<Option<Attempt>, String> {
    let check = json!({"code": code, "cart": {"items": [], "totalCents": 1000}});
    let url = format!("{base}/v1/acme/voucher/check");
    let (s, b) = send(c, "POST", &url, Some(&check)).await?;
    let Some(v) = judge(s, &b, seen) else {
        return Ok(None);
    };
    if v["ok"] != json!(true) {
        let e = v["error"].as_str().unwrap_or("?").to_string();
        *seen.lock().unwrap().refusals.entry(e).or_default() += 1;
        return Ok(None);
    }
    let n = seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let a = Attempt {
        provider_ref: v["providerRef"].as_str().unwrap().to_string(),
        tx: format!("res_{n:032x}"),
        amount: v["discountAmountCents"].as_i64().unwrap(),
    };
    seen.lock().unwrap().attempted.push(a.clone());
    Ok(Some(a))
}

/// Commit `a` at `base`; an ok answer is recorded as acknowledged, with its bytes. `Err`
/// when the process did not answer.
async fn acknowledge(
    c: &HttpClient,
    base: &str,
    a: Attempt,
    seen: &Mutex<Seen>,
) -> Result<(), String> {
    let (s, b) = commit(c, base, &a).await?;
    if let Some(v) = judge(s, &b, seen) {
        assert_eq!(v["ok"], json!(true), "{v}");
        seen.lock().unwrap().acked.push((a, b));
    }
    Ok(())
}

/// One worker: check a code from `codes` (round robin from `start`), commit the hold.
/// Runs until the connection fails (the process is gone). A 200 refusal of the check
/// (held, used) is counted; any other non-200 except a JSON 503 is recorded as unexpected.
async fn voucher_worker(
    c: HttpClient,
    base: String,
    codes: Arc<Vec<String>>,
    start: usize,
    seq: Arc<std::sync::atomic::AtomicU64>,
    seen: Arc<Mutex<Seen>>,
) {
    for i in start.. {
        let code = &codes[i % codes.len()];
        let Ok(reserved) = reserve(&c, &base, code, &seq, &seen).await else {
            return;
        };
        let Some(a) = reserved else {
            continue;
        };
        if acknowledge(&c, &base, a, &seen).await.is_err() {
            return;
        }
    }
}

/// 16 [`voucher_worker`]s against `base` on a fresh client, worker `w` starting at code
/// `start(w)`.
fn spawn_load(
    base: &str,
    codes: &Arc<Vec<String>>,
    start: impl Fn(usize) -> usize,
    seq: &Arc<std::sync::atomic::AtomicU64>,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    (0..16)
        .map(|w| {
            let (c, b, k) = (client.clone(), base.to_string(), codes.clone());
            tokio::spawn(voucher_worker(c, b, k, start(w), seq.clone(), seen.clone()))
        })
        .collect()
}

/// Wait until `f` holds (a load has made progress), at most a minute.
async fn until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn codes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ONCE-{i:04}")).collect()
}

/// Capacity-limited codes under kill -9: 1000 single-use codes, 16 connections taking them
/// round robin; after every kill and at the end no code is used more than once, every
/// acknowledged commit is on disk, and retried commits answer the acknowledged bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_single_use_codes_never_uses_a_code_twice() {
    let dir = tempfile::tempdir().unwrap();
    let all = Arc::new(codes(1000));
    let list: Vec<String> = all.iter().map(|c| format!("\"{c}\"")).collect();
    let cfg = voucher_config(
        dir.path(),
        "",
        &format!(
            "[[tenants.campaigns]]\nid = \"once\"\ncodes = [{}]\ndiscount = {{ amount_cents = 100 }}\nmax_uses_per_code = 1\n",
            list.join(", ")
        ),
    );
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
    for round in 0..rounds(4) {
        let (mut child, base) = start(&cfg);
        let workers = spawn_load(&base, &all, |w| (round as usize * 16 + w) * 7, &seq, &seen);
        if round == 0 {
            until("20 commits acknowledged", || {
                seen.lock().unwrap().acked.len() >= 20
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(
            200 + (round * 137 + nanos() % 300) % 500,
        ))
        .await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    assert!(
        seen.acked.len() > 20,
        "too little load: {} acked",
        seen.acked.len()
    );
    for code in all.iter() {
        let (s, b) = send(
            &client,
            "GET",
            &format!("{base}/admin/v1/tenants/acme/codes/{code}"),
            None,
        )
        .await
        .unwrap();
        assert_eq!(s, 200);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(
            v["usesConsumed"].as_u64().unwrap() <= 1,
            "{code} used twice: {v}"
        );
    }
    for (a, first) in &seen.acked {
        let (s, b) = commit(&client, &base, a).await.unwrap();
        assert_eq!(
            (s, &b),
            (200, first),
            "retried commit {} differs from its acknowledged answer",
            a.tx
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "single-use crash test ({} kills): {} acked, {} attempted, refusals {:?}",
        rounds(4),
        seen.acked.len(),
        seen.attempted.len(),
        seen.refusals
    );
}

/// SIGTERM and SIGINT during load, as in a rolling deploy: every answer is a 200 or a
/// clean JSON 503, readiness fails once the drain starts and never comes back, the process
/// exits 0, and every acknowledged commit is there after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_under_load_drain_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = voucher_config(
        dir.path(),
        "shutdown_grace = \"5s\"",
        "[[tenants.campaigns]]\nid = \"big\"\ncodes = [\"BIG\"]\ndiscount = { amount_cents = 100 }\nmax_uses = 1000000\n",
    );
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let big = Arc::new(vec!["BIG".to_string()]);
    for sig in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        let (mut child, base) = start(&cfg);
        let workers = spawn_load(&base, &big, |w| w, &seq, &seen);
        let before = seen.lock().unwrap().acked.len();
        until("15 more commits acknowledged", || {
            seen.lock().unwrap().acked.len() >= before + 15
        })
        .await;
        tokio::time::sleep(Duration::from_millis(nanos() % 100)).await;
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, sig).unwrap();
        // readiness: once it fails it never succeeds again, until the process is gone
        let mut failed_once = false;
        loop {
            let probe: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            let ready = matches!(
                send(&probe, "GET", &format!("{base}/readyz"), None).await,
                Ok((200, _))
            );
            assert!(
                !(failed_once && ready),
                "{sig:?}: ready again during the drain"
            );
            failed_once |= !ready;
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{sig:?}: exit status {status:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(failed_once);
        for w in workers {
            w.await.unwrap();
        }
    }
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    assert!(
        seen.acked.len() > 20,
        "too little load: {} acked",
        seen.acked.len()
    );
    for (a, first) in &seen.acked {
        assert_committed(&client, &base, a).await;
        let (s, b) = commit(&client, &base, a).await.unwrap();
        assert_eq!((s, &b), (200, first));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `shutdown_grace` bounds the drain: a check waiting on a vendor that never answers
/// (rules timeout 20 s) is cut when the grace (300 ms) is over, the process exits 0, and
/// that check never got a hold (no answer at all: Karma retries it elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_cuts_a_request_that_would_outlast_it() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = format!("http://{}/decide", silent.local_addr().unwrap());
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let h2 = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            h2.lock().unwrap().push(s); // keep it open, never answer
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = voucher_config(
        dir.path(),
        "shutdown_grace = \"300ms\"",
        &format!("[[tenants.campaigns]]\nid = \"vend\"\ncodes = [\"SLOW\"]\ndiscount = {{ amount_cents = 100 }}\nrules = {{ http = \"{vendor}\", secret_env = \"KP_FWD_SECRET\", timeout = \"20s\" }}\n"),
    );
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let check = json!({"code": "SLOW", "cart": {"items": [], "totalCents": 1000}});
    let url = format!("{base}/v1/acme/voucher/check");
    let pending = tokio::spawn(async move {
        let req = hyper::Request::builder()
            .method("POST")
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&check).unwrap())))
            .unwrap();
        client.request(req).await.map(|r| r.status().as_u16())
    });
    while held.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await; // the vendor is being asked
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the client sees the end")
        .unwrap();
    assert!(answer.is_err(), "the cut check was answered: {answer:?}");
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (_, b) = send(
        &client,
        "GET",
        &format!("{base}/admin/v1/tenants/acme/holds"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&b).unwrap()["count"],
        json!(0)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Signed webhook deliveries arriving on 8 connections at once when the process is
/// killed: every acknowledged delivery reaches the sink after the restart (at least once),
/// and a re-sent acknowledged id is a duplicate, never a second event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_webhook_deliveries_arrive_concurrently() {
    use common::TestSink;
    use hmac::{Hmac, Mac};
    let sink = TestSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[[tenants]]\nid = \"acme\"\nauth = {{ mode = \"none\" }}\n[tenants.webhooks]\nverify = {{ scheme = \"hmac-sha256-hex\", secrets_env = [\"KP_WH_SECRET\"] }}\n[[tenants.webhooks.routes]]\nevents = \"*\"\nsink = {{ http = \"{}\", secret_env = \"KP_FWD_SECRET\" }}\nmax_attempts = 100\nbackoff = \"20ms\"\nbackoff_max = \"20ms\"\n",
            dir.path().join("data").display(),
            sink.url()
        ),
    )
    .unwrap();
    fn signed(id: &str) -> (Vec<u8>, String) {
        let body = serde_json::to_vec(&json!({"id": id, "event": "inventory.updated"})).unwrap();
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"crash-wh-secret").unwrap();
        m.update(&body);
        (body, hex::encode(m.finalize().into_bytes()))
    }
    async fn post(c: HttpClient, base: String, id: String) -> Option<(u16, Value)> {
        let (body, sig) = signed(&id);
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("{base}/v1/acme/webhooks"))
            .header("content-type", "application/json")
            .header("x-karma-signature", sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), c.request(req))
            .await
            .ok()?
            .ok()?;
        let status = resp.status().as_u16();
        let b = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, serde_json::from_slice::<Value>(&b).unwrap()))
    }
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (c, base, acked) = (client.clone(), base.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("evt_{w}_{i}");
                    let Some((s, v)) = post(c.clone(), base.clone(), id.clone()).await else {
                        return;
                    };
                    assert_eq!((s, &v), (200, &json!({"ok": true})), "{id}");
                    acked.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    until("25 deliveries acknowledged", || {
        acked.lock().unwrap().len() >= 25
    })
    .await;
    tokio::time::sleep(Duration::from_millis(nanos() % 200)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "too little load: {}", acked.len());
    let (mut child, base) = start(&cfg);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let delivered = |s: &TestSink| -> std::collections::HashSet<String> {
        s.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.2 == 200)
            .map(|g| g.0["webhook-id"].to_str().unwrap().to_string())
            .collect()
    };
    let want = acked.len();
    sink.wait_until("every acknowledged delivery", |s| {
        let d = delivered(s);
        acked.iter().filter(|id| d.contains(*id)).count() == want
    })
    .await;
    for id in acked.iter().take(50) {
        let (s, v) = post(client.clone(), base.clone(), id.clone())
            .await
            .unwrap();
        assert_eq!(
            (s, v),
            (200, json!({"ok": true, "duplicate": true})),
            "{id}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// How many replicas share the database in the PostgreSQL crash test.
const REPLICAS: usize = 3;
/// Loyalty users of the PostgreSQL crash test, each with a worker of its own.
const REPLICA_USERS: usize = 4;

/// The replicas of one PostgreSQL database: each one's base URL, `None` while it is down.
/// A load's `i`-th request goes to the first replica up from `i`, round robin.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<Vec<Option<String>>>>);

impl Pool {
    fn base(&self, i: usize) -> String {
        let up = self.0.lock().unwrap();
        (0..up.len())
            .find_map(|j| up[(i + j) % up.len()].clone())
            .expect("a replica up")
    }

    fn set(&self, replica: usize, base: Option<String>) {
        self.0.lock().unwrap()[replica] = base;
    }
}

/// The replicas' processes, killed when this goes (also when an assertion fails, so that
/// no replica outlives its test).
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One replica: the real binary with the database's URL in `KP_DATABASE_URL`.
fn start_replica(config: &std::path::Path, url: &str) -> (Child, String) {
    common::spawn_serve(
        config,
        &[("KP_CRASH_TOKEN", TOKEN), ("KP_DATABASE_URL", url)],
    )
}

/// The PostgreSQL crash test's config: campaigns `big` (one shared code) and `once`
/// (`codes`, single use), and loyalty program 5 (10 points an award, reward `one` for 1).
fn replica_config(dir: &std::path::Path, codes: &[String]) -> std::path::PathBuf {
    let list: Vec<String> = codes.iter().map(|c| format!("\"{c}\"")).collect();
    let cfg = dir.join("kp.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[storage]
engine = "postgres"
path = "{}"
[storage.postgres]
url_env = "KP_DATABASE_URL"
[admin]
token_env = "KP_CRASH_TOKEN"
[[tenants]]
id = "acme"
auth = {{ mode = "none" }}
[[tenants.campaigns]]
id = "big"
codes = ["BIG"]
discount = {{ amount_cents = 100 }}
max_uses = 1000000
[[tenants.campaigns]]
id = "once"
codes = [{}]
discount = {{ amount_cents = 100 }}
max_uses_per_code = 1
[[tenants.loyalty]]
program_id = 5
earn = {{ points = 1, per_cents = 100 }}
auto_enroll = true
[[tenants.loyalty.rewards]]
id = "one"
title = "One point"
points_cost = 1
"#,
        dir.join("data").display(),
        list.join(", ")
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// What the load of the PostgreSQL crash test shares: the client, the replicas, the
/// transaction id sequence, what the workers saw, and the signal to stop.
#[derive(Clone)]
struct ReplicaLoad {
    client: HttpClient,
    pool: Pool,
    seq: Arc<std::sync::atomic::AtomicU64>,
    seen: Arc<Mutex<Seen>>,
    loyalty: Arc<Mutex<Vec<LoyaltyAck>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// An acknowledged loyalty call: user, transactionId, ledger kind, request, answer bytes.
type LoyaltyAck = (usize, String, &'static str, Value, Vec<u8>);

/// The path of a loyalty call by its ledger kind.
fn loyalty_path(kind: &str) -> &'static str {
    match kind {
        "earn" => "award",
        _ => "redeem",
    }
}

impl ReplicaLoad {
    /// 6 workers on the shared code, 6 on the single-use codes (starting a few codes apart,
    /// so they contend for the same ones), one per loyalty user.
    fn spawn(
        pool: &Pool,
        once: &Arc<Vec<String>>,
    ) -> (ReplicaLoad, Vec<tokio::task::JoinHandle<()>>) {
        let load = ReplicaLoad {
            client: Client::builder(TokioExecutor::new()).build_http(),
            pool: pool.clone(),
            seq: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            seen: Arc::default(),
            loyalty: Arc::default(),
            stop: Arc::default(),
        };
        let big = Arc::new(vec!["BIG".to_string()]);
        let mut workers = Vec::new();
        for w in 0..12 {
            let codes = if w % 2 == 0 { &big } else { once };
            workers.push(tokio::spawn(load.clone().vouchers(codes.clone(), w * 3)));
        }
        for u in 0..REPLICA_USERS {
            workers.push(tokio::spawn(load.clone().loyalty(u)));
        }
        (load, workers)
    }

    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A voucher worker: check a code (round robin from `start`) on one replica, commit the
    /// hold on the next one up — a hold one replica made, committed through another —,
    /// until stopped. A request without an answer (its replica killed) moves on.
    async fn vouchers(self, codes: Arc<Vec<String>>, start: usize) {
        let (c, pool, seen) = (&self.client, &self.pool, &self.seen);
        for i in start.. {
            if self.stopped() {
                return;
            }
            let code = &codes[i % codes.len()];
            if let Ok(Some(a)) = reserve(c, &pool.base(i), code, &self.seq, seen).await {
                let _ = acknowledge(c, &pool.base(i + 1), a, seen).await;
            }
        }
    }

    /// A loyalty worker for user `u`: an award of 10 points on one replica, then (when it
    /// was acknowledged) a redeem of one point on the next one up, until stopped.
    async fn loyalty(self, u: usize) {
        for i in u.. {
            if self.stopped() {
                return;
            }
            for (j, kind) in ["earn", "redeem"].into_iter().enumerate() {
                let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let tx = format!("loy_{n:032x}");
                let body = match kind {
                    "earn" => {
                        json!({"userId": format!("u{u}"), "loyaltyProgramId": 5, "purchaseId": format!("p{n}"), "purchaseAmountCents": 1000, "itemIds": [], "transactionId": tx})
                    }
                    _ => {
                        json!({"userId": format!("u{u}"), "loyaltyProgramId": 5, "rewardId": "one", "transactionId": tx})
                    }
                };
                let base = self.pool.base(i + j);
                let url = format!("{base}/v1/acme/loyalty/{}", loyalty_path(kind));
                let Ok((s, b)) = send(&self.client, "POST", &url, Some(&body)).await else {
                    break;
                };
                let Some(v) = judge(s, &b, &self.seen) else {
                    break;
                };
                let ok = match kind {
                    "earn" => v["pointsAwarded"] == json!(10),
                    _ => v["ok"] == json!(true),
                };
                assert!(ok, "{kind}: {v}");
                self.loyalty.lock().unwrap().push((u, tx, kind, body, b));
            }
        }
    }

    /// Acknowledged commits, awards and redeems so far.
    fn acks(&self) -> usize {
        self.seen.lock().unwrap().acked.len() + self.loyalty.lock().unwrap().len()
    }

    /// Stop the workers; what they saw.
    async fn finish(self, workers: Vec<tokio::task::JoinHandle<()>>) -> (Seen, Vec<LoyaltyAck>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in workers {
            w.await.unwrap();
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let loyalty = std::mem::take(&mut *self.loyalty.lock().unwrap());
        (seen, loyalty)
    }
}

/// Several replicas on one PostgreSQL database under kill -9 (issue 15): three real
/// `serve` processes share it, voucher and loyalty load goes round robin across them (a
/// hold taken on one replica is committed through another), and one replica at a time is
/// SIGKILLed — the others keep serving meanwhile — and restarted. At the end every
/// acknowledged commit, award and redeem is there exactly once, retries answer the
/// acknowledged bytes, no single-use code is used twice, and every replica answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_replica_at_a_time_on_postgres_loses_nothing_and_doubles_nothing() {
    let Some(db) = common::pg::fresh("kill_9_replicas_on_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let once = Arc::new(codes(100));
    let cfg = replica_config(dir.path(), &once);
    let pool = Pool::default();
    let mut children = Replicas(Vec::new());
    for _ in 0..REPLICAS {
        let (child, base) = start_replica(&cfg, &db.url);
        children.0.push(child);
        pool.0.lock().unwrap().push(Some(base));
    }
    let (load, workers) = ReplicaLoad::spawn(&pool, &once);
    until("30 acknowledged answers", || load.acks() >= 30).await;
    for round in 0..rounds(3) {
        tokio::time::sleep(Duration::from_millis(
            200 + (round * 137 + nanos() % 300) % 500,
        ))
        .await;
        let victim = round as usize % REPLICAS;
        children.0[victim].kill().expect("SIGKILL");
        children.0[victim].wait().unwrap();
        pool.set(victim, None);
        let before = load.acks();
        until("the other replicas keep serving", || {
            load.acks() >= before + 20
        })
        .await;
        let (child, base) = start_replica(&cfg, &db.url);
        children.0[victim] = child;
        pool.set(victim, Some(base));
    }
    // the single-use codes run out under contention before the load stops
    let used_up = || {
        load.seen
            .lock()
            .unwrap()
            .refusals
            .contains_key("USAGE_LIMIT_REACHED")
    };
    until("every single-use code taken", used_up).await;
    let (seen, loyalty) = load.finish(workers).await;
    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    assert!(
        seen.acked.len() > 50,
        "too little load: {} commits acked",
        seen.acked.len()
    );
    assert!(
        loyalty.len() > 20,
        "too little load: {} loyalty calls acked",
        loyalty.len()
    );
    // A fresh client: the old pool may hold connections to a port the OS has reused.
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let on_disk = replicas_hold_every_commit_once(&client, &pool, &seen, &once, &db).await;
    replicas_hold_every_loyalty_call_once(&client, &pool, &loyalty).await;
    drop(children);
    eprintln!(
        "PostgreSQL crash test ({} kills, {REPLICAS} replicas): {} commits acked, {} attempted, {on_disk} on the database before retries; {} awards and redeems acked; refusals {:?}; {} answers 503",
        rounds(3),
        seen.acked.len(),
        seen.attempted.len(),
        loyalty.len(),
        seen.refusals,
        seen.unavailable
    );
}

/// GET `path` under the tenant's admin API from replica `r`: its JSON.
async fn admin_get(c: &HttpClient, pool: &Pool, r: usize, path: &str) -> Value {
    let url = format!("{}/admin/v1/tenants/acme/{path}", pool.base(r));
    let (s, b) = send(c, "GET", &url, None).await.unwrap();
    assert_eq!(s, 200, "{path}: {}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap()
}

/// The uses the campaigns consumed; every replica lists the same campaigns.
async fn uses_consumed(c: &HttpClient, pool: &Pool) -> u64 {
    let listed = admin_get(c, pool, 0, "campaigns").await;
    for r in 1..REPLICAS {
        assert_eq!(admin_get(c, pool, r, "campaigns").await, listed);
    }
    let campaigns = listed["campaigns"].as_array().unwrap();
    assert_eq!(campaigns.len(), 2);
    campaigns
        .iter()
        .map(|c| c["usesConsumed"].as_u64().unwrap())
        .sum()
}

/// Every acknowledged commit is committed by its own transaction and counted once (by the
/// service and by SQL on the database); no single-use code is used twice; retrying every
/// attempted commit answers ok — the acknowledged bytes for an acknowledged one — and
/// brings the count to exactly the attempts. How many were committed before the retries.
async fn replicas_hold_every_commit_once(
    c: &HttpClient,
    pool: &Pool,
    seen: &Seen,
    once: &[String],
    db: &common::pg::TestDb,
) -> u64 {
    let mut committed = 0u64;
    for (i, a) in seen.attempted.iter().enumerate() {
        let h = admin_get(c, pool, i, &format!("holds/{}", a.provider_ref)).await;
        if h["state"] == json!("committed") {
            assert_eq!(h["transactionId"], json!(a.tx));
            committed += 1;
        }
    }
    for (a, _) in &seen.acked {
        let h = admin_get(c, pool, 0, &format!("holds/{}", a.provider_ref)).await;
        assert_eq!(
            h["state"],
            json!("committed"),
            "acknowledged commit {} lost",
            a.tx
        );
    }
    assert_eq!(uses_consumed(c, pool).await, committed);
    let sql = db.client().await;
    let row = sql
        .query_one(
            "SELECT count(*) FROM kp_holds WHERE doc->>'state' = 'committed'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0) as u64, committed);
    let twice = sql
        .query("SELECT doc->>'code' FROM kp_holds WHERE doc->>'campaign' = 'once' AND doc->>'state' = 'committed' GROUP BY 1 HAVING count(*) > 1", &[])
        .await
        .unwrap();
    assert!(
        twice.is_empty(),
        "{} single-use codes committed twice",
        twice.len()
    );
    for (i, code) in once.iter().enumerate() {
        let v = admin_get(c, pool, i, &format!("codes/{code}")).await;
        assert!(
            v["usesConsumed"].as_u64().unwrap() <= 1,
            "{code} used twice: {v}"
        );
    }
    let answers: std::collections::HashMap<&str, &Vec<u8>> =
        seen.acked.iter().map(|(a, b)| (a.tx.as_str(), b)).collect();
    for (i, a) in seen.attempted.iter().enumerate() {
        let (s, b) = commit(c, &pool.base(i), a).await.unwrap();
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap()["ok"],
            json!(true)
        );
        if let Some(first) = answers.get(a.tx.as_str()) {
            assert_eq!(
                &&b, first,
                "retried commit {} differs from its acknowledged answer",
                a.tx
            );
        }
    }
    assert_eq!(uses_consumed(c, pool).await, seen.attempted.len() as u64);
    committed
}

/// Every acknowledged award and redeem is in its member's ledger exactly once, the ledger
/// adds up to the balance, every replica shows the same member, and retrying each
/// acknowledged call answers its bytes and changes nothing.
async fn replicas_hold_every_loyalty_call_once(c: &HttpClient, pool: &Pool, acked: &[LoyaltyAck]) {
    let mut members = Vec::new();
    for u in 0..REPLICA_USERS {
        let m = admin_get(c, pool, 0, &format!("loyalty/5/users/u{u}")).await;
        for r in 1..REPLICAS {
            assert_eq!(
                admin_get(c, pool, r, &format!("loyalty/5/users/u{u}")).await,
                m
            );
        }
        let ledger = m["ledger"].as_array().unwrap();
        for (_, tx, kind, _, _) in acked.iter().filter(|a| a.0 == u) {
            let n = ledger
                .iter()
                .filter(|e| e["transactionId"] == json!(tx) && e["kind"] == json!(kind))
                .count();
            assert_eq!(n, 1, "acknowledged {kind} {tx} appears {n} times");
        }
        let count = |k: &str| ledger.iter().filter(|e| e["kind"] == json!(k)).count() as i64;
        assert_eq!(m["ledgerSum"], json!(count("earn") * 10 - count("redeem")));
        assert_eq!(m["currentBalance"], m["ledgerSum"]);
        members.push(m);
    }
    for (i, (_, tx, kind, body, first)) in acked.iter().enumerate() {
        let url = format!("{}/v1/acme/loyalty/{}", pool.base(i), loyalty_path(kind));
        let (s, b) = send(c, "POST", &url, Some(body)).await.unwrap();
        assert_eq!((s, &b), (200, first), "retried {kind} {tx}");
    }
    for (u, m) in members.iter().enumerate() {
        assert_eq!(
            &admin_get(c, pool, u, &format!("loyalty/5/users/u{u}")).await,
            m
        );
    }
}
