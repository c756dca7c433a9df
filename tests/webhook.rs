//! The webhook receiver over HTTP: each signature scheme, rotation, tolerance, dedupe,
//! malformed envelopes, durability across restart.

mod common;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::json;

fn hmac(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

const HEX: &str = r#"
[tenants.webhooks]
verify = { scheme = "hmac-sha256-hex", header = "X-Karma-Signature", secrets_env = ["WH_SECRET", "WH_OLD"] }
retention = "7d"
"#;

fn envelope(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"id": id, "event": "inventory.created", "resource": "inventory", "resourceId": "42", "timestamp": "2026-06-01T09:59:00Z", "apiVersion": "2024-01"})).unwrap()
}

async fn deliver(h: &Harness, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let mut hs = vec![("content-type", "application/json")];
    hs.extend_from_slice(headers);
    h.request("POST", "/v1/acme/webhooks", &hs, body).await
}

#[tokio::test]
async fn hex_hmac_verify_dedupe_and_persist() {
    let mut h = Harness::start(&config_with(HEX)).await;
    let body = envelope("evt_1");
    let sig = hex::encode(hmac(b"new-secret", &[&body]));
    let r = deliver(&h, &[("x-karma-signature", &sig)], body.clone()).await;
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    let r = deliver(
        &h,
        &[("x-karma-signature", &format!("sha256={sig}"))],
        body.clone(),
    )
    .await;
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"ok": true, "duplicate": true}))
    );
    // the old secret still verifies during rotation
    let body2 = envelope("evt_2");
    let old = hex::encode(hmac(b"old-secret", &[&body2]));
    assert_eq!(
        deliver(&h, &[("x-karma-signature", &old)], body2.clone())
            .await
            .status,
        200
    );
    // bad, empty, missing signatures; a tampered body
    assert_eq!(
        deliver(
            &h,
            &[("x-karma-signature", &hex::encode([0u8; 32]))],
            envelope("evt_3")
        )
        .await
        .status,
        401
    );
    assert_eq!(
        deliver(&h, &[("x-karma-signature", "")], envelope("evt_3"))
            .await
            .status,
        401
    );
    assert_eq!(
        deliver(&h, &[], envelope("evt_3")).await.json()["error"],
        json!("BAD_SIGNATURE")
    );
    let mut tampered = body2.clone();
    tampered[10] ^= 1;
    assert_eq!(
        deliver(&h, &[("x-karma-signature", &old)], tampered)
            .await
            .status,
        401
    );
    // malformed envelopes, correctly signed
    for (b, field) in [
        (json!({"event": "x"}), "id"),
        (
            json!({"id": "e", "event": "x", "timestamp": "noon"}),
            "timestamp",
        ),
        (json!({"id": "e"}), "event"),
    ] {
        let b = serde_json::to_vec(&b).unwrap();
        let s = hex::encode(hmac(b"new-secret", &[&b]));
        let r = deliver(&h, &[("x-karma-signature", &s)], b).await;
        assert_eq!((r.status, r.json()["field"].clone()), (400, json!(field)));
    }
    let nb = b"not json".to_vec();
    let s = hex::encode(hmac(b"new-secret", &[&nb]));
    assert_eq!(
        deliver(&h, &[("x-karma-signature", &s)], nb).await.json()["error"],
        json!("MALFORMED_JSON")
    );

    let inbox = h.admin("GET", "webhooks/inbox", None).await.json();
    assert_eq!(inbox["count"], json!(2));
    assert_eq!(inbox["events"][0]["id"], json!("evt_1"));
    let seq = inbox["events"][0]["seq"].as_u64().unwrap();
    let one = h
        .admin("GET", &format!("webhooks/inbox/{seq}"), None)
        .await
        .json();
    assert_eq!(one["body"], json!(String::from_utf8(body.clone()).unwrap()));
    assert!(one["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == json!("x-karma-signature")));
    // durable: after a restart the delivery is still known
    h.restart().await;
    assert_eq!(
        deliver(&h, &[("x-karma-signature", &sig)], body.clone())
            .await
            .json(),
        json!({"ok": true, "duplicate": true})
    );
    // past the retention window the id is taken again
    h.clock.advance_ms(7 * 86_400_000);
    assert_eq!(
        deliver(&h, &[("x-karma-signature", &sig)], body)
            .await
            .json(),
        json!({"ok": true})
    );
}

#[tokio::test]
async fn stripe_scheme_with_tolerance() {
    let h = Harness::start(&config_with("[tenants.webhooks]\nverify = { scheme = \"stripe\", secrets_env = [\"WH_SECRET\"] }\ntolerance = \"5m\"\n")).await;
    let now = h.clock.now_ms() / 1000;
    let body = envelope("evt_s");
    let sign = |t: i64| {
        format!(
            "t={t},v0=ignored,v1={}",
            hex::encode(hmac(
                b"new-secret",
                &[t.to_string().as_bytes(), b".", &body]
            ))
        )
    };
    assert_eq!(
        deliver(&h, &[("stripe-signature", &sign(now - 299))], body.clone())
            .await
            .status,
        200
    );
    let r = deliver(
        &h,
        &[("stripe-signature", &sign(now - 301))],
        envelope("evt_s2"),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.json()["message"].as_str().unwrap().contains("tolerance"));
    assert_eq!(
        deliver(
            &h,
            &[("stripe-signature", &format!("t={now},v0=abcd"))],
            body
        )
        .await
        .status,
        401
    );
}

#[tokio::test]
async fn standard_webhooks_scheme() {
    use base64::Engine;
    let h = Harness::start(&config_with("[tenants.webhooks]\nverify = { scheme = \"standard-webhooks\", secrets_env = [\"WH_STD\"] }\n")).await;
    let now = (h.clock.now_ms() / 1000).to_string();
    let body = envelope("evt_std");
    let sig = base64::engine::general_purpose::STANDARD.encode(hmac(
        b"std-key",
        &[b"msg_1", b".", now.as_bytes(), b".", &body],
    ));
    let good = format!("v1,bm90IGl0 v1,{sig}");
    let hs = [
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", now.as_str()),
        ("webhook-signature", good.as_str()),
    ];
    assert_eq!(
        deliver(&h, &hs, body.clone()).await.json(),
        json!({"ok": true})
    );
    let bad = [
        ("webhook-id", "msg_2"),
        ("webhook-timestamp", now.as_str()),
        ("webhook-signature", good.as_str()),
    ];
    assert_eq!(deliver(&h, &bad, body).await.status, 401);
}

#[tokio::test]
async fn tenants_without_a_receiver_answer_404() {
    let h = Harness::start(&config_with("")).await;
    assert_eq!(deliver(&h, &[], envelope("e")).await.status, 404);
}

fn routed(sink: &TestSink, file: &str, max_attempts: u32) -> String {
    config_with(&format!(
        r#"
[tenants.webhooks]
verify = {{ scheme = "hmac-sha256-hex", secrets_env = ["WH_SECRET"] }}
[[tenants.webhooks.routes]]
name = "inv"
events = "inventory.*"
sink = {{ http = "{}", secret_env = "FWD_SECRET", timeout = "2s" }}
max_attempts = {max_attempts}
backoff = "10ms"
backoff_max = "40ms"
[[tenants.webhooks.routes]]
name = "all"
events = "*"
sink = {{ file = "{file}" }}
"#,
        sink.url()
    ))
}

async fn signed(h: &Harness, body: Vec<u8>) -> Resp {
    let sig = hex::encode(hmac(b"new-secret", &[&body]));
    deliver(h, &[("x-karma-signature", &sig)], body).await
}

#[tokio::test]
async fn onward_delivery_retries_then_succeeds_signed_with_the_original_id() {
    let sink = TestSink::start().await;
    sink.fail_first
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let h = Harness::start(&routed(&sink, &file.display().to_string(), 5)).await;
    let body = envelope("evt_fwd");
    assert_eq!(signed(&h, body.clone()).await.json(), json!({"ok": true}));
    let other =
        serde_json::to_vec(&json!({"id": "evt_loc", "event": "locations.updated"})).unwrap();
    assert_eq!(signed(&h, other).await.status, 200);
    sink.wait_until("one successful delivery", |s| s.successes() == 1)
        .await;
    let got = sink.got.lock().unwrap().clone();
    // only the inventory event goes to the http route: 2 failures, then success
    assert_eq!(got.iter().map(|g| g.2).collect::<Vec<_>>(), [503, 503, 200]);
    for (headers, b, _) in &got {
        assert_eq!(b, &body);
        assert_eq!(headers["webhook-id"], "evt_fwd");
        let get = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_string());
        let s = karma_provider::webhook::Scheme::StandardWebhooks;
        let key = karma_provider::webhook::secret_bytes(&s, "whsec_ZndkLWtleQ==").unwrap();
        assert_eq!(
            karma_provider::webhook::verify(&s, &[key], &get, b, h.clock.now_ms(), 300_000),
            Ok(())
        );
    }
    // the file route takes every event, one JSON line each
    let wait_file = || {
        std::fs::read_to_string(&file)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for _ in 0..500 {
        if wait_file() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|l| l["id"].clone()).collect::<Vec<_>>(),
        [json!("evt_fwd"), json!("evt_loc")]
    );

    let inbox = h
        .admin("GET", "webhooks/inbox?event=inventory.*", None)
        .await
        .json();
    assert_eq!(inbox["count"], json!(1));
    let seq = inbox["events"][0]["seq"].as_u64().unwrap();
    // the inbox entry reaches "delivered" once both routes are done
    for _ in 0..500 {
        if h.admin("GET", &format!("webhooks/inbox/{seq}"), None)
            .await
            .json()["status"]
            == json!("delivered")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let one = h
        .admin("GET", &format!("webhooks/inbox/{seq}"), None)
        .await
        .json();
    assert_eq!(one["status"], json!("delivered"));
    let inv = one["delivery"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["route"] == json!("inv"))
        .unwrap()
        .clone();
    let outcomes: Vec<&str> = inv["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "delivered"]);
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    assert!(
        m.contains(
            "kp_webhook_onward_attempts_total{tenant=\"acme\",route=\"inv\",outcome=\"failed\"} 2"
        ),
        "{m}"
    );
    assert!(m.contains("kp_webhook_queued 0"), "{m}");
}

#[tokio::test]
async fn exhausted_attempts_go_to_dead_letters_and_replay_delivers() {
    let sink = TestSink::start().await;
    sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(&routed(
        &sink,
        &dir.path().join("f.jsonl").display().to_string(),
        3,
    ))
    .await;
    assert_eq!(signed(&h, envelope("evt_dead")).await.status, 200);
    for _ in 0..500 {
        if h.admin("GET", "webhooks/dead-letters", None).await.json()["count"] == json!(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let dl = h.admin("GET", "webhooks/dead-letters", None).await.json();
    assert_eq!(dl["count"], json!(1));
    assert_eq!(
        (
            dl["deadLetters"][0]["route"].clone(),
            dl["deadLetters"][0]["attempts"].clone(),
            dl["deadLetters"][0]["lastError"].clone()
        ),
        (json!("inv"), json!(3), json!("HTTP 503"))
    );
    assert_eq!(sink.got.lock().unwrap().len(), 3);
    assert_eq!(
        h.admin("GET", "webhooks/inbox?status=dead", None)
            .await
            .json()["count"],
        json!(1)
    );
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    assert!(m.contains("kp_webhook_dead_letters 1"), "{m}");

    sink.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = h.admin("POST", "webhooks/dead-letters/replay", None).await;
    assert_eq!(r.json(), json!({"ok": true, "replayed": 1}));
    sink.wait_until("delivery after replay", |s| s.successes() == 1)
        .await;
    assert_eq!(
        h.admin("GET", "webhooks/dead-letters", None).await.json()["count"],
        json!(0)
    );
    // The replay's attempt is numbered after the three before it, which are all still there.
    let seq = h.admin("GET", "webhooks/inbox", None).await.json()["events"][0]["seq"]
        .as_u64()
        .unwrap();
    let mut attempts = Vec::new();
    for _ in 0..500 {
        let one = h
            .admin("GET", &format!("webhooks/inbox/{seq}"), None)
            .await
            .json();
        attempts = one["delivery"][0]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["n"].as_u64().unwrap(),
                    a["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if attempts.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let want: Vec<(u64, String)> = [(1, "failed"), (2, "failed"), (3, "dead"), (4, "delivered")]
        .into_iter()
        .map(|(n, o)| (n, o.to_owned()))
        .collect();
    assert_eq!(attempts, want);
    let r = h
        .admin("POST", "webhooks/dead-letters/inv/999/purge", None)
        .await
        .json();
    assert_eq!(r["purged"], json!(0));
    let r = h.admin("GET", "webhooks/inbox?status=bogus", None).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("status"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicate_deliveries_make_one_inbox_entry() {
    let h = std::sync::Arc::new(Harness::start(&config_with(HEX)).await);
    let body = envelope("evt_race");
    let sig = hex::encode(hmac(b"new-secret", &[&body]));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (h, body, sig) = (h.clone(), body.clone(), sig.clone());
        tasks.push(tokio::spawn(async move {
            deliver(&h, &[("x-karma-signature", &sig)], body)
                .await
                .json()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let v = t.await.unwrap();
        assert_eq!(v["ok"], json!(true));
        if v.get("duplicate").is_none() {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(
        h.admin("GET", "webhooks/inbox", None).await.json()["count"],
        json!(1)
    );
}

#[tokio::test]
async fn onward_delivery_over_https_with_a_route_ca_file() {
    let sink = TestSink::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sink.tls_ca_pem.as_ref().unwrap()).unwrap();
    let cfg = config_with(&format!(
        "[tenants.webhooks]\nverify = {{ scheme = \"hmac-sha256-hex\", secrets_env = [\"WH_SECRET\"] }}\n[[tenants.webhooks.routes]]\nevents = \"*\"\nsink = {{ http = \"{}\", secret_env = \"FWD_SECRET\", ca_file = \"{}\" }}\nbackoff = \"10ms\"\n",
        sink.url(),
        ca.display()
    ));
    let h = Harness::start(&cfg).await;
    assert!(sink.url().starts_with("https://"));
    assert_eq!(signed(&h, envelope("evt_tls")).await.status, 200);
    sink.wait_until("delivery over TLS", |s| s.successes() == 1)
        .await;
    assert_eq!(sink.got.lock().unwrap()[0].0["webhook-id"], "evt_tls");
}

#[tokio::test]
async fn an_untrusted_https_sink_is_never_delivered_to() {
    let sink = TestSink::start_tls().await;
    let cfg = config_with(&format!(
        "[tenants.webhooks]\nverify = {{ scheme = \"hmac-sha256-hex\", secrets_env = [\"WH_SECRET\"] }}\n[[tenants.webhooks.routes]]\nname = \"tls\"\nevents = \"*\"\nsink = {{ http = \"{}\", secret_env = \"FWD_SECRET\" }}\nmax_attempts = 2\nbackoff = \"10ms\"\n",
        sink.url()
    ));
    let h = Harness::start(&cfg).await;
    assert_eq!(signed(&h, envelope("evt_untrusted")).await.status, 200);
    for _ in 0..500 {
        if h.admin("GET", "webhooks/dead-letters", None).await.json()["count"] == json!(1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let dl = h.admin("GET", "webhooks/dead-letters", None).await.json();
    assert_eq!(dl["count"], json!(1), "{dl}");
    // the handshake failed: the sink never saw a request
    assert!(sink.got.lock().unwrap().is_empty());
}

/// The inbox listing and the dedupe janitor read page by page (`job_slice_records = 2`):
/// the listing is whole and counts every match, and the janitor at start forgets every
/// delivery id past retention across pages.
#[tokio::test]
async fn inbox_listing_and_janitor_work_page_by_page() {
    let toml = config_with(HEX).replace(
        "cache_capacity_mb = 16",
        "cache_capacity_mb = 16\njob_slice_records = 2",
    );
    let mut h = Harness::start(&toml).await;
    for i in 0..5 {
        let body = envelope(&format!("evt_{i}"));
        let sig = hex::encode(hmac(b"new-secret", &[&body]));
        assert_eq!(
            deliver(&h, &[("x-karma-signature", &sig)], body)
                .await
                .status,
            200
        );
    }
    let jobs_before = jobs(&h).await;
    let inbox = h.admin("GET", "webhooks/inbox?limit=3", None).await.json();
    assert_eq!(inbox["count"], json!(5));
    let ids: Vec<_> = inbox["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, [json!("evt_2"), json!("evt_3"), json!("evt_4")]);
    assert!(jobs(&h).await - jobs_before >= 3);

    h.clock.advance_ms(8 * 86_400_000);
    h.restart().await;
    let mut left = usize::MAX;
    for _ in 0..200 {
        left = dedupe_records(&h).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(left, 0, "delivery ids past retention are forgotten");
}

async fn jobs(h: &Harness) -> u64 {
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix("kp_store_jobs_total ")?.parse().ok())
        .unwrap_or(0)
}

/// How many `whd/` (dedupe) records the admin export holds.
async fn dedupe_records(h: &Harness) -> usize {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let all = h
        .request(
            "GET",
            "/admin/v1/export",
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    String::from_utf8(all.bytes)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"key\":\"whd/"))
        .count()
}

/// Wait until `n` dead letters are listed; the list.
async fn dead_letters(h: &Harness, n: u64) -> serde_json::Value {
    for _ in 0..1000 {
        let dl = h.admin("GET", "webhooks/dead-letters", None).await.json();
        if dl["count"] == json!(n) {
            return dl;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never {n} dead letters");
}

#[tokio::test]
async fn one_dead_letter_is_replayed_and_another_purged_by_route_and_seq() {
    let sink = TestSink::start().await;
    sink.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.jsonl").display().to_string();
    let h = Harness::start(&routed(&sink, &file, 2)).await;
    assert_eq!(signed(&h, envelope("evt_a")).await.status, 200);
    assert_eq!(signed(&h, envelope("evt_b")).await.status, 200);
    let dl = dead_letters(&h, 2).await;
    let at = |i: usize| {
        format!(
            "webhooks/dead-letters/{}/{}",
            dl["deadLetters"][i]["route"].as_str().unwrap(),
            dl["deadLetters"][i]["seq"]
        )
    };
    let (first, second) = (at(0), at(1));
    assert_eq!(dl["deadLetters"][0]["id"], json!("evt_a"), "{dl}");
    sink.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = h.admin("POST", &format!("{first}/replay"), None).await;
    assert_eq!(r.json(), json!({"ok": true, "replayed": 1}));
    sink.wait_until("evt_a delivered", |s| s.successes() == 1)
        .await;
    let dl = dead_letters(&h, 1).await;
    assert_eq!(dl["deadLetters"][0]["id"], json!("evt_b"), "{dl}");
    let r = h.admin("POST", &format!("{second}/purge"), None).await;
    assert_eq!(r.json()["purged"], json!(1));
    dead_letters(&h, 0).await;
    // gone: neither can be replayed again, and nothing more reaches the sink
    assert_eq!(
        h.admin("POST", &format!("{second}/replay"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        h.admin("POST", &format!("{first}/replay"), None)
            .await
            .status,
        404
    );
    let delivered: Vec<String> = sink
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.2 == 200)
        .map(|g| g.0["webhook-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, ["evt_a"]);
}

/// The receiver's `Retry-After` (here 1 s) replaces the route's backoff (10 ms): the next
/// attempt is not sent before it.
#[tokio::test]
async fn a_sinks_retry_after_is_honoured_over_http() {
    let sink = TestSink::start().await;
    *sink.retry_after.lock().unwrap() = Some("1".into());
    sink.fail_first
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.jsonl").display().to_string();
    let h = Harness::start(&routed(&sink, &file, 5)).await;
    assert_eq!(signed(&h, envelope("evt_ra")).await.status, 200);
    sink.wait_until("delivered after the wait", |s| s.successes() == 1)
        .await;
    let at = sink.at.lock().unwrap().clone();
    assert_eq!(at.len(), 2);
    let gap = at[1] - at[0];
    assert!(
        gap >= std::time::Duration::from_secs(1),
        "retried after {gap:?}"
    );
}

/// Without `Retry-After` the route's backoff applies and doubles per attempt (with jitter
/// between half and all of it): 200 ms, 400 ms, 800 ms at least halved.
#[tokio::test]
async fn backoff_doubles_between_attempts_over_http() {
    let sink = TestSink::start().await;
    *sink.retry_after.lock().unwrap() = Some(String::new());
    sink.fail_first
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.jsonl").display().to_string();
    let toml = routed(&sink, &file, 10)
        .replace("backoff = \"10ms\"", "backoff = \"200ms\"")
        .replace("backoff_max = \"40ms\"", "backoff_max = \"2s\"");
    let h = Harness::start(&toml).await;
    assert_eq!(signed(&h, envelope("evt_bo")).await.status, 200);
    sink.wait_until("delivered after three failures", |s| s.successes() == 1)
        .await;
    let at = sink.at.lock().unwrap().clone();
    assert_eq!(at.len(), 4);
    for (i, least_ms) in [100u64, 200, 400].into_iter().enumerate() {
        let gap = at[i + 1] - at[i];
        assert!(
            gap >= std::time::Duration::from_millis(least_ms),
            "attempt {}: {gap:?}",
            i + 2
        );
    }
}

/// Secret rotation for the Stripe scheme over HTTP: the new and the old secret both verify,
/// any other does not.
#[tokio::test]
async fn stripe_scheme_accepts_both_secrets_during_rotation() {
    let h = Harness::start(&config_with("[tenants.webhooks]\nverify = { scheme = \"stripe\", secrets_env = [\"WH_SECRET\", \"WH_OLD\"] }\ntolerance = \"5m\"\n")).await;
    let now = h.clock.now_ms() / 1000;
    let sign = |secret: &[u8], body: &[u8]| {
        format!(
            "t={now},v1={}",
            hex::encode(hmac(secret, &[now.to_string().as_bytes(), b".", body]))
        )
    };
    for (id, secret, status) in [
        ("evt_new", &b"new-secret"[..], 200),
        ("evt_old", b"old-secret", 200),
        ("evt_other", b"other", 401),
    ] {
        let body = envelope(id);
        let r = deliver(&h, &[("stripe-signature", &sign(secret, &body))], body).await;
        assert_eq!(
            r.status,
            status,
            "{id}: {}",
            String::from_utf8_lossy(&r.bytes)
        );
    }
}

/// Standard Webhooks over HTTP: rotation (two `whsec_` secrets) and the timestamp
/// tolerance, both ways.
#[tokio::test]
async fn standard_webhooks_rotation_and_tolerance() {
    use base64::Engine;
    let h = Harness::start(&config_with("[tenants.webhooks]\nverify = { scheme = \"standard-webhooks\", secrets_env = [\"WH_STD\", \"FWD_SECRET\"] }\ntolerance = \"5m\"\n")).await;
    let now = h.clock.now_ms() / 1000;
    let send = |id: &'static str, key: &'static [u8], t: i64| {
        let h = &h;
        async move {
            let body = envelope(id);
            let ts = t.to_string();
            let sig = base64::engine::general_purpose::STANDARD.encode(hmac(
                key,
                &[id.as_bytes(), b".", ts.as_bytes(), b".", &body],
            ));
            let sig = format!("v1,{sig}");
            deliver(
                h,
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts),
                    ("webhook-signature", &sig),
                ],
                body,
            )
            .await
        }
    };
    assert_eq!(send("msg_new", b"std-key", now).await.status, 200);
    assert_eq!(send("msg_old", b"fwd-key", now).await.status, 200);
    assert_eq!(send("msg_x", b"nope", now).await.status, 401);
    assert_eq!(send("msg_late", b"std-key", now - 299).await.status, 200);
    let r = send("msg_stale", b"std-key", now - 301).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["message"].as_str().unwrap().contains("tolerance"),
        "{}",
        r.json()
    );
    assert_eq!(send("msg_future", b"std-key", now + 301).await.status, 401);
}

#[tokio::test]
async fn envelope_ids_are_limited_in_characters_not_bytes() {
    // the spec's maxLength counts characters: 256 four-byte characters are 1024 bytes
    let h = Harness::start(&config_with(HEX)).await;
    let id: String = "𝄞".repeat(256);
    let r = signed(&h, envelope(&id)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let r = signed(&h, envelope(&"𝄞".repeat(257))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "id");
}
