//! The fixtures catch a subtly wrong provider. Each "wrong provider" here is this service
//! behind a proxy that adds exactly one mistake a real provider could make (answers that
//! change on retry, a single-use code taken twice, purchase dedupe skipped, ...). `replay`
//! must fail exactly the scenarios that pin that behaviour, naming the scenario and the
//! step, and pass every other one.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use common::proxy::{self, Answer};
use common::*;
use karma_provider::replay::{self, ReplayAuth, ReplayOptions};
use serde_json::{json, Value};

/// The one mistake a proxy adds.
#[derive(Clone, Copy, Debug)]
enum Mistake {
    /// A retried request gets other bytes than the first answer (here: a trailing space).
    BytesChangeOnRetry,
    /// A check of a single-use code that is held or used succeeds anyway.
    SingleUseTakenTwice,
    /// Awards are not deduplicated by purchaseId.
    PurchaseDedupeSkipped,
    /// The same id with another body answers 200 with the first answer instead of 409.
    NoConflictOnOtherBody,
    /// Reactivate after commit says "returned" but never gives the use back.
    ReactivateKeepsTheUse,
    /// A fixed discount larger than the cart is not clamped to the cart total.
    DiscountAboveCartTotal,
    /// A redeem without enough points succeeds.
    InsufficientPointsAllowed,
    /// A duplicate webhook delivery is acknowledged as a new one.
    WebhookDuplicateAcceptedTwice,
}

#[derive(Default)]
struct Memory {
    /// (path, request bytes) already answered.
    seen: HashSet<(String, Vec<u8>)>,
    /// transactionId → first answer bytes.
    first: HashMap<String, Vec<u8>>,
    /// Transaction ids of successful commits.
    committed: HashSet<String>,
}

/// Rewrite the request before it is forwarded; `Some` answers without forwarding.
fn before(m: Mistake, path: &str, req: &mut Value, mem: &Memory) -> Option<Answer> {
    let tx = req["transactionId"].as_str().unwrap_or("").to_string();
    match m {
        Mistake::PurchaseDedupeSkipped if path.ends_with("/loyalty/award") => {
            if let Some(p) = req["purchaseId"].as_str() {
                req["purchaseId"] = json!(format!("{p}/{tx}"));
            }
            None
        }
        Mistake::ReactivateKeepsTheUse
            if path.ends_with("/voucher/reactivate") && mem.committed.contains(&tx) =>
        {
            let body = json!({"ok": true, "status": "returned", "transactionId": tx});
            Some((200, serde_json::to_vec(&body).unwrap()))
        }
        _ => None,
    }
}

/// Rewrite the real answer.
fn after(m: Mistake, path: &str, req: &Value, repeat: bool, mem: &Memory, ans: &mut Answer) {
    let v: Value = serde_json::from_slice(&ans.1).unwrap_or(Value::Null);
    let tx = req["transactionId"].as_str().unwrap_or("");
    let error = v["error"].as_str().unwrap_or("");
    match m {
        Mistake::BytesChangeOnRetry if repeat && ans.0 == 200 => ans.1.push(b' '),
        Mistake::SingleUseTakenTwice
            if path.ends_with("/voucher/check")
                && matches!(error, "VOUCHER_USED" | "VOUCHER_HELD") =>
        {
            let fake = json!({"ok": true, "voucherNr": req["code"], "discountAmountCents": 500,
                              "expiresAt": "2030-01-01T00:00:00Z", "providerRef": "kph_again"});
            *ans = (200, serde_json::to_vec(&fake).unwrap());
        }
        Mistake::NoConflictOnOtherBody if ans.0 == 409 => {
            if let Some(first) = mem.first.get(tx) {
                *ans = (200, first.clone());
            }
        }
        Mistake::DiscountAboveCartTotal if path.ends_with("/voucher/check") => {
            let total = &req["cart"]["totalCents"];
            if v["ok"] == json!(true) && v["discountAmountCents"] == *total {
                let mut w = v.clone();
                w["discountAmountCents"] = json!(total.as_i64().unwrap_or(0) + 500);
                ans.1 = serde_json::to_vec(&w).unwrap();
            }
        }
        Mistake::InsufficientPointsAllowed
            if path.ends_with("/loyalty/redeem") && error == "INSUFFICIENT_POINTS" =>
        {
            let fake = json!({"ok": true, "redemptionId": "rdm_fake", "pointsSpent": 0,
                              "newBalance": 0});
            *ans = (200, serde_json::to_vec(&fake).unwrap());
        }
        Mistake::WebhookDuplicateAcceptedTwice
            if path.ends_with("/webhooks") && v["duplicate"] == json!(true) =>
        {
            ans.1 = br#"{"ok":true}"#.to_vec();
        }
        _ => {}
    }
}

/// Start a proxy in front of `target` (the harness base URL) that adds `m`.
async fn wrong_provider(target: String, m: Mistake) -> String {
    let mem: Arc<Mutex<Memory>> = Arc::default();
    proxy::start(
        target,
        Arc::new(move |ex| {
            let mem = mem.clone();
            Box::pin(async move { exchange(m, &mem, ex).await })
        }),
    )
    .await
}

async fn exchange(m: Mistake, mem: &Mutex<Memory>, ex: proxy::Exchange) -> Answer {
    let path = ex.path.as_str();
    let mut req: Value = serde_json::from_slice(&ex.body).unwrap_or(Value::Null);
    let repeat = !mem
        .lock()
        .unwrap()
        .seen
        .insert((path.to_string(), ex.body.clone()));
    if let Some(ans) = before(m, path, &mut req, &mem.lock().unwrap()) {
        return ans;
    }
    let out = if req.is_null() {
        ex.body.clone()
    } else {
        serde_json::to_vec(&req).unwrap()
    };
    let mut ans = ex.forward(out).await;
    let mut g = mem.lock().unwrap();
    after(m, path, &req, repeat, &g, &mut ans);
    if let Some(tx) = req["transactionId"].as_str() {
        g.first
            .entry(tx.to_string())
            .or_insert_with(|| ans.1.clone());
        if path.ends_with("/voucher/commit") && ans.0 == 200 && ans.1.starts_with(br#"{"ok":true"#)
        {
            g.committed.insert(tx.to_string());
        }
    }
    ans
}

fn conformance_config() -> String {
    config_with("[tenants.webhooks]\nverify = { scheme = \"hmac-sha256-hex\", secrets_env = [\"WH_SECRET\"] }\n")
        .replace("token_env = \"ADMIN_TOKEN\"", "token_env = \"ADMIN_TOKEN\"\nprovider_states = true")
}

/// Replay the whole suite against this service behind `m`; the failed scenarios and their
/// first failure line.
async fn replay_against(m: Mistake) -> (usize, Vec<(String, String)>) {
    let h = Harness::start(&conformance_config()).await;
    let proxy = wrong_provider(h.base(), m).await;
    let dir = tempfile::tempdir().unwrap();
    let o = ReplayOptions {
        paths: vec!["fixtures".into()],
        target: Some(format!("{proxy}/v1/acme")),
        auth: Some(ReplayAuth::Header {
            name: "X-Provider-Key".into(),
            value: KEY.into(),
        }),
        state_url: Some(format!(
            "{}/admin/v1/tenants/acme/provider-states",
            h.base()
        )),
        state_headers: vec![("authorization".into(), format!("Bearer {ADMIN_TOKEN}"))],
        webhook_secret: Some("new-secret".into()),
        last_failed_file: dir.path().join("last-failed"),
        ..ReplayOptions::default()
    };
    let report = replay::run(&o).await.unwrap();
    let failed = report
        .scenarios
        .iter()
        .filter(|s| !s.passed)
        .map(|s| (s.name.clone(), s.failures[0].clone()))
        .collect();
    (report.passed, failed)
}

/// Run `m` and check that exactly `expected` (scenario, start of the first failure line,
/// which names the step and the call) failed.
async fn caught(m: Mistake, expected: &[(&str, &str)]) {
    let (passed, failed) = replay_against(m).await;
    let names: BTreeSet<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    let want: BTreeSet<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want, "{m:?}: {failed:#?}");
    for (name, start) in expected {
        let line = &failed.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(line.starts_with(start), "{m:?} {name}: {line}");
    }
    assert_eq!(
        passed + failed.len(),
        40,
        "{m:?}: every other scenario passes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_change_on_retry_are_caught() {
    let retry = |step: &str, call: &str, first: &str| {
        format!("{step} ({call}): body: expected the bytes of step \"{first}\"")
    };
    let expected = [
        (
            "voucher-commit-retry-is-identical",
            retry("retry", "voucher.commit", "commit"),
        ),
        (
            "voucher-reactivate-before-commit",
            retry("reactivate again", "voucher.reactivate", "reactivate"),
        ),
        (
            "loyalty-award-retry-and-tier",
            retry("retry", "loyalty.award", "award"),
        ),
        (
            "loyalty-redeem-and-retry",
            retry("retry", "loyalty.redeem", "redeem"),
        ),
        (
            "loyalty-enroll-and-lookup",
            retry("enroll again", "loyalty.enroll", "enroll"),
        ),
        (
            "voucher-concurrent-identical-commits",
            "five identical commits at once (voucher.commit): set.identical: expected 5 \
             byte-identical answers, got 2 distinct answers"
                .into(),
        ),
    ];
    let expected: Vec<(&str, &str)> = expected.iter().map(|(n, l)| (*n, l.as_str())).collect();
    caught(Mistake::BytesChangeOnRetry, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_code_taken_twice_is_caught() {
    caught(
        Mistake::SingleUseTakenTwice,
        &[
            (
                "voucher-single-use-held-then-used",
                "while held (voucher.check): body.error: expected \"VOUCHER_HELD\"",
            ),
            (
                "voucher-concurrent-checks-single-use",
                "five checks at once (voucher.check): set.okTrue: expected 1 of 5 answers \
                 with ok:true, got 5",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_purchase_dedupe_is_caught() {
    caught(
        Mistake::PurchaseDedupeSkipped,
        &[(
            "loyalty-award-purchase-dedupe",
            "same purchase, new id (loyalty.award): body: expected the bytes of step \"award\"",
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_for_the_same_id_with_another_body_is_caught() {
    caught(
        Mistake::NoConflictOnOtherBody,
        &[
            (
                "voucher-commit-same-id-other-body",
                "other body (voucher.commit): status: expected 409, got 200",
            ),
            (
                "loyalty-award-same-id-other-body",
                "other body (loyalty.award): status: expected 409, got 200",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactivate_that_keeps_the_use_is_caught() {
    caught(
        Mistake::ReactivateKeepsTheUse,
        &[(
            "voucher-reactivate-after-commit",
            "usable again (voucher.check): ",
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discount_above_the_cart_total_is_caught() {
    caught(
        Mistake::DiscountAboveCartTotal,
        &[(
            "voucher-check-discount-clamped",
            "check (voucher.check): body.discountAmountCents: expected 1500, got 2000",
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeem_without_enough_points_is_caught() {
    caught(
        Mistake::InsufficientPointsAllowed,
        &[
            (
                "loyalty-redeem-insufficient-points",
                "step 1 (loyalty.redeem): body.error: expected \"INSUFFICIENT_POINTS\"",
            ),
            (
                "loyalty-concurrent-redeems",
                "five redeems at once (loyalty.redeem): set.okTrue: expected 2 of 5 answers \
                 with ok:true, got 5",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_duplicate_accepted_twice_is_caught() {
    caught(
        Mistake::WebhookDuplicateAcceptedTwice,
        &[(
            "webhook-accept-then-duplicate",
            "again (webhook): body.duplicate: expected true, got (missing)",
        )],
    )
    .await;
}
