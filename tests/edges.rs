//! Contract edges over real HTTP (issue 19): one validation rule per field on every
//! endpoint, exact integers written as decimals, duplicate keys refused everywhere, our own
//! sentences in every 400, JSON bodies on the errors hyper answers itself, and the
//! webhook interop edges (unpadded `whsec_` secrets, `max_age`, the demo receiver).

mod common;

use common::*;
use serde_json::{json, Value};

const CAMPAIGNS: &str = r#"
[[tenants.campaigns]]
id = "ten"
codes = ["TEN"]
discount = { amount_cents = 1000 }
max_uses_per_guest = 1
[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
[[tenants.loyalty.rewards]]
id = "cake"
title = "Cake"
points_cost = 10
"#;

async fn harness() -> Harness {
    Harness::start(&config_with(CAMPAIGNS)).await
}

/// POST raw bytes to `/v1/acme/{path}` with the tenant key.
async fn raw(h: &Harness, path: &str, body: &str) -> Resp {
    h.request(
        "POST",
        &format!("/v1/acme/{path}"),
        &[
            ("content-type", "application/json"),
            ("x-provider-key", KEY),
        ],
        body.as_bytes().to_vec(),
    )
    .await
}

/// A 400 `INVALID_FIELD` naming `field`, in our words (no serde wording).
fn assert_invalid(r: &Resp, field: &str) -> String {
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.bytes));
    let v = r.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"], "INVALID_FIELD", "{v}");
    assert_eq!(v["field"], field, "{v}");
    let m = v["message"].as_str().unwrap().to_string();
    assert!(m.starts_with(&format!("{field}: ")), "{m}");
    for serde_word in ["invalid type", "expected", "`", "line ", "duplicate field"] {
        assert!(!m.contains(serde_word), "serde wording in {m:?}");
    }
    m
}

fn loy(n: u64) -> String {
    format!("loy_{n:032x}")
}

#[tokio::test]
async fn empty_and_long_ids_are_refused_on_every_endpoint() {
    let h = harness().await;
    let long = "x".repeat(129);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "voucher/check",
            json!({"code":"TEN","cart":cart(5000),"userId":""}),
            "userId",
        ),
        (
            "voucher/check",
            json!({"code":"TEN","cart":cart(5000),"locationId":""}),
            "locationId",
        ),
        (
            "voucher/check",
            json!({"code":"TEN","cart":cart(5000),"userId":long}),
            "userId",
        ),
        (
            "voucher/check",
            json!({"code":"TEN","cart":{"items":[{"inventoryItemId":"","quantity":1,"priceCents":5}],"totalCents":5}}),
            "cart.items[0].inventoryItemId",
        ),
        (
            "voucher/commit",
            json!({"amountCents":0,"transactionId":format!("res_{:032x}", 1),"providerRef":""}),
            "providerRef",
        ),
        (
            "loyalty/account",
            json!({"userId":long,"loyaltyProgramId":7}),
            "userId",
        ),
        (
            "loyalty/account",
            json!({"userId":"","loyaltyProgramId":7}),
            "userId",
        ),
        (
            "loyalty/lookup",
            json!({"loyaltyProgramId":7,"identifier":long,"identifierType":"phone"}),
            "identifier",
        ),
        (
            "loyalty/lookup",
            json!({"loyaltyProgramId":7,"identifier":"","identifierType":"phone"}),
            "identifier",
        ),
        (
            "loyalty/lookup",
            json!({"loyaltyProgramId":7,"identifier":"u1","identifierType":"userId","locationId":""}),
            "locationId",
        ),
        (
            "loyalty/rewards",
            json!({"loyaltyProgramId":long}),
            "loyaltyProgramId",
        ),
        (
            "loyalty/rewards",
            json!({"loyaltyProgramId":""}),
            "loyaltyProgramId",
        ),
        (
            "loyalty/enroll",
            json!({"userId":"u1","loyaltyProgramId":7,"email":long}),
            "email",
        ),
        (
            "loyalty/award",
            json!({"userId":"u1","loyaltyProgramId":7,"purchaseId":"p1","purchaseAmountCents":100,"itemIds":[""],"transactionId":loy(1)}),
            "itemIds[0]",
        ),
        (
            "loyalty/redeem",
            json!({"userId":"u1","loyaltyProgramId":long,"rewardId":"cake","transactionId":loy(2)}),
            "loyaltyProgramId",
        ),
    ];
    let mut messages = std::collections::HashMap::new();
    for (path, body, field) in cases {
        let r = h.call(path, &body).await;
        let m = assert_invalid(&r, field);
        // the same field gets the same rule (and sentence) everywhere
        let rule = m.split_once(": ").unwrap().1.to_string();
        messages.insert(rule, ());
    }
    assert_eq!(messages.len(), 1, "one id rule, one sentence: {messages:?}");
}

#[tokio::test]
async fn an_empty_user_id_no_longer_shares_one_guest_limit() {
    let h = harness().await;
    // two strangers sending "" used to share max_uses_per_guest = 1
    let mut b = check_body("TEN", 5000);
    b["userId"] = json!("");
    assert_invalid(&h.call("voucher/check", &b).await, "userId");
    b["userId"] = json!(null);
    let r = h.call("voucher/check", &b).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ok"], true, "{}", r.json());
}

#[tokio::test]
async fn integers_written_as_decimals_are_exact_integers() {
    let h = harness().await;
    let r = raw(
        &h,
        "voucher/check",
        r#"{"code":"TEN","cart":{"items":[{"inventoryItemId":1001.0,"quantity":1,"priceCents":5e3}],"totalCents":5000.0}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let v = r.json();
    assert_eq!(v["ok"], true, "{v}");
    let pref = v["providerRef"].as_str().unwrap().to_string();
    let tx = format!("res_{:032x}", 7);
    let r = raw(
        &h,
        "voucher/commit",
        &format!(r#"{{"amountCents":1000.000,"transactionId":"{tx}","providerRef":"{pref}"}}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["amountCents"], 1000, "{}", r.json());

    for (body, field) in [
        (
            r#"{"code":"TEN","cart":{"items":[],"totalCents":500.5}}"#,
            "cart.totalCents",
        ),
        (
            r#"{"code":"TEN","cart":{"items":[],"totalCents":1e400}}"#,
            "cart.totalCents",
        ),
        (
            r#"{"code":"TEN","cart":{"items":[],"totalCents":"500"}}"#,
            "cart.totalCents",
        ),
        (
            r#"{"code":"TEN","cart":{"items":[],"totalCents":-1}}"#,
            "cart.totalCents",
        ),
        (
            r#"{"code":"TEN","cart":{"items":[],"totalCents":99999999999999999999}}"#,
            "cart.totalCents",
        ),
        (
            r#"{"code":"TEN","cart":{"items":[],"totalCents":1.0000000000000000001e3}}"#,
            "cart.totalCents",
        ),
        (r#"{"code":5,"cart":{"items":[],"totalCents":500}}"#, "code"),
        (r#"{"cart":{"items":[],"totalCents":500}}"#, "code"),
    ] {
        let m = assert_invalid(&raw(&h, "voucher/check", body).await, field);
        assert!(m.contains("must") || m.contains("is required"), "{m}");
    }
    let r = raw(
        &h,
        "loyalty/award",
        &format!(r#"{{"userId":"u1","loyaltyProgramId":7,"purchaseId":"p","purchaseAmountCents":100.5,"transactionId":"{}"}}"#, loy(3)),
    )
    .await;
    let m = assert_invalid(&r, "purchaseAmountCents");
    assert!(m.contains("integer"), "{m}");
}

#[tokio::test]
async fn duplicate_keys_are_refused_on_every_endpoint() {
    let h = harness().await;
    for (path, body, field) in [
        (
            "voucher/check",
            r#"{"code":"TEN","code":"X","cart":{"items":[],"totalCents":5}}"#,
            "code",
        ),
        (
            "voucher/check",
            r#"{"code":"TEN","cart":{"items":[],"totalCents":5,"totalCents":6}}"#,
            "cart.totalCents",
        ),
        (
            "voucher/commit",
            r#"{"amountCents":1,"amountCents":2}"#,
            "amountCents",
        ),
        (
            "voucher/reactivate",
            r#"{"transactionId":"a","transactionId":"b"}"#,
            "transactionId",
        ),
        (
            "loyalty/lookup",
            r#"{"identifier":"a","identifier":"b"}"#,
            "identifier",
        ),
        ("loyalty/enroll", r#"{"userId":"a","userId":"b"}"#, "userId"),
        ("loyalty/award", r#"{"itemIds":[],"itemIds":[]}"#, "itemIds"),
        (
            "loyalty/account",
            r#"{"userId":"a","extra":{"k":1,"k":2}}"#,
            "extra.k",
        ),
        (
            "loyalty/rewards",
            r#"{"loyaltyProgramId":7,"loyaltyProgramId":8}"#,
            "loyaltyProgramId",
        ),
        (
            "loyalty/redeem",
            r#"{"rewardId":"a","rewardId":"a"}"#,
            "rewardId",
        ),
    ] {
        let m = assert_invalid(&raw(&h, path, body).await, field);
        assert!(m.contains("more than once"), "{path}: {m}");
    }
}

#[tokio::test]
async fn malformed_bodies_get_our_sentences() {
    let h = harness().await;
    for (body, code) in [
        ("{\"code\":", "MALFORMED_JSON"),
        ("{\"code\":\"TEN\"} {}", "MALFORMED_JSON"),
        ("{'code':1}", "MALFORMED_JSON"),
        ("[1,2]", "INVALID_BODY"),
        ("\"just a string\"", "INVALID_BODY"),
    ] {
        let r = raw(&h, "voucher/check", body).await;
        assert_eq!(r.status, 400);
        let v = r.json();
        assert_eq!(v["error"], code, "{body}: {v}");
        let m = v["message"].as_str().unwrap();
        assert!(m.starts_with("the body "), "{m}");
        assert!(!m.contains("expected") && !m.contains('`'), "{m}");
    }
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let r = raw(&h, "loyalty/award", &deep).await;
    assert_eq!(r.json()["error"], "MALFORMED_JSON");
}

/// Send raw bytes on a new connection and read the whole answer (until the server closes).
async fn tcp(h: &Harness, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    tcp_then(h, bytes, false).await
}

/// Like [`tcp`]; with `half_close`, shut down the write side once the bytes are sent.
async fn tcp_then(h: &Harness, bytes: &[u8], half_close: bool) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = h.server.as_ref().unwrap().addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // the server may close before reading all of a bad request: a failed write is fine
    let _ = s.write_all(bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out));
    let _ = read.await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, head.to_ascii_lowercase(), out[body_at..].to_vec())
}

/// The answer is `status` with a JSON error body carrying `code`.
fn assert_json_error(answer: &(u16, String, Vec<u8>), status: u16, code: &str) {
    let (s, head, body) = answer;
    assert_eq!(*s, status, "{head}\n{}", String::from_utf8_lossy(body));
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn errors_hyper_answers_itself_have_json_bodies() {
    let h = harness().await;
    let post = |extra: &str| {
        format!(
            "POST /v1/acme/voucher/check HTTP/1.1\r\nhost: x\r\nx-provider-key: {KEY}\r\n{extra}\r\n"
        )
    };
    let big = format!("x-big: {}\r\n", "a".repeat(20_000));
    for (req, status, code) in [
        ("GARBAGE\r\n\r\n".to_string(), 400, "MALFORMED_REQUEST"),
        (
            "GET / HTTP/9.9\r\nhost: x\r\n\r\n".to_string(),
            400,
            "MALFORMED_REQUEST",
        ),
        (post(&big), 431, "HEADERS_TOO_LARGE"),
        (
            post("content-type: application/json\x01\r\ncontent-length: 2\r\n"),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            post("content-length: 2\r\ncontent-length: 3\r\n"),
            400,
            "MALFORMED_REQUEST",
        ),
        (post("content-length: -2\r\n"), 400, "MALFORMED_REQUEST"),
        (post("bad header: v\r\n"), 400, "MALFORMED_REQUEST"),
        (
            format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000)),
            431,
            "HEADERS_TOO_LARGE",
        ),
    ] {
        let a = tcp(&h, req.as_bytes()).await;
        assert_json_error(&a, status, code);
    }
    // a chunked body whose framing breaks is refused by our code, in our words
    let a = tcp(
        &h,
        format!(
            "{}zz\r\n{{}}\r\n0\r\n\r\n",
            post("transfer-encoding: chunked\r\nconnection: close\r\n")
        )
        .as_bytes(),
    )
    .await;
    assert_json_error(&a, 400, "BAD_BODY");
    // a client that half-closes still gets its answer; a body cut short by the close is
    // BAD_BODY, not a silently dropped request
    let a = tcp_then(
        &h,
        format!(
            "{}{{}}",
            post("content-type: application/json\r\ncontent-length: 2\r\n")
        )
        .as_bytes(),
        true,
    )
    .await;
    assert_json_error(&a, 400, "INVALID_FIELD");
    let a = tcp_then(
        &h,
        format!(
            "{}{{\"co",
            post("content-type: application/json\r\ncontent-length: 90\r\n")
        )
        .as_bytes(),
        true,
    )
    .await;
    assert_json_error(&a, 400, "BAD_BODY");
    // the connection still serves good requests afterwards, and our own answers are untouched
    let a = tcp(
        &h,
        format!(
            "{}{{}}",
            post("content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n")
        )
        .as_bytes(),
    )
    .await;
    assert_json_error(&a, 400, "INVALID_FIELD");
}

fn hex_sig(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

async fn deliver(h: &Harness, tenant: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut hs = vec![("content-type", "application/json")];
    hs.extend_from_slice(headers);
    h.request(
        "POST",
        &format!("/v1/{tenant}/webhooks"),
        &hs,
        body.to_vec(),
    )
    .await
}

#[tokio::test]
async fn whsec_secrets_without_padding_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("wh");
    // base64("std-key") is "c3RkLWtleQ==": written without its padding
    std::fs::write(&secret_file, "whsec_c3RkLWtleQ\n").unwrap();
    let h = Harness::start(&config_with(&format!(
        "[tenants.webhooks]\nverify = {{ scheme = \"standard-webhooks\", secrets_file = [{:?}] }}\n",
        secret_file.display().to_string()
    )))
    .await;
    let body = br#"{"id":"evt_std","event":"inventory.created"}"#;
    let now = h.clock.now_ms() / 1000;
    let headers = karma_provider::webhook::sign_headers(
        &karma_provider::webhook::Scheme::StandardWebhooks,
        b"std-key",
        "evt_std",
        now,
        body,
    );
    // the signature itself sent without padding too
    let headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.trim_end_matches('=').to_string()))
        .collect();
    let hs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = deliver(&h, "acme", &hs, body).await;
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
}

#[tokio::test]
async fn max_age_checks_the_envelope_timestamp() {
    let h = Harness::start(&config_with(
        "[tenants.webhooks]\nverify = { scheme = \"hmac-sha256-hex\", secrets_env = [\"WH_SECRET\"] }\nmax_age = \"10m\"\nretention = \"1d\"\n",
    ))
    .await;
    let send = |id: &str, ts: Option<&str>| {
        let mut v = json!({"id": id, "event": "inventory.created"});
        if let Some(ts) = ts {
            v["timestamp"] = json!(ts);
        }
        serde_json::to_vec(&v).unwrap()
    };
    // T0 is 2026-06-01T10:00:00Z
    let fresh = send("evt_a", Some("2026-06-01T09:55:00Z"));
    let r = deliver(
        &h,
        "acme",
        &[("x-karma-signature", &hex_sig(b"new-secret", &fresh))],
        &fresh,
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    for (body, what) in [
        (
            send("evt_b", Some("2026-06-01T09:49:59Z")),
            "older than max_age",
        ),
        (
            send("evt_c", Some("2026-06-01T10:10:01Z")),
            "ahead by more than max_age",
        ),
        (send("evt_d", None), "missing"),
    ] {
        let r = deliver(
            &h,
            "acme",
            &[("x-karma-signature", &hex_sig(b"new-secret", &body))],
            &body,
        )
        .await;
        assert_invalid(&r, "timestamp");
        let _ = what;
    }
    // a max_age longer than retention is a config error naming the key
    let text = config_with(
        "[tenants.webhooks]\nverify = { scheme = \"hmac-sha256-hex\", secrets_env = [\"WH_SECRET\"] }\nmax_age = \"2d\"\nretention = \"1d\"\n",
    )
    .replace("@DATA@", "/tmp/unused");
    let e = karma_provider::Config::from_toml(&text, "t.toml", &|k: &str| {
        (k == "WH_SECRET" || k == "ACME_KEY" || k == "BASIC_PASS" || k == "ADMIN_TOKEN")
            .then(|| "x".to_string())
    })
    .unwrap_err();
    assert!(e.key.ends_with("webhooks.max_age"), "{e}");
}

#[tokio::test]
async fn the_webhook_receiver_refuses_duplicate_keys() {
    let h = Harness::start(&config_with(
        "[tenants.webhooks]\nverify = { scheme = \"hmac-sha256-hex\", secrets_env = [\"WH_SECRET\"] }\n",
    ))
    .await;
    let body = br#"{"id":"a","event":"x.y","id":"b"}"#;
    let r = deliver(
        &h,
        "acme",
        &[("x-karma-signature", &hex_sig(b"new-secret", body))],
        body,
    )
    .await;
    assert_invalid(&r, "id");
    // the envelope's fields follow the rule table too: not blank, no control characters
    for (body, field) in [
        (&br#"{"id":"  ","event":"x.y"}"#[..], "id"),
        (&br#"{"id":"a","event":"x\u0007y"}"#[..], "event"),
    ] {
        let sig = hex_sig(b"new-secret", body);
        let r = deliver(&h, "acme", &[("x-karma-signature", &sig)], body).await;
        assert_invalid(&r, field);
    }
}

/// The embedded demo config, on an ephemeral port and a temp data dir.
async fn demo() -> (karma_provider::Server, tempfile::TempDir) {
    use karma_provider::config::{DemoEnv, DEFAULT_ORIGIN, DEFAULT_TOML};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg =
        karma_provider::Config::from_toml(DEFAULT_TOML, DEFAULT_ORIGIN, &DemoEnv).unwrap();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.storage.path = dir.path().join("data");
    let s = karma_provider::Server::start(cfg, karma_provider::Clock::manual_at(T0))
        .await
        .unwrap();
    (s, dir)
}

#[tokio::test]
async fn the_readme_signed_delivery_works_on_the_demo() {
    let (server, _dir) = demo().await;
    // exactly the README's paste-able delivery (secret "demo-secret", tenant "demo")
    let body = br#"{"id":"evt_1","event":"inventory.created","resource":"inventory","resourceId":"42","timestamp":"2026-11-23T10:00:00Z","apiVersion":"v1"}"#;
    let readme = std::fs::read_to_string("README.md").unwrap();
    assert!(readme.contains(std::str::from_utf8(body).unwrap()));
    assert!(readme.contains("curl -s localhost:8080/v1/demo/webhooks"));
    assert!(!readme.contains("/v1/acme/webhooks"));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<hyper::body::Bytes>>();
    let sig = hex_sig(b"demo-secret", body);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let req = hyper::Request::post(format!("http://{}/v1/demo/webhooks", server.addr))
            .header("content-type", "application/json")
            .header("x-karma-signature", &sig)
            .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
                body,
            )))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        use http_body_util::BodyExt;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        answers.push((status, serde_json::from_slice::<Value>(&bytes).unwrap()));
    }
    assert_eq!(
        answers,
        vec![
            (200, json!({"ok": true})),
            (200, json!({"ok": true, "duplicate": true}))
        ]
    );
    server.stop().await;
}
