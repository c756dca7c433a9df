//! Limits that are promised and now pinned (issue 20 §4): body size and content type on
//! every loyalty endpoint and the webhook receiver, non-ASCII codes and identifiers, and
//! invalid UTF-8 in a body.

mod common;

use common::*;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[tenants.campaigns]]
id = "umlaut"
codes = ["KAFFE-ÖL"]
discount = { amount_cents = 100 }
[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
[tenants.webhooks]
verify = { scheme = "hmac-sha256-hex", secrets_env = ["WH_SECRET"] }
"#;

const POSTS: [&str; 7] = [
    "loyalty/lookup",
    "loyalty/enroll",
    "loyalty/award",
    "loyalty/account",
    "loyalty/rewards",
    "loyalty/redeem",
    "webhooks",
];

async fn post(h: &Harness, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
    h.request(
        "POST",
        &format!("/v1/acme/{path}"),
        &[("content-type", content_type), ("x-provider-key", KEY)],
        body,
    )
    .await
}

fn error(r: &Resp) -> (u16, Value) {
    let v = r.json();
    assert_eq!(v["ok"], json!(false), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    (r.status, v["error"].clone())
}

#[tokio::test]
async fn every_loyalty_endpoint_and_the_receiver_limit_size_and_content_type() {
    let h = Harness::start(&config_with(CONFIG)).await;
    // 64 KiB is the default max_body_bytes: one byte more is refused, whole.
    let mut big = br#"{"pad":""#.to_vec();
    big.resize(65_536 - 1, b'x');
    big.extend_from_slice(br#""}"#);
    for path in POSTS {
        let r = post(&h, path, "application/json", big.clone()).await;
        assert_eq!(error(&r), (413, json!("BODY_TOO_LARGE")), "{path}");
        let r = post(&h, path, "text/plain", b"{}".to_vec()).await;
        assert_eq!(error(&r), (415, json!("UNSUPPORTED_MEDIA_TYPE")), "{path}");
    }
}

#[tokio::test]
async fn non_ascii_codes_and_identifiers_work_and_invalid_utf8_is_a_400() {
    let h = Harness::start(&config_with(CONFIG)).await;
    let v = h
        .call("voucher/check", &check_body("kaffe-öl", 1000))
        .await
        .json();
    assert_eq!(
        (v["ok"].clone(), v["voucherNr"].clone()),
        (json!(true), json!("KAFFE-ÖL")),
        "{v}"
    );
    let user = "användare-åäö-日本";
    let r = h
        .call(
            "loyalty/enroll",
            &json!({"userId": user, "loyaltyProgramId": 7, "locationId": 1}),
        )
        .await;
    assert_eq!(r.json()["ok"], json!(true), "{}", r.json());
    let a = h
        .call(
            "loyalty/account",
            &json!({"userId": user, "loyaltyProgramId": 7}),
        )
        .await;
    assert_eq!(a.json()["currentBalance"], json!(50));
    // invalid UTF-8 inside a string: a 400 in our words, on a voucher and a loyalty call
    for path in ["voucher/check", "loyalty/account"] {
        let mut body = br#"{"code":"A"#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(
            br#"","userId":"u","loyaltyProgramId":7,"cart":{"items":[],"totalCents":1}}"#,
        );
        let r = post(&h, path, "application/json", body).await;
        assert_eq!(r.status, 400, "{path}");
        let v = r.json();
        assert_eq!(v["ok"], json!(false), "{v}");
        assert!(!v["message"].as_str().unwrap().contains("expected"), "{v}");
    }
}
