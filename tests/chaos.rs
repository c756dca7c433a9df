//! Injected faults for Karma-side QA (`app::chaos`, admin API `…/injected-faults`), seen
//! from the client over real HTTP and raw TCP: added latency, 5xx answers, timeouts,
//! dropped connections and "answer then forget" — each exactly, each counted in
//! `/metrics`, never on admin, health, readiness or metrics, only with the admin token,
//! bad input refused naming the field, off once switched off; and `simulate` (the real
//! binary) recovering through Karma's retries from 5xx and forgotten answers.
//!
//! Not the test faults of `tests/faults.rs` (`karma_provider::faults`, armed in process).

mod common;

use std::time::{Duration, Instant};

use common::sim::{simulate_with, states_config};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn harness() -> Harness {
    Harness::start(&config_with(ONCE_AND_PROGRAM_7)).await
}

/// Switch acme's injected faults to `spec`; the answer must be 200 and echo it.
async fn set(h: &Harness, spec: Value) {
    let r = h.admin("PUT", "injected-faults", Some(&spec)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["faults"]["endpoints"], spec["endpoints"]);
}

/// `kp_injected_faults_total` for acme's `endpoint` and `kind` (0 when absent).
async fn injected(h: &Harness, endpoint: &str, kind: &str) -> u64 {
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    let key = format!(
        "kp_injected_faults_total{{tenant=\"acme\",endpoint=\"{endpoint}\",kind=\"{kind}\"}} "
    );
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |n| n.parse().unwrap())
}

/// POST `body` to `/v1/acme/{path}` over a raw connection; every byte the server sent
/// before closing, and how long it took to close.
async fn raw(h: &Harness, path: &str, body: &Value) -> (Vec<u8>, Duration) {
    let mut s = tokio::net::TcpStream::connect(h.server.as_ref().unwrap().addr)
        .await
        .unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST /v1/acme/{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Provider-Key: {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let t = Instant::now();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    (out, t.elapsed())
}

async fn hold(h: &Harness, code: &str) -> String {
    let r = h.call("voucher/check", &check_body(code, 2000)).await;
    assert_eq!(
        r.json()["ok"],
        json!(true),
        "{}",
        String::from_utf8_lossy(&r.bytes)
    );
    r.json()["providerRef"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn off_by_default_only_with_the_admin_token_and_bad_input_names_the_field() {
    let h = harness().await;
    let r = h.admin("GET", "injected-faults", None).await;
    assert_eq!(
        r.json(),
        json!({"ok": true, "tenant": "acme", "faults": null})
    );
    let spec = serde_json::to_vec(&json!({"error_share": 1.0})).unwrap();
    for auth in [vec![], vec![("authorization", "Bearer wrong")]] {
        let mut headers = auth.clone();
        headers.push(("content-type", "application/json"));
        let r = h
            .request(
                "PUT",
                "/admin/v1/tenants/acme/injected-faults",
                &headers,
                spec.clone(),
            )
            .await;
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (401, json!("UNAUTHORIZED"))
        );
    }
    let bad = [
        (json!({"error_share": 1.5}), "error_share"),
        (
            json!({"drop_share": 0.5, "forget_share": 0.6}),
            "forget_share",
        ),
        (json!({"error_status": 404}), "error_status"),
        (json!({"timeout_ms": 0}), "timeout_ms"),
        (json!({"endpoints": ["admin"]}), "endpoints"),
        (
            json!({"latency": {"uniform_ms": [50, 10]}}),
            "latency.uniform_ms",
        ),
        (
            json!({"latency": {"percentiles_ms": [[50, 5], [100, 9]]}}),
            "latency.percentiles_ms",
        ),
        (json!({"error_share": "all"}), "error_share"),
        (json!({"errors": 1}), "errors"),
    ];
    for (spec, field) in bad {
        let r = h.admin("PUT", "injected-faults", Some(&spec)).await;
        assert_eq!(
            r.status,
            400,
            "{spec}: {}",
            String::from_utf8_lossy(&r.bytes)
        );
        assert_eq!(r.json()["field"], json!(field), "{spec}");
    }
    let r = h.admin("POST", "injected-faults", Some(&json!({}))).await;
    assert_eq!(
        (r.status, r.headers["allow"].to_str().unwrap()),
        (405, "GET, PUT, DELETE")
    );
    // nothing was switched on by any of that
    let r = h.admin("GET", "injected-faults", None).await;
    assert_eq!(r.json()["faults"], json!(null));
    let r = h
        .call("loyalty/rewards", &json!({"loyaltyProgramId": 7}))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_5xx_share_answers_unserved_counted_never_on_admin_or_health_and_off_when_off() {
    let h = harness().await;
    set(&h, json!({"error_share": 1.0, "error_status": 502, "endpoints": ["voucher.check", "loyalty.rewards"]})).await;
    let r = h.call("voucher/check", &check_body("A1", 2000)).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (502, json!("INJECTED_FAULT"))
    );
    let r = h
        .call("loyalty/rewards", &json!({"loyaltyProgramId": 7}))
        .await;
    assert_eq!(r.status, 502);
    // unserved: no hold was made
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(0)
    );
    // other endpoints, admin, health, readiness, metrics and the other tenant: untouched
    let r = h
        .call(
            "loyalty/account",
            &json!({"userId": "u", "loyaltyProgramId": 7}),
        )
        .await;
    assert_eq!(r.status, 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            h.request("GET", path, &[], vec![]).await.status,
            200,
            "{path}"
        );
    }
    assert_eq!(h.admin("GET", "campaigns", None).await.status, 200);
    let basic = h
        .request(
            "POST",
            "/v1/basic/voucher/check",
            &[
                ("content-type", "application/json"),
                ("authorization", "Basic a2FybWE6czNjcmV0"),
            ],
            serde_json::to_vec(&check_body("BASIC5", 2000)).unwrap(),
        )
        .await;
    assert_eq!(basic.json()["ok"], json!(true));
    assert_eq!(injected(&h, "voucher.check", "error").await, 1);
    assert_eq!(injected(&h, "loyalty.rewards", "error").await, 1);
    assert_eq!(injected(&h, "loyalty.account", "error").await, 0);
    // off means off
    let r = h.admin("DELETE", "injected-faults", None).await;
    assert_eq!(
        r.json(),
        json!({"ok": true, "tenant": "acme", "faults": null})
    );
    hold(&h, "A1").await;
    assert_eq!(injected(&h, "voucher.check", "error").await, 1);
}

#[tokio::test]
async fn latency_is_added_fixed_and_within_a_uniform_range() {
    let h = harness().await;
    let specs = [
        (json!({"fixed_ms": 300}), 300),
        (json!({"uniform_ms": [200, 250]}), 200),
        (json!({"percentiles_ms": [[0, 150], [100, 160]]}), 150),
    ];
    for (latency, at_least) in specs {
        let spec = json!({"latency": latency, "endpoints": ["loyalty.rewards"], "seed": 3});
        set(&h, spec).await;
        let t = Instant::now();
        let r = h
            .call("loyalty/rewards", &json!({"loyaltyProgramId": 7}))
            .await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(at_least),
            "{latency}: {took:?}"
        );
        assert_eq!((r.status, r.json()["ok"].clone()), (200, json!(true)));
    }
    assert_eq!(injected(&h, "loyalty.rewards", "latency").await, 3);
    let t = Instant::now();
    assert_eq!(h.admin("GET", "injected-faults", None).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(200), "admin delayed");
}

#[tokio::test]
async fn a_dropped_connection_and_a_timeout_close_without_a_byte_unserved() {
    let h = harness().await;
    set(
        &h,
        json!({"drop_share": 1.0, "endpoints": ["voucher.check"]}),
    )
    .await;
    let (bytes, _) = raw(&h, "voucher/check", &check_body("A1", 2000)).await;
    assert_eq!(bytes, b"");
    set(
        &h,
        json!({"timeout_share": 1.0, "timeout_ms": 400, "endpoints": ["voucher.check"]}),
    )
    .await;
    let (bytes, took) = raw(&h, "voucher/check", &check_body("A1", 2000)).await;
    assert_eq!(bytes, b"");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert_eq!(injected(&h, "voucher.check", "drop").await, 1);
    assert_eq!(injected(&h, "voucher.check", "timeout").await, 1);
    // neither was served: the single-use code is still free
    h.admin("DELETE", "injected-faults", None).await;
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(0)
    );
    hold(&h, "A1").await;
}

#[tokio::test]
async fn answer_then_forget_applies_the_effect_and_the_retry_gets_the_same_answer() {
    let h = harness().await;
    let pref = hold(&h, "A2").await;
    set(
        &h,
        json!({"forget_share": 1.0, "endpoints": ["voucher.commit", "loyalty.award"]}),
    )
    .await;
    let commit = commit_body(500, &res_id(1), &pref);
    let (bytes, _) = raw(&h, "voucher/commit", &commit).await;
    assert_eq!(bytes, b"");
    let r = h
        .call(
            "loyalty/enroll",
            &json!({"userId": "u1", "loyaltyProgramId": 7}),
        )
        .await;
    assert_eq!(r.json()["pointsAwarded"], json!(50));
    let award = json!({"userId": "u1", "loyaltyProgramId": 7, "purchaseId": "p1",
        "purchaseAmountCents": 1000, "itemIds": [], "transactionId": format!("loy_{:032x}", 1)});
    let (bytes, _) = raw(&h, "loyalty/award", &award).await;
    assert_eq!(bytes, b"");
    assert_eq!(injected(&h, "voucher.commit", "forget").await, 1);
    assert_eq!(injected(&h, "loyalty.award", "forget").await, 1);
    // the effects are there
    let code = h.admin("GET", "codes/A2", None).await.json();
    assert_eq!(code["state"], json!("used"), "{code:#}");
    h.admin("DELETE", "injected-faults", None).await;
    // Karma's retries with the same transactionId get the answers that were lost, once
    let first = h.call("voucher/commit", &commit).await;
    assert_eq!(
        first.json()["ok"],
        json!(true),
        "{}",
        String::from_utf8_lossy(&first.bytes)
    );
    assert_eq!(h.call("voucher/commit", &commit).await.bytes, first.bytes);
    let a = h.call("loyalty/award", &award).await;
    assert_eq!(a.json()["pointsAwarded"], json!(10));
    assert_eq!(a.json()["newBalance"], json!(60));
    assert_eq!(h.call("loyalty/award", &award).await.bytes, a.bytes);
}

#[tokio::test]
async fn a_seed_makes_the_draws_repeat_and_a_restart_forgets_the_faults() {
    let mut h = harness().await;
    let spec = json!({"error_share": 0.5, "seed": 42, "endpoints": ["loyalty.rewards"]});
    let mut runs = Vec::new();
    for _ in 0..2 {
        set(&h, spec.clone()).await; // a new setting restarts the draws
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                h.call("loyalty/rewards", &json!({"loyaltyProgramId": 7}))
                    .await
                    .status,
            );
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(
        runs[0].contains(&200) && runs[0].contains(&503),
        "{:?}",
        runs[0]
    );
    let errors = runs[0].iter().filter(|s| **s == 503).count() as u64;
    assert_eq!(injected(&h, "loyalty.rewards", "error").await, 2 * errors);
    h.restart().await;
    let r = h.admin("GET", "injected-faults", None).await;
    assert_eq!(r.json()["faults"], json!(null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_recovers_from_5xx_and_forgotten_answers_on_commit_and_award() {
    let h = Harness::start(&states_config()).await;
    let spec = json!({"error_share": 0.2, "forget_share": 0.2, "seed": 11,
        "endpoints": ["voucher.commit", "loyalty.award"]});
    set(&h, spec).await;
    let retry = "5,5,5,5,5,5,5,5,5,5,5,5,5,5";
    let args = ["--orders", "40", "--concurrency", "4", "--seed", "5"];
    let (code, r, _, stdout) = simulate_with(&h, &h.base(), retry, &args).await;
    assert_eq!((code, r["violations"].clone()), (0, json!([])), "{stdout}");
    let retries = r["retries"].as_array().unwrap();
    assert!(
        retries.iter().all(|x| x["recovered"] == json!(true)),
        "{retries:#?}"
    );
    // every failed attempt the simulator saw is one injected fault, and the other way round
    let failed = |prefix: &str, call: &str| {
        retries
            .iter()
            .filter(|x| x["call"] == json!(call))
            .flat_map(|x| x["attempts"].as_array().unwrap().iter())
            .filter(|a| a.as_str().unwrap().starts_with(prefix))
            .count() as u64
    };
    for call in ["voucher.commit", "loyalty.award"] {
        let errors = injected(&h, call, "error").await;
        let forgotten = injected(&h, call, "forget").await;
        assert!(errors > 0 && forgotten > 0, "{call}: {errors} {forgotten}");
        assert_eq!(failed("HTTP 503", call), errors, "{call}");
        assert_eq!(failed("no connection", call), forgotten, "{call}");
    }
    for call in ["voucher.check", "loyalty.enroll", "loyalty.account"] {
        assert_eq!(injected(&h, call, "error").await, 0);
    }
}
