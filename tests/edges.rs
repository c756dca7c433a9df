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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = h.server.as_ref().unwrap().addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // the server may close before reading all of a bad request: a failed write is fine
    let _ = s.write_all(bytes).await;
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
