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
    assert_eq!(
        inbox["events"][0]["body"],
        json!(String::from_utf8(body.clone()).unwrap())
    );
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
