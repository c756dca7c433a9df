//! Provider states over HTTP, as the Pact verifier drives them: the empty state, idempotent
//! setup, the admin token beside a tenant's Basic auth, and the `hold` / `committed` states
//! returning the values they made.

mod common;

use common::*;
use serde_json::{json, Value};

const SETUP: &str = r#"
[[tenants.campaigns]]
id = "single"
codes = ["ONE-USE-1"]
discount = { amount_cents = 500 }
max_uses_per_code = 1
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
    let toml = config_with(SETUP).replace(
        "token_env = \"ADMIN_TOKEN\"",
        "token_env = \"ADMIN_TOKEN\"\nprovider_states = true",
    );
    Harness::start(&toml).await
}

async fn state(h: &Harness, name: &str, params: Value) -> (u16, Value) {
    let r = h
        .admin(
            "POST",
            "provider-states",
            Some(&json!({"state": name, "params": params, "action": "setup"})),
        )
        .await;
    (r.status, r.json())
}

fn member_params(balance: i64) -> Value {
    json!({"program": "7", "userId": "u-1", "email": "a@example.com", "balance": balance})
}

#[tokio::test]
async fn the_empty_state_is_a_no_op() {
    let h = harness().await;
    for action in ["setup", "teardown"] {
        let r = h
            .admin(
                "POST",
                "provider-states",
                Some(&json!({"state": "", "params": {}, "action": action})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
        assert_eq!(r.json(), json!({"ok": true}));
    }
    let (status, v) = state(&h, "nonsense", json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "INVALID_FIELD");
}

#[tokio::test]
async fn member_setup_is_idempotent_and_resets_the_balance() {
    let h = harness().await;
    let (status, first) = state(&h, "member", member_params(120)).await;
    assert_eq!(status, 200, "{first}");
    let member_id = first["memberId"].as_str().unwrap().to_owned();
    assert_eq!(first["balance"], 120);
    // spend some, then set the same state up again: same member, balance back to 120
    let redeem = json!({"userId": "u-1", "loyaltyProgramId": "7", "rewardId": "cake",
                        "transactionId": format!("loy_{:032x}", 1)});
    let r = h.call("loyalty/redeem", &redeem).await;
    assert_eq!(
        r.json()["ok"],
        true,
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
    let (status, again) = state(&h, "member", member_params(120)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["memberId"], member_id.as_str());
    assert_eq!(again["balance"], 120);
    let acc = h
        .call(
            "loyalty/account",
            &json!({"userId": "u-1", "loyaltyProgramId": "7"}),
        )
        .await
        .json();
    assert_eq!(acc["currentBalance"], 120);
    // a lower balance is reached too
    let (_, lower) = state(&h, "member", member_params(30)).await;
    assert_eq!(lower["balance"], 30);
    // an identifier of another member cannot be reached
    let other = json!({"program": "7", "userId": "u-2", "email": "a@example.com"});
    let (status, v) = state(&h, "member", other).await;
    assert_eq!(status, 409);
    assert_eq!(v["error"], "STATE_UNREACHABLE");
}

#[tokio::test]
async fn the_admin_token_is_accepted_in_its_own_header() {
    let h = harness().await;
    let basic = "Basic a2FybWE6czNjcmV0"; // karma:s3cret, the "basic" tenant
    let body = serde_json::to_vec(&json!({"state": "", "params": {}})).unwrap();
    let send = |token: &'static str| {
        let body = body.clone();
        let h = &h;
        async move {
            h.request(
                "POST",
                "/admin/v1/tenants/basic/provider-states",
                &[
                    ("authorization", basic),
                    ("x-admin-token", token),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };
    assert_eq!(send(ADMIN_TOKEN).await.status, 200);
    let wrong = send("not-the-token").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "UNAUTHORIZED");
}

#[tokio::test]
async fn a_hold_state_returns_its_provider_ref_and_keeps_it_while_live() {
    let h = harness().await;
    let params = json!({"code": "ONE-USE-1", "cart": cart(2000), "userId": "g-1"});
    let (status, v) = state(&h, "hold", params.clone()).await;
    assert_eq!(status, 200, "{v}");
    let pref = v["providerRef"].as_str().unwrap().to_owned();
    assert_eq!(v["discountAmountCents"], 500);
    assert_eq!(v["voucherNr"], "ONE-USE-1");
    // a single-use code: setting the state up again finds the same live hold
    let (status, again) = state(&h, "hold", params).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["providerRef"], pref.as_str());
    // it offers a transaction id no call has used, for the commit that follows
    let tx = v["transactionId"].as_str().unwrap();
    assert!(tx.starts_with("res_") && tx.len() == 36, "{v}");
    let r = h.call("voucher/commit", &commit_body(500, tx, &pref)).await;
    assert_eq!(
        r.json()["ok"],
        true,
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
    // the code is used now: a hold on it cannot be reached
    let (status, v) = state(&h, "hold", json!({"code": "ONE-USE-1", "cart": cart(2000)})).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"], "STATE_UNREACHABLE");
    let (status, v) = state(&h, "hold", json!({"code": "NO-SUCH", "cart": cart(10)})).await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = state(&h, "hold", json!({"cart": cart(10)})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"], "INVALID_FIELD");
}

#[tokio::test]
async fn a_committed_state_returns_its_values_and_is_idempotent() {
    let h = harness().await;
    let tx = res_id(7);
    let params = json!({"code": "ONE-USE-1", "cart": cart(2000), "transactionId": tx});
    let (status, v) = state(&h, "committed", params.clone()).await;
    assert_eq!(status, 200, "{v}");
    let pref = v["providerRef"].as_str().unwrap().to_owned();
    assert_eq!(v["transactionId"], tx.as_str());
    assert_eq!(v["amountCents"], 500);
    // a retried commit answers as the first did
    let r = h
        .call("voucher/commit", &commit_body(500, &tx, &pref))
        .await;
    assert_eq!(
        r.json(),
        json!({"ok": true, "voucherNr": "ONE-USE-1", "amountCents": 500, "transactionId": tx})
    );
    let (status, again) = state(&h, "committed", params.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["providerRef"], pref.as_str());
    // given back, it cannot be committed again under the same transaction id
    let r = h
        .call("voucher/reactivate", &commit_body(500, &tx, &pref))
        .await;
    assert_eq!(r.json()["status"], "returned");
    let (status, v) = state(&h, "committed", params).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"], "STATE_UNREACHABLE");
    // without a transactionId, a new one: the pact can be verified again on the same provider
    let fresh = json!({"code": "ONE-USE-1", "cart": cart(2000)});
    let (status, v) = state(&h, "committed", fresh).await;
    assert_eq!(status, 200, "{v}");
    let new_tx = v["transactionId"].as_str().unwrap();
    assert!(
        new_tx.starts_with("res_") && new_tx.len() == 36 && new_tx != tx,
        "{v}"
    );
    let bad = json!({"code": "ONE-USE-1", "cart": cart(1), "transactionId": 5});
    let (status, v) = state(&h, "committed", bad).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"], "INVALID_FIELD");
}
