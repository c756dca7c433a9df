//! Exactly-once under failure, over real HTTP: a job of check, commit, reactivate, award
//! or redeem fails after it has decided — it returns an error, it panics, or the flush of
//! its group fails — and nothing of it remains: not its writes, not its changes to the
//! writer's memory (live holds, `/metrics` gauges). The same request retried then has the
//! single effect it should, and the admin views are the same before and after a restart
//! (memory agrees with the store). Faults are armed on the running server
//! (`karma_provider::faults`), never through the API.

mod common;

use common::*;
use karma_provider::faults::Fault;
use serde_json::{json, Value};

const FAULTS: [Fault; 3] = [Fault::Error, Fault::Panic, Fault::FailFlush];

async fn harness() -> Harness {
    Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await
}

/// Send `body` to `path` with `fault` armed on `endpoint`: the answer is an error (500 for
/// a panic, 503 otherwise), and the gauges did not move. After a failed flush the store
/// refuses everything (fail-stop) until the restart this does.
async fn fail_once(h: &mut Harness, endpoint: &str, fault: Fault, path: &str, body: &Value) {
    let gauge = metric(h, "kp_holds_in_flight").await;
    let undone = metric(h, "kp_store_jobs_undone_total").await;
    h.server.as_ref().unwrap().app.faults.arm(endpoint, fault);
    let r = h.call(path, body).await;
    let want = if fault == Fault::Panic { 500 } else { 503 };
    assert_eq!(
        r.status,
        want,
        "{endpoint} {fault:?}: {}",
        String::from_utf8_lossy(&r.bytes)
    );
    assert_eq!(r.json()["ok"], json!(false));
    assert_eq!(metric(h, "kp_holds_in_flight").await, gauge, "{fault:?}");
    if fault != Fault::FailFlush {
        let n: u64 = undone.rsplit(' ').next().unwrap().parse().unwrap();
        let now = metric(h, "kp_store_jobs_undone_total").await;
        assert_eq!(now, format!("kp_store_jobs_undone_total {}", n + 1));
    }
    if fault == Fault::FailFlush {
        assert_eq!(h.request("GET", "/readyz", &[], vec![]).await.status, 503);
        assert_eq!(h.call(path, body).await.status, 503, "fail-stop");
        h.restart().await;
    }
}

async fn metric(h: &Harness, name: &str) -> String {
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    m.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {m}"))
        .to_string()
}

async fn admin_json(h: &Harness, path: &str) -> Value {
    let r = h.admin("GET", path, None).await;
    assert_eq!(
        r.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&r.bytes)
    );
    r.json()
}

/// What the admin API shows of the voucher side, and the live-hold gauge.
async fn voucher_views(h: &Harness) -> Value {
    json!({
        "holds": admin_json(h, "holds").await,
        "campaigns": admin_json(h, "campaigns").await,
        "A1": admin_json(h, "codes/A1").await,
        "A2": admin_json(h, "codes/A2").await,
        "A3": admin_json(h, "codes/A3").await,
        "gauge": metric(h, "kp_holds_in_flight").await,
    })
}

/// The views now equal the views after a restart: memory agrees with the store.
async fn views_survive_restart(h: &mut Harness, views: fn(&Harness) -> Vf) -> Value {
    let before = views(h).await;
    h.restart().await;
    let after = views(h).await;
    assert_eq!(before, after, "memory and store disagree");
    after
}

type Vf<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Value> + 'a>>;

fn vouchers(h: &Harness) -> Vf<'_> {
    Box::pin(voucher_views(h))
}

async fn check_ok(h: &Harness, code: &str) -> (String, Value) {
    let r = h.call("voucher/check", &check_body(code, 2000)).await;
    let v = r.json();
    assert_eq!(v["ok"], json!(true), "{v}");
    (v["providerRef"].as_str().unwrap().to_string(), v)
}

fn live_holds(v: &Value) -> u64 {
    v["holds"]["count"].as_u64().unwrap()
}

#[tokio::test]
async fn a_failed_check_leaves_no_hold() {
    let mut h = harness().await;
    for (i, (fault, code)) in FAULTS.into_iter().zip(["A1", "A2", "A3"]).enumerate() {
        let before = voucher_views(&h).await;
        assert_eq!(live_holds(&before), i as u64);
        fail_once(
            &mut h,
            "voucher.check",
            fault,
            "voucher/check",
            &check_body(code, 2000),
        )
        .await;
        assert_eq!(voucher_views(&h).await, before, "{fault:?}");
        // The code takes one use: the retry holds it, once.
        check_ok(&h, code).await;
        let again = h
            .call("voucher/check", &check_body(code, 2000))
            .await
            .json();
        assert_eq!(again["error"], json!("VOUCHER_HELD"), "{again}");
    }
    let v = views_survive_restart(&mut h, vouchers).await;
    assert_eq!(live_holds(&v), 3);
    assert_eq!(v["gauge"], json!("kp_holds_in_flight 3"));
}

#[tokio::test]
async fn a_failed_commit_leaves_the_hold_live_and_uncounted() {
    let mut h = harness().await;
    for (i, (fault, code)) in FAULTS.into_iter().zip(["A1", "A2", "A3"]).enumerate() {
        let (pref, _) = check_ok(&h, code).await;
        let held = voucher_views(&h).await;
        let body = commit_body(500, &res_id(i as u64), &pref);
        fail_once(&mut h, "voucher.commit", fault, "voucher/commit", &body).await;
        assert_eq!(voucher_views(&h).await, held, "{fault:?}");
        let first = h.call("voucher/commit", &body).await;
        assert_eq!(first.json()["ok"], json!(true), "{fault:?}");
        let replay = h.call("voucher/commit", &body).await;
        assert_eq!(replay.bytes, first.bytes);
        let state = admin_json(&h, &format!("codes/{code}")).await;
        assert_eq!(state["usesConsumed"], json!(1), "{state}");
    }
    let v = views_survive_restart(&mut h, vouchers).await;
    assert_eq!(live_holds(&v), 0);
    let spent = &v["campaigns"]["campaigns"][0];
    assert_eq!(spent["usesConsumed"], json!(3), "{spent}");
}

#[tokio::test]
async fn a_failed_reactivate_keeps_the_hold_or_the_use() {
    let mut h = harness().await;
    for (i, fault) in FAULTS.into_iter().enumerate() {
        // Release a live hold.
        let (pref, _) = check_ok(&h, "A1").await;
        let held = voucher_views(&h).await;
        let body = commit_body(500, &res_id(100 + i as u64), &pref);
        fail_once(
            &mut h,
            "voucher.reactivate",
            fault,
            "voucher/reactivate",
            &body,
        )
        .await;
        assert_eq!(voucher_views(&h).await, held, "{fault:?}");
        let first = h.call("voucher/reactivate", &body).await;
        assert_eq!(first.json()["status"], json!("released"), "{fault:?}");
        assert_eq!(h.call("voucher/reactivate", &body).await.bytes, first.bytes);
        assert_eq!(live_holds(&voucher_views(&h).await), 0);
    }
    // Return a committed use.
    for (i, (fault, code)) in FAULTS.into_iter().zip(["A2", "A3", "A1"]).enumerate() {
        let (pref, _) = check_ok(&h, code).await;
        let body = commit_body(500, &res_id(200 + i as u64), &pref);
        assert_eq!(
            h.call("voucher/commit", &body).await.json()["ok"],
            json!(true)
        );
        let committed = voucher_views(&h).await;
        fail_once(
            &mut h,
            "voucher.reactivate",
            fault,
            "voucher/reactivate",
            &body,
        )
        .await;
        assert_eq!(voucher_views(&h).await, committed, "{fault:?}");
        let first = h.call("voucher/reactivate", &body).await;
        assert_eq!(first.json()["status"], json!("returned"), "{fault:?}");
        assert_eq!(h.call("voucher/reactivate", &body).await.bytes, first.bytes);
        let state = admin_json(&h, &format!("codes/{code}")).await;
        assert_eq!(state["usesConsumed"], json!(0), "{state}");
    }
    views_survive_restart(&mut h, vouchers).await;
}

fn tx(n: u64) -> String {
    format!("loy_{n:032x}")
}

async fn loyalty(h: &Harness, op: &str, body: Value) -> Value {
    let r = h.call(&format!("loyalty/{op}"), &body).await;
    assert_eq!(r.status, 200, "{op}: {}", String::from_utf8_lossy(&r.bytes));
    r.json()
}

async fn enroll(h: &Harness, user: &str) -> String {
    let v = loyalty(h, "enroll", json!({"userId": user, "loyaltyProgramId": 7})).await;
    v["memberId"].as_str().unwrap().to_string()
}

fn award_body(user: &str, purchase: &str, cents: i64, n: u64) -> Value {
    json!({"userId": user, "loyaltyProgramId": 7, "purchaseId": purchase, "purchaseAmountCents": cents, "itemIds": [], "transactionId": tx(n)})
}

fn redeem_body(user: &str, n: u64) -> Value {
    json!({"userId": user, "loyaltyProgramId": 7, "rewardId": "coffee", "transactionId": tx(n)})
}

/// The member as the admin API and the account call show it, and the rewards' stock.
async fn member_views(h: &Harness) -> Value {
    let by_user = admin_json(h, "loyalty/7/users/u1").await;
    let member = loyalty(h, "account", json!({"userId": "u1", "loyaltyProgramId": 7})).await;
    let rewards = loyalty(h, "rewards", json!({"loyaltyProgramId": 7})).await;
    json!({"admin": by_user, "account": member, "rewards": rewards})
}

fn members(h: &Harness) -> Vf<'_> {
    Box::pin(member_views(h))
}

#[tokio::test]
async fn a_failed_award_credits_nothing() {
    let mut h = harness().await;
    enroll(&h, "u1").await; // 50
    for (i, fault) in FAULTS.into_iter().enumerate() {
        let before = member_views(&h).await;
        let body = award_body("u1", &format!("p{i}"), 10_000, i as u64);
        fail_once(&mut h, "loyalty.award", fault, "loyalty/award", &body).await;
        assert_eq!(member_views(&h).await, before, "{fault:?}");
        let first = h.call("loyalty/award", &body).await;
        assert_eq!(first.json()["pointsAwarded"], json!(100), "{fault:?}");
        assert_eq!(h.call("loyalty/award", &body).await.bytes, first.bytes);
    }
    let v = views_survive_restart(&mut h, members).await;
    assert_eq!(v["account"]["currentBalance"], json!(350), "{v}");
}

#[tokio::test]
async fn a_failed_redeem_spends_nothing() {
    let mut h = harness().await;
    enroll(&h, "u1").await; // 50
    loyalty(&h, "award", award_body("u1", "big", 100_000, 99)).await; // +1000
    for (i, fault) in FAULTS.into_iter().enumerate() {
        let before = member_views(&h).await;
        let body = redeem_body("u1", i as u64);
        fail_once(&mut h, "loyalty.redeem", fault, "loyalty/redeem", &body).await;
        assert_eq!(member_views(&h).await, before, "{fault:?}");
        let first = h.call("loyalty/redeem", &body).await;
        let v = first.json();
        assert_eq!(v["ok"], json!(true), "{fault:?}: {v}");
        assert_eq!(h.call("loyalty/redeem", &body).await.bytes, first.bytes);
    }
    let v = views_survive_restart(&mut h, members).await;
    assert_eq!(v["account"]["currentBalance"], json!(750), "{v}");
    assert_eq!(
        v["rewards"]["rewards"][0]["stockRemaining"],
        json!(2),
        "{v}"
    );
}

/// An account call for `user`, timed: (when its answer came, status, body).
async fn timed_account(h: &Harness, user: &str) -> (std::time::Instant, u16, Value) {
    let r = h
        .call(
            "loyalty/account",
            &json!({"userId": user, "loyaltyProgramId": 7}),
        )
        .await;
    let v = serde_json::from_slice(&r.bytes).unwrap_or(Value::Null);
    (std::time::Instant::now(), r.status, v)
}

/// Issue 13 §2: reads run beside the writer, yet a read never shows a group before it is
/// durable. An award's group waits 400 ms between being applied to sled and its flush; an
/// account read of that member, sent meanwhile, answers with the award only after that
/// wait (it met the member in flight and ran on the writer, after the award's group),
/// while a read of another member answers during the wait (served beside the writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_racing_an_award_never_sees_it_before_its_answer() {
    use std::time::{Duration, Instant};
    let h = std::sync::Arc::new(harness().await);
    enroll(&h, "u1").await;
    enroll(&h, "u2").await;
    let app = &h.server.as_ref().unwrap().app;
    app.faults.arm(
        "loyalty.award",
        Fault::SlowFlush(Duration::from_millis(400)),
    );
    let h2 = h.clone();
    let sent = Instant::now();
    let award = tokio::spawn(async move {
        let v = loyalty(&h2, "award", award_body("u1", "p1", 1_000, 1)).await;
        (Instant::now(), v)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (other_at, status, other) = timed_account(&h, "u2").await;
    assert_eq!((status, other["currentBalance"].clone()), (200, json!(50)));
    let (read_at, status, read) = timed_account(&h, "u1").await;
    let (award_at, award) = award.await.unwrap();
    assert_eq!(award["newBalance"], json!(60), "{award}");
    assert_eq!(status, 200, "{read}");
    assert!(
        other_at < award_at,
        "the other member's read waited for the writer"
    );
    // The award's effect is visible only once its group is durable (the group was held
    // 400 ms after being applied to sled), when its answer goes out.
    assert_eq!(read["currentBalance"], json!(60), "{read}");
    assert!(
        read_at.duration_since(sent) >= Duration::from_millis(400),
        "a read showed the award before its group was durable"
    );
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    assert!(
        m.contains("kp_store_reads_beside_total{result=\"deferred\"} 1\n"),
        "{m}"
    );
}

/// A group applied to sled and then failing its flush was never visible: a read sent
/// while it waited gets the store's refusal (503, fail-stop), never the failed award.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_never_sees_a_group_whose_flush_failed() {
    use std::time::Duration;
    let h = std::sync::Arc::new(harness().await);
    enroll(&h, "u1").await;
    let app = &h.server.as_ref().unwrap().app;
    app.faults.arm(
        "loyalty.award",
        Fault::SlowFailedFlush(Duration::from_millis(400)),
    );
    let h2 = h.clone();
    let award = tokio::spawn(async move {
        h2.call("loyalty/award", &award_body("u1", "p1", 1_000, 1))
            .await
            .status
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, status, read) = timed_account(&h, "u1").await;
    assert_eq!(award.await.unwrap(), 503);
    assert_eq!(status, 503, "{read}");
    let (_, status, read) = timed_account(&h, "u1").await;
    assert_eq!(status, 503, "fail-stop, reads included: {read}");
}
