//! Voucher check / commit / reactivate over real HTTP: every rule, every error code,
//! idempotency, holds and their expiry, concurrency, restart.

mod common;

use common::*;
use serde_json::{json, Value};

const CAMPAIGNS: &str = r#"
[[tenants.campaigns]]
id = "welcome"
codes = ["WELCOME10"]
discount = { percent = 10 }
max_discount_cents = 2000
min_total_cents = 5000

[[tenants.campaigns]]
id = "single"
codes = ["ONE-USE-1", "ONE-USE-2"]
discount = { amount_cents = 500 }
max_uses_per_code = 1

[[tenants.campaigns]]
id = "window"
codes = ["SUMMER"]
discount = { amount_cents = 100 }
valid_from = "2026-06-01T00:00:00Z"
valid_until = "2026-08-31T23:59:59Z"

[[tenants.campaigns]]
id = "lunch"
codes = ["LUNCH"]
discount = { percent = 20 }
schedule = { days = ["mon", "tue"], from = "11:00", until = "14:00", timezone = "Europe/Stockholm" }

[[tenants.campaigns]]
id = "local"
codes = ["LOCAL42"]
discount = { amount_cents = 300 }
locations = [42]

[[tenants.campaigns]]
id = "burger"
codes = ["BURGER50"]
discount = { percent = 50 }
items = ["1001"]

[[tenants.campaigns]]
id = "capped"
codes = ["TWICE"]
discount = { amount_cents = 200 }
max_uses = 2

[[tenants.campaigns]]
id = "perguest"
codes = ["GUEST1"]
discount = { amount_cents = 100 }
max_uses_per_guest = 1

[[tenants.campaigns]]
id = "big"
codes = ["BIG"]
discount = { amount_cents = 100 }
"#;

async fn harness() -> Harness {
    Harness::start(&config_with(CAMPAIGNS)).await
}

async fn check(h: &Harness, body: Value) -> Value {
    let r = h.call("voucher/check", &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    r.json()
}

fn assert_rejected(v: &Value, code: &str) {
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["error"], json!(code), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// Check `code` on a cart of `total` and return (providerRef, discount).
async fn hold(h: &Harness, code: &str, total: i64) -> (String, i64) {
    let v = check(h, check_body(code, total)).await;
    assert_eq!(v["ok"], json!(true), "{v}");
    (
        v["providerRef"].as_str().unwrap().to_string(),
        v["discountAmountCents"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn check_reserves_and_answers_the_contract_fields() {
    let h = harness().await;
    let v = check(&h, check_body(" welcome-10 ", 8000)).await;
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["voucherNr"], json!("WELCOME10"));
    assert_eq!(v["discountAmountCents"], json!(800));
    assert_eq!(v["expiresAt"], json!("2026-06-01T12:00:00Z"));
    assert!(v["providerRef"].as_str().unwrap().starts_with("kph_"));
    // capped at max_discount_cents
    let v = check(&h, check_body("WELCOME10", 100_000)).await;
    assert_eq!(v["discountAmountCents"], json!(2000));
    // floor of 10% of 5555 = 555
    let v = check(&h, check_body("WELCOME10", 5555)).await;
    assert_eq!(v["discountAmountCents"], json!(555));
    let holds = h.admin("GET", "holds", None).await.json();
    assert_eq!(holds["count"], json!(3));
}

#[tokio::test]
async fn every_check_rejection_has_its_code() {
    let h = harness().await;
    assert_rejected(&check(&h, check_body("NOPE", 1000)).await, "UNKNOWN_CODE");
    assert_rejected(
        &check(&h, check_body("WELCOME10", 4999)).await,
        "MIN_TOTAL_NOT_MET",
    );
    assert_rejected(
        &check(
            &h,
            json!({"code": "LOCAL42", "cart": cart(1000), "locationId": 7}),
        )
        .await,
        "LOCATION_NOT_ALLOWED",
    );
    assert_rejected(
        &check(&h, check_body("LOCAL42", 1000)).await,
        "LOCATION_NOT_ALLOWED",
    );
    let ok = check(
        &h,
        json!({"code": "LOCAL42", "cart": cart(1000), "locationId": "42"}),
    )
    .await;
    assert_eq!(ok["discountAmountCents"], json!(300));
    assert_rejected(
        &check(&h, check_body("BURGER50", 1000)).await,
        "NO_ELIGIBLE_ITEMS",
    );

    // Schedule: Monday 12:00 Stockholm is inside 11:00-14:00; 14:30 is not; Wednesday is not.
    assert_eq!(
        check(&h, check_body("LUNCH", 1000)).await["ok"],
        json!(true)
    );
    h.clock.advance_ms(150 * 60_000);
    assert_rejected(
        &check(&h, check_body("LUNCH", 1000)).await,
        "OUTSIDE_SCHEDULE",
    );
    h.clock.advance_ms(2 * 86_400_000 - 150 * 60_000);
    assert_rejected(
        &check(&h, check_body("LUNCH", 1000)).await,
        "OUTSIDE_SCHEDULE",
    );

    h.clock.set_ms(jiff_ms("2026-05-31T23:59:59Z"));
    assert_rejected(
        &check(&h, check_body("SUMMER", 1000)).await,
        "NOT_YET_VALID",
    );
    h.clock.set_ms(jiff_ms("2026-09-01T00:00:00Z"));
    assert_rejected(&check(&h, check_body("SUMMER", 1000)).await, "EXPIRED");
}

fn jiff_ms(s: &str) -> i64 {
    karma_provider::Clock::manual_at(s).now_ms()
}

#[tokio::test]
async fn item_scoped_discount_and_never_above_total() {
    let h = harness().await;
    let body = json!({"code": "BURGER50", "cart": {"items": [
        {"inventoryItemId": 1001, "quantity": 2, "priceCents": 1250},
        {"inventoryItemId": "77", "quantity": 1, "priceCents": 5000}
    ], "totalCents": 7500}});
    assert_eq!(check(&h, body).await["discountAmountCents"], json!(1250));
    // weight-based line: 0.5 × 1001 cents = 500.5 → 501; half is 250 (floor)
    let body = json!({"code": "BURGER50", "cart": {"items": [
        {"inventoryItemId": "1001", "quantity": 0.5, "priceCents": 1001}
    ], "totalCents": 501}});
    assert_eq!(check(&h, body).await["discountAmountCents"], json!(250));
    // a fixed amount larger than the cart gives the cart total
    assert_eq!(
        check(&h, check_body("TWICE", 150)).await["discountAmountCents"],
        json!(150)
    );
}

#[tokio::test]
async fn capacity_held_then_used_then_guest_limit() {
    let h = harness().await;
    let (r1, a1) = hold(&h, "TWICE", 1000).await;
    let (_r2, _) = hold(&h, "TWICE", 1000).await;
    assert_rejected(&check(&h, check_body("TWICE", 1000)).await, "VOUCHER_HELD");
    let c = h
        .call("voucher/commit", &commit_body(a1, &res_id(1), &r1))
        .await
        .json();
    assert_eq!(
        c,
        json!({"ok": true, "voucherNr": "TWICE", "amountCents": 200, "transactionId": res_id(1)})
    );
    assert_rejected(&check(&h, check_body("TWICE", 1000)).await, "VOUCHER_HELD");

    // single-use codes: each code's uses count separately
    let (s1, sa) = hold(&h, "ONE-USE-1", 1000).await;
    assert_rejected(
        &check(&h, check_body("one use 1", 1000)).await,
        "VOUCHER_HELD",
    );
    assert_eq!(
        check(&h, check_body("ONE-USE-2", 1000)).await["ok"],
        json!(true)
    );
    h.call("voucher/commit", &commit_body(sa, &res_id(2), &s1))
        .await;
    assert_rejected(
        &check(&h, check_body("ONE-USE-1", 1000)).await,
        "USAGE_LIMIT_REACHED",
    );

    // per guest: only when the request names the guest
    let g = json!({"code": "GUEST1", "cart": cart(1000), "userId": "u-1"});
    assert_eq!(check(&h, g.clone()).await["ok"], json!(true));
    assert_rejected(&check(&h, g.clone()).await, "GUEST_LIMIT_REACHED");
    let other = json!({"code": "GUEST1", "cart": cart(1000), "userId": 2});
    assert_eq!(check(&h, other).await["ok"], json!(true));
    assert_eq!(
        check(&h, check_body("GUEST1", 1000)).await["ok"],
        json!(true)
    );
}

#[tokio::test]
async fn commit_is_idempotent_byte_for_byte_and_conflicts_on_another_body() {
    let h = harness().await;
    let (r, a) = hold(&h, "ONE-USE-1", 1000).await;
    let tx = res_id(42);
    let first = h.call("voucher/commit", &commit_body(a, &tx, &r)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["ok"], json!(true));
    for _ in 0..3 {
        let again = h.call("voucher/commit", &commit_body(a, &tx, &r)).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.bytes, first.bytes);
    }
    let conflict = h.call("voucher/commit", &commit_body(a + 1, &tx, &r)).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["error"], json!("IDEMPOTENCY_CONFLICT"));
    assert_eq!(conflict.json()["ok"], json!(false));
    let state = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(state["usesConsumed"], json!(1));
    assert_eq!(state["state"], json!("used"));
    // a second transaction on the same reservation does not consume again
    let other = h
        .call("voucher/commit", &commit_body(a, &res_id(43), &r))
        .await
        .json();
    assert_rejected(&other, "RESERVATION_ALREADY_COMMITTED");
}

#[tokio::test]
async fn commit_rejections() {
    let h = harness().await;
    let (r, a) = hold(&h, "ONE-USE-1", 1000).await;
    assert_rejected(
        &h.call("voucher/commit", &commit_body(a - 1, &res_id(1), &r))
            .await
            .json(),
        "AMOUNT_MISMATCH",
    );
    assert_rejected(
        &h.call("voucher/commit", &commit_body(a, &res_id(2), "kph_nope"))
            .await
            .json(),
        "RESERVATION_NOT_FOUND",
    );
    let no_ref = json!({"amountCents": a, "transactionId": res_id(3)});
    assert_rejected(
        &h.call("voucher/commit", &no_ref).await.json(),
        "RESERVATION_NOT_FOUND",
    );
    // the hold is still there and commits with the right amount
    let ok = h
        .call("voucher/commit", &commit_body(a, &res_id(4), &r))
        .await
        .json();
    assert_eq!(ok["ok"], json!(true));
}

#[tokio::test]
async fn reactivate_before_commit_releases_the_hold() {
    let h = harness().await;
    let (r, a) = hold(&h, "ONE-USE-1", 1000).await;
    let tx = res_id(7);
    let v = h.call("voucher/reactivate", &commit_body(a, &tx, &r)).await;
    assert_eq!(
        v.json(),
        json!({"ok": true, "status": "released", "transactionId": tx})
    );
    let again = h.call("voucher/reactivate", &commit_body(a, &tx, &r)).await;
    assert_eq!(again.bytes, v.bytes);
    // capacity is back
    let (r2, _) = hold(&h, "ONE-USE-1", 1000).await;
    assert_ne!(r2, r);
    // a first commit after the reactivate is refused, never silently re-consumed
    assert_rejected(
        &h.call("voucher/commit", &commit_body(a, &tx, &r))
            .await
            .json(),
        "RESERVATION_RELEASED",
    );
    // unknown reservation: safe to repeat
    let u = h
        .call(
            "voucher/reactivate",
            &commit_body(0, &res_id(8), "kph_unknown"),
        )
        .await
        .json();
    assert_eq!(
        u,
        json!({"ok": true, "status": "unknown", "transactionId": res_id(8)})
    );
    // a different transaction on the released hold
    let rel = h
        .call("voucher/reactivate", &commit_body(a, &res_id(9), &r))
        .await
        .json();
    assert_eq!(rel["status"], json!("already_released"));
}

#[tokio::test]
async fn reactivate_after_commit_returns_the_use() {
    let h = harness().await;
    let (r, a) = hold(&h, "ONE-USE-1", 1000).await;
    let tx = res_id(11);
    assert_eq!(
        h.call("voucher/commit", &commit_body(a, &tx, &r))
            .await
            .json()["ok"],
        json!(true)
    );
    assert_rejected(
        &check(&h, check_body("ONE-USE-1", 1000)).await,
        "USAGE_LIMIT_REACHED",
    );
    // reactivate under another transaction id is refused
    assert_rejected(
        &h.call("voucher/reactivate", &commit_body(a, &res_id(12), &r))
            .await
            .json(),
        "TRANSACTION_MISMATCH",
    );
    let v = h
        .call("voucher/reactivate", &commit_body(a, &tx, &r))
        .await
        .json();
    assert_eq!(v["status"], json!("returned"));
    let state = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(state["usesConsumed"], json!(0));
    assert_eq!(state["state"], json!("reactivated"));
    let events: Vec<&str> = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["held", "committed", "reactivated"]);
    // the commit retried after reactivate replays its first answer; nothing is re-consumed
    let replay = h
        .call("voucher/commit", &commit_body(a, &tx, &r))
        .await
        .json();
    assert_eq!(replay["ok"], json!(true));
    assert_eq!(
        h.admin("GET", "codes/ONE-USE-1", None).await.json()["usesConsumed"],
        json!(0)
    );
    assert_eq!(
        check(&h, check_body("ONE-USE-1", 1000)).await["ok"],
        json!(true)
    );
}

#[tokio::test]
async fn expired_holds_give_capacity_back_and_commit_only_if_capacity_remains() {
    let h = harness().await;
    let (r1, a1) = hold(&h, "ONE-USE-1", 1000).await;
    h.clock.advance_ms(2 * 3_600_000 - 1);
    assert_rejected(
        &check(&h, check_body("ONE-USE-1", 1000)).await,
        "VOUCHER_HELD",
    );
    h.clock.advance_ms(1);
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(0)
    );
    // expired, capacity still free: the commit is honoured
    assert_eq!(
        h.call("voucher/commit", &commit_body(a1, &res_id(1), &r1))
            .await
            .json()["ok"],
        json!(true)
    );

    let (r2, a2) = hold(&h, "ONE-USE-2", 1000).await;
    h.clock.advance_ms(2 * 3_600_000);
    let (r3, a3) = hold(&h, "ONE-USE-2", 1000).await; // capacity taken by a new hold
    assert_rejected(
        &h.call("voucher/commit", &commit_body(a2, &res_id(2), &r2))
            .await
            .json(),
        "RESERVATION_EXPIRED",
    );
    assert_eq!(
        h.call("voucher/commit", &commit_body(a3, &res_id(3), &r3))
            .await
            .json()["ok"],
        json!(true)
    );
}

/// A check writes no history record of its own (see `HoldRecord::held_unlogged`): its
/// "held" event is shown from the hold while it lives, and written when the hold is
/// committed, released or expires. Either way the code's history is the same, in time
/// order, across restarts.
#[tokio::test]
async fn a_holds_history_is_complete_while_live_after_expiry_and_across_restarts() {
    let mut h = harness().await;
    let events = |v: &Value| -> Vec<(String, String)> {
        v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_string(),
                    e["providerRef"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (ra, _) = hold(&h, "ONE-USE-1", 1000).await;
    let held_a = ("held".to_string(), ra.clone());
    let st = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(
        (st["state"].clone(), events(&st)),
        (json!("held"), vec![held_a.clone()])
    );
    assert_eq!(st["history"][0]["at"], json!(T0), "{st}");
    h.restart().await;
    let st = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(
        events(&st),
        vec![held_a.clone()],
        "a live hold, after a restart"
    );
    // Expired: the event is written by the job that forgets the hold.
    h.clock.advance_ms(2 * 3_600_000);
    let st = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(
        (st["state"].clone(), events(&st)),
        (json!("available"), vec![held_a.clone()])
    );
    h.restart().await;
    let st = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(
        (st["historyEvents"].clone(), events(&st)),
        (json!(1), vec![held_a.clone()]),
        "written once, kept"
    );
    // A second hold, committed: its held event is written with the commit, after the first.
    let (rb, ab) = hold(&h, "ONE-USE-1", 1000).await;
    assert_eq!(
        h.call("voucher/commit", &commit_body(ab, &res_id(40), &rb))
            .await
            .json()["ok"],
        json!(true)
    );
    let st = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(
        events(&st),
        vec![
            held_a,
            ("held".to_string(), rb.clone()),
            ("committed".to_string(), rb.clone())
        ]
    );
    assert_eq!(st["history"][1]["transactionId"], Value::Null);
    assert_eq!(st["history"][2]["transactionId"], json!(res_id(40)));
    assert_eq!(st["state"], json!("used"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_checks_of_a_single_use_code_make_one_hold() {
    let h = std::sync::Arc::new(harness().await);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call("voucher/check", &check_body("ONE-USE-1", 1000))
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
            assert_rejected(&v, "VOUCHER_HELD");
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_commits_take_effect_once() {
    let h = std::sync::Arc::new(harness().await);
    let (r, a) = hold(&h, "TWICE", 1000).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let h = h.clone();
        let body = commit_body(a, &res_id(5), &r);
        tasks.push(tokio::spawn(async move {
            h.call("voucher/commit", &body).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        answers.push(r.bytes);
    }
    assert!(answers.iter().all(|b| *b == answers[0]));
    assert_eq!(
        serde_json::from_slice::<Value>(&answers[0]).unwrap()["ok"],
        json!(true)
    );
    let c = h.admin("GET", "campaigns", None).await.json();
    let twice = c["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["spec"]["id"] == json!("capped"))
        .unwrap()
        .clone();
    assert_eq!(twice["usesConsumed"], json!(1));
}

#[tokio::test]
async fn restart_keeps_holds_uses_and_idempotency_records() {
    let mut h = harness().await;
    let (r1, a1) = hold(&h, "ONE-USE-1", 1000).await;
    let (r2, a2) = hold(&h, "ONE-USE-2", 1000).await;
    let first = h
        .call("voucher/commit", &commit_body(a1, &res_id(1), &r1))
        .await;
    h.restart().await;
    let again = h
        .call("voucher/commit", &commit_body(a1, &res_id(1), &r1))
        .await;
    assert_eq!(again.bytes, first.bytes);
    assert_rejected(
        &check(&h, check_body("ONE-USE-1", 1000)).await,
        "USAGE_LIMIT_REACHED",
    );
    // the live hold survived and still counts
    assert_rejected(
        &check(&h, check_body("ONE-USE-2", 1000)).await,
        "VOUCHER_HELD",
    );
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(1)
    );
    assert_eq!(
        h.call("voucher/commit", &commit_body(a2, &res_id(2), &r2))
            .await
            .json()["ok"],
        json!(true)
    );
}

/// Every live hold of `GET holds`, as providerRefs in order, a page of 1 000 at a time.
async fn live_refs(h: &Harness) -> Vec<String> {
    let mut refs = Vec::new();
    let mut path = "holds?limit=1000".to_string();
    loop {
        let v = h.admin("GET", &path, None).await.json();
        let page = v["holds"].as_array().unwrap();
        assert!(page.len() <= 1000, "{}", page.len());
        refs.extend(
            page.iter()
                .map(|x| x["providerRef"].as_str().unwrap().to_owned()),
        );
        match v["next"].as_str() {
            Some(next) => path = format!("holds?limit=1000&after={next}"),
            None => {
                assert_eq!(v["count"], json!(refs.len()));
                return refs;
            }
        }
    }
}

#[tokio::test]
async fn holds_are_listed_a_page_at_a_time_oldest_first() {
    let h = harness().await;
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(hold(&h, "WELCOME10", 6000).await.0);
    }
    let page = |q: &'static str| h.admin("GET", q, None);
    let v = page("holds?limit=2").await.json();
    assert_eq!(
        (v["count"].clone(), v["next"].clone()),
        (json!(5), json!(made[1]))
    );
    let refs = |v: &Value| -> Vec<String> {
        v["holds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["providerRef"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(refs(&v), made[..2]);
    assert_eq!(v["holds"][0]["code"], json!("WELCOME10"));
    let v = h
        .admin("GET", &format!("holds?limit=2&after={}", made[1]), None)
        .await
        .json();
    assert_eq!(refs(&v), made[2..4]);
    let v = h
        .admin("GET", &format!("holds?limit=2&after={}", made[3]), None)
        .await
        .json();
    assert_eq!(
        (refs(&v), v["next"].clone()),
        (made[4..].to_vec(), Value::Null)
    );
    // No limit: the first 100.
    let v = page("holds").await.json();
    assert_eq!((refs(&v), v["next"].clone()), (made.clone(), Value::Null));
    for (q, field) in [
        ("holds?limit=0", "limit"),
        ("holds?limit=1001", "limit"),
        ("holds?limit=ten", "limit"),
        ("holds?after=not-a-ref", "after"),
    ] {
        let r = page(q).await;
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (400, json!(field)),
            "{q}"
        );
    }
}

/// More live holds than one page of the start's marker scan (4 096 a page): a restart
/// counts every one of them again, no more and no fewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_counts_every_live_hold_past_one_page() {
    const HOLDS: usize = 4_300;
    const CALLERS: usize = 8;
    let h = std::sync::Arc::new(harness().await);
    let mut tasks = Vec::new();
    for w in 0..CALLERS {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for _ in (w..HOLDS).step_by(CALLERS) {
                hold(&h, "WELCOME10", 6000).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let Ok(mut h) = std::sync::Arc::try_unwrap(h) else {
        panic!("a caller still holds the harness");
    };
    let before = live_refs(&h).await;
    assert_eq!(before.len(), HOLDS);
    h.restart().await;
    let after = live_refs(&h).await;
    assert_eq!(after.len(), HOLDS);
    assert!(after == before, "the same holds are live after the restart");
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error() {
    let h = harness().await;
    let key = [
        ("content-type", "application/json"),
        ("x-provider-key", KEY),
    ];
    let post = |path: &'static str, body: &'static str| {
        h.request("POST", path, &key, body.as_bytes().to_vec())
    };

    let r = post("/v1/acme/voucher/check", "{\"code\": ").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("MALFORMED_JSON"))
    );
    let r = post(
        "/v1/acme/voucher/check",
        r#"{"code":"X","cart":{"items":[]}}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("cart.totalCents"))
    );
    let r = post("/v1/acme/voucher/check", r#"{"code":"X","cart":{"items":[{"inventoryItemId":"1","quantity":1,"priceCents":"12"}],"totalCents":12}}"#).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("cart.items[0].priceCents"))
    );
    let r = post(
        "/v1/acme/voucher/check",
        r#"{"code":"X","cart":{"items":[],"totalCents":-1}}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("cart.totalCents"))
    );
    let r = post(
        "/v1/acme/voucher/check",
        r#"{"code":"  ","cart":{"items":[],"totalCents":1}}"#,
    )
    .await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("code")));
    let r = post(
        "/v1/acme/voucher/commit",
        r#"{"amountCents":1,"transactionId":"res_123","providerRef":"x"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("transactionId"))
    );
    assert!(r.json()["message"].as_str().unwrap().contains("32 hex"));
    let r = post("/v1/acme/voucher/commit", "[]").await;
    assert_eq!((r.status, r.json()["ok"].clone()), (400, json!(false)));

    let big = format!("{{\"code\":\"{}\"}}", "x".repeat(5000));
    let r = h
        .request("POST", "/v1/acme/voucher/check", &key, big.into_bytes())
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (413, json!("BODY_TOO_LARGE"))
    );
    let r = h
        .request(
            "POST",
            "/v1/acme/voucher/check",
            &[("content-type", "text/plain"), ("x-provider-key", KEY)],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (415, json!("UNSUPPORTED_MEDIA_TYPE"))
    );
    let r = h
        .request("GET", "/v1/acme/voucher/check", &key, vec![])
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    assert_eq!(r.json()["ok"], json!(false));
    let r = post("/v1/acme/voucher/nope", "{}").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("NOT_FOUND"))
    );
    let r = post("/v1/nobody/voucher/check", "{}").await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("UNKNOWN_TENANT"))
    );
    let r = post("/elsewhere", "{}").await;
    assert_eq!(r.status, 404);

    let body = serde_json::to_vec(&check_body("WELCOME10", 6000)).unwrap();
    let r = h
        .request(
            "POST",
            "/v1/acme/voucher/check",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (401, json!("UNAUTHORIZED"))
    );
    let r = h
        .request(
            "POST",
            "/v1/acme/voucher/check",
            &[("x-provider-key", "acme-secret-kez")],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 401);
    // no content type at all is accepted as JSON
    let r = h
        .request(
            "POST",
            "/v1/acme/voucher/check",
            &[("x-provider-key", KEY)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn basic_auth_tenant() {
    use base64::Engine;
    let h = harness().await;
    let body = serde_json::to_vec(&check_body("BASIC5", 1000)).unwrap();
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("karma:s3cret")
    );
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("karma:wrong")
    );
    let r = h
        .request(
            "POST",
            "/v1/basic/voucher/check",
            &[("authorization", &good)],
            body.clone(),
        )
        .await;
    assert_eq!(r.json()["discountAmountCents"], json!(500));
    let r = h
        .request(
            "POST",
            "/v1/basic/voucher/check",
            &[("authorization", &bad)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("www-authenticate"));
    let r = h
        .request("POST", "/v1/basic/voucher/check", &[], body)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn admin_campaigns_codes_and_holds() {
    let mut h = harness().await;
    let r = h
        .request("GET", "/admin/v1/tenants/acme/holds", &[], vec![])
        .await;
    assert_eq!(r.status, 401);
    let spec = json!({"id": "api-made", "codes": ["API-1"], "discount": {"amount_cents": 250}, "max_uses_per_code": 1});
    let r = h.admin("POST", "campaigns", Some(&spec)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(h.admin("POST", "campaigns", Some(&spec)).await.status, 409);
    let clash = json!({"id": "other", "codes": ["welcome10"], "discount": {"percent": 5}});
    assert_eq!(
        h.admin("POST", "campaigns", Some(&clash)).await.json()["error"],
        json!("CODE_CONFLICT")
    );
    let bad = json!({"id": "bad", "codes": ["Z"], "discount": {"percent": 500}});
    let r = h.admin("POST", "campaigns", Some(&bad)).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("discount.percent"))
    );
    let cfg = json!({"id": "welcome", "codes": ["WELCOME10"], "discount": {"percent": 50}});
    assert_eq!(
        h.admin("PUT", "campaigns/welcome", Some(&cfg)).await.json()["error"],
        json!("CAMPAIGN_FROM_CONFIG")
    );

    let (r1, _) = hold(&h, "api-1", 1000).await;
    assert_eq!(
        check(&h, check_body("API-1", 1000)).await["error"],
        json!("VOUCHER_HELD")
    );
    let holds = h.admin("GET", "holds", None).await.json();
    assert_eq!(holds["count"], json!(1));
    assert_eq!(holds["holds"][0]["providerRef"], json!(r1));
    assert_eq!(holds["holds"][0]["amountCents"], json!(250));
    // The live index keeps no text: these come from the hold's record.
    assert_eq!(
        [
            &holds["holds"][0]["campaign"],
            &holds["holds"][0]["code"],
            &holds["holds"][0]["guest"]
        ],
        [&json!("api-made"), &json!("API-1"), &json!(null)]
    );
    let one = h.admin("GET", &format!("holds/{r1}"), None).await.json();
    assert_eq!(
        (one["state"].clone(), one["code"].clone()),
        (json!("held"), json!("API-1"))
    );
    let rel = h.admin("POST", &format!("holds/{r1}/release"), None).await;
    assert_eq!(rel.status, 200);
    assert_eq!(
        h.admin("GET", &format!("holds/{r1}"), None).await.json()["state"],
        json!("released")
    );
    assert_eq!(
        h.admin("POST", &format!("holds/{r1}/release"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(0)
    );

    // update persists across restart
    let upd = json!({"id": "api-made", "codes": ["API-1", "API-2"], "discount": {"amount_cents": 300}, "max_uses_per_code": 1});
    assert_eq!(
        h.admin("PUT", "campaigns/api-made", Some(&upd))
            .await
            .status,
        200
    );
    h.restart().await;
    assert_eq!(
        check(&h, check_body("API-2", 1000)).await["discountAmountCents"],
        json!(300)
    );
    let state = h.admin("GET", "codes/api-1", None).await.json();
    assert_eq!(state["campaign"], json!("api-made"));
    assert_eq!(state["state"], json!("available"));
    let events: Vec<&str> = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["held", "released_by_operator"]);
    assert_eq!(h.admin("GET", "codes/NOPE", None).await.status, 404);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let h = harness().await;
    assert_eq!(h.request("GET", "/healthz", &[], vec![]).await.status, 200);
    assert_eq!(h.request("GET", "/readyz", &[], vec![]).await.status, 200);
    hold(&h, "BIG", 1000).await;
    check(&h, check_body("NOPE", 1000)).await;
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    assert!(
        m.contains("kp_requests_total{endpoint=\"voucher.check\",outcome=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kp_requests_total{endpoint=\"voucher.check\",outcome=\"UNKNOWN_CODE\"} 1"),
        "{m}"
    );
    assert!(m.contains("kp_holds_in_flight 1"), "{m}");
    assert!(
        m.contains("kp_request_duration_seconds_count{endpoint=\"voucher.check\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn slow_clients_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness().await;
    let addr = h.server.as_ref().unwrap().addr;
    // headers that never finish: the connection is closed after header_read_timeout (1s)
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /v1/acme/voucher/check HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "connection not closed by the header timeout");
    // a body that never arrives: 408 after body_read_timeout (1s)
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("POST /v1/acme/voucher/check HTTP/1.1\r\nHost: x\r\nx-provider-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"code\"").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("REQUEST_TIMEOUT"), "{text}");
}

/// Karma's commit and its reactivate of the same hold (same transaction id) can cross on
/// the wire. Whichever runs first, the other is answered consistently, the code's use is
/// counted back, and both answers are replayed byte for byte on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_and_reactivate_of_one_hold_at_once_agree() {
    let h = std::sync::Arc::new(harness().await);
    let (mut commit_first, mut reactivate_first) = (0, 0);
    for round in 0..20u64 {
        let (r, a) = hold(&h, "ONE-USE-1", 1000).await;
        let body = commit_body(a, &res_id(1000 + round), &r);
        let (hc, hr) = (h.clone(), h.clone());
        let (bc, br) = (body.clone(), body.clone());
        let c = tokio::spawn(async move { hc.call("voucher/commit", &bc).await });
        let x = tokio::spawn(async move { hr.call("voucher/reactivate", &br).await });
        let (c, x) = (c.await.unwrap(), x.await.unwrap());
        let (cv, xv) = (c.json(), x.json());
        if cv["ok"] == json!(true) {
            commit_first += 1;
            assert_eq!(xv["status"], json!("returned"), "{cv} {xv}");
        } else {
            reactivate_first += 1;
            assert_rejected(&cv, "RESERVATION_RELEASED");
            assert_eq!(xv["status"], json!("released"), "{cv} {xv}");
        }
        assert_eq!(h.call("voucher/commit", &body).await.bytes, c.bytes);
        assert_eq!(h.call("voucher/reactivate", &body).await.bytes, x.bytes);
    }
    assert_eq!(commit_first + reactivate_first, 20);
    // every round gave the single use back
    let st = h.admin("GET", "codes/ONE-USE-1", None).await.json();
    assert_eq!(st["usesConsumed"], json!(0), "{st}");
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(0)
    );
    hold(&h, "ONE-USE-1", 1000).await;
}

/// Checks of a single-use code race the expiry of the hold that blocks it: at most one of
/// them takes the code, and the expired hold's commit then agrees with what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_racing_a_holds_expiry_take_the_code_at_most_once() {
    let h = std::sync::Arc::new(harness().await);
    let (r, a) = hold(&h, "ONE-USE-2", 1000).await;
    h.clock.advance_ms(2 * 3_600_000 - 5);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.call("voucher/check", &check_body("ONE-USE-2", 1000))
                .await
                .json()
        }));
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
        h.clock.advance_ms(1);
    }
    let mut ok = 0;
    for t in tasks {
        let v = t.await.unwrap();
        if v["ok"] == json!(true) {
            ok += 1;
        } else {
            assert_rejected(&v, "VOUCHER_HELD");
        }
    }
    assert!(ok <= 1, "{ok} checks took a single-use code");
    let holds = h.admin("GET", "holds", None).await.json();
    assert_eq!(holds["count"], json!(ok), "{holds}");
    let late = h
        .call("voucher/commit", &commit_body(a, &res_id(77), &r))
        .await
        .json();
    if ok == 1 {
        assert_rejected(&late, "RESERVATION_EXPIRED");
    } else {
        assert_eq!(late["ok"], json!(true), "{late}");
    }
}
