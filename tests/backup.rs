//! Backup and restore: export a running server's whole state over the admin API, import
//! it into an empty data dir, and the restored service holds every balance, code state,
//! hold and idempotency record — and exports the same records.

mod common;

use common::*;
use serde_json::{json, Value};

const STATE: &str = r#"
[[tenants.campaigns]]
id = "single"
codes = ["ONE-1", "ONE-2"]
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
stock = 3
code_pattern = "CK-####"
"#;

async fn export(h: &Harness) -> String {
    let r = h
        .request(
            "GET",
            "/admin/v1/export",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    String::from_utf8(r.bytes).unwrap()
}

#[tokio::test]
async fn export_import_round_trip() {
    let h = Harness::start(&config_with(STATE)).await;
    let v = h
        .call("voucher/check", &check_body("ONE-1", 1000))
        .await
        .json();
    let commit = commit_body(500, &res_id(1), v["providerRef"].as_str().unwrap());
    let committed = h.call("voucher/commit", &commit).await;
    let live = h
        .call("voucher/check", &check_body("ONE-2", 1000))
        .await
        .json();
    h.call(
        "loyalty/enroll",
        &json!({"userId": "u1", "loyaltyProgramId": 7}),
    )
    .await;
    let award = json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p1", "purchaseAmountCents": 5000, "transactionId": format!("loy_{:032x}", 1)});
    let awarded = h.call("loyalty/award", &award).await;
    let redeem = json!({"userId": "u1", "loyaltyProgramId": 7, "rewardId": "cake", "transactionId": format!("loy_{:032x}", 2)});
    let redeemed = h.call("loyalty/redeem", &redeem).await;
    let dump = export(&h).await;
    assert!(dump
        .lines()
        .next()
        .unwrap()
        .contains("karma-provider-export"));

    // restore into a fresh, empty data dir
    let mut r = Harness::start(&config_with(STATE)).await;
    r.stop().await;
    std::fs::remove_dir_all(r.data_path()).unwrap();
    let opts = karma_provider::store::StoreOptions {
        path: r.data_path(),
        cache_capacity_bytes: 16 << 20,
    };
    let n = karma_provider::store::import_records(
        &opts,
        karma_provider::backup::decode(&dump).unwrap(),
    )
    .unwrap();
    assert_eq!(n + 1, dump.lines().count());
    // a second import into the now non-empty dir is refused
    assert!(karma_provider::store::import_records(&opts, vec![]).is_err());
    r.boot().await;

    // idempotency records: byte-identical replays
    assert_eq!(
        r.call("voucher/commit", &commit).await.bytes,
        committed.bytes
    );
    assert_eq!(r.call("loyalty/award", &award).await.bytes, awarded.bytes);
    assert_eq!(
        r.call("loyalty/redeem", &redeem).await.bytes,
        redeemed.bytes
    );
    // code states and holds
    assert_eq!(
        r.call("voucher/check", &check_body("ONE-1", 1000))
            .await
            .json()["error"],
        json!("USAGE_LIMIT_REACHED")
    );
    assert_eq!(
        r.call("voucher/check", &check_body("ONE-2", 1000))
            .await
            .json()["error"],
        json!("VOUCHER_HELD")
    );
    let holds = r.admin("GET", "holds", None).await.json();
    assert_eq!(
        (
            holds["count"].clone(),
            holds["holds"][0]["providerRef"].clone()
        ),
        (json!(1), live["providerRef"].clone())
    );
    // balances and stock
    let a = r
        .call(
            "loyalty/account",
            &json!({"userId": "u1", "loyaltyProgramId": 7}),
        )
        .await
        .json();
    assert_eq!(a["currentBalance"], json!(90));
    let rw = r
        .call("loyalty/rewards", &json!({"loyaltyProgramId": 7}))
        .await
        .json();
    assert_eq!(rw["rewards"][0]["stockRemaining"], json!(2));
    // the same records come out again
    let again = export(&r).await;
    let body = |d: &str| d.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(body(&again), body(&dump));
    // new ids continue after the restored ones
    let fresh: Value = r
        .call("voucher/check", &check_body("ONE-2", 1000))
        .await
        .json();
    assert_eq!(fresh["error"], json!("VOUCHER_HELD"));
    let newer = r.call("loyalty/redeem", &json!({"userId": "u1", "loyaltyProgramId": 7, "rewardId": "cake", "transactionId": format!("loy_{:032x}", 3)})).await.json();
    assert!(
        newer["redemptionId"].as_str().unwrap() > redeemed.json()["redemptionId"].as_str().unwrap()
    );
    assert_ne!(newer["generatedCode"], redeemed.json()["generatedCode"]);
}
