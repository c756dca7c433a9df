//! Loyalty over real HTTP: the six calls, every rule and refusal, idempotency, purchase
//! dedupe, tiers, pending and expiry, concurrency.

mod common;

use common::*;
use karma_provider::store::SCHEMA_VERSION;
use serde_json::{json, Value};

pub const PROGRAMS: &str = r#"
[[tenants.loyalty]]
program_id = 7
earn = { points = 1, per_cents = 100 }
signup_bonus = 50
item_bonus = { "1001" = 20 }
expire_days = 365
tiers = [ { id = "bronze", name = "Bronze", min_lifetime = 0 },
          { id = "silver", name = "Silver", min_lifetime = 500, multiplier_percent = 150 } ]
[[tenants.loyalty.rewards]]
id = "coffee"
title = "Free coffee"
description = "Any hot drink"
points_cost = 100
category = "drink"
image_url = "https://example.com/coffee.png"
stock = 5
code_pattern = "CF-######"
[[tenants.loyalty.rewards]]
id = "cake"
title = "Cake"
points_cost = 10
[[tenants.loyalty.rewards]]
id = "retired"
title = "Old reward"
points_cost = 1
active = false

[[tenants.loyalty]]
program_id = 8
earn = { points = 2, per_cents = 100 }
auto_enroll = true
pending_days = 2
expire_days = 10
"#;

async fn harness() -> Harness {
    Harness::start(&config_with(PROGRAMS)).await
}

fn tx(n: u64) -> String {
    format!("loy_{n:032x}")
}

async fn call(h: &Harness, op: &str, body: Value) -> Value {
    let r = h.call(&format!("loyalty/{op}"), &body).await;
    assert_eq!(r.status, 200, "{op}: {}", String::from_utf8_lossy(&r.bytes));
    r.json()
}

async fn enroll(h: &Harness, user: &str) -> String {
    let v = call(
        h,
        "enroll",
        json!({"userId": user, "loyaltyProgramId": 7, "locationId": 42}),
    )
    .await;
    v["memberId"].as_str().unwrap().to_string()
}

fn award_body(user: &str, purchase: &str, cents: i64, items: Value, n: u64) -> Value {
    json!({"userId": user, "loyaltyProgramId": 7, "purchaseId": purchase, "purchaseAmountCents": cents, "itemIds": items, "transactionId": tx(n)})
}

fn redeem_body(user: &str, reward: &str, n: u64) -> Value {
    json!({"userId": user, "loyaltyProgramId": 7, "rewardId": reward, "transactionId": tx(n)})
}

async fn account(h: &Harness, user: &str, program: i64) -> Value {
    call(
        h,
        "account",
        json!({"userId": user, "loyaltyProgramId": program}),
    )
    .await
}

fn refused(v: &Value, code: &str) {
    assert_eq!(
        (v["ok"].clone(), v["error"].clone()),
        (json!(false), json!(code)),
        "{v}"
    );
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn enroll_is_idempotent_and_lookup_finds_members() {
    let h = harness().await;
    let body = json!({"userId": "u1", "loyaltyProgramId": 7, "locationId": 42, "phone": "+46 70-123 45 67", "email": " Ann@Example.com"});
    let first = h.call("loyalty/enroll", &body).await;
    let v = first.json();
    assert_eq!(v["pointsAwarded"], json!(50));
    let member = v["memberId"].as_str().unwrap().to_string();
    assert!(member.starts_with("mbr_") && !member.contains("u1"));
    let again = h.call("loyalty/enroll", &body).await;
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(account(&h, "u1", 7).await["currentBalance"], json!(50));

    let lookup = |t: &str, i: &str| json!({"locationId": 42, "loyaltyProgramId": 7, "identifier": i, "identifierType": t});
    let expect = json!({"ok": true, "memberId": member, "userId": "u1"});
    assert_eq!(
        call(&h, "lookup", lookup("phone", "0046701234567")).await,
        expect
    );
    assert_eq!(
        call(&h, "lookup", lookup("EMAIL", "ann@example.COM ")).await,
        expect
    );
    assert_eq!(call(&h, "lookup", lookup("userId", "u1")).await, expect);
    assert_eq!(
        call(&h, "lookup", lookup("memberId", &member)).await,
        expect
    );
    refused(
        &call(&h, "lookup", lookup("card", "999")).await,
        "MEMBER_NOT_FOUND",
    );
    let r = h.call("loyalty/lookup", &lookup("ssn", "1")).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("identifierType"))
    );
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("phone, email, card, memberId, userId"));
    let r = h.call("loyalty/lookup", &lookup("phone", "call me")).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("identifier"))
    );
    refused(
        &call(
            &h,
            "lookup",
            json!({"loyaltyProgramId": 99, "identifier": "u1", "identifierType": "userId"}),
        )
        .await,
        "PROGRAM_NOT_FOUND",
    );
    // the phone belongs to u1 already
    let taken = call(
        &h,
        "enroll",
        json!({"userId": "u2", "loyaltyProgramId": 7, "phone": "+46701234567"}),
    )
    .await;
    refused(&taken, "IDENTIFIER_IN_USE");
    refused(&account(&h, "u2", 7).await, "MEMBER_NOT_FOUND");
}

#[tokio::test]
async fn award_earn_rule_items_tiers_and_dedupe() {
    let h = harness().await;
    enroll(&h, "u1").await;
    let first = h
        .call(
            "loyalty/award",
            &award_body("u1", "p1", 1299, json!(["1001", 55]), 1),
        )
        .await;
    assert_eq!(
        first.json(),
        json!({"ok": true, "pointsAwarded": 32, "newBalance": 82, "tierChanged": false})
    );
    assert_eq!(
        h.call(
            "loyalty/award",
            &award_body("u1", "p1", 1299, json!(["1001", 55]), 1)
        )
        .await
        .bytes,
        first.bytes
    );
    let conflict = h
        .call("loyalty/award", &award_body("u1", "p1", 1300, json!([]), 1))
        .await;
    assert_eq!(
        (conflict.status, conflict.json()["error"].clone()),
        (409, json!("IDEMPOTENCY_CONFLICT"))
    );
    // the same purchase re-sent under a new transaction id credits nothing
    let resent = h
        .call(
            "loyalty/award",
            &award_body("u1", "p1", 1299, json!(["1001"]), 2),
        )
        .await;
    assert_eq!(resent.bytes, first.bytes);
    assert_eq!(account(&h, "u1", 7).await["currentBalance"], json!(82));
    // crossing into silver
    let v = call(&h, "award", award_body("u1", "p2", 45_000, json!([]), 3)).await;
    assert_eq!(
        v,
        json!({"ok": true, "pointsAwarded": 450, "newBalance": 532, "tierChanged": true})
    );
    assert_eq!(
        account(&h, "u1", 7).await,
        json!({"ok": true, "currentBalance": 532, "lifetimeEarned": 532, "tierName": "Silver", "tierId": "silver"})
    );
    // the multiplier applies to the award that follows: floor(10 * 1.5)
    let v = call(&h, "award", award_body("u1", "p3", 1099, json!([]), 4)).await;
    assert_eq!(v["pointsAwarded"], json!(15));
    refused(
        &call(&h, "award", award_body("nobody", "p9", 1000, json!([]), 5)).await,
        "MEMBER_NOT_FOUND",
    );
    let r = h.call("loyalty/award", &json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p", "purchaseAmountCents": 1, "transactionId": "res_0123456789abcdef0123456789abcdef"})).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("transactionId"))
    );
    let r = h.call("loyalty/award", &json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p", "transactionId": tx(9)})).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("purchaseAmountCents"))
    );
}

#[tokio::test]
async fn rewards_and_redeem() {
    let h = harness().await;
    enroll(&h, "u1").await;
    let rewards = call(&h, "rewards", json!({"loyaltyProgramId": 7})).await;
    assert_eq!(
        rewards,
        json!({"ok": true, "rewards": [
            {"rewardId": "coffee", "title": "Free coffee", "description": "Any hot drink", "pointsCost": 100, "category": "drink", "imageUrl": "https://example.com/coffee.png", "stockRemaining": 5},
            {"rewardId": "cake", "title": "Cake", "description": "", "pointsCost": 10, "category": null, "imageUrl": null, "stockRemaining": null}
        ]})
    );
    refused(
        &call(&h, "redeem", redeem_body("u1", "coffee", 1)).await,
        "INSUFFICIENT_POINTS",
    );
    call(&h, "award", award_body("u1", "p1", 20_000, json!([]), 2)).await; // 250
    let first = h
        .call("loyalty/redeem", &redeem_body("u1", "coffee", 3))
        .await;
    let v = first.json();
    assert_eq!(v["newBalance"], json!(150));
    assert!(v["redemptionId"].as_str().unwrap().starts_with("rdm_"));
    let code = v["generatedCode"].as_str().unwrap();
    assert!(
        code.len() == 9 && code.starts_with("CF-") && code[3..].chars().all(|c| c.is_ascii_digit()),
        "{code}"
    );
    assert_eq!(
        h.call("loyalty/redeem", &redeem_body("u1", "coffee", 3))
            .await
            .bytes,
        first.bytes
    );
    let cake = call(&h, "redeem", redeem_body("u1", "cake", 4)).await;
    assert_eq!(
        (cake["generatedCode"].clone(), cake["newBalance"].clone()),
        (json!(null), json!(140))
    );
    refused(
        &call(&h, "redeem", redeem_body("u1", "nope", 5)).await,
        "REWARD_NOT_FOUND",
    );
    refused(
        &call(&h, "redeem", redeem_body("u1", "retired", 6)).await,
        "REWARD_NOT_FOUND",
    );
    refused(
        &call(&h, "redeem", redeem_body("ghost", "cake", 7)).await,
        "MEMBER_NOT_FOUND",
    );
    let rewards = call(&h, "rewards", json!({"loyaltyProgramId": 7})).await;
    assert_eq!(rewards["rewards"][0]["stockRemaining"], json!(4));
    assert_eq!(account(&h, "u1", 7).await["currentBalance"], json!(140));
}

#[tokio::test]
async fn pending_points_expiry_and_auto_enroll() {
    let h = harness().await;
    let award = |n: u64, cents: i64| json!({"userId": "walkin", "loyaltyProgramId": "8", "purchaseId": format!("p{n}"), "purchaseAmountCents": cents, "transactionId": tx(n)});
    let v = call(&h, "award", award(1, 1000)).await;
    assert_eq!(
        v,
        json!({"ok": true, "pointsAwarded": 20, "newBalance": 0, "tierChanged": false})
    );
    assert_eq!(
        account(&h, "walkin", 8).await,
        json!({"ok": true, "currentBalance": 0, "lifetimeEarned": 0, "tierName": null, "tierId": null})
    );
    h.clock.advance_ms(2 * 86_400_000 - 1);
    assert_eq!(account(&h, "walkin", 8).await["currentBalance"], json!(0));
    h.clock.advance_ms(1);
    assert_eq!(account(&h, "walkin", 8).await["currentBalance"], json!(20));
    assert_eq!(account(&h, "walkin", 8).await["lifetimeEarned"], json!(20));
    h.clock.advance_ms(3 * 86_400_000);
    call(&h, "award", award(2, 500)).await; // +10 at day 5, spendable day 7, expires day 15
    h.clock.advance_ms(5 * 86_400_000); // day 10: the first credit expires
    let a = account(&h, "walkin", 8).await;
    assert_eq!(
        (a["currentBalance"].clone(), a["lifetimeEarned"].clone()),
        (json!(10), json!(30))
    );
    h.clock.advance_ms(5 * 86_400_000);
    assert_eq!(account(&h, "walkin", 8).await["currentBalance"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_redeems_on_a_balance_for_ten() {
    let h = std::sync::Arc::new(harness().await);
    enroll(&h, "u1").await; // 50
    call(&h, "award", award_body("u1", "p1", 5_000, json!([]), 1)).await; // +50 = 100
    let mut tasks = Vec::new();
    for i in 0..50 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call("loyalty/redeem", &redeem_body("u1", "cake", 100 + i))
                .await
                .json()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let v = t.await.unwrap();
        if v["ok"] == json!(true) {
            ok += 1;
        } else {
            refused(&v, "INSUFFICIENT_POINTS");
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(account(&h, "u1", 7).await["currentBalance"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_awards_credit_once() {
    let h = std::sync::Arc::new(harness().await);
    enroll(&h, "u1").await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call(
                "loyalty/award",
                &award_body("u1", "p1", 10_000, json!([]), 1),
            )
            .await
            .bytes
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(account(&h, "u1", 7).await["currentBalance"], json!(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_five_and_twenty_concurrent_redeems() {
    let h = std::sync::Arc::new(harness().await);
    for u in 0..20 {
        enroll(&h, &format!("u{u}")).await;
        call(
            &h,
            "award",
            award_body(
                &format!("u{u}"),
                &format!("p{u}"),
                10_000,
                json!([]),
                1000 + u,
            ),
        )
        .await;
    }
    let mut tasks = Vec::new();
    for u in 0..20u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call(
                "loyalty/redeem",
                &redeem_body(&format!("u{u}"), "coffee", 2000 + u),
            )
            .await
            .json()
        }));
    }
    let mut ok = 0;
    let mut codes = std::collections::HashSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        if v["ok"] == json!(true) {
            ok += 1;
            assert!(codes.insert(v["generatedCode"].as_str().unwrap().to_string()));
        } else {
            refused(&v, "OUT_OF_STOCK");
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(
        call(&h, "rewards", json!({"loyaltyProgramId": 7})).await["rewards"][0]["stockRemaining"],
        json!(0)
    );
}

#[tokio::test]
async fn restart_keeps_members_balances_and_records() {
    let mut h = harness().await;
    enroll(&h, "u1").await;
    let first = h
        .call(
            "loyalty/award",
            &award_body("u1", "p1", 10_000, json!([]), 1),
        )
        .await;
    let redeem = h
        .call("loyalty/redeem", &redeem_body("u1", "coffee", 2))
        .await;
    h.restart().await;
    assert_eq!(
        h.call(
            "loyalty/award",
            &award_body("u1", "p1", 10_000, json!([]), 1)
        )
        .await
        .bytes,
        first.bytes
    );
    assert_eq!(
        h.call("loyalty/redeem", &redeem_body("u1", "coffee", 2))
            .await
            .bytes,
        redeem.bytes
    );
    assert_eq!(account(&h, "u1", 7).await["currentBalance"], json!(50));
}

async fn admin_ok(h: &Harness, method: &str, path: &str, body: Value) -> Value {
    let r = h.admin(method, path, Some(&body)).await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.bytes)
    );
    r.json()
}

#[tokio::test]
async fn reversals_full_partial_and_against_spent_points() {
    let h = harness().await;
    enroll(&h, "u1").await; // 50
    call(&h, "award", award_body("u1", "p1", 10_000, json!([]), 1)).await; // +100
    let body = json!({"id": "refund-1", "purchaseId": "p1", "amountCents": 2_500, "reason": "partial refund"});
    let first = h.admin("POST", "loyalty/7/reversals", Some(&body)).await;
    assert_eq!(
        first.json(),
        json!({"ok": true, "reversalId": "refund-1", "pointsReversed": 25, "pointsUnrecovered": 0, "newBalance": 125, "tierChanged": false})
    );
    assert_eq!(
        h.admin("POST", "loyalty/7/reversals", Some(&body))
            .await
            .bytes,
        first.bytes
    );
    let other = json!({"id": "refund-1", "purchaseId": "p1", "amountCents": 100});
    assert_eq!(
        h.admin("POST", "loyalty/7/reversals", Some(&other))
            .await
            .status,
        409
    );
    let rest = admin_ok(
        &h,
        "POST",
        "loyalty/7/reversals",
        json!({"id": "refund-2", "transactionId": tx(1)}),
    )
    .await;
    assert_eq!(
        (rest["pointsReversed"].clone(), rest["newBalance"].clone()),
        (json!(75), json!(50))
    );
    refused(
        &admin_ok(
            &h,
            "POST",
            "loyalty/7/reversals",
            json!({"id": "refund-3", "purchaseId": "p1"}),
        )
        .await,
        "ALREADY_REVERSED",
    );
    refused(
        &admin_ok(
            &h,
            "POST",
            "loyalty/7/reversals",
            json!({"id": "refund-4", "purchaseId": "nope"}),
        )
        .await,
        "AWARD_NOT_FOUND",
    );

    // points already spent: the signup lot goes first, then 50 of the award; reversing the
    // award recovers the 50 left and reports 50 unrecovered; the balance stays at zero.
    call(&h, "award", award_body("u1", "p2", 10_000, json!([]), 2)).await; // 150
    call(&h, "redeem", redeem_body("u1", "coffee", 3)).await; // 50 left, all from p2
    let r = admin_ok(
        &h,
        "POST",
        "loyalty/7/reversals",
        json!({"id": "refund-5", "purchaseId": "p2"}),
    )
    .await;
    assert_eq!(
        (
            r["pointsReversed"].clone(),
            r["pointsUnrecovered"].clone(),
            r["newBalance"].clone()
        ),
        (json!(100), json!(50), json!(0))
    );
    let a = account(&h, "u1", 7).await;
    assert_eq!(
        (a["currentBalance"].clone(), a["lifetimeEarned"].clone()),
        (json!(0), json!(50))
    );
    let m = h.admin("GET", "loyalty/7/users/u1", None).await.json();
    assert_eq!(m["ledgerSum"], json!(0));
    let kinds: Vec<&str> = m["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "signup_bonus",
            "earn",
            "reversal",
            "reversal",
            "earn",
            "redeem",
            "reversal"
        ]
    );
}

#[tokio::test]
async fn reversal_moves_tier_down() {
    let h = harness().await;
    enroll(&h, "u1").await;
    assert_eq!(
        call(&h, "award", award_body("u1", "p1", 45_000, json!([]), 1)).await["tierChanged"],
        json!(true)
    );
    let r = admin_ok(
        &h,
        "POST",
        "loyalty/7/reversals",
        json!({"id": "r1", "purchaseId": "p1"}),
    )
    .await;
    assert_eq!(r["tierChanged"], json!(true));
    assert_eq!(account(&h, "u1", 7).await["tierId"], json!("bronze"));
}

#[tokio::test]
async fn redemption_reversal_adjustments_and_member_view() {
    let h = harness().await;
    let member = enroll(&h, "u1").await;
    call(&h, "award", award_body("u1", "p1", 10_000, json!([]), 1)).await; // 150
    let red = call(&h, "redeem", redeem_body("u1", "coffee", 2)).await;
    let rid = red["redemptionId"].as_str().unwrap();
    let back = admin_ok(
        &h,
        "POST",
        &format!("loyalty/7/redemptions/{rid}/reverse"),
        json!({"id": "rr1", "reason": "guest changed mind"}),
    )
    .await;
    assert_eq!(
        back,
        json!({"ok": true, "redemptionId": rid, "pointsReturned": 100, "newBalance": 150})
    );
    refused(
        &admin_ok(
            &h,
            "POST",
            &format!("loyalty/7/redemptions/{rid}/reverse"),
            json!({"id": "rr2"}),
        )
        .await,
        "ALREADY_REVERSED",
    );
    assert_eq!(
        call(&h, "rewards", json!({"loyaltyProgramId": 7})).await["rewards"][0]["stockRemaining"],
        json!(5)
    );

    let adj = admin_ok(
        &h,
        "POST",
        &format!("loyalty/7/members/{member}/adjustments"),
        json!({"id": "a1", "points": -40, "reason": "goodwill correction"}),
    )
    .await;
    assert_eq!(adj["newBalance"], json!(110));
    let adj = admin_ok(
        &h,
        "POST",
        &format!("loyalty/7/members/{member}/adjustments"),
        json!({"id": "a2", "points": 500, "reason": "missed visit", "countsTowardLifetime": true}),
    )
    .await;
    assert_eq!(adj["newBalance"], json!(610));
    assert_eq!(account(&h, "u1", 7).await["tierId"], json!("silver"));
    refused(
        &admin_ok(
            &h,
            "POST",
            &format!("loyalty/7/members/{member}/adjustments"),
            json!({"id": "a3", "points": -1000, "reason": "x"}),
        )
        .await,
        "INSUFFICIENT_POINTS",
    );
    let r = h
        .admin(
            "POST",
            &format!("loyalty/7/members/{member}/adjustments"),
            Some(&json!({"id": "a4", "points": 5, "reason": " "})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("reason"))
    );

    let m = h
        .admin("GET", &format!("loyalty/7/members/{member}"), None)
        .await
        .json();
    assert_eq!(
        (
            m["currentBalance"].clone(),
            m["ledgerSum"].clone(),
            m["userId"].clone()
        ),
        (json!(610), json!(610), json!("u1"))
    );
    assert_eq!(
        h.admin("GET", "loyalty/7/members/mbr_nobody", None)
            .await
            .status,
        404
    );
}

/// A member import is checked whole (an invalid row writes nothing), then written one
/// slice at a time: with `job_slice_records = 1` each row is its own writer job, and a row
/// repeating an earlier slice's member is still a duplicate.
#[tokio::test]
async fn import_members_all_or_nothing() {
    let toml = config_with(PROGRAMS).replace(
        "cache_capacity_mb = 16",
        "cache_capacity_mb = 16\njob_slice_records = 1",
    );
    let h = Harness::start(&toml).await;
    enroll(&h, "existing").await;
    let import = |csv: &'static str| {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let h = &h;
        async move {
            h.request(
                "POST",
                "/admin/v1/tenants/acme/loyalty/7/members/import",
                &[("authorization", &auth), ("content-type", "text/csv")],
                csv.as_bytes().to_vec(),
            )
            .await
        }
    };
    let bad = import("user_id,phone,balance,lifetime_earned\nm1,+46700000001,100,900\nm2,not a phone,5,\nm3,,-4,\n").await;
    assert_eq!(bad.status, 400);
    let v = bad.json();
    assert_eq!(v["error"], json!("INVALID_ROWS"));
    let lines: Vec<i64> = v["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_i64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4]);
    refused(&account(&h, "m1", 7).await, "MEMBER_NOT_FOUND");

    let ok = import("user_id,phone,email,balance,lifetime_earned\nm1,+46700000001,,100,900\nexisting,,,5,\nm1,,,1,\n,,solo@example.com,30,\n").await;
    assert_eq!(
        ok.json(),
        json!({"ok": true, "imported": 2, "duplicates": 2, "invalid": []})
    );
    assert_eq!(
        account(&h, "m1", 7).await,
        json!({"ok": true, "currentBalance": 100, "lifetimeEarned": 900, "tierName": "Silver", "tierId": "silver"})
    );
    let found = call(
        &h,
        "lookup",
        json!({"loyaltyProgramId": 7, "identifier": "solo@EXAMPLE.com", "identifierType": "email"}),
    )
    .await;
    assert_eq!(found["ok"], json!(true));
    assert!(found.get("userId").is_none());
    // an imported user enrolling later keeps their member and gets no bonus, the same
    // bytes each time (no answer is stored for an imported member: enroll makes it)
    let m1 = call(
        &h,
        "lookup",
        json!({"loyaltyProgramId": 7, "identifier": "m1", "identifierType": "userId"}),
    )
    .await["memberId"]
        .clone();
    let body = json!({"userId": "m1", "loyaltyProgramId": 7});
    let e = h.call("loyalty/enroll", &body).await;
    let want = format!(r#"{{"ok":true,"memberId":{m1},"pointsAwarded":0}}"#);
    assert_eq!(String::from_utf8_lossy(&e.bytes), want);
    assert_eq!(h.call("loyalty/enroll", &body).await.bytes, e.bytes);
    assert_eq!(account(&h, "m1", 7).await["currentBalance"], json!(100));
}

/// Karma re-sends a purchase under new transaction ids (a till retrying after a crash):
/// twenty of them at once credit the purchase once, and every answer is the first award's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_purchase_under_twenty_transaction_ids_at_once_credits_once() {
    let h = std::sync::Arc::new(harness().await);
    enroll(&h, "u1").await; // 50
    let mut tasks = Vec::new();
    for n in 0..20u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call(
                "loyalty/award",
                &award_body("u1", "same-purchase", 10_000, json!([]), 500 + n),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        answers.push(r.json());
    }
    let credited: Vec<&Value> = answers.iter().filter(|a| a["ok"] == json!(true)).collect();
    assert_eq!(credited.len(), 20, "{answers:?}");
    let first = json!({"ok": true, "pointsAwarded": 100, "newBalance": 150, "tierChanged": false});
    assert!(answers.iter().all(|a| *a == first), "{answers:?}");
    assert_eq!(account(&h, "u1", 7).await["currentBalance"], json!(150));
}

/// The same redeem id sent at once with two different bodies (another guest): one takes
/// effect, the other is a 409, never a second redemption.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_redeem_id_with_two_bodies_at_once_is_one_redemption_and_one_409() {
    let h = std::sync::Arc::new(harness().await);
    for (u, n) in [("u1", 1), ("u2", 2)] {
        enroll(&h, u).await; // 50
        call(
            &h,
            "award",
            award_body(u, &format!("p{n}"), 5_000, json!([]), n),
        )
        .await; // 100
    }
    for round in 0..10u64 {
        let (h1, h2) = (h.clone(), h.clone());
        let a = tokio::spawn(async move {
            h1.call("loyalty/redeem", &redeem_body("u1", "cake", 900 + round))
                .await
        });
        let b = tokio::spawn(async move {
            h2.call("loyalty/redeem", &redeem_body("u2", "cake", 900 + round))
                .await
        });
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "{:?} {:?}", a.json(), b.json());
        let (won, lost) = if a.status == 409 { (b, a) } else { (a, b) };
        assert_eq!(won.json()["ok"], json!(true), "{:?}", won.json());
        assert_eq!(lost.json()["error"], json!("IDEMPOTENCY_CONFLICT"));
    }
    let b1 = account(&h, "u1", 7).await["currentBalance"]
        .as_i64()
        .unwrap();
    let b2 = account(&h, "u2", 7).await["currentBalance"]
        .as_i64()
        .unwrap();
    assert_eq!(
        b1 + b2,
        200 - 10 * 10,
        "ten redemptions of 10 points, no more"
    );
}

/// Lookup by card: a card linked at enroll is found however Karma's staff type it
/// (spaces, dashes, lower case), and only that member.
#[tokio::test]
async fn lookup_by_card_is_normalised() {
    let h = harness().await;
    let first = call(
        &h,
        "enroll",
        json!({"userId": "carded", "loyaltyProgramId": 7, "locationId": 42, "cardNumber": "ab12-3456 7890"}),
    )
    .await;
    let member = first["memberId"].as_str().unwrap().to_string();
    enroll(&h, "other").await;
    let lookup = |i: &str| json!({"locationId": 42, "loyaltyProgramId": 7, "identifier": i, "identifierType": "card"});
    for typed in [
        "AB1234567890",
        "ab12 3456 7890",
        "AB12-3456-7890",
        " ab1234567890 ",
    ] {
        assert_eq!(
            call(&h, "lookup", lookup(typed)).await,
            json!({"ok": true, "memberId": member, "userId": "carded"}),
            "{typed}"
        );
    }
    refused(
        &call(&h, "lookup", lookup("AB1234567891")).await,
        "MEMBER_NOT_FOUND",
    );
    // the card is this member's: another enroll with it is refused
    let v = call(
        &h,
        "enroll",
        json!({"userId": "thief", "loyaltyProgramId": 7, "locationId": 42, "cardNumber": "AB12 3456 7890"}),
    )
    .await;
    refused(&v, "IDENTIFIER_IN_USE");
}

const SMALL_PATTERN: &str = r#"
[[tenants.loyalty]]
program_id = 9
earn = { points = 1, per_cents = 100 }
signup_bonus = 1000
[[tenants.loyalty.rewards]]
id = "r"
title = "R"
points_cost = 1
code_pattern = "R-###"
"#;

fn small_redeem(n: u64) -> Value {
    json!({"userId": "u1", "loyaltyProgramId": 9, "rewardId": "r", "transactionId": tx(n)})
}

/// Reward codes come from the OS's CSPRNG: two servers with the same config, clock and
/// requests give different codes; and a pattern issues at most 1 % of its space.
#[tokio::test]
async fn reward_codes_are_unpredictable_and_bounded_by_the_pattern() {
    let a = Harness::start(&config_with(SMALL_PATTERN)).await;
    let b = Harness::start(&config_with(SMALL_PATTERN)).await;
    let enroll = json!({"userId": "u1", "loyaltyProgramId": 9, "locationId": 1});
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    for h in [&a, &b] {
        call(h, "enroll", enroll.clone()).await;
    }
    // R-### holds 512 codes: 5 may be issued.
    for n in 1..=5 {
        from_a.push(call(&a, "redeem", small_redeem(n)).await["generatedCode"].clone());
        from_b.push(call(&b, "redeem", small_redeem(n)).await["generatedCode"].clone());
    }
    assert_ne!(from_a, from_b);
    assert!(from_a.iter().all(|c| {
        let c = c.as_str().unwrap();
        c.len() == 5 && c.starts_with("R-") && c[2..].bytes().all(|d| b"23456789".contains(&d))
    }));
    let sixth = call(&a, "redeem", small_redeem(6)).await;
    refused(&sixth, "CODE_SPACE_EXHAUSTED");
    assert!(
        sixth["message"].as_str().unwrap().contains("1 %"),
        "{sixth}"
    );
    // nothing was spent on the refused redemption
    assert_eq!(
        call(
            &a,
            "account",
            json!({"userId": "u1", "loyaltyProgramId": 9})
        )
        .await["currentBalance"],
        json!(995)
    );
}

const GENEROUS: &str = r#"
[[tenants.loyalty]]
program_id = 10
earn = { points = 1000000, per_cents = 1 }
tiers = [ { id = "vip", name = "VIP", min_lifetime = 0, multiplier_percent = 1000 } ]
"#;

fn big_award(cents: i64, n: u64) -> Value {
    json!({"userId": "u1", "loyaltyProgramId": 10, "purchaseId": format!("p{n}"), "purchaseAmountCents": cents, "itemIds": [], "transactionId": tx(n)})
}

/// Points arithmetic is checked: an award that would overflow (10^10 cents × 10^6 points
/// × 1000 %) or push a member past 10^15 points is a 400 naming the field, and nothing
/// changes; an adjustment past the limit likewise.
#[tokio::test]
async fn awards_that_would_overflow_are_refused_naming_the_field() {
    let h = Harness::start(&config_with(GENEROUS)).await;
    let member = call(
        &h,
        "enroll",
        json!({"userId": "u1", "loyaltyProgramId": 10, "locationId": 1}),
    )
    .await["memberId"]
        .as_str()
        .unwrap()
        .to_string();
    let over = h.call("loyalty/award", &big_award(10_000_000_000, 1)).await;
    let v = over.json();
    assert_eq!(
        (over.status, v["error"].clone(), v["field"].clone()),
        (400, json!("INVALID_FIELD"), json!("purchaseAmountCents")),
        "{v}"
    );
    // exactly the most a member may hold
    let full = call(&h, "award", big_award(100_000_000, 2)).await;
    assert_eq!(full["pointsAwarded"], json!(1_000_000_000_000_000i64));
    let more = h.call("loyalty/award", &big_award(1, 3)).await;
    assert_eq!(
        (more.status, more.json()["field"].clone()),
        (400, json!("purchaseAmountCents"))
    );
    let adj = h
        .admin(
            "POST",
            &format!("loyalty/10/members/{member}/adjustments"),
            Some(&json!({"id": "a1", "points": 5, "reason": "x"})),
        )
        .await;
    assert_eq!(
        (adj.status, adj.json()["field"].clone()),
        (400, json!("points"))
    );
    assert_eq!(
        call(
            &h,
            "account",
            json!({"userId": "u1", "loyaltyProgramId": 10})
        )
        .await["currentBalance"],
        json!(1_000_000_000_000_000i64)
    );
    // a partial refund of that award: 10^15 points × 5×10^7 cents is past i64, exact in i128
    let r = h
        .admin(
            "POST",
            "loyalty/10/reversals",
            Some(&json!({"id": "refund-1", "purchaseId": "p2", "amountCents": 50_000_000})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["pointsReversed"], json!(500_000_000_000_000i64));
}

#[tokio::test]
async fn identifier_syntax_is_checked_before_the_program_is_looked_up() {
    // A malformed identifier is a bad request whatever the program (as the spec says), not
    // PROGRAM_NOT_FOUND for an unknown program.
    let h = harness().await;
    for (op, body, field) in [
        (
            "lookup",
            json!({"loyaltyProgramId": 99, "identifier": "call me", "identifierType": "phone"}),
            "identifier",
        ),
        (
            "lookup",
            json!({"loyaltyProgramId": 99, "identifier": "x", "identifierType": "ssn"}),
            "identifierType",
        ),
        (
            "enroll",
            json!({"userId": "u9", "loyaltyProgramId": 99, "email": "no-at-sign"}),
            "email",
        ),
        (
            "enroll",
            json!({"userId": "u9", "loyaltyProgramId": 99, "cardNumber": " - -"}),
            "cardNumber",
        ),
    ] {
        let r = h.call(&format!("loyalty/{op}"), &body).await;
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (400, json!(field)),
            "{body}"
        );
    }
    // an identifier of 128 characters is within the id rule, whatever its bytes
    let email = format!("{}@x", "é".repeat(126));
    let r = call(
        &h,
        "enroll",
        json!({"userId": "u9", "loyaltyProgramId": 7, "email": email}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let found = call(
        &h,
        "lookup",
        json!({"loyaltyProgramId": 7, "identifier": email.to_uppercase(), "identifierType": "EMAIL"}),
    )
    .await;
    assert_eq!(found["memberId"], r["memberId"]);
}

/// Records the writer's jobs have read and written so far (`kp_store_records_total`).
async fn records(h: &Harness) -> (u64, u64) {
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    let get = |op: &str| -> u64 {
        let prefix = format!("kp_store_records_total{{op=\"{op}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {m}"))
    };
    (get("read"), get("written"))
}

/// The records one call read and wrote, and its answer.
async fn cost(h: &Harness, op: &str, body: Value) -> ((u64, u64), Value) {
    let before = records(h).await;
    let v = call(h, op, body).await;
    let after = records(h).await;
    ((after.0 - before.0, after.1 - before.1), v)
}

/// Issue 13 §1: a member's history does not make their next call dearer. Award #5000 and
/// a redeem after it read and write exactly as many records as award #1 and a redeem
/// after that (counted by the store, not timed): the member record keeps totals, and the
/// lots are records of their own, spent oldest first from the front.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn award_5000_on_one_member_costs_the_records_of_award_1() {
    let h = std::sync::Arc::new(harness().await);
    enroll(&h, "hot").await; // 50, expiring
    let (award_1, v) = cost(&h, "award", award_body("hot", "p1", 1_000, json!([]), 1)).await;
    let mut points = v["pointsAwarded"].as_i64().unwrap();
    let (redeem_1, v) = cost(&h, "redeem", redeem_body("hot", "cake", 10_001)).await;
    assert_eq!(v["ok"], json!(true), "{v}");
    let mut tasks = Vec::new();
    for w in 0..25u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut sum = 0;
            for n in (2 + w * 200)..(2 + (w + 1) * 200).min(5_000) {
                let body = award_body("hot", &format!("p{n}"), 1_000, json!([]), n);
                sum += call(&h, "award", body).await["pointsAwarded"]
                    .as_i64()
                    .unwrap();
            }
            sum
        }));
    }
    for t in tasks {
        points += t.await.unwrap();
    }
    let (award_5000, v) = cost(
        &h,
        "award",
        award_body("hot", "p5000", 1_000, json!([]), 5_000),
    )
    .await;
    points += v["pointsAwarded"].as_i64().unwrap();
    let (redeem_2, v) = cost(&h, "redeem", redeem_body("hot", "cake", 10_002)).await;
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(
        award_5000, award_1,
        "records (read, written) of award #5000 vs #1"
    );
    assert_eq!(redeem_2, redeem_1, "records (read, written) of a redeem");
    assert_eq!(
        account(&h, "hot", 7).await["currentBalance"],
        json!(50 + points - 20)
    );
}

/// A member record as schema 1 wrote it (every lot inside it), for user `old` of program 7:
/// 50 points spendable, 7 pending until a day after T0, 3 expired long ago.
fn schema_1_member(t0: i64) -> String {
    let day = 86_400_000;
    format!(
        r#"{{"member_id":"mbr_old","user_id":"old","phone":null,"email":null,"card":null,"created_at":5,"account":{{"lots":[{{"seq":0,"remaining":50,"lifetime_part":50,"available_at":5,"expires_at":null}},{{"seq":1,"remaining":7,"lifetime_part":7,"available_at":{},"expires_at":null}},{{"seq":2,"remaining":3,"lifetime_part":3,"available_at":5,"expires_at":99}}],"lifetime_total":60,"next_seq":3}}}}"#,
        t0 + day
    )
}

/// A golden enroll answer of an older store (schema 1 and 2 kept it under `lenr/`).
const ENROLLED_OLD: &str = r#"{"ok":true,"memberId":"mbr_old","pointsAwarded":0}"#;

/// Schema 1 → 2: a store written by the earlier format (golden bytes put straight into
/// sled, version 1) is migrated at start — balances, pending and expiry unchanged, the
/// lots records of their own, the first inside the member record — and marked with the
/// current version.
#[tokio::test]
async fn a_schema_1_store_is_migrated_at_start() {
    let mut h = harness().await;
    let t0 = h.clock.now_ms();
    h.stop().await;
    {
        let db = sled::open(h.data_path()).unwrap();
        db.insert(b"meta\x1fschema_version", &1u64.to_be_bytes())
            .unwrap();
        db.insert(
            b"lmem\x1facme\x1f7\x1fmbr_old",
            schema_1_member(t0).as_bytes(),
        )
        .unwrap();
        db.insert(b"lid\x1facme\x1f7\x1fuser\x1fold", b"mbr_old".as_slice())
            .unwrap();
        db.insert(b"lenr\x1facme\x1f7\x1fold", ENROLLED_OLD.as_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    h.boot().await;
    // The enroll answer moved into its bucket (schema 3) and is given again as it was.
    let again = json!({"userId": "old", "loyaltyProgramId": 7, "locationId": 42});
    let r = h.call("loyalty/enroll", &again).await;
    assert_eq!(String::from_utf8_lossy(&r.bytes), ENROLLED_OLD);
    let a = account(&h, "old", 7).await;
    assert_eq!(
        (a["currentBalance"].clone(), a["lifetimeEarned"].clone()),
        (json!(50), json!(53))
    );
    // The next write records the expired 3 and adds its own lot.
    let v = call(&h, "award", award_body("old", "p1", 1_000, json!([]), 1)).await;
    assert_eq!(v["newBalance"], json!(60), "{v}");
    let view = h
        .admin("GET", "loyalty/7/members/mbr_old", None)
        .await
        .json();
    let seqs: Vec<i64> = view["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![0, 1, 4], "{view}");
    assert_eq!(view["ledger"][0]["kind"], json!("expiry"), "{view}");
    h.clock.advance_ms(86_400_000);
    let a = account(&h, "old", 7).await;
    assert_eq!(
        (a["currentBalance"].clone(), a["lifetimeEarned"].clone()),
        (json!(67), json!(70))
    );
    h.stop().await;
    let db = sled::open(h.data_path()).unwrap();
    let v = db.get(b"meta\x1fschema_version").unwrap().unwrap();
    assert_eq!(v.as_ref(), SCHEMA_VERSION.to_be_bytes().as_slice());
    assert_eq!(db.scan_prefix(b"lid\x1f").count(), 0);
    assert_eq!(db.scan_prefix(b"lenr\x1f").count(), 0);
    let m = db.get(b"lmem\x1facme\x1f7\x1fmbr_old").unwrap().unwrap();
    let m: Value = serde_json::from_slice(&m).unwrap();
    assert!(m["account"].get("lots").is_none(), "{m}");
    assert_eq!(
        m["first_lot"]["remaining"],
        json!(50),
        "lot 0 is in the record: {m}"
    );
    assert_eq!(
        member_keys(&db, "llot", "mbr_old"),
        ["0000000000000001", "0000000000000004"]
    );
}

/// The keys of member `m`'s records under `kind` (`lled`, `llot`) in program 7 of acme.
fn member_keys(db: &sled::Db, kind: &str, m: &str) -> Vec<String> {
    db.scan_prefix(format!("{kind}\x1facme\x1f7\x1f{m}\x1f").as_bytes())
        .map(|kv| {
            String::from_utf8_lossy(&kv.unwrap().0)
                .rsplit('\x1f')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn member_record(db: &sled::Db, m: &str) -> Value {
    let v = db
        .get(format!("lmem\x1facme\x1f7\x1f{m}").as_bytes())
        .unwrap()
        .unwrap();
    serde_json::from_slice(&v).unwrap()
}

/// A member's first ledger entry and the lot it made are kept inside the member record
/// (schema 4): a member enrolled with a bonus is one record; its later entries and lots are
/// records of their own; spending the first lot empties it from the record, the entry stays;
/// the admin view, the account and a restart see all of it.
#[tokio::test]
async fn a_members_first_entry_and_lot_live_in_its_record() {
    let mut h = harness().await;
    let m = enroll(&h, "f1").await;
    h.stop().await;
    {
        let db = sled::open(h.data_path()).unwrap();
        assert_eq!(member_keys(&db, "lled", &m), Vec::<String>::new());
        assert_eq!(member_keys(&db, "llot", &m), Vec::<String>::new());
        let rec = member_record(&db, &m);
        assert_eq!(rec["first_entry"]["kind"], json!("signup_bonus"), "{rec}");
        assert_eq!(rec["first_lot"]["remaining"], json!(50), "{rec}");
    }
    h.boot().await;
    let v = call(&h, "award", award_body("f1", "p1", 7_000, json!([]), 1)).await;
    assert_eq!(v["newBalance"], json!(120), "{v}");
    // 100 points: all 50 of the first lot, then 50 of the second (oldest first).
    let r = call(&h, "redeem", redeem_body("f1", "coffee", 2)).await;
    assert_eq!(r["newBalance"], json!(20), "{r}");
    let view = h
        .admin("GET", &format!("loyalty/7/members/{m}"), None)
        .await
        .json();
    let seqs = |k: &str, f: &str| -> Vec<Value> {
        view[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[f].clone())
            .collect()
    };
    assert_eq!(
        seqs("ledger", "seq"),
        vec![json!(0), json!(1), json!(2)],
        "{view}"
    );
    assert_eq!(
        seqs("ledger", "points"),
        vec![json!(50), json!(70), json!(-100)]
    );
    assert_eq!(seqs("lots", "seq"), vec![json!(1)], "{view}");
    assert_eq!(seqs("lots", "remaining"), vec![json!(20)]);
    assert_eq!(view["ledgerSum"], json!(20));
    h.stop().await;
    {
        let db = sled::open(h.data_path()).unwrap();
        let rec = member_record(&db, &m);
        assert!(rec.get("first_lot").is_none(), "spent: {rec}");
        assert_eq!(rec["first_entry"]["points"], json!(50), "{rec}");
        let (b1, b2) = ("0000000000000001", "0000000000000002");
        assert_eq!(member_keys(&db, "lled", &m), vec![b1, b2]);
        assert_eq!(member_keys(&db, "llot", &m), vec![b1]);
    }
    h.boot().await;
    let a = account(&h, "f1", 7).await;
    assert_eq!(
        (a["currentBalance"].clone(), a["lifetimeEarned"].clone()),
        (json!(20), json!(120))
    );
}

/// Schema 2 (and 3) → 4: a member whose first entry and lot are records of their own
/// (golden bytes, beside a later lot and entry) has them moved into its record at start;
/// its balance, lots and ledger read the same, and the later ones stay where they were.
#[tokio::test]
async fn a_schema_2_member_moves_its_first_entry_and_lot_into_its_record() {
    let mut h = harness().await;
    h.stop().await;
    let m = "mbr_two";
    let k = |kind: &str, seq: &str| format!("{kind}\x1facme\x1f7\x1f{m}\x1f{seq}");
    let (s0, s1) = ("0000000000000000", "0000000000000001");
    {
        let db = sled::open(h.data_path()).unwrap();
        db.insert(b"meta\x1fschema_version", &2u64.to_be_bytes())
            .unwrap();
        let member = r#"{"member_id":"mbr_two","user_id":"two","phone":null,"email":null,"card":null,"created_at":5,"account":{"total":57,"pending":0,"pending_lifetime":0,"matured_at":6,"lifetime_total":57,"next_seq":2,"next_expiry":null}}"#;
        db.insert(
            format!("lmem\x1facme\x1f7\x1f{m}").as_bytes(),
            member.as_bytes(),
        )
        .unwrap();
        db.insert(b"lid\x1facme\x1f7\x1fuser\x1ftwo", m.as_bytes())
            .unwrap();
        for (seq, n, kind) in [(s0, 50, "signup_bonus"), (s1, 7, "earn")] {
            let i = if seq == s0 { 0 } else { 1 };
            let lot = format!(
                r#"{{"seq":{i},"remaining":{n},"lifetime_part":{n},"available_at":5,"expires_at":null}}"#
            );
            let entry = format!(
                r#"{{"seq":{i},"at":5,"kind":"{kind}","points":{n},"balanceAfter":{},"reason":"r{i}"}}"#,
                if i == 0 { 50 } else { 57 }
            );
            db.insert(k("llot", seq).as_bytes(), lot.as_bytes())
                .unwrap();
            db.insert(k("lled", seq).as_bytes(), entry.as_bytes())
                .unwrap();
        }
        db.flush().unwrap();
    }
    h.boot().await;
    let a = account(&h, "two", 7).await;
    assert_eq!(a["currentBalance"], json!(57), "{a}");
    let view = h
        .admin("GET", &format!("loyalty/7/members/{m}"), None)
        .await
        .json();
    let reasons: Vec<&Value> = view["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["reason"])
        .collect();
    assert_eq!(reasons, vec![&json!("r0"), &json!("r1")], "{view}");
    let lots: Vec<&Value> = view["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["remaining"])
        .collect();
    assert_eq!(lots, vec![&json!(50), &json!(7)], "{view}");
    // Oldest first: the cake (10) comes out of the first lot, the one now in the record.
    let r = call(
        &h,
        "redeem",
        json!({"userId": "two", "loyaltyProgramId": 7, "rewardId": "cake", "transactionId": tx(1)}),
    )
    .await;
    assert_eq!(r["newBalance"], json!(47), "{r}");
    h.stop().await;
    let db = sled::open(h.data_path()).unwrap();
    let v = db.get(b"meta\x1fschema_version").unwrap().unwrap();
    assert_eq!(v.as_ref(), SCHEMA_VERSION.to_be_bytes().as_slice());
    let rec = member_record(&db, m);
    assert_eq!(rec["first_entry"]["reason"], json!("r0"), "{rec}");
    assert_eq!(rec["first_lot"]["remaining"], json!(40), "{rec}");
    assert_eq!(member_keys(&db, "llot", m), vec![s1]);
    assert_eq!(member_keys(&db, "lled", m), vec![s1, "0000000000000002"]);
}

/// Identifiers and enroll answers are kept many to a record (`lidb`, `lenrb`): two users
/// whose enroll answers hash to one bucket share its record, each enroll retried answers
/// its own bytes, each identifier finds its own member, and nothing is left one to a
/// record.
#[tokio::test]
async fn identifiers_and_enroll_answers_share_records() {
    use karma_provider::service::packed::bucket;
    let mut h = harness().await;
    let first = bucket("c0");
    let users: Vec<String> = (1u64..)
        .map(|i| format!("c{i}"))
        .filter(|u| bucket(u) == first)
        .take(1)
        .chain(std::iter::once("c0".to_string()))
        .collect();
    let mut answers = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let body = json!({"userId": u, "loyaltyProgramId": 7, "email": format!("{u}@example.com"), "cardNumber": format!("77{i}")});
        let r = h.call("loyalty/enroll", &body).await;
        assert_eq!(r.status, 200);
        answers.push((body, r.bytes));
    }
    assert_ne!(answers[0].1, answers[1].1);
    for (body, bytes) in &answers {
        assert_eq!(&h.call("loyalty/enroll", body).await.bytes, bytes);
    }
    for (i, u) in users.iter().enumerate() {
        let member = serde_json::from_slice::<Value>(&answers[i].1).unwrap()["memberId"].clone();
        for (t, id) in [
            ("email", format!("{u}@example.com")),
            ("card", format!("77{i}")),
            ("userId", u.clone()),
        ] {
            let v = call(
                &h,
                "lookup",
                json!({"loyaltyProgramId": 7, "identifier": id, "identifierType": t}),
            )
            .await;
            assert_eq!(v["memberId"], member, "{t} {id}: {v}");
        }
    }
    let taken = call(
        &h,
        "enroll",
        json!({"userId": "c-new", "loyaltyProgramId": 7, "cardNumber": "770"}),
    )
    .await;
    refused(&taken, "IDENTIFIER_IN_USE");
    h.stop().await;
    let db = sled::open(h.data_path()).unwrap();
    assert_eq!(db.scan_prefix(b"lid\x1f").count(), 0);
    assert_eq!(db.scan_prefix(b"lenr\x1f").count(), 0);
    let enrolls: Vec<_> = db.scan_prefix(b"lenrb\x1facme\x1f7\x1f").collect();
    assert_eq!(enrolls.len(), 1, "the two answers share one record");
    let entries: usize = db
        .scan_prefix(b"lidb\x1facme\x1f7\x1f")
        .map(|kv| {
            serde_json::from_slice::<serde_json::Map<String, Value>>(&kv.unwrap().1)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(entries, 6, "a user id, an email and a card for each");
}
