//! `karma-provider simulate` (the real binary) against a real server: the whole default
//! run passes; against deliberately wrong providers (this service behind a proxy that adds
//! one mistake, as in `tests/wrong_providers.rs`) each violation class is reported; a
//! provider that answers 5xx once or times out once recovers through Karma's retries with
//! the same transactionId.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{self, Answer};
use common::sim::*;
use common::*;
use serde_json::{json, Value};

fn classes(report: &Value) -> BTreeSet<String> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["class"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_default_run_passes_against_this_service() {
    let h = Harness::start(&states_config()).await;
    let args = ["--orders", "60", "--concurrency", "8", "--seed", "7"];
    let (code, r, junit, stdout) = simulate(&h, &h.base(), &args).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(r["violations"], json!([]), "{stdout}");
    assert_eq!(
        (r["orders"].clone(), r["seed"].clone()),
        (json!(60), json!(7))
    );
    let ends: u64 = r["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(ends, 60);
    let calls: BTreeSet<&str> = r["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call"].as_str().unwrap())
        .collect();
    for call in [
        "voucher.check",
        "voucher.commit",
        "voucher.reactivate",
        "loyalty.lookup",
        "loyalty.enroll",
        "loyalty.award",
        "loyalty.account",
    ] {
        assert!(calls.contains(call), "{call} never called: {calls:?}");
    }
    assert!(r["calls"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["withinBudget"] == json!(true)));
    assert_eq!(r["retries"], json!([]));
    assert!(junit.contains("tests=\"7\" failures=\"0\""), "{junit}");
    assert!(
        stdout.contains("PASS single-use-code-used-twice (0)"),
        "{stdout}"
    );
    assert!(stdout.contains("no violations"), "{stdout}");
    // guests raced for single-use codes, and the provider refused the second
    let held = r["refusals"]["VOUCHER_HELD"].as_u64().unwrap_or(0);
    let used = r["refusals"]["USAGE_LIMIT_REACHED"].as_u64().unwrap_or(0);
    assert!(held + used > 0, "{r:#}");
    // the same seed again on the same provider passes too: every id is unique to the run
    let (code, r, _, stdout) = simulate(&h, &h.base(), &args).await;
    assert_eq!((code, r["violations"].clone()), (0, json!([])), "{stdout}");
}

/// The one mistake a proxy adds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mistake {
    /// A successful check offers 5.00 more than the cart total.
    DiscountAboveTotal,
    /// A repeated request gets other bytes (a trailing space).
    BytesChangeOnRetry,
    /// Awards answer a newBalance 7 points too high.
    BalanceOff,
    /// A check refused because the code is held or used answers ok:true anyway.
    SingleUseTwice,
    /// Commits are refused with ok:false.
    CommitRefused,
    /// Awards always answer 503.
    AwardDown,
    /// Checks take 150 ms longer.
    SlowCheck,
    /// The first commit answers 503 (once).
    CommitFailsOnce,
    /// The first award is held past Karma's timeout (then forwarded, so it took effect).
    AwardTimesOutOnce,
}

#[derive(Default)]
struct Memory {
    seen: HashSet<(String, Vec<u8>)>,
    /// (path, transactionId) of every request, in order.
    log: Vec<(String, String)>,
    failed_once: bool,
}

/// Answer without forwarding, or wait, before the request reaches the service.
async fn before(m: Mistake, path: &str, mem: &Mutex<Memory>) -> Option<Answer> {
    let first =
        |mem: &Mutex<Memory>| !std::mem::replace(&mut mem.lock().unwrap().failed_once, true);
    match m {
        Mistake::AwardDown if path.ends_with("/loyalty/award") => Some((503, b"{}".to_vec())),
        Mistake::CommitFailsOnce if path.ends_with("/voucher/commit") && first(mem) => {
            Some((503, br#"{"ok":false,"error":"UNAVAILABLE"}"#.to_vec()))
        }
        Mistake::AwardTimesOutOnce if path.ends_with("/loyalty/award") && first(mem) => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            None
        }
        Mistake::SlowCheck if path.ends_with("/voucher/check") => {
            tokio::time::sleep(Duration::from_millis(150)).await;
            None
        }
        _ => None,
    }
}

/// Rewrite the service's answer.
fn after(m: Mistake, path: &str, req: &Value, repeat: bool, ans: &mut Answer) {
    let v: Value = serde_json::from_slice(&ans.1).unwrap_or(Value::Null);
    let check = path.ends_with("/voucher/check");
    match m {
        Mistake::DiscountAboveTotal if check && v["ok"] == json!(true) => {
            let mut w = v.clone();
            w["discountAmountCents"] = json!(req["cart"]["totalCents"].as_i64().unwrap() + 500);
            ans.1 = serde_json::to_vec(&w).unwrap();
        }
        Mistake::BytesChangeOnRetry if repeat && ans.0 == 200 => ans.1.push(b' '),
        Mistake::BalanceOff if path.ends_with("/loyalty/award") && v["ok"] == json!(true) => {
            let mut w = v.clone();
            w["newBalance"] = json!(v["newBalance"].as_i64().unwrap() + 7);
            ans.1 = serde_json::to_vec(&w).unwrap();
        }
        Mistake::SingleUseTwice
            if check
                && matches!(
                    v["error"].as_str(),
                    Some("VOUCHER_HELD" | "USAGE_LIMIT_REACHED")
                ) =>
        {
            let fake = json!({"ok": true, "voucherNr": req["code"], "discountAmountCents": 300,
                              "expiresAt": "2030-01-01T00:00:00Z", "providerRef": "kph_again"});
            *ans = (200, serde_json::to_vec(&fake).unwrap());
        }
        Mistake::CommitRefused if path.ends_with("/voucher/commit") => {
            *ans = (
                200,
                br#"{"ok":false,"error":"NOPE","message":"no"}"#.to_vec(),
            );
        }
        _ => {}
    }
}

/// A proxy in front of `target` that adds `m`; its memory (for the request log).
async fn wrong_provider(target: String, m: Mistake) -> (String, Arc<Mutex<Memory>>) {
    let mem: Arc<Mutex<Memory>> = Arc::default();
    let memory = mem.clone();
    let url = proxy::start(
        target,
        Arc::new(move |ex| {
            let mem = mem.clone();
            Box::pin(async move { exchange(m, &mem, ex).await })
        }),
    )
    .await;
    (url, memory)
}

async fn exchange(m: Mistake, mem: &Mutex<Memory>, ex: proxy::Exchange) -> Answer {
    let path = ex.path.clone();
    let req: Value = serde_json::from_slice(&ex.body).unwrap_or(Value::Null);
    let repeat = {
        let mut g = mem.lock().unwrap();
        let tx = req["transactionId"].as_str().unwrap_or("").to_string();
        g.log.push((path.clone(), tx));
        !g.seen.insert((path.clone(), ex.body.clone()))
    };
    if let Some(ans) = before(m, &path, mem).await {
        return ans;
    }
    let mut ans = ex.forward(ex.body.clone()).await;
    after(m, &path, &req, repeat, &mut ans);
    ans
}

/// Simulate against this service behind `m`: the report (exit code 1 asserted when
/// violations are expected).
async fn against(m: Mistake, extra: &[&str]) -> (Value, Arc<Mutex<Memory>>, String) {
    let h = Harness::start(&states_config()).await;
    let (proxy, mem) = wrong_provider(h.base(), m).await;
    let mut args = vec!["--orders", "40", "--concurrency", "4", "--seed", "3"];
    args.extend(extra);
    let (code, r, junit, stdout) = simulate(&h, &proxy, &args).await;
    let expected = if r["violations"] == json!([]) { 0 } else { 1 };
    assert_eq!(code, expected, "{stdout}");
    (r, mem, junit)
}

/// The violations of `class`.
fn of(r: &Value, class: &str) -> Vec<Value> {
    r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["class"] == json!(class))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discount_above_the_cart_total_is_reported() {
    let (r, _, junit) = against(Mistake::DiscountAboveTotal, &[]).await;
    let v = of(&r, "discount-above-total");
    assert!(!v.is_empty(), "{r:#}");
    // every one exact: the code, the offer, the total, what Karma applies
    let re = regex::Regex::new(
        r"^(?:PCT|FIX|ONE)[0-9A-F]+: discountAmountCents (\d+) is above cart.totalCents (\d+) \(Karma applies (\d+)\)$",
    )
    .unwrap();
    for x in &v {
        let d = x["detail"].as_str().unwrap();
        let c = re.captures(d).unwrap_or_else(|| panic!("{d}"));
        let n = |i: usize| c[i].parse::<i64>().unwrap();
        assert_eq!((n(1), n(3)), (n(2) + 500, n(2)), "{d}");
    }
    // the provider then refuses to commit the amount it offered
    assert_eq!(
        classes(&r),
        [
            "discount-above-total".to_string(),
            "unexpected-answer".to_string()
        ]
        .into()
    );
    assert_eq!(v[0]["call"], json!("voucher.check"));
    assert!(
        junit.contains(
            "<testcase classname=\"simulate\" name=\"discount-above-total\">\n    <failure"
        ),
        "{junit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_changes_on_retry_is_reported() {
    let (r, _, _) = against(Mistake::BytesChangeOnRetry, &[]).await;
    let v = of(&r, "answer-changed-on-retry");
    let calls: BTreeSet<&str> = v.iter().map(|x| x["call"].as_str().unwrap()).collect();
    assert_eq!(
        calls,
        ["loyalty.award", "voucher.commit", "voucher.reactivate"].into(),
        "{r:#}"
    );
    assert!(
        v[0]["detail"].as_str().unwrap().ends_with("} "),
        "{:#}",
        v[0]
    );
    assert_eq!(classes(&r), ["answer-changed-on-retry".to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_that_does_not_add_up_is_reported() {
    let (r, _, _) = against(Mistake::BalanceOff, &[]).await;
    let v = of(&r, "balance-does-not-add-up");
    assert!(!v.is_empty(), "{r:#}");
    assert!(
        v.iter().any(|x| x["call"] == json!("loyalty.account")
            && x["detail"].as_str().unwrap().contains("account shows")),
        "{v:#?}"
    );
    assert_eq!(classes(&r), ["balance-does-not-add-up".to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_success_for_a_single_use_code_is_reported() {
    let (r, _, _) = against(Mistake::SingleUseTwice, &[]).await;
    let v = of(&r, "single-use-code-used-twice");
    assert!(!v.is_empty(), "{r:#}");
    let re = regex::Regex::new(
        r"^single-use (ONE[0-9A-F]+) checked ok:true while order (order-\d{5}) holds or used it$",
    )
    .unwrap();
    for x in &v {
        let d = x["detail"].as_str().unwrap();
        let c = re.captures(d).unwrap_or_else(|| panic!("{d}"));
        assert_ne!(&c[2], x["order"].as_str().unwrap(), "{d}");
    }
    // besides: the fake hold's providerRef is refused if that order pays
    let allowed: BTreeSet<String> = [
        "single-use-code-used-twice".to_string(),
        "unexpected-answer".to_string(),
    ]
    .into();
    assert!(classes(&r).is_subset(&allowed), "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_and_a_provider_that_stays_down_are_reported() {
    let (r, _, _) = against(Mistake::CommitRefused, &[]).await;
    let v = of(&r, "unexpected-answer");
    assert!(
        !v.is_empty() && v.iter().all(|x| x["call"] == json!("voucher.commit")),
        "{r:#}"
    );
    assert!(v[0]["detail"]
        .as_str()
        .unwrap()
        .starts_with("refused: {\"ok\":false,\"error\":\"NOPE\""));
    let (r, _, _) = against(Mistake::AwardDown, &[]).await;
    let v = of(&r, "call-failed");
    assert!(
        !v.is_empty() && v.iter().all(|x| x["call"] == json!("loyalty.award")),
        "{r:#}"
    );
    assert_eq!(
        v[0]["detail"],
        json!("no answer after 3 attempts: HTTP 503, HTTP 503, HTTP 503")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_above_the_budget_is_reported_per_call() {
    let (r, _, _) = against(Mistake::SlowCheck, &["--budget-ms", "100"]).await;
    let v = of(&r, "latency-over-budget");
    assert_eq!(v.len(), 1, "{r:#}");
    assert_eq!(v[0]["call"], json!("voucher.check"));
    let check = r["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["call"] == json!("voucher.check"))
        .unwrap();
    assert!(check["p50Ms"].as_f64().unwrap() >= 150.0, "{check}");
    assert_eq!(check["withinBudget"], json!(false));
}

/// The attempts of the retried calls, and every transactionId the provider saw for `path`.
fn retried(r: &Value, mem: &Mutex<Memory>, path: &str) -> (Vec<Value>, Vec<String>) {
    let retries = r["retries"].as_array().unwrap().clone();
    let tx = retries[0]["transactionId"].as_str().unwrap().to_string();
    let seen = mem
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|(p, t)| p.ends_with(path) && *t == tx)
        .map(|(_, t)| t.clone())
        .collect();
    (retries, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_once_recovers_with_the_same_transaction_id() {
    let (r, mem, _) = against(Mistake::CommitFailsOnce, &[]).await;
    assert_eq!(r["violations"], json!([]), "{r:#}");
    let (retries, seen) = retried(&r, &mem, "/voucher/commit");
    assert_eq!(retries.len(), 1, "{retries:#?}");
    assert_eq!(retries[0]["call"], json!("voucher.commit"));
    assert_eq!(retries[0]["attempts"], json!(["HTTP 503", "HTTP 200"]));
    assert_eq!(retries[0]["recovered"], json!(true));
    // the failed attempt, its retry, and the repeat that checks the bytes: one id
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_once_recovers_with_the_same_transaction_id() {
    let (r, mem, _) = against(Mistake::AwardTimesOutOnce, &["--timeout-ms", "800"]).await;
    assert_eq!(r["violations"], json!([]), "{r:#}");
    let (retries, seen) = retried(&r, &mem, "/loyalty/award");
    assert_eq!(retries.len(), 1, "{retries:#?}");
    assert_eq!(retries[0]["call"], json!("loyalty.award"));
    assert_eq!(
        retries[0]["attempts"],
        json!(["timeout after 800 ms", "HTTP 200"])
    );
    assert!(retries[0]["transactionId"]
        .as_str()
        .unwrap()
        .starts_with("loy_"));
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test]
async fn order_files_and_bad_input() {
    let h = Harness::start(&states_config()).await;
    let r = h
        .admin(
            "POST",
            "provider-states",
            Some(&json!({"state": "campaign", "params":
        {"id": "files", "codes": ["TENOFF"], "discount": {"percent": 10}}})),
        )
        .await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.bytes));
    let dir = tempfile::tempdir().unwrap();
    let orders = dir.path().join("orders.json");
    std::fs::write(
        &orders,
        serde_json::to_vec(&json!([
            {"id": "burrito", "location_id": 7, "then": "paid", "vouchers": ["TENOFF"],
             "items": [{"id": 1004, "quantity_cents": 200, "price_cents": 1150},
                       {"id": 1010, "quantity_cents": 35, "price_cents": 2399}]},
            {"id": "cancelled", "location_id": 7, "then": "cancelled", "vouchers": ["TENOFF"],
             "items": [{"id": 1001, "quantity_cents": 100, "price_cents": 350}]}
        ]))
        .unwrap(),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"));
        c.arg("simulate").args(args);
        c.output().unwrap()
    };
    let target = format!("{}/v1/acme", h.base());
    let args = vec![
        "--target".into(),
        target.clone(),
        "--auth".into(),
        format!("header:X-Provider-Key:{KEY}"),
        orders.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || run(args))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 orders (1 cancelled, 1 paid)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("voucher.reactivate") && l.contains(" 2 ")),
        "{text}"
    );
    // the absolute URLs of an --endpoints file (here the voucher calls of tenant "basic")
    // with HTTP Basic; a --program needs the loyalty URLs too
    let endpoints = dir.path().join("endpoints.json");
    let map: serde_json::Map<String, Value> = ["check", "commit", "reactivate"]
        .iter()
        .map(|op| {
            (
                format!("voucher.{op}"),
                json!(format!("{}/v1/basic/voucher/{op}", h.base())),
            )
        })
        .collect();
    std::fs::write(&endpoints, serde_json::to_vec(&map).unwrap()).unwrap();
    let basic = dir.path().join("basic.json");
    std::fs::write(
        &basic,
        r#"{"location_id": 1, "vouchers": ["BASIC5"], "then": "refunded",
        "items": [{"id": 1, "quantity_cents": 100, "price_cents": 900}]}"#,
    )
    .unwrap();
    let with = |extra: &[&str]| {
        let mut a: Vec<String> = vec![
            "--endpoints".into(),
            endpoints.display().to_string(),
            "--auth".into(),
            "basic:karma:s3cret".into(),
            basic.display().to_string(),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let args = with(&[]);
    let out = tokio::task::spawn_blocking(move || run(args))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 order (1 refunded)") && text.contains("no violations"),
        "{text}"
    );
    let args = with(&["--program", "42"]);
    let out = tokio::task::spawn_blocking(move || run(args))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "simulate: no URL for loyalty.lookup: give --target, or --endpoints with every call a run makes\n"
    );
    // a bad order file names the field; no target at all; exit 2
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"location_id": 1, "items": [{"id": 1, "quantity_cents": 0, "price_cents": 5}], "then": "paid"}"#).unwrap();
    let args = vec!["--target".into(), target, bad.display().to_string()];
    let out = tokio::task::spawn_blocking(move || run(args))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        err,
        format!(
            "simulate: {}: at items[0].quantity_cents: 1 to 100000000\n",
            bad.display()
        )
    );
    let out = tokio::task::spawn_blocking(move || run(vec!["--orders".into(), "3".into()]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "simulate: give --target URL or --endpoints FILE\n"
    );
}
