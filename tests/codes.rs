//! Bulk codes, budgets and vendor rules over HTTP.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use karma_provider::store::SCHEMA_VERSION;
use serde_json::{json, Value};

const CAMPAIGNS: &str = r#"
[[tenants.campaigns]]
id = "bulk"
discount = { amount_cents = 300 }
max_uses_per_code = 1
[[tenants.campaigns]]
id = "shared"
codes = ["SHARED-1"]
discount = { amount_cents = 100 }
[[tenants.campaigns]]
id = "budget"
codes = ["BUDGET"]
discount = { amount_cents = 100 }
max_discount_total_cents = 1000
"#;

async fn import(h: &Harness, campaign: &str, csv: &str) -> Resp {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    h.request(
        "POST",
        &format!("/admin/v1/tenants/acme/campaigns/{campaign}/codes"),
        &[("authorization", &auth), ("content-type", "text/csv")],
        csv.as_bytes().to_vec(),
    )
    .await
}

async fn check_as(h: &Harness, code: &str, user: Option<&str>) -> Value {
    let mut b = check_body(code, 1000);
    if let Some(u) = user {
        b["userId"] = json!(u);
    }
    h.call("voucher/check", &b).await.json()
}

#[tokio::test]
async fn import_counts_duplicates_and_refuses_invalid_files_whole() {
    let h = Harness::start(&config_with(CAMPAIGNS)).await;
    let bad = import(&h, "bulk", "code,valid_until,assigned_user\nAAA-001\nAAA-002,not-a-date\n,\nAAA-003,,u1,extra\nAAA-004\n").await;
    assert_eq!(bad.status, 400);
    let v = bad.json();
    assert_eq!(v["error"], json!("INVALID_ROWS"));
    let lines: Vec<u64> = v["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5]);
    assert_eq!(
        check_as(&h, "AAA-001", None).await["error"],
        json!("UNKNOWN_CODE"),
        "nothing was imported"
    );

    let ok = import(
        &h,
        "bulk",
        "AAA-001\nAAA-002,2026-06-30T00:00:00Z\naaa 001\nSHARED-1\nAAA-003,,guest-7\nAAA-001\n",
    )
    .await;
    assert_eq!(
        ok.json(),
        json!({"ok": true, "imported": 3, "duplicates": 3, "invalid": []})
    );
    let again = import(&h, "bulk", "AAA-001\nAAA-009\n").await;
    assert_eq!(
        again.json(),
        json!({"ok": true, "imported": 1, "duplicates": 1, "invalid": []})
    );

    let v = check_as(&h, "aaa-001", None).await;
    assert_eq!(
        (v["voucherNr"].clone(), v["discountAmountCents"].clone()),
        (json!("AAA-001"), json!(300))
    );
    let r = v["providerRef"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("voucher/commit", &commit_body(300, &res_id(1), &r))
            .await
            .json()["ok"],
        json!(true)
    );
    assert_eq!(
        check_as(&h, "AAA-001", None).await["error"],
        json!("USAGE_LIMIT_REACHED")
    );
    // a code's own validity
    h.clock
        .set_ms(Clock::manual_at("2026-07-01T00:00:00Z").now_ms());
    assert_eq!(
        check_as(&h, "AAA-002", None).await["error"],
        json!("EXPIRED")
    );
    // state and export
    let st = h.admin("GET", "codes/AAA-001", None).await.json();
    assert_eq!(
        (st["state"].clone(), st["campaign"].clone()),
        (json!("used"), json!("bulk"))
    );
    let csv = String::from_utf8(h.admin("GET", "campaigns/bulk/codes", None).await.bytes).unwrap();
    assert!(csv.starts_with("code,valid_until,assigned_user,state\n"));
    assert!(
        csv.contains("AAA-001,,,used\n")
            && csv.contains("AAA-003,,guest-7,available\n")
            && csv.contains("AAA-002,2026-06-30T00:00:00Z,,available\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 5);
}

use karma_provider::Clock;

#[tokio::test]
async fn an_assigned_code_is_only_for_its_guest() {
    let h = Harness::start(&config_with(CAMPAIGNS)).await;
    import(&h, "bulk", "GIFT-1,,guest-7\n").await;
    assert_eq!(
        check_as(&h, "GIFT-1", Some("guest-8")).await["error"],
        json!("CODE_ASSIGNED_TO_ANOTHER_GUEST")
    );
    assert_eq!(
        check_as(&h, "GIFT-1", None).await["error"],
        json!("CODE_ASSIGNED_TO_ANOTHER_GUEST")
    );
    assert_eq!(
        check_as(&h, "GIFT-1", Some("guest-7")).await["ok"],
        json!(true)
    );
}

#[tokio::test]
async fn generated_codes_are_unique_and_use_the_alphabet() {
    let h = Harness::start(&config_with(CAMPAIGNS)).await;
    let mut all = std::collections::HashSet::new();
    for _ in 0..2 {
        let v = h
            .admin(
                "POST",
                "campaigns/bulk/codes/generate",
                Some(&json!({"pattern": "SUMMER-####-????", "count": 500})),
            )
            .await
            .json();
        assert_eq!(v["generated"], json!(500));
        for c in v["codes"].as_array().unwrap() {
            let c = c.as_str().unwrap();
            assert!(all.insert(c.to_string()), "collision {c}");
            assert_eq!(c.len(), 16);
            assert!(c[7..11].bytes().all(|b| b"23456789".contains(&b)), "{c}");
            assert!(
                c[12..]
                    .bytes()
                    .all(|b| b"ABCDEFGHJKMNPQRSTUVWXYZ".contains(&b)),
                "{c}"
            );
        }
    }
    let one = all.iter().next().unwrap().clone();
    assert_eq!(check_as(&h, &one, None).await["voucherNr"], json!(one));
    let r = h
        .admin(
            "POST",
            "campaigns/bulk/codes/generate",
            Some(&json!({"pattern": "##", "count": 50})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("pattern"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_is_never_exceeded_under_30_concurrent_checks() {
    let h = Arc::new(Harness::start(&config_with(CAMPAIGNS)).await);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let h = h.clone();
        tasks.push(tokio::spawn(
            async move { check_as(&h, "BUDGET", None).await },
        ));
    }
    let mut held = Vec::new();
    for t in tasks {
        let v = t.await.unwrap();
        if v["ok"] == json!(true) {
            held.push(v["providerRef"].as_str().unwrap().to_string());
        } else {
            assert_eq!(v["error"], json!("BUDGET_EXHAUSTED"), "{v}");
        }
    }
    assert_eq!(held.len(), 10);
    // commits keep the budget spent; a reactivate of a committed use gives it back
    assert_eq!(
        h.call("voucher/commit", &commit_body(100, &res_id(1), &held[0]))
            .await
            .json()["ok"],
        json!(true)
    );
    assert_eq!(
        check_as(&h, "BUDGET", None).await["error"],
        json!("BUDGET_EXHAUSTED")
    );
    h.call(
        "voucher/reactivate",
        &commit_body(100, &res_id(1), &held[0]),
    )
    .await;
    assert_eq!(check_as(&h, "BUDGET", None).await["ok"], json!(true));
}

/// A vendor rules service: approves `OK…`, declines `NO…`, sleeps on `SLOW…`, answers
/// garbage to `BAD…`; checks our Standard Webhooks signature.
async fn vendor() -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            let get =
                                |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_string());
                            let s = karma_provider::webhook::Scheme::StandardWebhooks;
                            let key =
                                karma_provider::webhook::secret_bytes(&s, "whsec_ZndkLWtleQ==")
                                    .unwrap();
                            let signed = karma_provider::webhook::verify(
                                &s,
                                &[key],
                                &get,
                                &body,
                                karma_provider::Clock::System.now_ms(),
                                300_000,
                            )
                            .is_ok();
                            let v: Value = serde_json::from_slice(&body).unwrap();
                            seen.lock().unwrap().push(v.clone());
                            let code = v["voucherNr"].as_str().unwrap_or("").to_string();
                            let answer = if !signed {
                                r#"{"ok":false,"reason":"bad signature"}"#.to_string()
                            } else if code.starts_with("OK") {
                                r#"{"ok":true,"discountAmountCents":777,"voucherNr":"V-1"}"#
                                    .to_string()
                            } else if code.starts_with("NO") {
                                r#"{"ok":false,"reason":"This gift card was cancelled by the issuer."}"#.to_string()
                            } else if code.starts_with("SLOW") {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                r#"{"ok":true,"discountAmountCents":1}"#.to_string()
                            } else {
                                "<html>oops</html>".to_string()
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(answer),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}/decide"), seen)
}

#[tokio::test]
async fn vendor_rules_decide_and_fail_closed() {
    let (url, seen) = vendor().await;
    let h = Harness::start(&config_with(&format!(
        "[[tenants.campaigns]]\nid = \"vend\"\ncodes = [\"OK1\", \"NO1\", \"SLOW1\", \"BAD1\"]\ndiscount = {{ amount_cents = 100 }}\nmax_uses_per_code = 1\nrules = {{ http = \"{url}\", secret_env = \"FWD_SECRET\", timeout = \"300ms\" }}\n"
    )))
    .await;
    let v = h
        .call(
            "voucher/check",
            &json!({"code": "ok1", "cart": cart(5000), "userId": "g1", "locationId": 42}),
        )
        .await
        .json();
    assert_eq!(
        (
            v["ok"].clone(),
            v["discountAmountCents"].clone(),
            v["voucherNr"].clone()
        ),
        (json!(true), json!(777), json!("V-1")),
        "{v}"
    );
    let asked = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (
            asked["code"].clone(),
            asked["voucherNr"].clone(),
            asked["userId"].clone(),
            asked["locationId"].clone(),
            asked["campaign"].clone()
        ),
        (
            json!("ok1"),
            json!("OK1"),
            json!("g1"),
            json!("42"),
            json!("vend")
        )
    );
    assert_eq!(asked["cart"]["totalCents"], json!(5000));
    // our limits still hold: the single-use code is now held
    assert_eq!(
        check_as(&h, "OK1", None).await["error"],
        json!("VOUCHER_HELD")
    );

    let v = check_as(&h, "NO1", None).await;
    assert_eq!(
        (v["error"].clone(), v["message"].clone()),
        (
            json!("VENDOR_DECLINED"),
            json!("This gift card was cancelled by the issuer.")
        )
    );
    let t0 = Instant::now();
    let v = check_as(&h, "SLOW1", None).await;
    assert_eq!(v["error"], json!("VENDOR_UNAVAILABLE"));
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t0.elapsed()
    );
    let v = check_as(&h, "BAD1", None).await;
    assert_eq!(v["error"], json!("VENDOR_UNAVAILABLE"));
    assert!(
        v["message"].as_str().unwrap().contains("invalid answer"),
        "{v}"
    );
    // nothing is held for refused checks
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(1)
    );
}

struct HalfOff;
impl karma_provider::rules::VoucherRules for HalfOff {
    fn decide<'a>(
        &'a self,
        req: &'a karma_provider::rules::RulesRequest,
    ) -> karma_provider::rules::Decision<'a> {
        Box::pin(async move {
            Ok(karma_provider::rules::RulesDecision {
                ok: true,
                discount_amount_cents: Some(req.cart.total_cents / 2),
                voucher_nr: None,
                reason: None,
            })
        })
    }
}

#[tokio::test]
async fn embedded_rules_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_with(CAMPAIGNS).replace("@DATA@", &dir.path().join("d").display().to_string());
    let env = |k: &str| match k {
        "ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_string()),
        "ACME_KEY" => Some(KEY.to_string()),
        "BASIC_PASS" => Some("x".to_string()),
        _ => None,
    };
    let cfg = karma_provider::Config::from_toml(&text, "t", &env).unwrap();
    let server = karma_provider::Server::start_with_rules(
        cfg,
        Clock::manual_at(T0),
        Some(Arc::new(HalfOff)),
    )
    .await
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<hyper::body::Bytes>>();
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v1/acme/voucher/check", server.addr))
        .header("x-provider-key", KEY)
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            serde_json::to_vec(&check_body("SHARED-1", 3000)).unwrap(),
        )))
        .unwrap();
    use http_body_util::BodyExt;
    let body = client
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["discountAmountCents"], json!(1500));
    server.stop().await;
}

/// A metric's value from `/metrics` (the line `name value`), 0 when absent.
async fn metric(h: &Harness, name: &str) -> u64 {
    let m = String::from_utf8(h.request("GET", "/metrics", &[], vec![]).await.bytes).unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

const INDEXED: &str = "kp_code_index_codes{tenant=\"acme\"}";
const HITS: &str = "kp_code_index_lookups_total{result=\"hit\"}";

async fn wait_for_index(h: &Harness, codes: u64) {
    let until = Instant::now() + Duration::from_secs(20);
    while metric(h, INDEXED).await != codes {
        assert!(
            Instant::now() < until,
            "the code index never reached {codes} codes (has {})",
            metric(h, INDEXED).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bulk codes are looked up in the code index (off the writer); codes newer than the index
/// are still found; a damaged or missing index file is rebuilt from the store.
#[tokio::test]
async fn bulk_codes_are_found_through_the_code_index() {
    let mut h = Harness::start(&config_with(CAMPAIGNS)).await;
    assert_eq!(metric(&h, INDEXED).await, 0, "no bulk codes, no index");
    let csv: String = (1..=300).map(|i| format!("IX-{i:04}\n")).collect();
    assert_eq!(
        import(&h, "bulk", &csv).await.json()["imported"],
        json!(300)
    );
    wait_for_index(&h, 300).await;

    let hits = metric(&h, HITS).await;
    let v = check_as(&h, "ix-0150", None).await;
    assert_eq!(v["voucherNr"], json!("IX-0150"), "{v}");
    assert_eq!(metric(&h, HITS).await, hits + 1, "answered from the index");
    // Shared codes are not bulk codes: the index does not have them, the campaign does.
    assert_eq!(check_as(&h, "SHARED-1", None).await["ok"], json!(true));
    assert_eq!(metric(&h, HITS).await, hits + 1);
    // Usage still comes from the store: a used code is refused.
    let r = v["providerRef"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("voucher/commit", &commit_body(300, &res_id(1), &r))
            .await
            .json()["ok"],
        json!(true)
    );
    assert_eq!(
        check_as(&h, "IX-0150", None).await["error"],
        json!("USAGE_LIMIT_REACHED")
    );

    // Codes imported after the index are found at once (from the store), then from the
    // rebuilt index.
    assert_eq!(
        import(&h, "bulk", "IX-0301\nIX-0302,,guest-3\n")
            .await
            .json()["imported"],
        json!(2)
    );
    assert_eq!(check_as(&h, "IX-0301", None).await["ok"], json!(true));
    wait_for_index(&h, 302).await;
    let hits = metric(&h, HITS).await;
    assert_eq!(
        check_as(&h, "IX-0302", Some("guest-4")).await["error"],
        json!("CODE_ASSIGNED_TO_ANOTHER_GUEST"),
        "the index carries the assigned guest"
    );
    assert_eq!(metric(&h, HITS).await, hits + 1);
    assert_eq!(
        check_as(&h, "IX-9999", None).await["error"],
        json!("UNKNOWN_CODE")
    );

    // A damaged file is ignored at start and rebuilt; so is a missing one.
    let dir = h.data_path().join("codeindex");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    h.stop().await;
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 80] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    h.boot().await;
    wait_for_index(&h, 302).await;
    assert_eq!(
        check_as(&h, "IX-0299", None).await["voucherNr"],
        json!("IX-0299")
    );
    h.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
    h.boot().await;
    wait_for_index(&h, 302).await;
    let hits = metric(&h, HITS).await;
    assert_eq!(
        check_as(&h, "IX-0001", None).await["voucherNr"],
        json!("IX-0001")
    );
    assert_eq!(metric(&h, HITS).await, hits + 1);
    assert_eq!(
        check_as(&h, "IX-0150", None).await["error"],
        json!("USAGE_LIMIT_REACHED")
    );

    // Damage inside a bucket (a byte of IX-0050's record, which the footer's checksum does
    // not cover): that bucket's checksum fails, the lookup goes to the store and answers
    // right; codes in other buckets are still answered from the index.
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    h.stop().await;
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"IX-0050")
        .expect("the key is in the file");
    bytes[at + 7 + 4 + 2] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    h.boot().await;
    let hits = metric(&h, HITS).await;
    let v = check_as(&h, "IX-0050", None).await;
    assert_eq!(
        (v["ok"].clone(), v["voucherNr"].clone()),
        (json!(true), json!("IX-0050")),
        "{v}"
    );
    assert_eq!(
        metric(&h, HITS).await,
        hits,
        "the damaged bucket is not trusted"
    );
    let mut from_index = 0;
    for i in 2..=40 {
        let code = format!("IX-{i:04}");
        let before = metric(&h, HITS).await;
        assert_eq!(check_as(&h, &code, None).await["voucherNr"], json!(code));
        from_index += metric(&h, HITS).await - before;
    }
    assert!(
        from_index >= 30,
        "other buckets still serve: {from_index} of 39"
    );
}

/// Vendor rules decide the discount outside the writer; the budget is still ours and is
/// applied in the check job, so thirty concurrent checks whose vendor answers arrive in any
/// order never spend past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_holds_with_vendor_rules_under_30_concurrent_checks() {
    let (url, seen) = vendor().await;
    let h = Arc::new(
        Harness::start(&config_with(&format!(
            "[[tenants.campaigns]]\nid = \"vbudget\"\ncodes = [\"OK-B\"]\ndiscount = {{ amount_cents = 100 }}\nmax_discount_total_cents = 3885\nrules = {{ http = \"{url}\", secret_env = \"FWD_SECRET\", timeout = \"2s\" }}\n"
        )))
        .await,
    );
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let h = h.clone();
        tasks.push(tokio::spawn(
            async move { check_as(&h, "OK-B", None).await },
        ));
    }
    let mut granted = Vec::new();
    for t in tasks {
        let v = t.await.unwrap();
        if v["ok"] == json!(true) {
            granted.push(v["discountAmountCents"].as_i64().unwrap());
        } else {
            assert_eq!(v["error"], json!("BUDGET_EXHAUSTED"), "{v}");
        }
    }
    assert_eq!(
        granted,
        vec![777; 5],
        "five vendor discounts of 777 fill 3885"
    );
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(5)
    );
    assert!(seen.lock().unwrap().len() >= 5);
}

/// A vendor that is down (connection refused) or answers 5xx: the check fails closed with
/// `VENDOR_UNAVAILABLE` and no hold exists.
#[tokio::test]
async fn a_vendor_that_is_down_or_failing_fails_closed() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // closed again: nothing listens there
    let failing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let failing_addr = failing.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = failing.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = hyper::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from_static(b"{\"ok\":true,\"discountAmountCents\":5}"),
                    ));
                    *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let campaign = |id: &str, code: &str, addr: std::net::SocketAddr| {
        format!("[[tenants.campaigns]]\nid = \"{id}\"\ncodes = [\"{code}\"]\ndiscount = {{ amount_cents = 100 }}\nrules = {{ http = \"http://{addr}/decide\", secret_env = \"FWD_SECRET\", timeout = \"2s\" }}\n")
    };
    let h = Harness::start(&config_with(&format!(
        "{}{}",
        campaign("down", "DOWN-1", refused),
        campaign("failing", "FAIL-1", failing_addr)
    )))
    .await;
    for code in ["DOWN-1", "FAIL-1"] {
        let v = check_as(&h, code, None).await;
        assert_eq!(
            (v["ok"].clone(), v["error"].clone()),
            (json!(false), json!("VENDOR_UNAVAILABLE")),
            "{code}: {v}"
        );
    }
    assert_eq!(
        h.admin("GET", "holds", None).await.json()["count"],
        json!(0)
    );
}

async fn generate(h: &Harness, pattern: &str, count: u64) -> Resp {
    h.admin(
        "POST",
        "campaigns/bulk/codes/generate",
        Some(&json!({"pattern": pattern, "count": count})),
    )
    .await
}

/// Two servers with the same config, clock and request generate different codes: codes
/// come from the OS's CSPRNG, not from tenant, campaign and time.
#[tokio::test]
async fn identical_generations_on_identical_servers_differ() {
    let a = Harness::start(&config_with(CAMPAIGNS)).await;
    let b = Harness::start(&config_with(CAMPAIGNS)).await;
    let ra = generate(&a, "GIFT-????????", 3).await.json();
    let rb = generate(&b, "GIFT-????????", 3).await.json();
    assert_eq!(
        (ra["generated"].clone(), rb["generated"].clone()),
        (json!(3), json!(3))
    );
    assert_ne!(ra["codes"], rb["codes"]);
}

/// A pattern may issue at most 1 % of its space, counted over every generation; more
/// than the space at all is refused on `count`.
#[tokio::test]
async fn generation_beyond_one_percent_of_the_pattern_is_refused() {
    let h = Harness::start(&config_with(CAMPAIGNS)).await;
    // X-### holds 8^3 = 512 codes: 5 may be issued.
    assert_eq!(generate(&h, "X-###", 5).await.json()["generated"], json!(5));
    let r = generate(&h, "X-###", 1).await;
    let v = r.json();
    assert_eq!(
        (r.status, v["error"].clone(), v["field"].clone()),
        (400, json!("INVALID_FIELD"), json!("pattern")),
        "{v}"
    );
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("holds 512 codes") && m.contains("1 %") && m.contains("5 were issued"),
        "{m}"
    );
    let r = generate(&h, "Y-###", 600).await;
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("count")));
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("holds only 512"));
    // another pattern still has its own room
    assert_eq!(
        generate(&h, "Y-####", 40).await.json()["generated"],
        json!(40)
    );
}

/// The CLI applies the same rule, before writing anything.
#[test]
fn codes_generate_cli_refuses_beyond_the_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\npath = \"{}\"\n[[tenants]]\nid = \"v\"\nauth = {{ mode = \"none\" }}\n[[tenants.campaigns]]\nid = \"bulk\"\ndiscount = {{ amount_cents = 300 }}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out_csv = dir.path().join("new.csv");
    let generate = |pattern: &str, count: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_karma-provider"))
            .args(["codes", "generate", "--tenant", "v", "--campaign", "bulk"])
            .args(["--pattern", pattern, "--count", count, "--out"])
            .arg(&out_csv)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let ok = generate("X-####", "40");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let more = generate("X-####", "1");
    assert_eq!(more.status.code(), Some(1));
    let err = String::from_utf8_lossy(&more.stderr);
    assert!(
        err.contains("--pattern") && err.contains("1 %") && err.contains("40 were issued"),
        "{err}"
    );
    let too_many = generate("Z-##", "65");
    let err = String::from_utf8_lossy(&too_many.stderr);
    assert!(
        err.contains("--count") && err.contains("holds only 64"),
        "{err}"
    );
}

/// Long writer jobs run as bounded slices: with `job_slice_records = 100`, an import, an
/// export, a generation and the admin export of 250+ codes each take several writer jobs
/// (one before: every commit waited behind the whole job), and their answers are whole.
#[tokio::test]
async fn long_jobs_run_as_bounded_slices_of_the_writer() {
    let toml = config_with(CAMPAIGNS).replace(
        "cache_capacity_mb = 16",
        "cache_capacity_mb = 16\njob_slice_records = 100",
    );
    let h = Harness::start(&toml).await;
    let jobs = "kp_store_jobs_total";
    let mut csv = String::from("code\n");
    for i in 0..250 {
        csv.push_str(&format!("SL-{i:04}\n"));
    }
    csv.push_str("SL-0001\n");
    let before = metric(&h, jobs).await;
    let r = import(&h, "bulk", &csv).await;
    assert_eq!(
        r.json(),
        json!({"ok": true, "imported": 250, "duplicates": 1, "invalid": []})
    );
    assert!(metric(&h, jobs).await - before >= 3);

    let before = metric(&h, jobs).await;
    let g = generate(&h, "SUMMER-####-????", 250).await.json();
    assert_eq!(g["generated"], json!(250));
    let made: std::collections::HashSet<&str> = g["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(made.len(), 250);
    assert!(metric(&h, jobs).await - before >= 3);

    let before = metric(&h, jobs).await;
    let export = h.admin("GET", "campaigns/bulk/codes", None).await;
    assert_eq!(export.status, 200);
    let text = String::from_utf8(export.bytes).unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(lines.len(), 500);
    assert!(lines.contains(&"SL-0249,,,available"));
    assert!(metric(&h, jobs).await - before >= 5);

    let before = metric(&h, jobs).await;
    let all = h
        .request(
            "GET",
            "/admin/v1/export",
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            vec![],
        )
        .await;
    assert_eq!(all.status, 200);
    let text = String::from_utf8(all.bytes).unwrap();
    let head: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(head["records"].as_u64().unwrap() >= 500);
    assert_eq!(
        text.lines().count() as u64,
        head["records"].as_u64().unwrap() + 1
    );
    assert!(metric(&h, jobs).await - before >= 5);
}

/// Codes whose match keys hash to one bucket share one record: each is found, used and
/// exported on its own, and a duplicate in the same bucket is still refused.
#[tokio::test]
async fn codes_of_one_bucket_share_a_record() {
    use karma_provider::service::codes::bucket_of;
    let mut h = Harness::start(&config_with(CAMPAIGNS)).await;
    // Brute-force three codes of one bucket (the match key of `BK-n` is `BKn`).
    let first = bucket_of("BK0");
    let same: Vec<String> = (0u64..)
        .map(|i| format!("BK-{i}"))
        .filter(|c| bucket_of(&c.replace('-', "")) == first)
        .take(3)
        .collect();
    let csv = format!("{}\n{}\n{}\n{}\n", same[0], same[1], same[2], same[1]);
    assert_eq!(
        import(&h, "bulk", &csv).await.json(),
        json!({"ok": true, "imported": 3, "duplicates": 1, "invalid": []})
    );
    let v = check_as(&h, &same[1], None).await;
    assert_eq!(v["voucherNr"], json!(same[1]), "{v}");
    let r = v["providerRef"].as_str().unwrap().to_string();
    let c = h
        .call("voucher/commit", &commit_body(300, &res_id(1), &r))
        .await;
    assert_eq!(c.json()["ok"], json!(true));
    assert_eq!(
        check_as(&h, &same[1], None).await["error"],
        json!("USAGE_LIMIT_REACHED")
    );
    assert_eq!(check_as(&h, &same[2], None).await["ok"], json!(true));
    let csv = String::from_utf8(h.admin("GET", "campaigns/bulk/codes", None).await.bytes).unwrap();
    for (code, state) in [
        (&same[0], "available"),
        (&same[1], "used"),
        (&same[2], "held"),
    ] {
        assert!(
            csv.contains(&format!("{code},,,{state}\n")),
            "{code} {state}: {csv}"
        );
    }
    h.stop().await;
    let db = sled::open(h.data_path()).unwrap();
    let records: Vec<_> = db.scan_prefix(b"bcb\x1facme\x1f").collect();
    assert_eq!(records.len(), 1, "one record for the three codes");
    assert_eq!(db.scan_prefix(b"bcode").count(), 0);
}

/// Schema 2 → 3: bulk codes written one to a record (golden keys put straight into sled,
/// version 2) move into their buckets at start, in slices, and serve as before; the
/// offline codes commands refuse the older store until then.
#[tokio::test]
async fn a_schema_2_store_moves_its_codes_into_buckets_at_start() {
    let mut h = Harness::start(&config_with(CAMPAIGNS)).await;
    h.stop().await;
    {
        let db = sled::open(h.data_path()).unwrap();
        db.insert(b"meta\x1fschema_version", &2u64.to_be_bytes())
            .unwrap();
        for i in 0..2500 {
            let key = format!("bcode\x1facme\x1fOLD{i:04}");
            let mut code = json!({"c": "bulk", "k": format!("OLD-{i:04}")});
            if i == 7 {
                code["g"] = json!("guest-7");
            }
            db.insert(key.as_bytes(), code.to_string().as_bytes())
                .unwrap();
        }
        db.flush().unwrap();
    }
    let text = h
        .toml
        .replace("@DATA@", &h.data_path().display().to_string());
    let cfg =
        karma_provider::config::Config::from_toml(&text, "test.toml", &common::env()).unwrap();
    let err = karma_provider::codes_cli::export(&cfg, "acme", "bulk", &mut Vec::new())
        .expect_err("refused");
    assert!(
        err.contains("schema version 2; start `karma-provider serve`"),
        "{err}"
    );

    h.boot().await;
    wait_for_index(&h, 2500).await;
    let v = check_as(&h, "old-1234", None).await;
    assert_eq!(v["voucherNr"], json!("OLD-1234"), "{v}");
    assert_eq!(
        check_as(&h, "OLD-0007", Some("guest-8")).await["error"],
        json!("CODE_ASSIGNED_TO_ANOTHER_GUEST")
    );
    let csv = String::from_utf8(h.admin("GET", "campaigns/bulk/codes", None).await.bytes).unwrap();
    assert_eq!(csv.lines().count(), 2501, "a header and every code");
    h.stop().await;
    let db = sled::open(h.data_path()).unwrap();
    assert_eq!(
        db.scan_prefix(b"bcode").count(),
        0,
        "no code left one to a record"
    );
    let v = db.get(b"meta\x1fschema_version").unwrap().unwrap();
    assert_eq!(v.as_ref(), SCHEMA_VERSION.to_be_bytes().as_slice());
    let codes: usize = db
        .scan_prefix(b"bcb\x1facme\x1f")
        .map(|kv| {
            serde_json::from_slice::<serde_json::Map<String, Value>>(&kv.unwrap().1)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(codes, 2500);
}
