//! Order sources (issue 18) against local fake LOKE and Olympus servers serving the
//! documented shapes (seeds 003 and 004): paging across several pages, an order that
//! changes status between polls, a refund after the award, a duplicate order in two
//! pages, a 429 with Retry-After, a 500, a restart of the service mid-poll (no award lost,
//! none twice), the operator's award of an unmatched order; and each platform's
//! documented example order (tests/data/, copied from the seeds) parsed exactly.

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use karma_provider::sources::order::{loke_page, Decimal, LokeOrder, OlympusOrder, Order, Status};
use serde_json::{json, Value};

// ---- the fake platforms ----------------------------------------------------------------

#[derive(Default)]
struct FakeState {
    /// LOKE: orders by id, and the list's pages of order ids (an id may be on two pages).
    loke: HashMap<String, Value>,
    pages: Vec<Vec<String>>,
    /// Olympus: orders in the order they reached their current status.
    olympus: Vec<Value>,
    /// Answers sent before any real one: (status, Retry-After).
    failures: VecDeque<(u16, Option<&'static str>)>,
    /// Every request: when, path?query, status answered.
    log: Vec<(Instant, String, u16)>,
    delay: Duration,
}

#[derive(Clone)]
struct Fake {
    addr: SocketAddr,
    st: Arc<Mutex<FakeState>>,
}

impl Fake {
    async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Fake {
            addr: listener.local_addr().unwrap(),
            st: Arc::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, std::convert::Infallible>(f.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.st.lock().unwrap())
    }

    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let delay = self.with(|s| s.delay);
        tokio::time::sleep(delay).await;
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let (status, headers, body) = self.with(|s| {
            let out = route(s, self.addr, &path, &query, &auth);
            s.log
                .push((Instant::now(), format!("{path}?{query}"), out.0));
            out
        });
        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            resp.headers_mut().insert(
                hyper::header::HeaderName::from_static(k),
                v.parse().unwrap(),
            );
        }
        resp
    }
}

type Answer = (u16, Vec<(&'static str, String)>, String);

fn route(s: &mut FakeState, addr: SocketAddr, path: &str, query: &str, auth: &str) -> Answer {
    if auth != format!("Bearer {KEY}") {
        return (401, vec![], r#"{"error":"unauthorized"}"#.into());
    }
    if let Some((status, after)) = s.failures.pop_front() {
        let h = after
            .map(|a| vec![("retry-after", a.to_string())])
            .unwrap_or_default();
        return (status, h, r#"{"error":"try later"}"#.into());
    }
    let q = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    const LOKE: &str = "/organizations/org1/locations/loc1/orders";
    if path == LOKE {
        let page: usize = q("after")
            .and_then(|a| a.strip_prefix('p').and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        let ids = s.pages.get(page).cloned().unwrap_or_default();
        let orders: Vec<Value> = ids.iter().map(|id| s.loke[id].clone()).collect();
        let mut h = vec![];
        if page + 1 < s.pages.len() {
            let next = format!("<http://{addr}{LOKE}?after=p{}>; rel=\"next\"", page + 1);
            h.push(("link", next));
        }
        return (200, h, Value::Array(orders).to_string());
    }
    if let Some(id) = path.strip_prefix(&format!("{LOKE}/")) {
        return match s.loke.get(id) {
            Some(o) => (200, vec![], o.to_string()),
            None => (404, vec![], r#"{"code":"not_found"}"#.into()),
        };
    }
    if path == "/v1/commerce/orders" {
        let status = q("status").unwrap_or_default();
        let limit: usize = q("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
        let offset: usize = q("offset").and_then(|l| l.parse().ok()).unwrap_or(0);
        let list: Vec<Value> = s
            .olympus
            .iter()
            .filter(|o| o["status"] == status.as_str())
            .skip(offset)
            .take(limit)
            .cloned()
            .collect();
        return (200, vec![], json!({ "data": list }).to_string());
    }
    (404, vec![], "{}".into())
}

fn loke_order(id: &str, state: &str, total: i64, discount: i64, phone: &str, email: &str) -> Value {
    json!({
        "id": id,
        "state": state,
        "createdAt": "2026-06-01T09:00:00Z",
        "cart": {"currency": "AUD", "total": total, "adjustments": [],
                 "items": [{"id": "FOOD001", "title": "Burger", "quantity": 1, "amount": total}]},
        "payment": {"id": format!("pay-{id}"), "state": "completed", "currency": "AUD",
                    "total": total, "discountAmount": discount, "creditAmount": 0,
                    "chargedAmount": total - discount, "tipAmount": 0, "deliveryAmount": 0,
                    "feeAmount": 0, "payoutAmount": total - discount,
                    "completedAt": "2026-06-01T09:10:00Z"},
        "customer": {"id": format!("c-{id}"), "firstName": "A", "lastName": "B",
                     "email": if email.is_empty() { Value::Null } else { email.into() },
                     "phoneNumber": if phone.is_empty() { Value::Null } else { phone.into() }},
    })
}

fn olympus_order(id: &str, status: &str, total: Value, meta: Value) -> Value {
    json!({
        "id": id, "tenant_id": "t", "location_id": "loc", "source": "pos", "status": status,
        "currency": "USD", "subtotal": total.clone(), "tax_total": 0.00, "discount_total": 0.00,
        "total": total, "metadata": meta,
        "items": [{"id": format!("i-{id}"), "order_id": id, "name": "Pizza", "quantity": 1,
                   "unit_price": 1.00, "total_price": 1.00, "modifiers": {}, "notes": null}],
        "created_at": "2026-06-01T09:00:00Z", "updated_at": "2026-06-01T09:00:00Z",
    })
}

/// Move an Olympus order to a new status (and to the end of that status's list).
fn olympus_set(s: &mut FakeState, id: &str, status: &str) {
    let i = s.olympus.iter().position(|o| o["id"] == id).unwrap();
    let mut o = s.olympus.remove(i);
    o["status"] = status.into();
    s.olympus.push(o);
}

// ---- the service -----------------------------------------------------------------------

fn source_toml(name: &str, kind: &str, fake: &Fake, extra: &str) -> String {
    format!(
        r#"
[[tenants.loyalty.sources]]
name = "{name}"
kind = "{kind}"
base_url = "{}"
token_env = "ACME_KEY"
poll_every = "50ms"
backoff = "50ms"
backoff_max = "100ms"
{extra}
"#,
        fake.url()
    )
}

fn config(sources: &str) -> String {
    config_with(&format!(
        "[[tenants.loyalty]]\nprogram_id = 7\nearn = {{ points = 1, per_cents = 100 }}\n{sources}"
    ))
}

/// The service with one source of `kind` (named `loke` or `pos`) on `fake`.
async fn serve(extra: &str, kind: &str, fake: &Fake) -> Harness {
    let name = if kind == "loke" { "loke" } else { "pos" };
    Harness::start(&config(&source_toml(name, kind, fake, extra))).await
}

const LOKE_KEYS: &str = "organization_id = \"org1\"\nlocation_id = \"loc1\"";

async fn enroll(h: &Harness, user: &str, contact: Value) -> String {
    let mut body = json!({"userId": user, "loyaltyProgramId": 7, "locationId": 42});
    for (k, v) in contact.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = h.call("loyalty/enroll", &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    r.json()["memberId"].as_str().unwrap().to_owned()
}

async fn balance(h: &Harness, user: &str) -> i64 {
    let r = h
        .call(
            "loyalty/account",
            &json!({"userId": user, "loyaltyProgramId": 7}),
        )
        .await;
    r.json()["currentBalance"].as_i64().unwrap()
}

/// The balances of u-1 and u-2.
async fn balances(h: &Harness) -> (i64, i64) {
    (balance(h, "u-1").await, balance(h, "u-2").await)
}

/// The admin view of one source, once `done` holds (or a panic naming the last view).
async fn wait_source(h: &Harness, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = h.admin("GET", "sources", None).await.json();
        let s = v["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap();
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited too long: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn orders(s: &Value, state: &str) -> i64 {
    s["orders"][state].as_i64().unwrap()
}

/// A source's order listing (`path` below `/admin/v1/tenants/acme/`): each order's
/// `field`, and the cursor of the next page.
async fn listed(h: &Harness, path: &str, field: &str) -> (Vec<Value>, Value) {
    let v = h.admin("GET", path, None).await.json();
    let orders = v["orders"].as_array().unwrap();
    (
        orders.iter().map(|o| o[field].clone()).collect(),
        v["next"].clone(),
    )
}

/// Polls that ran after now: wait until the fake has answered `n` more requests.
async fn wait_requests(fake: &Fake, n: usize) {
    let base = fake.with(|s| s.log.len());
    let start = Instant::now();
    while fake.with(|s| s.log.len()) < base + n {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn loke_pages_status_changes_refunds_duplicates_and_the_operator() {
    let fake = Fake::start().await;
    let mut h = serve(LOKE_KEYS, "loke", &fake).await;
    let m1 = enroll(&h, "u-1", json!({"phone": "+61 411 222 333"})).await;
    let m2 = enroll(&h, "u-2", json!({"email": "Jane@Example.com"})).await;
    fake.with(|s| {
        for o in [
            loke_order("l1", "completed", 1000, 300, "+61411222333", ""),
            loke_order("l2", "accepted", 2000, 0, "", "jane@example.com"),
            loke_order("l3", "completed", 5000, 0, "+61400000000", ""),
            loke_order("l4", "completed", 2500, 0, "", "JANE@example.com"),
            loke_order("l5", "rejected", 900, 0, "+61411222333", ""),
        ] {
            s.loke.insert(o["id"].as_str().unwrap().to_owned(), o);
        }
        // l4 is on two pages.
        s.pages = vec![
            vec!["l1".into(), "l2".into()],
            vec!["l3".into(), "l4".into()],
            vec!["l4".into(), "l5".into()],
        ];
    });
    let s = wait_source(&h, "loke", |s| s["seen"] == 5).await;
    let by_state = json!({"open": 1, "awarded": 2, "unmatched": 1, "failed": 0, "reversed": 0, "cancelled": 1});
    assert_eq!(s["orders"], by_state);
    assert_eq!(s["position"]["after"], "p2");
    // 1000 - 300 LOKE discount = 7.00; 25.00.
    assert_eq!(balances(&h).await, (7, 25));

    // l2 completes after its page was read: fetched again by id, it earns.
    fake.with(|s| {
        s.loke.get_mut("l2").unwrap()["state"] = "completed".into();
    });
    wait_source(&h, "loke", |s| orders(s, "awarded") == 3).await;
    assert_eq!(balance(&h, "u-2").await, 45);

    // l1 is refunded after its award: reversed.
    fake.with(|s| {
        s.loke.get_mut("l1").unwrap()["payment"]["state"] = "refunded".into();
    });
    let s = wait_source(&h, "loke", |s| orders(s, "reversed") == 1).await;
    assert_eq!(orders(&s, "awarded"), 2);
    assert_eq!(balance(&h, "u-1").await, 0);

    // Re-polling the same pages changes nothing.
    wait_requests(&fake, 8).await;
    assert_eq!(balances(&h).await, (0, 45));

    // The unmatched order, visible to the operator, is awarded by hand once.
    let unmatched = "sources/loke/orders?state=unmatched";
    assert_eq!(listed(&h, unmatched, "orderId").await.0, [json!("l3")]);
    assert_eq!(
        listed(&h, unmatched, "phone").await.0,
        [json!("61400000000")]
    );
    assert_eq!(listed(&h, unmatched, "amountCents").await.0, [json!(5000)]);
    let award = json!({"memberId": m1});
    let r = h
        .admin("POST", "sources/loke/orders/l3/award", Some(&award))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["order"]["state"], "awarded");
    assert_eq!(r.json()["order"]["awardedBy"], "operator");
    assert_eq!(r.json()["order"]["points"], 50);
    let again = h
        .admin("POST", "sources/loke/orders/l3/award", Some(&award))
        .await;
    assert_eq!(again.status, 200);
    let other = json!({"memberId": m2});
    let r = h
        .admin("POST", "sources/loke/orders/l3/award", Some(&other))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "ORDER_NOT_UNMATCHED");
    let r = h
        .admin("POST", "sources/loke/orders/l4/award", Some(&award))
        .await;
    assert_eq!(r.status, 409);
    let r = h
        .admin("POST", "sources/loke/orders/nope/award", Some(&award))
        .await;
    assert_eq!(r.status, 404);
    let r = h.admin("GET", "sources/loke/orders/l3/award", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(balance(&h, "u-1").await, 50);
    for (path, field) in [
        ("sources/loke/orders?state=lost", "state"),
        ("sources/loke/orders?limit=0", "limit"),
    ] {
        let r = h.admin("GET", path, None).await;
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (400, json!(field)),
            "{path}"
        );
    }
    let r = h
        .admin(
            "POST",
            "sources/loke/orders/l3/award",
            Some(&json!({"member": "m"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("memberId"))
    );
    assert_eq!(
        h.admin("GET", "sources/nope/orders", None).await.status,
        404
    );
    // The listing pages by order id.
    let page = listed(&h, "sources/loke/orders?limit=2", "orderId").await;
    assert_eq!(page, (vec![json!("l1"), json!("l2")], json!("l2")));
    let rest = listed(&h, "sources/loke/orders?after=l2", "orderId").await;
    let want = vec![json!("l3"), json!("l4"), json!("l5")];
    assert_eq!(rest, (want, Value::Null));
    let s = wait_source(&h, "loke", |s| orders(s, "unmatched") == 0).await;
    assert_eq!(orders(&s, "awarded"), 3);

    // The ledger: one earn per order, the reversal, the operator's award.
    let m = h.admin("GET", "loyalty/7/users/u-1", None).await.json();
    let reasons: Vec<_> = m["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].clone(), e["points"].clone()))
        .collect();
    assert_eq!(
        reasons,
        [
            (json!("earn"), json!(7)),
            (json!("reversal"), json!(-7)),
            (json!("earn"), json!(50))
        ]
    );
    let metrics = h.request("GET", "/metrics", &[], vec![]).await;
    let text = String::from_utf8_lossy(&metrics.bytes).into_owned();
    assert!(
        text.contains("kp_source_orders_seen_total{tenant=\"acme\",source=\"loke\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("kp_source_orders{tenant=\"acme\",source=\"loke\",state=\"awarded\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("kp_source_polls_total{tenant=\"acme\",source=\"loke\",outcome=\"ok\"}"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test]
async fn loke_honours_retry_after_on_429_and_backs_off_on_500() {
    let fake = Fake::start().await;
    fake.with(|s| {
        s.loke.insert(
            "l1".into(),
            loke_order("l1", "completed", 1200, 0, "+61411222333", ""),
        );
        s.pages = vec![vec!["l1".into()]];
        s.failures = VecDeque::from([(429, Some("1")), (500, None)]);
    });
    let h = serve(LOKE_KEYS, "loke", &fake).await;
    // The page's job, then the poll's end (which clears the 500 it recovered from).
    let s = wait_source(&h, "loke", |s| s["lastPollAt"].is_string()).await;
    assert_eq!(
        (orders(&s, "unmatched"), s["lastError"].clone()),
        (1, Value::Null)
    );
    let log = fake.with(|s| s.log.clone());
    let statuses: Vec<u16> = log.iter().take(3).map(|l| l.2).collect();
    assert_eq!(statuses, [429, 500, 200]);
    // The 429 asked for a second; the 500 got the backoff (50-100 ms with jitter).
    assert!(
        log[1].0 - log[0].0 >= Duration::from_secs(1),
        "{:?}",
        log[1].0 - log[0].0
    );
    assert!(
        log[2].0 - log[1].0 < Duration::from_millis(900),
        "{:?}",
        log[2].0 - log[1].0
    );
    let metrics = h.request("GET", "/metrics", &[], vec![]).await;
    let text = String::from_utf8_lossy(&metrics.bytes).into_owned();
    assert!(
        text.contains(
            "kp_source_polls_total{tenant=\"acme\",source=\"loke\",outcome=\"failed\"} 2"
        ),
        "{text}"
    );
    // A failure is visible until the next good poll.
    fake.with(|s| s.failures = VecDeque::from([(500, None); 50]));
    let s = wait_source(&h, "loke", |s| s["lastError"] == "HTTP 500").await;
    assert!(s["lastErrorAt"].is_string());
}

#[tokio::test]
async fn olympus_completed_cancelled_refunded_and_exact_decimals() {
    let fake = Fake::start().await;
    let h = serve("page_size = 2", "olympus", &fake).await;
    enroll(&h, "u-1", json!({"phone": "+1 (415) 555-0100"})).await;
    enroll(&h, "u-2", json!({"email": "ann@example.com"})).await;
    fake.with(|s| {
        s.olympus = vec![
            olympus_order(
                "o1",
                "completed",
                json!(16.19),
                json!({"phone": "14155550100"}),
            ),
            olympus_order(
                "o2",
                "pending",
                json!("20.00"),
                json!({"email": "ann@example.com"}),
            ),
            olympus_order(
                "o3",
                "completed",
                json!("12.345"),
                json!({"email": "ann@example.com"}),
            ),
            olympus_order(
                "o4",
                "completed",
                json!(30),
                json!({"email": "Ann@Example.com"}),
            ),
            olympus_order("o5", "cancelled", json!(5.00), json!({})),
            olympus_order(
                "o6",
                "completed",
                json!("7.5"),
                json!({"phone": "+14155550100"}),
            ),
        ];
    });
    let s = wait_source(&h, "pos", |s| s["seen"] == 5).await;
    let by_state = json!({"open": 0, "awarded": 3, "unmatched": 0, "failed": 1, "reversed": 0, "cancelled": 1});
    assert_eq!(s["orders"], by_state);
    assert_eq!(s["position"]["offsets"]["completed"], 4);
    assert_eq!(balances(&h).await, (16 + 7, 30));
    let failed = h
        .admin("GET", "sources/pos/orders?state=failed", None)
        .await
        .json();
    assert_eq!(failed["orders"][0]["orderId"], "o3");
    assert_eq!(
        failed["orders"][0]["failure"],
        "total: \"12.345\" has more than 2 decimals; cents cannot hold it exactly"
    );

    // o2 completes between polls; o4 is refunded after its award.
    fake.with(|s| olympus_set(s, "o2", "completed"));
    wait_source(&h, "pos", |s| orders(s, "awarded") == 4).await;
    assert_eq!(balance(&h, "u-2").await, 50);
    fake.with(|s| olympus_set(s, "o4", "refunded"));
    let s = wait_source(&h, "pos", |s| orders(s, "reversed") == 1).await;
    assert_eq!(orders(&s, "awarded"), 3);
    assert_eq!(balance(&h, "u-2").await, 20);
    wait_requests(&fake, 12).await;
    assert_eq!(balances(&h).await, (23, 20));

    // The operator reverses o6 by hand (purchase id "{source}:{order}"); the platform's
    // refund later finds nothing left to take back.
    let rev = json!({"id": "by-hand-1", "purchaseId": "pos:o6", "reason": "refunded at the till"});
    let r = h.admin("POST", "loyalty/7/reversals", Some(&rev)).await;
    assert_eq!(r.json()["pointsReversed"], 7);
    fake.with(|s| olympus_set(s, "o6", "refunded"));
    let s = wait_source(&h, "pos", |s| orders(s, "reversed") == 2).await;
    assert_eq!(orders(&s, "awarded"), 2);
    let reversed = "sources/pos/orders?state=reversed";
    assert_eq!(
        listed(&h, reversed, "orderId").await.0,
        [json!("o4"), json!("o6")]
    );
    assert_eq!(
        listed(&h, reversed, "pointsReversed").await.0,
        [json!(30), json!(0)]
    );
    assert_eq!(balance(&h, "u-1").await, 16);
}

#[tokio::test]
async fn an_olympus_list_that_shrinks_by_more_than_a_page_is_read_again() {
    let fake = Fake::start().await;
    let h = serve("page_size = 2", "olympus", &fake).await;
    fake.with(|s| {
        s.olympus = (1..=6)
            .map(|i| olympus_order(&format!("o{i}"), "completed", json!(1), json!({})))
            .collect();
    });
    wait_source(&h, "pos", |s| s["position"]["offsets"]["completed"] == 6).await;
    // Four refunds leave two completed orders; a seventh completes after them.
    fake.with(|s| {
        for i in 1..=4 {
            olympus_set(s, &format!("o{i}"), "refunded");
        }
        s.olympus
            .push(olympus_order("o7", "completed", json!(2), json!({})));
    });
    let s = wait_source(&h, "pos", |s| s["seen"] == 7 && orders(s, "cancelled") == 4).await;
    assert_eq!(orders(&s, "unmatched"), 3);
    assert_eq!(s["position"]["offsets"]["completed"], 3);
}

/// 30 completed orders for u-1 (1.00 … 30.00) on 15 pages answered 40 ms apart.
fn thirty_slow_orders(fake: &Fake, prefix: &str) -> Vec<String> {
    let ids: Vec<String> = (1..=30).map(|i| format!("{prefix}{i:02}")).collect();
    fake.with(|s| {
        s.delay = Duration::from_millis(40);
        for (i, id) in (1..).zip(&ids) {
            let o = loke_order(id, "completed", 100 * i, 0, "+61411222333", "");
            s.loke.insert(id.clone(), o);
        }
        s.pages = ids.chunks(2).map(<[String]>::to_vec).collect();
    });
    ids
}

#[tokio::test]
async fn restarts_mid_poll_lose_no_award_and_repeat_none() {
    let fake = Fake::start().await;
    let mut h = serve(LOKE_KEYS, "loke", &fake).await;
    enroll(&h, "u-1", json!({"phone": "+61411222333"})).await;
    let ids = thirty_slow_orders(&fake, "r");
    // Stopped three times while the pages are being read, started again on the same data.
    for at in [4, 12, 20] {
        let mid = wait_source(&h, "loke", |s| s["seen"].as_i64().unwrap() >= at).await;
        assert!(mid["seen"].as_i64().unwrap() < 30, "{mid}");
        h.restart().await;
    }
    let s = wait_source(&h, "loke", |s| orders(s, "awarded") == 30).await;
    assert_eq!(s["seen"], 30);
    wait_requests(&fake, 4).await;
    // 1 + 2 + … + 30 points, each order once.
    assert_eq!(balance(&h, "u-1").await, 465);
    let m = h.admin("GET", "loyalty/7/users/u-1", None).await.json();
    let earned: Vec<_> = m["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["purchaseId"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<_> = ids.iter().map(|id| format!("loke:{id}")).collect();
    assert_eq!(earned, want);
    assert_eq!(m["ledgerSum"], 465);
    h.stop().await;
}

/// The real binary, killed with SIGKILL three times while it reads the pages: a page's
/// awards and the position after it are one write, so each order earns exactly once.
#[tokio::test]
async fn kill_9_mid_poll_loses_no_award_and_repeats_none() {
    use karma_provider::client::{admin_request, post};
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kp.toml");
    let text = config(&source_toml("loke", "loke", &fake, LOKE_KEYS))
        .replace("@DATA@", &dir.path().join("data").display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let env = [
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("ACME_KEY", KEY),
        ("BASIC_PASS", "s3cret"),
    ];
    let (mut child, mut base) = spawn_serve(&cfg, &env);
    let key = [("x-provider-key".to_string(), KEY.to_string())];
    let enroll =
        json!({"userId": "u-1", "loyaltyProgramId": 7, "locationId": 42, "phone": "+61411222333"});
    let url = |base: &str, call: &str| format!("{base}/v1/acme/loyalty/{call}");
    let r = post(&url(&base, "enroll"), &key, enroll.to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(r.0, 200);
    let ids = thirty_slow_orders(&fake, "k");
    let view = |base: String| async move {
        let (_, body) = admin_request(&base, ADMIN_TOKEN, "GET", "tenants/acme/sources", None)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&body).unwrap()["sources"][0].clone()
    };
    for at in [4, 12, 20] {
        let start = Instant::now();
        let seen = loop {
            let seen = view(base.clone()).await["seen"].as_i64().unwrap();
            if seen >= at {
                break seen;
            }
            assert!(start.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(seen < 30, "killed after the last page: {seen}");
        child.kill().unwrap();
        child.wait().unwrap();
        (child, base) = spawn_serve(&cfg, &env);
    }
    let start = Instant::now();
    while view(base.clone()).await["orders"]["awarded"] != 30 {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let account = json!({"userId": "u-1", "loyaltyProgramId": 7});
    let r = post(
        &url(&base, "account"),
        &key,
        account.to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&r.1).unwrap()["currentBalance"],
        465
    );
    let (_, body) = admin_request(
        &base,
        ADMIN_TOKEN,
        "GET",
        "tenants/acme/loyalty/7/users/u-1",
        None,
    )
    .await
    .unwrap();
    let m: Value = serde_json::from_slice(&body).unwrap();
    let earned: Vec<_> = m["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["purchaseId"].clone())
        .collect();
    let want: Vec<_> = ids.iter().map(|id| json!(format!("loke:{id}"))).collect();
    assert_eq!(earned, want);
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---- the documented examples -----------------------------------------------------------

#[test]
fn loke_documented_order_parses_exactly() {
    let text = std::fs::read_to_string("tests/data/loke-order.json").unwrap();
    let o: LokeOrder = serde_json::from_str(&text).unwrap();
    assert_eq!(o.id, "642b791d-124f-41d6-a137-009f1fe84f77");
    assert_eq!(o.state, "rejected");
    assert_eq!(o.completed_at.as_deref(), Some("2021-08-04T04:38:00Z"));
    let cart = o.cart.as_ref().unwrap();
    assert_eq!(
        (cart.total, cart.currency.as_deref()),
        (Some(10000), Some("AUD"))
    );
    assert_eq!(cart.items.len(), 2);
    assert_eq!(cart.adjustments[0].amount, -500);
    let p = o.payment.as_ref().unwrap();
    assert_eq!(
        (
            p.total,
            p.discount_amount,
            p.credit_amount,
            p.charged_amount,
            p.tip_amount
        ),
        (1000, 300, 200, 600, 100)
    );
    assert_eq!(
        (p.state.as_str(), p.currency.as_str()),
        ("completed", "SGD")
    );
    assert_eq!(
        o.to_order(),
        Order {
            id: "642b791d-124f-41d6-a137-009f1fe84f77".into(),
            status: Status::Reversed("rejected".into()),
            state: "rejected".into(),
            amount_cents: Ok(700),
            phone: Some("61411222333".into()),
            email: Some("john@example.com".into()),
            item_ids: vec!["FOOD001".into(), "FOOD001".into()],
        }
    );
    let list = std::fs::read_to_string("tests/data/loke-orders.json").unwrap();
    let page = loke_page(list.as_bytes()).unwrap();
    assert_eq!(page.len(), 2);
    assert!(page.iter().all(|o| o.to_order().amount_cents == Ok(700)));
}

#[test]
fn olympus_documented_order_parses_exactly() {
    let text = std::fs::read_to_string("tests/data/olympus-order.json").unwrap();
    let o: OlympusOrder = serde_json::from_str(&text).unwrap();
    assert_eq!(o.id, "b2c3d4e5-f6a7-8901-bcde-f12345678901");
    assert_eq!(o.status, "pending");
    assert_eq!(o.total, Decimal("16.19".into()));
    assert_eq!(o.subtotal, Some(Decimal("14.99".into())));
    // The literal as written, not a float's rendering.
    assert_eq!(o.tax_total, Some(Decimal("1.20".into())));
    assert_eq!(o.discount_total, Some(Decimal("0.00".into())));
    assert_eq!(o.items[0].unit_price, Decimal("14.99".into()));
    assert_eq!(o.items[0].quantity, 1);
    assert_eq!(
        o.to_order(),
        Order {
            id: "b2c3d4e5-f6a7-8901-bcde-f12345678901".into(),
            status: Status::Open,
            state: "pending".into(),
            amount_cents: Ok(1619),
            phone: None,
            email: None,
            item_ids: vec![],
        }
    );
}

#[test]
fn source_config_errors_name_the_key() {
    let env = |k: &str| (k == "TOKEN").then(|| "t".to_string());
    let load = |source: &str| {
        let text = format!(
            "[[tenants]]\nid = \"a\"\nauth = {{ mode = \"none\" }}\n[[tenants.loyalty]]\nprogram_id = 7\nearn = {{ points = 1, per_cents = 100 }}\n[[tenants.loyalty.sources]]\n{source}\n"
        );
        karma_provider::Config::from_toml(&text, "t.toml", &env).map(|c| c.tenants[0].sources.len())
    };
    let ok = "name = \"pos\"\nkind = \"olympus\"\nbase_url = \"https://o.example\"\ntoken_env = \"TOKEN\"";
    assert_eq!(load(ok), Ok(1));
    for (source, key, message) in [
        (
            ok.replace("olympus", "square"),
            "kind",
            "\"square\" is not one of \"loke\", \"olympus\"",
        ),
        (
            ok.replace("TOKEN", "UNSET"),
            "token_env",
            "names no token that is set (token_env or token_file)",
        ),
        (
            ok.replace("https://o.example", "ftp://o"),
            "base_url",
            "must be an http:// or https:// URL",
        ),
        (
            ok.replace("kind = \"olympus\"", "kind = \"loke\""),
            "organization_id",
            "is required for this kind",
        ),
        (
            format!("{ok}\npage_size = 0"),
            "page_size",
            "must be 1..=500",
        ),
        (
            format!("{ok}\npoll_every = \"soon\""),
            "poll_every",
            "does not start with a whole number",
        ),
    ] {
        let e = load(&source).unwrap_err();
        assert_eq!(
            e.key,
            format!("tenants[0].loyalty[0].sources[0].{key}"),
            "{e}"
        );
        assert!(e.message.contains(message), "{e}");
    }
    let e = load(&format!("{ok}\nsurprise = 1")).unwrap_err();
    assert!(e.key.starts_with("tenants[0].loyalty[0].sources[0]"), "{e}");
    assert!(e.message.contains("unknown field `surprise`"), "{e}");
    let twice = format!("{ok}\n[[tenants.loyalty.sources]]\n{ok}");
    let e = load(&twice).unwrap_err();
    assert_eq!(e.key, "tenants[0].loyalty[0].sources[1].name");
}

#[test]
fn a_program_made_outside_the_config_file_cannot_carry_sources() {
    let spec: karma_provider::loyalty::ProgramSpec = serde_json::from_value(json!({
        "program_id": 9, "earn": {"points": 1, "per_cents": 100},
        "sources": [{"name": "loke", "kind": "loke"}]
    }))
    .unwrap();
    let e = karma_provider::loyalty::Program::from_spec(spec).unwrap_err();
    assert_eq!(e.key, "sources");
}
